"""Regress a numeric value over an embedding raster from labelled points or polygons."""
from qgis.core import QgsProcessingOutputNumber, QgsProcessingParameterFileDestination

from .analysis_common import OUTPUT, AnalysisAlgorithm, embedding_path
from .base import GROUP_MAPPING, callbacks
from .features import (ALL_TOUCHED, FOLDS, K, MAX_SAMPLES, MODEL, MODEL_FILTER, REPORT, REPORT_FILTER, SEED,
                       add_labelled_params, add_learning_params, optional_path, read_labelled)
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
        self.addParameter(QgsProcessingParameterFileDestination(
            REPORT, self.tr("Accuracy report"), REPORT_FILTER, optional=True, createByDefault=True))
        self.addParameter(QgsProcessingParameterFileDestination(
            MODEL, self.tr("Save the fitted model"), MODEL_FILTER, optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputNumber(R2, self.tr("R² (k-fold)")))
        self.addOutput(QgsProcessingOutputNumber(RMSE, self.tr("RMSE (k-fold)")))

    def execute(self, parameters, context, feedback):
        from ..thor_qgis import gdal_io, regress

        src = embedding_path(self, parameters, context)
        crs_wkt = gdal_io.raster_info(src).crs_wkt
        _, field, (wkts, ids, values, *_rest) = read_labelled(self, parameters, context, crs_wkt, feedback)
        progress, is_canceled, log = callbacks(feedback)
        record = regress.regress(
            src, self.parameterAsOutputLayer(parameters, OUTPUT, context), wkts, values,
            method=self.parameterAsEnumString(parameters, "METHOD", context),
            k=self.parameterAsInt(parameters, K, context), folds=self.parameterAsInt(parameters, FOLDS, context),
            seed=self.parameterAsInt(parameters, SEED, context),
            all_touched=self.parameterAsBool(parameters, ALL_TOUCHED, context),
            report_path=optional_path(self, parameters, REPORT, context) or None,
            model_path=optional_path(self, parameters, MODEL, context) or None,
            max_samples=self.parameterAsInt(parameters, MAX_SAMPLES, context), feature_names=ids, value_field=field,
            progress=progress, is_canceled=is_canceled, log=log)
        self._dest = record["output"]
        v = record["validation"]
        return {OUTPUT: self._dest, REPORT: record["report"], MODEL: record["model"], R2: v.get("r2"),
                RMSE: v.get("rmse")}
