"""Classify an embedding raster from labelled points or polygons: classes, confidence, accuracy report
and an optional saved model."""
from qgis.core import QgsProcessingOutputNumber, QgsProcessingParameterRasterDestination

from .analysis_common import OUTPUT, AnalysisAlgorithm
from .base import GROUP_MAPPING, callbacks
from .features import (ACCURACY, CONFIDENCE, MODEL, REPORT, add_labelled_params, add_learning_params,
                       add_report_and_model_params, learning_args, read_labelled_for_embeddings)
from .styling import attach, style_confidence, style_labelled_classes

class ClassifyAlgorithm(AnalysisAlgorithm):
    GROUP = GROUP_MAPPING
    NAME = "classify"
    DISPLAY = "Classify from labelled features"
    STYLE = style_labelled_classes
    OUTPUT_LABEL = "Classes"
    HELP = ("Maps classes over an embedding raster from a few labelled points or polygons. Every embedding cell "
            "under a feature is a training sample with the feature's label (text or integer codes; integer codes "
            "1 … 65535 are kept as the raster values). Methods: k-nearest neighbours by cosine similarity, "
            "logistic regression, or random forest when scikit-learn is installed. Outputs: the class raster, a "
            "confidence raster (probability of the chosen class), an accuracy report (HTML or Markdown) from "
            "stratified k-fold validation that keeps each feature's cells in one fold, and optionally the fitted "
            "model (.npz) for 'Apply a saved model'.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_input()
        add_labelled_params(self, self.tr, "Class field")
        add_learning_params(self, ["knn", "logistic", "random_forest"], "knn")
        self.add_output()
        self.addParameter(QgsProcessingParameterRasterDestination(
            CONFIDENCE, self.tr("Confidence (probability of the class)"), optional=True, createByDefault=True))
        add_report_and_model_params(self)
        self.addOutput(QgsProcessingOutputNumber(ACCURACY, self.tr("Overall accuracy (k-fold)")))

    def execute(self, parameters, context, feedback):
        from ..thor_qgis import classify

        src, _, field, (wkts, ids, values, *_rest) = read_labelled_for_embeddings(self, parameters, context, feedback)
        progress, is_canceled, log = callbacks(feedback)
        conf = self.parameterAsOutputLayer(parameters, CONFIDENCE, context) if parameters.get(CONFIDENCE) else ""
        record = classify.classify(
            src, self.parameterAsOutputLayer(parameters, OUTPUT, context), wkts, values, dst_confidence=conf or None,
            feature_names=ids, label_field=field, progress=progress, is_canceled=is_canceled, log=log,
            **learning_args(self, parameters, context))
        self._dest = record["output"]
        self._conf = record["confidence"]
        acc = record["validation"].get("overall_accuracy")
        return {OUTPUT: self._dest, CONFIDENCE: self._conf, REPORT: record["report"], MODEL: record["model"],
                ACCURACY: acc}

    def postProcessAlgorithm(self, context, feedback):  # noqa: N802
        super().postProcessAlgorithm(context, feedback)
        if getattr(self, "_conf", None):
            attach(self, context, self._conf, style_confidence)
        return {}
