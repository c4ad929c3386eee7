"""QGIS 3.22 to 4.x: the enum and field-type spellings that each QGIS version accepts, chosen once.

QGIS 3.36-3.40 moved many class enums into the ``Qgis`` namespace (``Qgis.ProcessingNumberParameterType``,
``Qgis.ProcessingSourceType``, ...); QGIS 4 (Qt 6, PyQt6) accepts only those scoped spellings, while
QGIS 3.22 has only the old class-level ones. Every QGIS 3.x keeps the old spellings as aliases, so the
scoped ones are used from 3.40 (the LTR where each of them was checked) and the old ones before.
``QgsField`` takes ``QMetaType`` types from 3.38 (``QVariant`` types are deprecated there and gone in
Qt 6).

Enums that 3.22 already has in scoped form (``QgsFeatureSink.Flag.FastInsert``,
``Qt.ConnectionType.DirectConnection``, ...) need no entry here: write them scoped where they are used.
"""
from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsProcessing,
    QgsProcessingParameterDateTime,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsRasterBandStats,
    QgsWkbTypes,
)

#: QGIS version from which the ``Qgis.*`` scoped enums below are used.
SCOPED_ENUMS_FROM = 34000
#: QGIS version from which ``QgsField`` takes ``QMetaType`` types.
METATYPE_FIELDS_FROM = 33800

if Qgis.QGIS_VERSION_INT >= SCOPED_ENUMS_FROM:
    NUMBER_INTEGER = Qgis.ProcessingNumberParameterType.Integer
    NUMBER_DOUBLE = Qgis.ProcessingNumberParameterType.Double
    PARAMETER_ADVANCED = Qgis.ProcessingParameterFlag.Advanced
    FILE_BEHAVIOR_FILE = Qgis.ProcessingFileParameterBehavior.File
    DATETIME_DATE = Qgis.ProcessingDateTimeParameterDataType.Date
    SOURCE_VECTOR_POINT = Qgis.ProcessingSourceType.VectorPoint
    SOURCE_VECTOR_LINE = Qgis.ProcessingSourceType.VectorLine
    SOURCE_VECTOR_POLYGON = Qgis.ProcessingSourceType.VectorPolygon
    STAT_MIN = Qgis.RasterBandStatistic.Min
    STAT_MAX = Qgis.RasterBandStatistic.Max
    GEOMETRY_POINT = Qgis.GeometryType.Point
    WKT_PREFERRED_GDAL = Qgis.CrsWktVariant.PreferredGdal
else:  # QGIS 3.22 - 3.38
    NUMBER_INTEGER = QgsProcessingParameterNumber.Integer
    NUMBER_DOUBLE = QgsProcessingParameterNumber.Double
    PARAMETER_ADVANCED = QgsProcessingParameterDefinition.FlagAdvanced
    FILE_BEHAVIOR_FILE = QgsProcessingParameterFile.File
    DATETIME_DATE = QgsProcessingParameterDateTime.Date
    SOURCE_VECTOR_POINT = QgsProcessing.TypeVectorPoint
    SOURCE_VECTOR_LINE = QgsProcessing.TypeVectorLine
    SOURCE_VECTOR_POLYGON = QgsProcessing.TypeVectorPolygon
    STAT_MIN = QgsRasterBandStats.Min
    STAT_MAX = QgsRasterBandStats.Max
    GEOMETRY_POINT = QgsWkbTypes.PointGeometry
    WKT_PREFERRED_GDAL = QgsCoordinateReferenceSystem.WKT_PREFERRED_GDAL

#: point, line and polygon vector sources, for ``QgsProcessingParameterFeatureSource(types=...)``
SOURCE_VECTOR_ANY_GEOMETRY = [SOURCE_VECTOR_POINT, SOURCE_VECTOR_POLYGON, SOURCE_VECTOR_LINE]

if Qgis.QGIS_VERSION_INT >= METATYPE_FIELDS_FROM:
    from qgis.PyQt.QtCore import QMetaType

    FIELD_STRING = QMetaType.Type.QString
    FIELD_DOUBLE = QMetaType.Type.Double
    FIELD_INT = QMetaType.Type.Int
else:  # QGIS 3.22 - 3.36: QgsField takes QVariant types
    from qgis.PyQt.QtCore import QVariant

    FIELD_STRING = QVariant.String
    FIELD_DOUBLE = QVariant.Double
    FIELD_INT = QVariant.Int
