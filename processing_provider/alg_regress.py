"""Regress a numeric value over an embedding raster from labelled points or polygons."""
from qgis.core import QgsProcessingOutputNumber

from .analysis_common import OUTPUT, AnalysisAlgorithm
from .base import GROUP_MAPPING, callbacks
from .features import (MODEL, REPORT, add_labelled_params, add_learning_params, add_report_and_model_params,
                       learning_args, read_labelled_for_embeddings)
from .styling import style_values

R2 = "R2"
RMSE = "RMSE"


class RegressAlgorithm(AnalysisAlgorithm):
    GROUP = GROUP_MAPPING
    NAME = "regress"
    DISPLAY = "Regress a value from labelled features"
    STYLE = style_values
    OUTPUT_LABEL = "Predicted value"
    HELP = ("Maps a numeric value (tree cover, biomass, …) over an embedding raster from labelled points or "
            "polygons. Every embedding cell under a feature is a training sample with the feature's value. "
            "Methods: k-nearest neighbours (mean of the k most similar cells), ridge regression, or random "
            "forest when scikit-learn is installed. The report gives R², RMSE, MAE and bias from k-fold "
            "validation that keeps each feature's cells in one fold.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_input()
        add_labelled_params(self, self.tr, "Value field (numeric)")
        add_learning_params(self, ["knn", "ridge", "random_forest"], "ridge")
        self.add_output()
        add_report_and_model_params(self)
        self.addOutput(QgsProcessingOutputNumber(R2, self.tr("R² (k-fold)")))
        self.addOutput(QgsProcessingOutputNumber(RMSE, self.tr("RMSE (k-fold)")))

    def execute(self, parameters, context, feedback):
        from ..thor_qgis import regress

        src, _, field, (wkts, ids, values, *_rest) = read_labelled_for_embeddings(self, parameters, context, feedback)
        progress, is_canceled, log = callbacks(feedback)
        record = regress.regress(
            src, self.parameterAsOutputLayer(parameters, OUTPUT, context), wkts, values,
            feature_names=ids, value_field=field, progress=progress, is_canceled=is_canceled, log=log,
            **learning_args(self, parameters, context))
        self._dest = record["output"]
        v = record["validation"]
        return {OUTPUT: self._dest, REPORT: record["report"], MODEL: record["model"], R2: v.get("r2"),
                RMSE: v.get("rmse")}
