"""The imagery input of the raster algorithms: a raster layer (with its band mapping and reflectance offset) or a
Sentinel-2 product, opened as the engine's RasterSource; plugin outputs given as imagery are refused."""
from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from . import params as P
from .compat import NUMBER_DOUBLE
from .product_input import BAND_MAP, DN_OFFSET, add_product_param, product_source_for

INPUT = "INPUT"


def add_raster_input_params(alg, tr, layer_param: str = INPUT, label: str = "Sentinel-2 raster") -> None:
    # optional: a Sentinel-2 product (next parameter) may be given instead
    alg.addParameter(QgsProcessingParameterRasterLayer(layer_param, tr(label), optional=True))
    add_product_param(alg, tr)
    p = QgsProcessingParameterString(BAND_MAP, tr("Band mapping"), defaultValue="", optional=True)
    P._help(p, tr("The raster's band numbers for B2 B3 B4 B5 B6 B7 B8 B8A B11 B12, comma-separated; empty: the "
                  "raster's own order (a 10-band stack). For a 12-band L2A stack (B1 B2 B3 B4 B5 B6 B7 B8 B8A B9 "
                  "B11 B12) use 2,3,4,5,6,7,8,9,11,12; for a 13-band L1C stack 2,3,4,5,6,7,8,9,12,13."))
    alg.addParameter(p)
    alg.addParameter(P._help(QgsProcessingParameterNumber(  # optional, no default: "not set" differs from 0
        DN_OFFSET, tr("Offset added to the pixel values"), NUMBER_DOUBLE, optional=True),
        tr("Sentinel-2 L2A products of processing baseline 04.00 or later (since January 2022) store "
           "reflectance × 10000 + 1000: use −1000 for them. Not set: the offset the raster's metadata states "
           "(BOA_ADD_OFFSET), else none. A value, 0 included, wins over the metadata. Not needed for a "
           "Sentinel-2 product given as such: its offset is read from its metadata.")))


def raster_source_for(alg, parameters, context, log, scale_m: float, fill_value: float, layer_param: str = INPUT):
    from ..thor_qgis.raster_source import RasterSource, parse_band_map

    product = product_source_for(alg, parameters, context, log, scale_m, fill_value, layer_param)
    if product is not None:
        return product
    layer = alg.parameterAsRasterLayer(parameters, layer_param, context)
    if layer is None:
        raise QgsProcessingException("The raster layer could not be loaded.")
    if layer.providerType() != "gdal":
        raise QgsProcessingException(
            f"The raster layer '{layer.name()}' is not a file GDAL can read (provider {layer.providerType()}); "
            "save it as a GeoTIFF first.")
    refuse_non_imagery(layer)
    band_map = parse_band_map(alg.parameterAsString(parameters, BAND_MAP, context))
    source = RasterSource(layer.source(), band_map=band_map,
                          dn_offset=P.optional_number(alg, parameters, DN_OFFSET, context),
                          scale_m=scale_m, fill_value=fill_value, log=log)
    return layer, source


def refuse_non_imagery(layer) -> None:
    """A plugin output picked where Sentinel-2 imagery belongs (raster boxes preselect the top layer, which
    after one run is the grid) is refused with a sentence saying what it is."""
    from ..thor_qgis.raster_kind import not_imagery_reason

    try:
        reason = not_imagery_reason(layer.source())
    except RuntimeError:  # unreadable: the imagery reader says what is wrong with the file
        return
    if reason:
        raise QgsProcessingException(f"The raster layer '{layer.name()}' cannot be used: {reason}")
