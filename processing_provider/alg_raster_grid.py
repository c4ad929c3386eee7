"""THOR grid from a raster layer: a georeferenced multiband GeoTIFF of token embeddings."""
from qgis.core import QgsProcessingException, QgsProcessingParameterExtent

from . import params as P
from . import cluster
from .base import GROUP_RASTER, ThorAlgorithm, callbacks
from .engine_run import open_embedder, provenance, resolve_common
from .grid_plan import GridPlanner, add_model_and_grid_params, plan_outputs
from .product_input import check_layer_param, input_crs, product_record
from .raster_input import INPUT, add_raster_input_params, raster_source_for
from .styling import style_rgb_stretch
from ..thor_qgis import limits

EXTENT = "EXTENT"
OUTPUT = "OUTPUT"


def extent_of(alg, parameters, context, crs):
    """The extent parameter in ``crs`` (the input's), or None for the input's own; inverted input is refused."""
    raw = parameters.get(EXTENT)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    P.refuse_inverted_extent(raw)
    rect = alg.parameterAsExtent(parameters, EXTENT, context, crs)
    if rect.isNull():
        return None
    if not (rect.width() > 0 and rect.height() > 0):
        raise QgsProcessingException("The extent is empty: it has no width or no height.")
    return rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()


class RasterGridAlgorithm(ThorAlgorithm):
    NAME = "grid_from_raster"
    DISPLAY = "THOR grid from raster layer"
    STYLE = style_rgb_stretch
    GROUP = GROUP_RASTER
    REQUIRES = ("osgeo", "torch")
    HELP = ("Runs THOR on a Sentinel-2 surface reflectance raster and writes its token grid as a georeferenced "
            "GeoTIFF: one float32 band per embedding channel (thor_000, thor_001, …).\n\n"
            "Tiles are image size × pixel size metres (2880 m by default) and give an n × n grid each (18 × 18 "
            "at patch size 16), so output pixels are 160 m. They sit on a grid fixed in the raster's CRS "
            "(multiples of the tile step from its origin), not on the extent you choose: the same place gets "
            "the same embedding whatever the extent, and runs over adjacent extents mosaic to the pixel. The "
            "output covers the extent (the layer's, or the one given), snapped outwards to whole output pixels.\n\n"
            "Tile edges (advanced): blend (default) overlaps tiles by twice the margin and writes each pixel as "
            "the weighted mean of the tiles covering it, weights falling towards tile edges, so there is no hard "
            "step between tiles; crop keeps only the centres of the same overlapping tiles; none puts tiles side "
            "by side (fewest tiles, visible steps). At the default margin of 3 tokens blend and crop take "
            "about 2.25 times the tiles of none on large areas; on the bundled real sample (random weights) "
            "blend cut the step across tile edges from 55 to 1.7 times the step inside tiles, crop only to 24 "
            "(the README's seam table).\n\n"
            "Before loading the model the run logs its plan: tiles, token grid, output size, estimated time. "
            "Dry run (advanced) stops there and returns the plan as outputs. The progress bar counts tiles "
            "embedded and written, and says how long is left.\n\n"
            "A 10 m raster in a metric CRS is read at its own pixels; any other raster is warped to 10 m first "
            "(in the local UTM zone when not metric). The run's configuration and the weights used are stored "
            "in the file's metadata (THOR_CONFIG).\n\n"
            "Instead of a raster layer, give a Sentinel-2 product as downloaded (its .zip, its .SAFE folder or "
            "MTD_MSIL2A.xml): the ten bands are assembled at 10 m and the reflectance offset (−1000 from "
            "processing baseline 04.00) is read from its metadata, so no band mapping or offset is needed.")

    def initAlgorithm(self, config=None):  # noqa: N802
        add_raster_input_params(self, self.tr)
        self.addParameter(P._help(QgsProcessingParameterExtent(EXTENT, self.tr("Extent"), optional=True),
                                  self.tr("Empty: the extent of the raster layer or product.")))
        P.add_scale_fill_params(self, self.tr)  # advanced: first of the advanced list, with the imagery
        add_model_and_grid_params(self, self.tr, OUTPUT)

    def checkParameterValues(self, parameters, context):  # noqa: N802
        ok, msg = check_layer_param(parameters, INPUT)  # first: a product there is a misplaced value, not a bad file
        if ok:
            ok, msg = P.check_model_values(self, parameters, context)
        if not ok:
            return ok, msg
        return super().checkParameterValues(parameters, context)

    def execute(self, parameters, context, feedback):
        from ..thor_qgis import pipeline
        from ..thor_qgis.prefetch import read_ahead

        model, output, sensor = resolve_common(self, parameters, context, grid=True)
        layer, source = raster_source_for(self, parameters, context, feedback.pushInfo, sensor.scale_m,
                                          sensor.fill_value)
        crs = input_crs(layer, source)
        area = source.area(extent_of(self, parameters, context, crs), crs.toWkt())
        seams, margin = P.seams(self, parameters, context), P.context_margin(self, parameters, context)

        def layout_for(grid_side):
            return source.layout(area, model.image_size, grid_side, seams=seams,
                                 margin=P.fitted_margin(margin, grid_side, model.image_size, seams, feedback))

        def check(layout, hint):
            limits.check_grid(layout, model, output.group_merge, sensor.scale_m, hint=hint)

        # the plan, before the model is loaded (the specification gives the token grid)
        planner = GridPlanner(layout_for, check, model, output.group_merge, sensor.scale_m, feedback,
                              hint="Check the extent and its CRS. ")
        dry_run = planner.start(self, parameters, context, "Dry run: nothing was loaded, read or written.")
        if dry_run is not None:
            return dry_run
        dest = self.parameterAsOutputLayer(parameters, OUTPUT, context)
        on_cluster = cluster.scheduler(self, parameters, context)
        if on_cluster is not None:
            return self._on_cluster(on_cluster, planner, model, output, sensor, source, dest, feedback)
        embedder = open_embedder(model, sensor.scale_m, feedback)
        layout = planner.relayout(embedder.grid_side())
        feedback.pushInfo(f"{layout.n_tiles} tile(s) of {layout.tile_size_m:g} m ({layout.tiles_x} × "
                          f"{layout.tiles_y}); output pixels {layout.output_pixel_size():g} m.")
        progress, is_canceled, log = callbacks(feedback)  # the bar counts tiles; loading says what it does
        record = provenance(model, output, sensor, source={
            "kind": "raster", "path": source.path, "band_map": list(source.band_map),
            "dn_offset": source.dn_offset, "resampled_to_scale": source.resampled, **product_record(source)})
        tiles = read_ahead(source.tiles(layout))
        try:
            result = pipeline.write_grid(layout, tiles, embedder, output.group_merge, dest, metadata=record,
                                         fill_value=sensor.fill_value, progress=progress, is_canceled=is_canceled,
                                         log=log, progress_text=feedback.setProgressText)
        finally:
            tiles.close()  # stops the reading thread at once on an error or a cancel
        feedback.pushInfo(f"Wrote {result.path}: {result.width} × {result.height} pixels, "
                          f"{result.band_count} bands.")
        self._dest = dest
        return dict(plan_outputs(planner.plan), OUTPUT=dest, WIDTH=result.width, HEIGHT=result.height,
                    BANDS=result.band_count, TILES=result.tiles)

    def _on_cluster(self, spec, planner, model, output, sensor, source, dest, feedback):
        from ..thor_qgis import distributed

        feedback.pushInfo(f"Running on {spec.describe()}: each worker reads the "
                          f"{'product' if getattr(source, 'product', None) else 'raster'} at {source.path}.")
        progress, is_canceled, log = callbacks(feedback)
        record = provenance(model, output, sensor, source={
            "kind": "raster", "path": source.path, "band_map": list(source.band_map),
            "dn_offset": source.dn_offset, "resampled_to_scale": source.resampled, **product_record(source)})
        imagery = distributed.RasterImagery(source.path, band_map=tuple(source.band_map), dn_offset=source.dn_offset,
                                            scale_m=sensor.scale_m, fill_value=sensor.fill_value,
                                            product=bool(getattr(source, "product", None)))
        work = distributed.GridWork(layout=planner.layout, model=model, imagery=imagery, group_merge=output.group_merge,
                                    scale_m=sensor.scale_m, fill_value=sensor.fill_value)
        result, _layout = cluster.run_grid(spec, work, dest, lambda _ready: record, planner.relayout, feedback,
                                           progress, is_canceled, log, feedback.setProgressText)
        feedback.pushInfo(f"Wrote {result.path}: {result.width} × {result.height} pixels, "
                          f"{result.band_count} bands.")
        self._dest = dest
        return dict(plan_outputs(planner.plan), OUTPUT=dest, WIDTH=result.width, HEIGHT=result.height,
                    BANDS=result.band_count, TILES=result.tiles)
