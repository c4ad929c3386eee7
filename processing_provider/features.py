"""Feature helpers shared by the pooled-embedding algorithms: squares per feature (and the buffer that sizes
them), output fields."""
from typing import Optional, Tuple

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsWkbTypes,
)

from .compat import FIELD_DOUBLE, FIELD_STRING, GEOMETRY_POINT, NUMBER_DOUBLE, NUMBER_INTEGER
from .params import _advanced, _enum, _help
from ..thor_qgis.tiling import Bounds, bounding_square, square_around

BUFFER = "BUFFER"
STATUS_FIELD = "thor_status"
MODEL_FIELD = "thor_model"
WEIGHTS_FIELD = "thor_weights"


def output_fields(source_fields: QgsFields, dim: int, prefix: str = "thor_") -> QgsFields:
    fields = QgsFields(source_fields)
    for name in (MODEL_FIELD, WEIGHTS_FIELD, STATUS_FIELD):
        fields.append(QgsField(name, FIELD_STRING))
    for i in range(dim):
        fields.append(QgsField(f"{prefix}{i:03d}", FIELD_DOUBLE))
    return fields


def to_crs(source_crs: QgsCoordinateReferenceSystem, target_wkt: str, context) -> QgsCoordinateTransform:
    return QgsCoordinateTransform(source_crs, QgsCoordinateReferenceSystem.fromWkt(target_wkt),
                                  context.transformContext())


def feature_square(feature: QgsFeature, transform: QgsCoordinateTransform,
                   buffer_m: float) -> Tuple[Optional[Bounds], str]:
    """The square to embed for ``feature`` in the target CRS, or (None, reason).

    Points take a square of side 2·buffer around them; lines and polygons their bounding square."""
    geom = feature.geometry()
    if geom is None or geom.isNull() or geom.isEmpty():
        return None, "no geometry"
    g = QgsGeometry(geom)
    try:
        g.transform(transform)
    except Exception as e:  # QgsCsException: a position the target CRS cannot hold
        return None, f"cannot be transformed to the raster's CRS ({e})"
    if QgsWkbTypes.geometryType(g.wkbType()) == GEOMETRY_POINT:
        p = g.centroid().asPoint() if g.isMultipart() else g.asPoint()
        return square_around(p.x(), p.y(), buffer_m), ""
    bb = g.boundingBox()
    if bb.width() <= 0 and bb.height() <= 0:
        c = bb.center()
        return square_around(c.x(), c.y(), buffer_m), ""
    return bounding_square((bb.xMinimum(), bb.yMinimum(), bb.xMaximum(), bb.yMaximum())), ""


def status_for(valid_fraction: float, no_imagery: str = "outside raster: no imagery under this feature") -> str:
    """The thor_status of a feature from the valid fraction of its square (``no_imagery`` when none is)."""
    if valid_fraction <= 0:
        return no_imagery
    if valid_fraction < 1:
        return f"partial: {100 * (1 - valid_fraction):.0f}% of the square has no imagery (filled)"
    return "ok"


def labelled_features(source, crs_wkt: str, context, field: str = "", feedback=None):
    """The features of ``source`` with a geometry, in the CRS ``crs_wkt``: (WKT list, names ("id N") for
    messages, values of ``field`` (None for NULL; [] when no field), attribute names, attribute rows,
    feature ids). Features without geometry, or that cannot be transformed, are skipped (and counted
    in the log)."""
    transform = to_crs(source.sourceCrs(), crs_wkt, context)
    names = source.fields().names()
    index = source.fields().lookupField(field) if field else -1
    wkts, ids, values, rows, fids = [], [], [], [], []
    skipped = 0
    for f in source.getFeatures():
        if feedback is not None and feedback.isCanceled():
            break
        g = f.geometry()
        if g is None or g.isNull() or g.isEmpty():
            skipped += 1
            continue
        g = QgsGeometry(g)
        try:
            g.transform(transform)
        except Exception:  # QgsCsException: a position the raster's CRS cannot hold
            skipped += 1
            continue
        wkts.append(g.asWkt())
        ids.append(f"id {f.id()}")
        fids.append(f.id())
        attrs = [_plain(v) for v in f.attributes()]
        rows.append(attrs)
        if index >= 0:
            values.append(attrs[index])
    if skipped and feedback is not None:
        feedback.pushInfo(f"{skipped} feature(s) without a usable geometry were skipped.")
    return wkts, ids, values, names, rows, fids


