"""Similarity search: similarity to the mean, the medoid or every reference cell, a 0/1 mask above a
threshold, and the top-k most similar cells as points."""
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingException,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsWkbTypes,
)

from .analysis_common import OUTPUT, AnalysisAlgorithm, embedding_path
from .base import callbacks
from .compat import FIELD_DOUBLE as _DOUBLE
from .compat import FIELD_INT as _INT
from .compat import NUMBER_DOUBLE, NUMBER_INTEGER, SOURCE_VECTOR_ANY_GEOMETRY, SOURCE_VECTOR_POINT
from .features import ALL_TOUCHED, LABELS, read_labelled
from .params import _enum
from .styling import attach, style_mask, style_similarity

REFERENCE_MODE = "REFERENCE_MODE"
THRESHOLD = "THRESHOLD"
MASK = "MASK"
TOP_K = "TOP_K"
TOP = "TOP"



class SimilaritySearchAlgorithm(AnalysisAlgorithm):
    NAME = "similarity_search"
    DISPLAY = "Similarity search (threshold mask, medoid or max, top-k cells)"
    STYLE = style_similarity
    OUTPUT_LABEL = "Similarity"
    HELP = ("Cosine similarity (−1 … 1) of every cell of an embedding raster to reference cells (under the "
            "reference points or polygons): to their mean, to their medoid (the reference cell most like the "
            "others; one odd reference does not pull it away), or to each reference separately keeping the "
            "highest (max: finds places like any of the references). Optionally a 0/1 mask of the cells at or "
            "above a similarity threshold, and the k most similar cells as points (references excluded).")

    def initAlgorithm(self, config=None):  # noqa: N802
        from qgis.core import QgsProcessingParameterBoolean, QgsProcessingParameterFeatureSource

        self.add_input()
        self.addParameter(QgsProcessingParameterFeatureSource(
            LABELS, self.tr("Reference features (points or polygons)"),
            SOURCE_VECTOR_ANY_GEOMETRY))
        self.addParameter(QgsProcessingParameterBoolean(
            ALL_TOUCHED, self.tr("Polygons take every cell they touch"), defaultValue=True))
        self.addParameter(_enum(REFERENCE_MODE, self.tr("Compare with"), ["mean", "medoid", "max"], "mean"))
        self.addParameter(QgsProcessingParameterNumber(
            THRESHOLD, self.tr("Similarity threshold for the mask"), NUMBER_DOUBLE,
            defaultValue=None, optional=True, minValue=-1.0, maxValue=1.0))
        top_k = QgsProcessingParameterNumber(
            TOP_K, self.tr("Most similar cells as points"),
            NUMBER_INTEGER, defaultValue=0, minValue=0, maxValue=1000000)
        top_k.setHelp(self.tr("How many of the most similar cells to return as points (0: none)."))
        self.addParameter(top_k)
        self.add_output()
        self.addParameter(QgsProcessingParameterRasterDestination(
            MASK, self.tr("Mask (similarity ≥ threshold)"), optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterFeatureSink(
            TOP, self.tr("Most similar cells"), SOURCE_VECTOR_POINT, optional=True, createByDefault=False))

    def execute(self, parameters, context, feedback):
        from ..thor_qgis import gdal_io, search

        src = embedding_path(self, parameters, context)
        crs_wkt = gdal_io.raster_info(src).crs_wkt
        _, _, (wkts, ids, *_rest) = read_labelled(self, parameters, context, crs_wkt, feedback, need_field=False)
        threshold = self.parameterAsDouble(parameters, THRESHOLD, context) \
            if parameters.get(THRESHOLD) not in (None, "") else None
        mask = self.parameterAsOutputLayer(parameters, MASK, context) if parameters.get(MASK) else ""
        if mask and threshold is None:
            raise QgsProcessingException("The mask needs a similarity threshold: set one (e.g. 0.8).")
        top_k = self.parameterAsInt(parameters, TOP_K, context)
        progress, is_canceled, _ = callbacks(feedback)
        record = search.similarity_search(
            src, self.parameterAsOutputLayer(parameters, OUTPUT, context), wkts,
            self.parameterAsEnumString(parameters, REFERENCE_MODE, context), threshold=threshold,
            dst_mask=mask or None, top_k=top_k, all_touched=self.parameterAsBool(parameters, ALL_TOUCHED, context),
            feature_names=ids, progress=progress, is_canceled=is_canceled)
        feedback.pushInfo(f"Compared with {record['references']['vectors_compared']} reference vector(s) from "
                          f"{record['references']['cells']} cell(s).")
        self._dest, self._mask = record["output"], record["mask"]
        results = {OUTPUT: self._dest, MASK: self._mask}
        if parameters.get(TOP) is not None:
            fields = QgsFields()
            for name, t in (("rank", _INT), ("similarity", _DOUBLE), ("row", _INT), ("col", _INT)):
                fields.append(QgsField(name, t))
            sink, dest = self.parameterAsSink(parameters, TOP, context, fields, QgsWkbTypes.Type.Point,
                                              QgsCoordinateReferenceSystem.fromWkt(crs_wkt))
            if sink is not None:
                for t in record["top"]:
                    f = QgsFeature(fields)
                    f.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(t["x"], t["y"])))
                    f.setAttributes([t["rank"], t["similarity"], t["row"], t["col"]])
                    sink.addFeature(f, QgsFeatureSink.Flag.FastInsert)
                results[TOP] = dest
                if top_k == 0:
                    feedback.pushInfo("The number of most similar cells is 0: the points layer is empty.")
        return results

    def postProcessAlgorithm(self, context, feedback):  # noqa: N802
        super().postProcessAlgorithm(context, feedback)
        if getattr(self, "_mask", None):
            attach(self, context, self._mask, style_mask)
        return {}

