"""Apply a model saved by thor:classify or thor:regress to an embedding raster."""
from qgis.core import QgsProcessingParameterFile, QgsProcessingParameterRasterDestination

from .analysis_common import OUTPUT, AnalysisAlgorithm, embedding_path
from .base import GROUP_MAPPING, callbacks
from .styling import attach, style_confidence, style_labelled_classes, style_values

MODEL = "MODEL"
CONFIDENCE = "CONFIDENCE"


class ApplyModelAlgorithm(AnalysisAlgorithm):
    GROUP = GROUP_MAPPING
    NAME = "apply_model"
    DISPLAY = "Apply a saved model"
    OUTPUT_LABEL = "Classes or values"
    HELP = ("Applies a model saved by 'Classify from labelled features' or 'Regress a value from labelled "
            "features' to another embedding raster, for example the same area in another year or a "
            "neighbouring area. The raster must be of the kind the model was fitted on (same band count and "
            "names, embedding model, weights and group merge); otherwise the run is refused and the "
            "differences are listed. Confidence applies to classifiers only.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_input()
        self.addParameter(QgsProcessingParameterFile(
            MODEL, self.tr("Saved model (.npz)"), extension="npz"))
        self.add_output()
        self.addParameter(QgsProcessingParameterRasterDestination(
            CONFIDENCE, self.tr("Confidence (classifiers only)"), optional=True, createByDefault=False))

    def execute(self, parameters, context, feedback):
        from ..thor_qgis import apply_model

        progress, is_canceled, _ = callbacks(feedback)
        conf = self.parameterAsOutputLayer(parameters, CONFIDENCE, context) if parameters.get(CONFIDENCE) else ""
        record = apply_model.apply_model(
            embedding_path(self, parameters, context), self.parameterAsFile(parameters, MODEL, context),
            self.parameterAsOutputLayer(parameters, OUTPUT, context), dst_confidence=conf or None,
            progress=progress, is_canceled=is_canceled)
        self._dest = record["output"]
        self._conf = record["confidence"]
        self._classes = "classes" in record
        feedback.pushInfo(f"Applied a {record['model']['learner']} {record['model']['task']} model to "
                          f"{record['valid_pixels']} cells.")
        return {OUTPUT: self._dest, CONFIDENCE: self._conf}

    def postProcessAlgorithm(self, context, feedback):  # noqa: N802
        if getattr(self, "_dest", None):
            attach(self, context, self._dest, style_labelled_classes if self._classes else style_values)
        if getattr(self, "_conf", None):
            attach(self, context, self._conf, style_confidence)
        return {}
