"""Feature helpers shared by the pooled-embedding algorithms: squares per feature, output fields."""
from typing import Optional, Tuple

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsWkbTypes,
)

from .compat import FIELD_DOUBLE, FIELD_STRING, GEOMETRY_POINT
from ..thor_qgis.tiling import Bounds, bounding_square, square_around

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


def status_for(valid_fraction: float) -> str:
    if valid_fraction <= 0:
        return "outside raster: no imagery under this feature"
    if valid_fraction < 1:
        return f"partial: {100 * (1 - valid_fraction):.0f}% of the square has no imagery (filled)"
    return "ok"