def _plain(v):
    """A QVariant-ish attribute as a plain Python value (NULL -> None; dates as ISO text)."""
    if v is None:
        return None
    try:
        if hasattr(v, "isNull") and v.isNull():
            return None
    except TypeError:
        pass
    if isinstance(v, (bool, int, float, str)):
        return v
    if hasattr(v, "toString"):
        try:
            return v.toString("yyyy-MM-ddTHH:mm:ss") if hasattr(v, "time") else v.toString("yyyy-MM-dd")
        except TypeError:
            return v.toString()
    return str(v)


LABELS = "LABELS"
FIELD = "FIELD"
ALL_TOUCHED = "ALL_TOUCHED"


def add_labelled_params(alg, tr, field_label: str = "Label field", field_optional: bool = False) -> None:
    """The labelled features (points, lines or polygons), their label field, and how polygons select cells."""
    from qgis.core import QgsProcessingParameterBoolean, QgsProcessingParameterFeatureSource, QgsProcessingParameterField

    from .compat import SOURCE_VECTOR_ANY_GEOMETRY

    alg.addParameter(QgsProcessingParameterFeatureSource(
        LABELS, tr("Labelled features (points or polygons)"),
        SOURCE_VECTOR_ANY_GEOMETRY))
    alg.addParameter(QgsProcessingParameterField(
        FIELD, tr(field_label), parentLayerParameterName=LABELS, optional=field_optional))
    from .params import _help

    alg.addParameter(_help(QgsProcessingParameterBoolean(
        ALL_TOUCHED, tr("Polygons take every cell they touch"), defaultValue=True),
        tr("On: every embedding cell a polygon or line touches is a sample. Off: only the cells whose centre "
           "it covers (polygons smaller than a cell may then select none).")))


def read_labelled(alg, parameters, context, crs_wkt: str, feedback, need_field: bool = True):
    """({"fields": QgsFields, "wkb_type": ...}, field name, labelled_features(...)) for the parameters of
    :func:`add_labelled_params`. The feature source is released before this returns (and if it raises):
    a source still referenced from an exception's traceback when QGIS exits crashes the process."""
    from qgis.core import QgsProcessingException

    source = alg.parameterAsSource(parameters, LABELS, context)
    try:
        if source is None:
            raise QgsProcessingException(alg.invalidSourceError(parameters, LABELS))
        field = alg.parameterAsString(parameters, FIELD, context)
        if need_field and not field:
            raise QgsProcessingException("Choose the field that holds the labels.")
        if field and source.fields().lookupField(field) < 0:
            raise QgsProcessingException(f"The labelled layer has no field named '{field}'.")
        data = labelled_features(source, crs_wkt, context, field, feedback)
        meta = {"fields": QgsFields(source.fields()), "wkb_type": source.wkbType()}
    finally:
        del source
    return meta, field, data


def read_labelled_for_embeddings(alg, parameters, context, feedback, need_field: bool = True):
    """(embedding raster path, and what :func:`read_labelled` returns) with the labelled features read in
    the CRS of the algorithm's input embedding raster."""
    from ..thor_qgis import gdal_io
    from .analysis_common import embedding_path

    src = embedding_path(alg, parameters, context)
    meta, field, data = read_labelled(alg, parameters, context, gdal_io.raster_info(src).crs_wkt, feedback,
                                      need_field)
    return src, meta, field, data


# --- learning from labelled features (thor:classify, thor:regress) ---------------------------------------

