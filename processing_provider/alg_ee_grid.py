"""THOR grid from Earth Engine imagery: the token-grid GeoTIFF of grid_from_raster, for an extent or a point."""
from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterExtent,
    QgsProcessingParameterPoint,
)

from . import cluster
from . import ee_params as E
from . import params as P
from .base import GROUP_EE, ThorAlgorithm, callbacks
from .engine_run import open_embedder, provenance, resolve_common
from .features import BUFFER, add_buffer_param, buffer_m
from .grid_plan import GridPlanner, add_model_and_grid_params, plan_outputs
from .styling import style_rgb_stretch

EXTENT = "EXTENT"
POINT = "POINT"
OUTPUT = "OUTPUT"

AREA_HELP = ("Give either an extent or a point (with the half side of the square around it), not both.")


def snap_to_grid(value: float, step: float) -> float:
    return round(value / step) * step


class EEGridAlgorithm(E.ReadsArea, ThorAlgorithm):
    NAME = "ee_grid"
    DISPLAY = "THOR grid from Earth Engine"
    STYLE = style_rgb_stretch
    GROUP = GROUP_EE
    REQUIRES = ("osgeo", "torch", "ee")
    HELP = ("Fetches a Sentinel-2 surface reflectance composite from Google Earth Engine tile by tile and runs "
            "THOR on it, writing the token grid as a georeferenced GeoTIFF exactly like 'THOR grid from "
            "raster layer': one float32 band per embedding channel (thor_000, …).\n\n"
            "The area is an extent (in any CRS) or a point with the half side of a square around it (default "
            "half a tile, 1440 m; the square is centred on the pixel corner nearest to the point). "
            "Tiles of image size × pixel size metres (2880 m by default) sit on a grid fixed in the WGS 84 / "
            "UTM zone of the area's centre (multiples of the tile step from the zone's origin), not on the "
            "area: the same place gets the same embedding whatever the area, and runs over adjacent areas "
            "mosaic to the pixel. The output covers the area, snapped outwards to whole output pixels (tile "
            "size / token grid side: 160 m by default). Tiles are fetched in parallel while the model works "
            "on earlier ones.\n\n"
            "Tile edges (advanced): blend (default) overlaps tiles by twice the margin and writes each pixel as "
            "the weighted mean of the tiles covering it, weights falling towards tile edges, so there is no hard "
            "step between tiles; crop keeps only the centres of the same overlapping tiles; none puts tiles side "
            "by side (fewest tiles and requests, visible steps). At the default margin of 3 tokens blend and crop "
            "take about 2.25 times the tiles (and requests) of none on large areas.\n\n"
            "Before opening the Earth Engine session and loading the model, the run logs its plan: tiles, token "
            "grid, output size, Earth Engine requests, estimated time. Dry run (advanced) stops there and "
            "returns the plan as outputs (no credentials needed). The progress bar counts tiles embedded and "
            "written, and says how long is left.\n\n"
            "The configuration, the weights and the request (collection, dates, cloud threshold, composite, "
            "fill value, project, endpoint; never credentials) are stored in the file's metadata (THOR_CONFIG). "
            "An empty collection (no scene matching the filters over a tile) stops the run with what to "
            "change. Earth Engine needs a Google Cloud project and credentials (`earthengine authenticate`, "
            "or a service-account key); $THOR_EE_API_URL (or the endpoint in the provider's settings) points the "
            "algorithm at another endpoint, such as a local emulator.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterExtent(EXTENT, self.tr("Extent (or a point below)"), optional=True))
        self.addParameter(QgsProcessingParameterPoint(POINT, self.tr("Point (instead of an extent)"),
                                                      optional=True))
        add_buffer_param(self, self.tr)
        E.add_imagery_params(self, self.tr)
        add_model_and_grid_params(self, self.tr, OUTPUT)

    def checkParameterValues(self, parameters, context):  # noqa: N802
        ok, msg = P.check_model_values(self, parameters, context)
        if not ok:
            return ok, msg
        has_extent = not E.is_unset(parameters.get(EXTENT))
        has_point = not E.is_unset(parameters.get(POINT))
        if has_extent == has_point:
            return False, self.tr(("Both an extent and a point were given. " if has_extent
                                   else "Neither an extent nor a point was given. ") + AREA_HELP)
        return super().checkParameterValues(parameters, context)

    def _read_area(self, parameters, context):
        extent = E.read_extent(self, parameters, EXTENT, context)
        point = E.read_point(self, parameters, POINT, context)
        if extent is not None and point is not None:
            raise QgsProcessingException("Both an extent and a point were given. " + AREA_HELP)
        if extent is None and point is None:
            raise QgsProcessingException("Neither an extent nor a point was given. " + AREA_HELP)
        return extent or point

    def execute(self, parameters, context, feedback):
        from ..thor_qgis import ee_fetch, ee_session, pipeline
        from ..thor_qgis.tiling import global_layout

        area = self.area(parameters, context, feedback)
        model, output, sensor = resolve_common(self, parameters, context, grid=True, earth_engine=True)
        temporal = P.temporal_spec(self, parameters, context)
        workers = ee_fetch.clamp_workers(self.parameterAsInt(parameters, P.FETCH_WORKERS, context))
        cfg = E.ee_config(self, parameters, context, self._api_url)
        half = None
        if area.kind == "point":
            half = buffer_m(self, parameters, context, model, sensor)
        elif not E.is_unset(parameters.get(BUFFER)):
            feedback.pushInfo("The buffer applies to a point only: ignored for an extent.")
        bounds, crs = E.utm_area(area, half)
        if area.kind == "point":  # centre the square on the nearest pixel corner: 2 × half is whole pixels
            s = sensor.scale_m
            cx, cy = snap_to_grid((bounds[0] + bounds[2]) / 2, s), snap_to_grid((bounds[1] + bounds[3]) / 2, s)
            bounds = (cx - half, cy - half, cx + half, cy + half)
        seams, margin = P.seams(self, parameters, context), P.context_margin(self, parameters, context)

        def layout_for(grid_side):  # the UTM grid: tiles at multiples of the tile step from the zone's origin
            return global_layout(bounds, crs, sensor.scale_m, model.image_size, grid_side, seams=seams,
                                 margin=P.fitted_margin(margin, grid_side, model.image_size, seams, feedback))

        def check(layout, _hint):
            E.check_request_count(layout.n_tiles, f"tiles of {layout.tile_size_m:g} m")

        # the plan, before anything is opened or loaded (the specification gives the token grid)
        planner = GridPlanner(layout_for, check, model, output.group_merge, sensor.scale_m, feedback,
                              earth_engine=True)
        dry_run = planner.start(self, parameters, context,
                                "Dry run: no session was opened, nothing was loaded, fetched or written.")
        if dry_run is not None:
            return dry_run
        dest = self.parameterAsOutputLayer(parameters, OUTPUT, context)
        on_cluster = cluster.scheduler(self, parameters, context)
        if on_cluster is not None:  # the workers open the session and fetch the tiles
            return self._on_cluster(on_cluster, planner, model, output, sensor, temporal, cfg, workers,
                                    area, bounds, crs, half, dest, feedback)

        # the session first: a missing project or credentials is reported before the model is loaded
        session = E.open_session(cfg, feedback)
        # keep the process-wide Earth Engine client on this project until the run ends
        self.hold(ee_session.session_in_use(session))
        embedder = open_embedder(model, sensor.scale_m, feedback)
        layout = planner.relayout(embedder.grid_side())
        feedback.pushInfo(f"{layout.n_tiles} tile(s) of {layout.tile_size_m:g} m ({layout.tiles_x} × "
                          f"{layout.tiles_y}) in {crs}; output from ({layout.origin_x:.1f}, {layout.origin_y:.1f}), "
                          f"pixels {layout.output_pixel_size():g} m; {workers} parallel request(s).")
        progress, is_canceled, log = callbacks(feedback)  # the bar counts tiles; loading says what it does
        area_rec = dict(area.as_record(), utm_bounds=list(bounds), utm_crs=crs)
        if half is not None:
            area_rec["buffer_m"] = half
        record = provenance(model, output, sensor, temporal,
                            source=E.source_record(sensor, temporal, session, cfg, workers, area=area_rec))
        stats = ee_fetch.FetchStats()
        tiles = ee_fetch.fetch_tiles(layout, sensor, temporal, workers=workers, cache=cfg.cache,
                                     is_canceled=is_canceled, log=log, on_empty="error", stats=stats,
                                     policy=cfg.policy())
        try:
            result = pipeline.write_grid(layout, tiles, embedder, output.group_merge, dest, metadata=record,
                                         fill_value=sensor.fill_value, progress=progress,
                                         is_canceled=is_canceled, log=log, progress_text=feedback.setProgressText)
        finally:
            tiles.close()  # stops the fetch threads when the model side ended first (error, cancel)
        feedback.pushInfo(f"Wrote {result.path}: {result.width} × {result.height} pixels, "
                          f"{result.band_count} bands ({stats.requests} request(s), {stats.cache_hits} from "
                          "the cache).")
        self._dest = dest
        return dict(plan_outputs(planner.plan), OUTPUT=dest, WIDTH=result.width, HEIGHT=result.height,
                    BANDS=result.band_count, TILES=result.tiles, EE_REQUESTS=stats.requests)

    def _on_cluster(self, spec, planner, model, output, sensor, temporal, cfg, workers, area, bounds, crs,
                    half, dest, feedback):
        from ..thor_qgis import distributed, ee_session

        feedback.pushInfo(f"Running on {spec.describe()}: each worker opens its own Earth Engine session (project "
                          f"{cfg.project or 'from its credentials'}; "
                          + ("the key file at the same path" if cfg.service_account_key else "its own credentials")
                          + ") and fetches its tiles.")
        progress, is_canceled, log = callbacks(feedback)
        area_rec = dict(area.as_record(), utm_bounds=list(bounds), utm_crs=crs)
        if half is not None:
            area_rec["buffer_m"] = half
        imagery = distributed.EarthEngineImagery(sensor, temporal, project=cfg.project,
                                                 api_url=ee_session.resolve_api_url(cfg.api_url),
                                                 service_account_key=cfg.service_account_key, cache=cfg.cache,
                                                 deadline_s=cfg.policy().deadline_s)
        work = distributed.GridWork(layout=planner.layout, model=model, imagery=imagery, group_merge=output.group_merge,
                                    scale_m=sensor.scale_m, fill_value=sensor.fill_value)

        def record_for(ready):
            return provenance(model, output, sensor, temporal,
                              source=E.source_record(sensor, temporal, ready.session, cfg, workers, area=area_rec))

        result, layout = cluster.run_grid(spec, work, dest, record_for, planner.relayout, feedback, progress,
                                          is_canceled, log, feedback.setProgressText)
        feedback.pushInfo(f"Wrote {result.path}: {result.width} × {result.height} pixels, "
                          f"{result.band_count} bands.")
        self._dest = dest
        return dict(plan_outputs(planner.plan), OUTPUT=dest, WIDTH=result.width, HEIGHT=result.height,
                    BANDS=result.band_count, TILES=result.tiles, EE_REQUESTS=layout.n_tiles)
