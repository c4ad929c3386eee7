"""Pooled THOR embeddings for the features of a vector layer, from a raster layer."""
from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
)

from . import params as P
from .base import GROUP_RASTER, ThorAlgorithm
from .compat import SOURCE_VECTOR_ANY_GEOMETRY
from .engine_run import resolve_common
from .features import add_buffer_param
from .pooled_output import OUTPUT, write_pooled_features
from .product_input import check_layer_param
from .raster_input import add_raster_input_params, raster_source_for

FEATURES = "FEATURES"
RASTER = "INPUT"


class RasterPooledAlgorithm(ThorAlgorithm):
    NAME = "pooled_from_raster"
    DISPLAY = "Pooled THOR embeddings for features (raster layer)"
    GROUP = GROUP_RASTER
    REQUIRES = ("osgeo", "torch")
    HELP = ("For each feature, runs THOR on a square of a Sentinel-2 raster (points: a square of side 2 × "
            "buffer around them; polygons and lines: their bounding square) and pools the tokens into one "
            "vector. The output keeps the input attributes and adds thor_model, thor_weights, thor_status and "
            "one field per embedding dimension (thor_000, …). A feature outside the raster gets a status "
            "saying so and empty embedding fields.\n\n"
            "The imagery is a raster layer or a Sentinel-2 product (its .zip as downloaded, its .SAFE folder or "
            "MTD_MSIL2A.xml), whose bands and reflectance offset are read from its metadata.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFeatureSource(
            FEATURES, self.tr("Features (points or polygons)"),
            SOURCE_VECTOR_ANY_GEOMETRY))
        add_raster_input_params(self, self.tr, RASTER)
        add_buffer_param(self, self.tr)
        P.add_scale_fill_params(self, self.tr)  # advanced: first of the advanced list, with the imagery
        P.add_model_params(self, self.tr)
        P.add_pooling_param(self, self.tr)
        self.addParameter(QgsProcessingParameterFeatureSink(OUTPUT, self.tr("Pooled THOR embeddings")))
        self.addOutput(QgsProcessingOutputNumber("EMBEDDED", self.tr("Features embedded")))

    def checkParameterValues(self, parameters, context):  # noqa: N802
        ok, msg = check_layer_param(parameters, RASTER)
        if ok:
            ok, msg = P.check_model_values(self, parameters, context)
        return (ok, msg) if not ok else super().checkParameterValues(parameters, context)

    def execute(self, parameters, context, feedback):
        model, output, sensor = resolve_common(self, parameters, context, grid=False)
        source = self.parameterAsSource(parameters, FEATURES, context)
        if source is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, FEATURES))
        _, raster = raster_source_for(self, parameters, context, feedback.pushInfo, sensor.scale_m,
                                      sensor.fill_value, RASTER)
        dest, counts = write_pooled_features(
            self, parameters, context, feedback, source, raster.crs, model, output, sensor,
            lambda square: raster.read_box(square, model.image_size))
        return {OUTPUT: dest, "EMBEDDED": counts["ok"]}
