"""THOR grid from Earth Engine imagery: the token-grid GeoTIFF of grid_from_raster, for an extent or a point."""
from qgis.core import (
    QgsProcessingException,
    QgsProcessingMultiStepFeedback,
    QgsProcessingParameterExtent,
    QgsProcessingParameterPoint,
)

from . import ee_params as E
from . import params as P
from .alg_raster_pooled import BUFFER, add_buffer_param, buffer_m
from .base import GROUP_EE, ThorAlgorithm, callbacks
from .engine_run import open_embedder, provenance, resolve_common
from .styling import style_rgb_stretch

EXTENT = "EXTENT"
POINT = "POINT"
OUTPUT = "OUTPUT"

AREA_HELP = ("Give either an extent or a point (with the half side of the square around it), not both.")


def snap_to_grid(value: float, step: float) -> float:
    return round(value / step) * step


class EEGridAlgorithm(ThorAlgorithm):
    NAME = "ee_grid"
    DISPLAY = "THOR grid from Earth Engine"
    STYLE = style_rgb_stretch
    GROUP = GROUP_EE
    REQUIRES = ("osgeo", "torch", "ee")
    HELP = ("Fetches a Sentinel-2 surface reflectance composite from Google Earth Engine tile by tile and runs "
            "THOR on it, writing the token grid as a georeferenced GeoTIFF exactly like 'THOR grid from "
            "raster layer': one float32 band per embedding channel (thor_000, …).\n\n"
            "The area is an extent (in any CRS) or a point with the half side of a square around it (default "
            "half a tile, 1440 m: one tile; the square is centred on the pixel corner nearest to the point). "
            "It is cut into tiles of image size × pixel size metres (2880 m by default) from its top-left "
            "corner, on the WGS 84 / UTM grid of the area's centre, snapped to a multiple of the pixel size. "
            "Output pixels are tile size / token grid side (160 m by default). Tiles are fetched in parallel "
            "while the model works on earlier ones.\n\n"
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
        P.add_temporal_params(self, self.tr)
        P.add_sensor_params(self, self.tr)
        P.add_fetch_workers_param(self, self.tr)
        E.add_ee_params(self, self.tr)
        P.add_model_params(self, self.tr)
        P.add_grid_output_params(self, self.tr)
        P.add_context_margin_param(self, self.tr)
        P.add_grid_destination(self, self.tr, OUTPUT)

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

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802 (main thread)
        super().prepareAlgorithm(parameters, context, feedback)
        self._api_url = E.configured_api_url()
        self._area = E.Deferred(lambda: self._read_area(parameters, context))
        return True

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
        from ..thor_qgis.tiling import layout_for_area

        if not hasattr(self, "_area"):  # processAlgorithm called without prepareAlgorithm
            self.prepareAlgorithm(parameters, context, feedback)
        area = self._area.get()
        steps = QgsProcessingMultiStepFeedback(2, feedback)
        model, output, sensor = resolve_common(self, parameters, context, grid=True, earth_engine=True)
        temporal = P.temporal_spec(self, parameters, context)
        workers = ee_fetch.clamp_workers(self.parameterAsInt(parameters, P.FETCH_WORKERS, context))
        cfg = E.ee_config(self, parameters, context, self._api_url)
        dest = self.parameterAsOutputLayer(parameters, OUTPUT, context)
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
        # before anything is loaded: the tiles this area needs (the model's grid only shifts them)
        estimate = layout_for_area(bounds, crs, sensor.scale_m, model.image_size, model.grid_side(sensor.scale_m),
                                   snap_to=sensor.scale_m, margin=P.context_margin(self, parameters, context))
        E.check_request_count(estimate.n_tiles, f"tiles of {estimate.tile_size_m:g} m")

        # the session first: a missing project or credentials is reported before the model is loaded
        session = E.open_session(cfg, steps)
        # keep the process-wide Earth Engine client on this project until the run ends
        self.hold(ee_session.session_in_use(session))
        embedder = open_embedder(model, sensor.scale_m, steps)
        layout = layout_for_area(bounds, crs, sensor.scale_m, model.image_size, embedder.grid_side(),
                                 snap_to=sensor.scale_m, margin=P.context_margin(self, parameters, context))
        feedback.pushInfo(f"{layout.n_tiles} tile(s) of {layout.tile_size_m:g} m ({layout.tiles_x} × "
                          f"{layout.tiles_y}) in {crs} from ({layout.origin_x:.1f}, {layout.origin_y:.1f}); "
                          f"output pixels {layout.output_pixel_size():g} m; {workers} parallel request(s).")
        steps.setCurrentStep(1)
        progress, is_canceled, log = callbacks(steps)
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
                                         is_canceled=is_canceled, log=log)
        finally:
            tiles.close()  # stops the fetch threads when the model side ended first (error, cancel)
        feedback.pushInfo(f"Wrote {result.path}: {result.width} × {result.height} pixels, "
                          f"{result.band_count} bands ({stats.requests} request(s), {stats.cache_hits} from "
                          "the cache).")
        self._dest = dest
        return {OUTPUT: dest, "WIDTH": result.width, "HEIGHT": result.height, "BANDS": result.band_count,
                "TILES": result.tiles}
