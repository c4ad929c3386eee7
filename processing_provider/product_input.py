"""Sentinel-2 products as the imagery of the raster algorithms.

A raster layer parameter cannot hold a folder or a zip that is not itself a raster, so a product arrives
one of two ways:

- the optional file parameter ``S2_PRODUCT``: the product's ``.zip``, its ``MTD_MSIL2A.xml`` /
  ``MTD_MSIL1C.xml`` (the file picker) or its ``.SAFE`` folder (typed, or from ``qgis_process``); it works
  the same in the toolbox, the graphical modeler (a file input) and ``qgis_process``;
- the raster layer itself, when its source is part of a product: the ``SENTINEL2_L2A:…`` /
  ``SENTINEL2_L1C:…`` subdataset QGIS loads when the zip or the metadata file is dropped on the map (any
  of its resolutions), or a band file inside a ``.SAFE`` folder.

Either way all ten bands are assembled from the product, and the band mapping and offset are taken from
its metadata and logged (what the user typed in those parameters is not used; a different offset is
reported).
"""
import re

from qgis.core import QgsCoordinateReferenceSystem, QgsProcessingException, QgsProcessingParameterFile

from . import params as P
from .compat import FILE_BEHAVIOR_FILE

PRODUCT = "S2_PRODUCT"
BAND_MAP = "BAND_MAP"
DN_OFFSET = "DN_OFFSET"
NO_IMAGERY = ("Give the imagery: a Sentinel-2 raster layer, or a Sentinel-2 product (its .zip, .SAFE folder or "
              "MTD_MSIL2A.xml).")
_SAFE_BAND_FILE = re.compile(r"^(.*?\.SAFE)[/\\]GRANULE[/\\].*\.jp2$", re.IGNORECASE)


def add_product_param(alg, tr) -> None:
    p = QgsProcessingParameterFile(
        PRODUCT, tr("… or a Sentinel-2 product"), behavior=FILE_BEHAVIOR_FILE,
        fileFilter="Sentinel-2 products (*.zip *.ZIP MTD_MSIL2A.xml MTD_MSIL1C.xml);;All files (*)",
        optional=True)
    P._help(p, tr("A Sentinel-2 L2A product as downloaded from the Copernicus Data Space: its .zip, its .SAFE "
                  "folder or its MTD_MSIL2A.xml. The ten bands are assembled at 10 m (20 m bands by nearest "
                  "neighbour) and the reflectance offset of processing baseline 04.00 and later is read from "
                  "the metadata: the band mapping and offset parameters are not needed. L1C products are "
                  "accepted with a warning (THOR was pretrained on L2A). Used instead of the raster layer."))
    alg.addParameter(p)


def _layer_product(layer):
    """The product behind a raster layer's source (a SENTINEL2 subdataset, or a band file inside a .SAFE
    folder, which is what QGIS 3.22 offers when a zip is dropped on the map), or None."""
    from ..thor_qgis import gdal_io
    from ..thor_qgis.s2_product import METADATA_NAMES, product_of_layer_source

    source = layer.source()
    found = product_of_layer_source(source)
    if found:
        return found
    m = _SAFE_BAND_FILE.match(source.split("|")[0])
    if m:
        for name in METADATA_NAMES:
            candidate = f"{m.group(1)}/{name}"
            if gdal_io.gdal().VSIStatL(candidate) is not None:
                return candidate
    return None


def product_source_for(alg, parameters, context, log, scale_m, fill_value, layer_param):
    """``(layer or None, S2ProductSource)`` when the input is a Sentinel-2 product, else None."""
    from ..thor_qgis.s2_product import open_product

    path = alg.parameterAsFile(parameters, PRODUCT, context) if alg.parameterDefinition(PRODUCT) else ""
    layer = None
    has_layer = not _empty(parameters.get(layer_param))
    if path:
        if has_layer:
            log(f"A Sentinel-2 product is given: it is used, and the raster layer parameter ({layer_param}) "
                "is ignored.")
    else:
        if not has_layer:
            raise QgsProcessingException(NO_IMAGERY)
        layer = alg.parameterAsRasterLayer(parameters, layer_param, context)
        if layer is None:
            return None
        path = _layer_product(layer)
        if not path:
            return None
        log(f"The raster layer '{layer.name()}' is part of a Sentinel-2 product: the whole product is read.")
    _report_ignored(alg, parameters, context, log)
    source = open_product(path, scale_m=scale_m, fill_value=fill_value, log=log)
    _report_offset_difference(alg, parameters, context, log, source)
    return layer, source


def _report_ignored(alg, parameters, context, log) -> None:
    if alg.parameterDefinition(BAND_MAP) is not None and alg.parameterAsString(parameters, BAND_MAP, context).strip():
        log("The band mapping parameter is not used for a Sentinel-2 product: bands are taken by name.")


def _report_offset_difference(alg, parameters, context, log, source) -> None:
    if alg.parameterDefinition(DN_OFFSET) is None:
        return
    typed = P.optional_number(alg, parameters, DN_OFFSET, context)
    if typed is None:
        return
    offsets = set(source.offsets.values())
    if offsets == {typed}:
        log(f"The offset parameter ({typed:g}) matches the product's metadata; it is applied once.")
    else:
        log(f"Warning: the offset parameter ({typed:g}) is not used: the product's metadata gives "
            f"{', '.join(f'{v:g}' for v in sorted(offsets))}, which is applied.")


def input_crs(layer, source):
    """The CRS the extent parameter is read in: the layer's, or the product's."""
    if layer is not None and getattr(source, "product", None) is None:
        return layer.crs()
    return QgsCoordinateReferenceSystem.fromWkt(source.source_info.crs_wkt)


def product_record(source) -> dict:
    """Provenance fields of a product source (empty for a plain raster)."""
    return source.provenance() if hasattr(source, "provenance") and getattr(source, "product", None) else {}


def check_layer_param(parameters, layer_param):
    """For ``checkParameterValues``: a product path typed into the raster layer parameter (QGIS cannot load a
    zip or a folder as one layer) gets a message that says where it goes, instead of a bare refusal."""
    from ..thor_qgis.s2_product import SUBDATASET_PREFIXES, looks_like_product

    raw = parameters.get(layer_param)
    if _empty(raw) and _empty(parameters.get(PRODUCT)):
        return False, NO_IMAGERY
    if isinstance(raw, str) and raw.strip() and not raw.strip().upper().startswith(SUBDATASET_PREFIXES) \
            and looks_like_product(raw, inspect=True):
        return False, (f"{raw} is a Sentinel-2 product, not a raster layer: give it as {PRODUCT} (the "
                       "'… or a Sentinel-2 product' parameter) and leave the raster layer empty.")
    return True, None


def _empty(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())
