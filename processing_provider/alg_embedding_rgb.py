"""Embedding → RGB: the first three principal components as a false-colour picture."""
from qgis.core import QgsProcessingParameterNumber

from .analysis_common import OUTPUT, AnalysisAlgorithm, embedding_path
from .base import callbacks
from .compat import NUMBER_DOUBLE, NUMBER_INTEGER
from .params import _advanced
from .styling import style_rgb_bytes

SAMPLE_SIZE = "SAMPLE_SIZE"
SEED = "SEED"
LOW = "LOW_PERCENTILE"
HIGH = "HIGH_PERCENTILE"


class EmbeddingRgbAlgorithm(AnalysisAlgorithm):
    NAME = "embedding_to_rgb"
    DISPLAY = "Embedding to RGB (PCA)"
    STYLE = style_rgb_bytes
    OUTPUT_LABEL = "Embedding RGB"
    HELP = ("Turns a multiband embedding raster into a picture: principal component analysis fitted on a "
            "random sample of valid pixels (seedable), the first three components as red, green and blue, "
            "each stretched between two percentiles to bytes (0 = nodata). Works block by block, so memory "
            "stays flat on large rasters; the georeferencing is the input's.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_input()
        self.addParameter(_advanced(QgsProcessingParameterNumber(
            SAMPLE_SIZE, self.tr("Pixels sampled for the PCA"), NUMBER_INTEGER,
            defaultValue=50000, minValue=100)))
        self.addParameter(_advanced(QgsProcessingParameterNumber(
            SEED, self.tr("Random seed"), NUMBER_INTEGER, defaultValue=0, minValue=0)))
        self.addParameter(_advanced(QgsProcessingParameterNumber(
            LOW, self.tr("Low percentile of the stretch"), NUMBER_DOUBLE,
            defaultValue=2.0, minValue=0.0, maxValue=50.0)))
        self.addParameter(_advanced(QgsProcessingParameterNumber(
            HIGH, self.tr("High percentile of the stretch"), NUMBER_DOUBLE,
            defaultValue=98.0, minValue=50.0, maxValue=100.0)))
        self.add_output()

    def execute(self, parameters, context, feedback):
        from ..thor_qgis import analysis

        progress, is_canceled, _ = callbacks(feedback)
        record = analysis.embedding_to_rgb(
            embedding_path(self, parameters, context), self.parameterAsOutputLayer(parameters, OUTPUT, context),
            sample_size=self.parameterAsInt(parameters, SAMPLE_SIZE, context),
            seed=self.parameterAsInt(parameters, SEED, context),
            percentiles=(self.parameterAsDouble(parameters, LOW, context),
                         self.parameterAsDouble(parameters, HIGH, context)),
            progress=progress, is_canceled=is_canceled)
        return self.finish(parameters, context, record)
