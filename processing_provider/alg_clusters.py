"""Clusters: k-means classes of an embedding raster (unsupervised land-cover classes)."""
from qgis.core import QgsProcessingParameterNumber

from .analysis_common import OUTPUT, AnalysisAlgorithm, embedding_path
from .base import callbacks
from .compat import NUMBER_INTEGER
from .params import _advanced
from .styling import style_classes

K = "K"
SEED = "SEED"
SAMPLE_SIZE = "SAMPLE_SIZE"
MAX_ITER = "MAX_ITER"


class ClustersAlgorithm(AnalysisAlgorithm):
    NAME = "kmeans_clusters"
    DISPLAY = "Clusters (k-means)"
    STYLE = style_classes
    OUTPUT_LABEL = "Classes"
    HELP = ("Unsupervised classes from an embedding raster: k-means (k-means++ start, deterministic for a "
            "seed) fitted on a random sample of valid pixels, then every pixel gets the class of its nearest "
            "centre. Classes are numbered 1 … k by decreasing size; 0 is nodata.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_input()
        self.addParameter(QgsProcessingParameterNumber(
            K, self.tr("Number of classes (k)"), NUMBER_INTEGER, defaultValue=6))
        self.addParameter(QgsProcessingParameterNumber(
            SEED, self.tr("Random seed"), NUMBER_INTEGER, defaultValue=0, minValue=0))
        self.addParameter(_advanced(QgsProcessingParameterNumber(
            SAMPLE_SIZE, self.tr("Pixels sampled for fitting"), NUMBER_INTEGER,
            defaultValue=50000, minValue=10)))
        self.addParameter(_advanced(QgsProcessingParameterNumber(
            MAX_ITER, self.tr("Maximum iterations"), NUMBER_INTEGER, defaultValue=100,
            minValue=1)))
        self.add_output()

    def execute(self, parameters, context, feedback):
        from ..thor_qgis import analysis

        progress, is_canceled, _ = callbacks(feedback)
        record = analysis.kmeans_classes(
            embedding_path(self, parameters, context), self.parameterAsOutputLayer(parameters, OUTPUT, context),
            k=self.parameterAsInt(parameters, K, context), seed=self.parameterAsInt(parameters, SEED, context),
            sample_size=self.parameterAsInt(parameters, SAMPLE_SIZE, context),
            max_iter=self.parameterAsInt(parameters, MAX_ITER, context),
            progress=progress, is_canceled=is_canceled)
        return self.finish(parameters, context, record)
