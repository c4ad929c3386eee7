"""Similarity map: cosine similarity of every pixel to the mean embedding under reference features."""
from qgis.core import (
    QgsGeometry,
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFeatureSource,
)

from .analysis_common import OUTPUT, AnalysisAlgorithm, embedding_path
from .base import callbacks
from .compat import SOURCE_VECTOR_ANY_GEOMETRY
from .features import to_crs
from .styling import style_similarity

REFERENCE = "REFERENCE"
ALL_TOUCHED = "ALL_TOUCHED"


class SimilarityAlgorithm(AnalysisAlgorithm):
    NAME = "similarity_map"
    DISPLAY = "Similarity map (where else looks like this?)"
    STYLE = style_similarity
    OUTPUT_LABEL = "Similarity"
    HELP = ("Cosine similarity (−1 … 1) of every pixel of an embedding raster to a reference embedding: the "
            "mean embedding under the reference features (points: the pixel they fall in; polygons: the "
            "pixels they touch). Features in another CRS are reprojected to the raster's. High values mark "
            "places that look like the reference.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_input()
        self.addParameter(QgsProcessingParameterFeatureSource(
            REFERENCE, self.tr("Reference features (points or polygons)"),
            SOURCE_VECTOR_ANY_GEOMETRY))
        self.addParameter(QgsProcessingParameterBoolean(
            ALL_TOUCHED, self.tr("Polygons take every pixel they touch"), defaultValue=True))
        self.add_output()

    def execute(self, parameters, context, feedback):
        from ..thor_qgis import analysis, gdal_io

        src = embedding_path(self, parameters, context)
        ref = self.parameterAsSource(parameters, REFERENCE, context)
        if ref is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, REFERENCE))
        crs_wkt = gdal_io.raster_info(src).crs_wkt
        transform = to_crs(ref.sourceCrs(), crs_wkt, context)
        wkts, ids = [], []
        for f in ref.getFeatures():
            g = QgsGeometry(f.geometry())
            if g.isNull() or g.isEmpty():
                continue
            g.transform(transform)
            wkts.append(g.asWkt())
            ids.append(f"id {f.id()}")
        if not wkts:
            raise QgsProcessingException("The reference layer has no feature with a geometry.")
        vector, n = analysis.reference_embedding(src, wkts, all_touched=self.parameterAsBool(
            parameters, ALL_TOUCHED, context), labels=ids)
        feedback.pushInfo(f"Reference embedding: mean of {n} pixel(s) under {len(wkts)} feature(s).")
        progress, is_canceled, _ = callbacks(feedback)
        record = analysis.similarity_map(src, self.parameterAsOutputLayer(parameters, OUTPUT, context), vector,
                                         progress=progress, is_canceled=is_canceled)
        return self.finish(parameters, context, record)