METHOD = "METHOD"
K = "K"
FOLDS = "FOLDS"
SEED = "SEED"
MAX_SAMPLES = "MAX_SAMPLES"
CONFIDENCE = "CONFIDENCE"
REPORT = "REPORT"
MODEL = "MODEL"
ACCURACY = "OVERALL_ACCURACY"
REPORT_FILTER = "HTML files (*.html);;Markdown files (*.md)"
MODEL_FILTER = "THOR model files (*.npz)"


def add_learning_params(alg, methods, default, k_label="Neighbours (k, for k-nearest neighbours)"):
    alg.addParameter(_enum(METHOD, alg.tr("Method"), methods, default))
    alg.addParameter(QgsProcessingParameterNumber(
        K, alg.tr(k_label), NUMBER_INTEGER, defaultValue=5, minValue=1))
    alg.addParameter(QgsProcessingParameterNumber(
        FOLDS, alg.tr("Folds for k-fold validation (0 = none)"), NUMBER_INTEGER,
        defaultValue=5, minValue=0, maxValue=50))
    alg.addParameter(_advanced(QgsProcessingParameterNumber(
        SEED, alg.tr("Random seed"), NUMBER_INTEGER,
        defaultValue=0, minValue=0),
        alg.tr("Seeds the k-fold split, the subset of labelled cells beyond the limit below, and the random "
               "forest: the same seed gives the same model and report.")))
    alg.addParameter(_advanced(QgsProcessingParameterNumber(
        MAX_SAMPLES, alg.tr("Most labelled cells to fit on"),
        NUMBER_INTEGER, defaultValue=20000, minValue=10),
        alg.tr("Beyond this, a random subset (stratified by class, seeded) of the labelled cells is used.")))


def add_report_and_model_params(alg):
    """The accuracy report (made by default) and the saved model (off by default) of a learning algorithm."""
    alg.addParameter(QgsProcessingParameterFileDestination(
        REPORT, alg.tr("Accuracy report"), REPORT_FILTER, optional=True, createByDefault=True))
    alg.addParameter(QgsProcessingParameterFileDestination(
        MODEL, alg.tr("Save the fitted model"), MODEL_FILTER, optional=True, createByDefault=False))


def learning_args(alg, parameters, context) -> dict:
    """The engine's keyword arguments for the parameters of :func:`add_learning_params`,
    :func:`add_report_and_model_params` and the polygon rule of :func:`add_labelled_params`."""
    return dict(
        method=alg.parameterAsEnumString(parameters, METHOD, context),
        k=alg.parameterAsInt(parameters, K, context), folds=alg.parameterAsInt(parameters, FOLDS, context),
        seed=alg.parameterAsInt(parameters, SEED, context),
        all_touched=alg.parameterAsBool(parameters, ALL_TOUCHED, context),
        report_path=optional_path(alg, parameters, REPORT, context) or None,
        model_path=optional_path(alg, parameters, MODEL, context) or None,
        max_samples=alg.parameterAsInt(parameters, MAX_SAMPLES, context))


def optional_path(alg, parameters, name, context) -> str:
    if parameters.get(name) is None:
        return ""
    return alg.parameterAsFileOutput(parameters, name, context) or ""


def add_buffer_param(alg, tr) -> None:
    alg.addParameter(_help(QgsProcessingParameterNumber(
        BUFFER, tr("Point squares: half side (m)"),
        NUMBER_DOUBLE, defaultValue=None, optional=True, minValue=1.0),
        tr("Points take a square of side 2 × this around them; polygons and lines their bounding square. "
           "Empty: half a tile (image size × pixel size / 2; 1440 m by default), which reads the imagery with no "
           "resampling.")))


def buffer_m(alg, parameters, context, model, sensor) -> float:
    value = parameters.get(BUFFER)
    if value is None or (isinstance(value, str) and not value.strip()):
        return model.ground_cover_m(sensor.scale_m) / 2.0
    return alg.parameterAsDouble(parameters, BUFFER, context)
