"""Clusters: k-means classes of an embedding raster (unsupervised land-cover classes)."""
from qgis.core import QgsProcessingOutputNumber, QgsProcessingParameterBoolean, QgsProcessingParameterNumber

from .analysis_common import OUTPUT, AnalysisAlgorithm, embedding_path
from .base import callbacks
from .compat import NUMBER_INTEGER
from .params import _advanced, _help
from .styling import style_classes

K = "K"
SEED = "SEED"
SAMPLE_SIZE = "SAMPLE_SIZE"
MAX_ITER = "MAX_ITER"
AUTO_K = "AUTO_K"
K_MIN = "K_MIN"
K_MAX = "K_MAX"
CHOSEN_K = "CHOSEN_K"


class ClustersAlgorithm(AnalysisAlgorithm):
    NAME = "kmeans_clusters"
    DISPLAY = "Clusters (k-means)"
    STYLE = style_classes
    OUTPUT_LABEL = "Classes"
    HELP = ("Unsupervised classes from an embedding raster: k-means (k-means++ start, deterministic for a "
            "seed) fitted on a random sample of valid pixels, then every pixel gets the class of its nearest "
            "centre. Classes are numbered 1 … k by decreasing size; 0 is nodata. With automatic k, k-means is "
            "fitted for every k of a range and the k with the highest mean silhouette (on a sample) is used.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_input()
        self.addParameter(QgsProcessingParameterNumber(
            K, self.tr("Number of classes (k)"), NUMBER_INTEGER, defaultValue=6))
        self.addParameter(QgsProcessingParameterNumber(
            SEED, self.tr("Random seed"), NUMBER_INTEGER, defaultValue=0, minValue=0))
        self.addParameter(_help(QgsProcessingParameterBoolean(
            AUTO_K, self.tr("Choose k automatically (silhouette)"), defaultValue=False),
            self.tr("Fit k-means for every k from the minimum to the maximum (advanced parameters) and use the k "
                    "with the highest mean silhouette on a sample; the scores are logged and recorded.")))
        self.addParameter(_advanced(QgsProcessingParameterNumber(
            K_MIN, self.tr("Automatic k: minimum"), NUMBER_INTEGER, defaultValue=2, minValue=2)))
        self.addParameter(_advanced(QgsProcessingParameterNumber(
            K_MAX, self.tr("Automatic k: maximum"), NUMBER_INTEGER, defaultValue=10, minValue=2)))
        self.addParameter(_advanced(QgsProcessingParameterNumber(
            SAMPLE_SIZE, self.tr("Pixels sampled for fitting"), NUMBER_INTEGER,
            defaultValue=50000, minValue=10)))
        self.addParameter(_advanced(QgsProcessingParameterNumber(
            MAX_ITER, self.tr("Maximum iterations"), NUMBER_INTEGER, defaultValue=100,
            minValue=1)))
        self.add_output()
        self.addOutput(QgsProcessingOutputNumber(CHOSEN_K, self.tr("Number of classes used")))

    def execute(self, parameters, context, feedback):
        from ..thor_qgis import analysis

        progress, is_canceled, _ = callbacks(feedback)
        src = embedding_path(self, parameters, context)
        k = self.parameterAsInt(parameters, K, context)
        if self.parameterAsBool(parameters, AUTO_K, context):
            from ..thor_qgis import search

            choice = search.choose_k(
                src, self.parameterAsInt(parameters, K_MIN, context), self.parameterAsInt(parameters, K_MAX, context),
                seed=self.parameterAsInt(parameters, SEED, context),
                sample_size=min(20000, self.parameterAsInt(parameters, SAMPLE_SIZE, context)),
                progress=callbacks(feedback, 0, 50)[0], is_canceled=is_canceled)
            k = choice["k"]
            feedback.pushInfo("Mean silhouette per k: " + ", ".join(f"k={a}: {b:.3f}" for a, b in
                                                                     choice["scores"].items()) + f"; using k={k}.")
            progress = callbacks(feedback, 50, 100)[0]
        record = analysis.kmeans_classes(
            src, self.parameterAsOutputLayer(parameters, OUTPUT, context),
            k=k, seed=self.parameterAsInt(parameters, SEED, context),
            sample_size=self.parameterAsInt(parameters, SAMPLE_SIZE, context),
            max_iter=self.parameterAsInt(parameters, MAX_ITER, context),
            progress=progress, is_canceled=is_canceled)
        if self.parameterAsBool(parameters, AUTO_K, context):
            search.record_choice(record["output"], choice)
        return dict(self.finish(parameters, context, record), **{CHOSEN_K: k})
