"""Export training samples: the embedding vectors under points or polygons, with the features'
attributes, as a vector layer (GeoPackage by default) and optionally a CSV table for notebooks."""
from qgis.core import (
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingException,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFileDestination,
    QgsWkbTypes,
)

from .analysis_common import AnalysisAlgorithm, embedding_path
from .base import GROUP_MAPPING, callbacks
from .compat import FIELD_DOUBLE as _DOUBLE
from .compat import FIELD_INT as _INT
from .features import ALL_TOUCHED, add_labelled_params, read_labelled
from .params import _enum

MODE = "MODE"
OUTPUT = "OUTPUT"
TABLE = "TABLE"



class ExtractSamplesAlgorithm(AnalysisAlgorithm):
    GROUP = GROUP_MAPPING
    NAME = "extract_samples"
    DISPLAY = "Export training samples (embeddings under features)"
    HELP = ("Writes the embedding vectors under points, lines or polygons, with the features' attributes: one "
            "row per embedding cell (a point at the cell centre), or one row per feature with the mean vector "
            "of its cells. Output: a vector layer in the raster's CRS (GeoPackage by default; any format QGIS "
            "writes) and optionally a CSV table. Columns: the attributes, thor_fid, thor_row, thor_col, "
            "thor_x, thor_y, thor_cells, then one column per embedding band.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_input()
        add_labelled_params(self, self.tr, "Label field", field_optional=True)
        self.addParameter(_enum(MODE, self.tr("Rows"), ["cells", "feature_mean"], "cells"))
        self.addParameter(QgsProcessingParameterFeatureSink(OUTPUT, self.tr("Samples")))
        self.addParameter(QgsProcessingParameterFileDestination(
            TABLE, self.tr("Samples as CSV"), "CSV files (*.csv)", optional=True, createByDefault=False))

    def execute(self, parameters, context, feedback):
        from qgis.core import QgsCoordinateReferenceSystem

        from ..thor_qgis import gdal_io, samples_export

        src = embedding_path(self, parameters, context)
        crs_wkt = gdal_io.raster_info(src).crs_wkt
        meta, _, (wkts, ids, _, names, rows, fids) = read_labelled(self, parameters, context, crs_wkt, feedback,
                                                                     need_field=False)
        progress, is_canceled, _ = callbacks(feedback, 0, 70)
        mode = self.parameterAsEnumString(parameters, MODE, context)
        samples = samples_export.extract_samples(src, wkts, mode, self.parameterAsBool(parameters, ALL_TOUCHED, context),
                                                 feature_names=ids, progress=progress, is_canceled=is_canceled)
        # a GeoPackage's own "fid" would repeat on every cell of a feature: thor_fid keeps the feature's id
        keep = [i for i, n in enumerate(names) if n.lower() != "fid"]
        names = [names[i] for i in keep]
        rows = [[r[i] for i in keep] for r in rows]
        fields = QgsFields()
        for i in keep:
            fields.append(meta["fields"].at(i))
        taken = set(fields.names())
        extra = [("thor_fid", _INT), ("thor_row", _INT), ("thor_col", _INT), ("thor_x", _DOUBLE),
                 ("thor_y", _DOUBLE), ("thor_cells", _INT)] + [(c, _DOUBLE) for c in samples.columns]
        clash = [n for n, _ in extra if n in taken]
        if clash:
            raise QgsProcessingException(f"The features already have field(s) {', '.join(clash[:5])}: rename them "
                                         f"first (these names hold the samples).")
        for n, t in extra:
            fields.append(QgsField(n, t))
        point_rows = mode == "cells"
        geom_type = QgsWkbTypes.Type.Point if point_rows else meta["wkb_type"]
        sink, dest = self.parameterAsSink(parameters, OUTPUT, context, fields, geom_type,
                                          QgsCoordinateReferenceSystem.fromWkt(crs_wkt))
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, OUTPUT))
        n = samples.feature.size
        for i in range(n):
            if feedback.isCanceled():
                break
            f_index = int(samples.feature[i])
            feat = QgsFeature(fields)
            if point_rows:
                feat.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(float(samples.xy[i, 0]), float(samples.xy[i, 1]))))
            else:
                feat.setGeometry(QgsGeometry.fromWkt(wkts[f_index]))
            feat.setAttributes(list(rows[f_index]) + [
                int(fids[f_index]), int(samples.row[i]), int(samples.col[i]), float(samples.xy[i, 0]),
                float(samples.xy[i, 1]), int(samples.cells[i])] + [float(v) for v in samples.vectors[i]])
            sink.addFeature(feat, QgsFeatureSink.Flag.FastInsert)
            if i % 256 == 0:
                feedback.setProgress(70 + 25 * i / max(1, n))
        results = {OUTPUT: dest}
        table = self.parameterAsFileOutput(parameters, TABLE, context) if parameters.get(TABLE) else ""
        if table:
            results[TABLE] = samples_export.write_csv(table, samples, names, rows, fids)
        r = samples.report
        feedback.pushInfo(f"{r['rows']} sample row(s) from {r['features_given']} feature(s); "
                          f"{r['features_outside_raster']} outside the raster, {r['features_on_nodata']} on nodata only.")
        return results
