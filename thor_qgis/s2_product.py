"""Sentinel-2 products as users download them: a ``.SAFE`` folder, its ``.zip``, the product metadata file
(``MTD_MSIL2A.xml`` / ``MTD_MSIL1C.xml``) or one of GDAL's ``SENTINEL2_L2A:…`` / ``SENTINEL2_L1C:…``
subdatasets (what QGIS loads when the product is dropped on the map).

The product is opened through GDAL's SENTINEL2 driver (``/vsizip/`` for zips) and THOR's ten bands
(B2 B3 B4 B5 B6 B7 B8 B8A B11 B12) are assembled into one virtual raster on the product's 10 m grid:

- **20 m bands are resampled with nearest neighbour**: each 20 m pixel becomes the 2 × 2 block of 10 m
  pixels it covers. THOR's input step then brings these bands back to 20 m with a bilinear resize by a
  factor of two (align_corners=False, no antialias), which samples halfway between the two pixels of a
  block: on blocks aligned with the 20 m grid it returns the product's own 20 m values exactly. Tiles of a
  product are therefore anchored on the 20 m grid. This is also what Earth Engine feeds THOR (its default
  resampling is nearest neighbour); a bilinear upsampling would smooth the 20 m bands twice.
- **Offsets from the metadata**: values become ``(DN + offset) × 10000 / quantification`` per band, with
  ``BOA_ADD_OFFSET`` / ``BOA_QUANTIFICATION_VALUE`` (L2A) or ``RADIO_ADD_OFFSET`` / ``QUANTIFICATION_VALUE``
  (L1C). Products of processing baseline 04.00 and later (January 2022) carry an offset of −1000; earlier
  ones none. The product's NODATA value (0) stays no data.

L1C (top-of-atmosphere) products are accepted with a warning: THOR was pretrained on L2A surface
reflectance. Incomplete products (no metadata, a band file or the tile metadata missing, an unreadable zip)
are refused with a message naming what is missing.
"""
from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple
from xml.sax.saxutils import escape

from . import gdal_io
from .errors import ThorInputError
from .raster_source import RasterSource
from .specs import S2_BANDS
from .tiling import Bounds

METADATA_NAMES = ("MTD_MSIL2A.xml", "MTD_MSIL1C.xml")
SUBDATASET_PREFIXES = ("SENTINEL2_L2A:", "SENTINEL2_L1C:")
# ESA's band order: the band_id of the offsets in the metadata
ESA_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
NATIVE_RES = {"B2": 10, "B3": 10, "B4": 10, "B8": 10, "B5": 20, "B6": 20, "B7": 20, "B8A": 20, "B11": 20,
              "B12": 20}
OFFSET_BASELINE = 4.0  # from processing baseline 04.00 products store DN = reflectance × 10000 + 1000
ESA_OFFSET = -1000.0
L1C_WARNING = ("This is a Level-1C (top-of-atmosphere) product. THOR was pretrained on Level-2A surface "
               "reflectance: embeddings of L1C imagery are not comparable with those of L2A imagery. Use the "
               "L2A product of the same acquisition where there is one.")


def _file_code(band: str) -> str:
    """GDAL's band name (B2, B8A) → the one in ESA's file names (B02, B8A)."""
    return band if band == "B8A" else f"B{int(band[1:]):02d}"


_PRODUCT_NAME = re.compile(r"S2[A-Z]_MSIL(1C|2A)_", re.IGNORECASE)


def looks_like_product(path: Optional[str], inspect: bool = False) -> bool:
    """Whether ``path`` names a Sentinel-2 product rather than a raster: by its name (a subdataset name,
    a .SAFE folder, a product metadata file, a zip named like a product) or, with ``inspect``, a zip holding
    a product's metadata (reads the zip's directory only)."""
    if not path:
        return False
    text = str(path).strip()
    if text.upper().startswith(SUBDATASET_PREFIXES):
        return True
    name = os.path.basename(text.rstrip("/\\"))
    if name in METADATA_NAMES or name.upper().endswith(".SAFE"):
        return True
    if name.lower().endswith(".zip"):
        if _PRODUCT_NAME.match(name):
            return True
        if inspect and os.path.isfile(text):
            try:
                _metadata_in_zip(os.path.abspath(text))
                return True
            except ThorInputError:
                return False
        return False
    return os.path.isdir(text) and any(os.path.isfile(os.path.join(text, n)) for n in METADATA_NAMES)


def _exists(gdal_path: str) -> bool:
    return gdal_io.gdal().VSIStatL(gdal_path) is not None


def _metadata_in_zip(zip_path: str) -> str:
    g = gdal_io.gdal()
    root = f"/vsizip/{zip_path}"
    try:
        entries = g.ReadDirRecursive(root)
    except RuntimeError:
        entries = None
    if not entries:
        raise ThorInputError(
            f"cannot read the zip file {zip_path}: it is not a zip archive or it is damaged (an interrupted "
            "download?). Download the product again.")
    found = [e for e in entries if os.path.basename(e) in METADATA_NAMES and e.count("/") <= 1]
    if not found:
        raise ThorInputError(
            f"the zip file {zip_path} holds no Sentinel-2 product metadata ({' or '.join(METADATA_NAMES)} at "
            "the top of a .SAFE folder): it is not a Sentinel-2 L2A/L1C product, or an incomplete one.")
    if len(found) > 1:
        raise ThorInputError(f"the zip file {zip_path} holds several Sentinel-2 products ({', '.join(found)}); "
                             "give one of them (the path of its metadata file inside the zip).")
    return f"{root}/{found[0]}"


def metadata_path(path: str) -> str:
    """The GDAL path of the product metadata file for a product path (folder, zip, metadata file or
    SENTINEL2 subdataset name). Raises ThorInputError naming what is missing."""
    text = str(path).strip()
    if text.upper().startswith(SUBDATASET_PREFIXES):
        rest = text.split(":", 1)[1]
        parts = rest.rsplit(":", 2)
        if len(parts) != 3:
            raise ThorInputError(f"{text!r} is not a Sentinel-2 subdataset name GDAL gives "
                                 "(SENTINEL2_L2A:<metadata file>:<resolution>:<EPSG>)")
        return parts[0].strip('"')
    if text.startswith("/vsi"):
        return text
    full = os.path.abspath(text)
    if not os.path.exists(full):
        raise ThorInputError(f"the Sentinel-2 product {text} does not exist")
    if os.path.isdir(full):
        for name in METADATA_NAMES:
            if os.path.isfile(os.path.join(full, name)):
                return os.path.join(full, name)
        safes = [d for d in sorted(os.listdir(full)) if d.upper().endswith(".SAFE")
                 and os.path.isdir(os.path.join(full, d))]
        if len(safes) == 1 and not full.upper().endswith(".SAFE"):
            return metadata_path(os.path.join(full, safes[0]))
        raise ThorInputError(
            f"the folder {text} holds no Sentinel-2 product metadata ({' or '.join(METADATA_NAMES)}): it is "
            "not a .SAFE product folder, or an incomplete one. Download the product again.")
    if full.lower().endswith(".zip"):
        return _metadata_in_zip(full)
    if full.lower().endswith(".xml"):
        return full
    raise ThorInputError(f"{text} is not a Sentinel-2 product: give its .zip, its .SAFE folder or its "
                         f"{' / '.join(METADATA_NAMES)} file")


# --- metadata --------------------------------------------------------------------------------------


def _read_text(gdal_path: str) -> bytes:
    g = gdal_io.gdal()
    try:
        fp = g.VSIFOpenL(gdal_path, "rb")
    except RuntimeError:
        fp = None
    if fp is None:
        raise ThorInputError(f"the product metadata {gdal_path} is missing or cannot be read")
    try:
        g.VSIFSeekL(fp, 0, 2)
        size = g.VSIFTellL(fp)
        g.VSIFSeekL(fp, 0, 0)
        return g.VSIFReadL(1, size, fp)
    finally:
        g.VSIFCloseL(fp)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


@dataclass(frozen=True)
class ProductInfo:
    """What the product metadata says, and where its pieces are."""

    source: str  # the path the user gave
    metadata: str  # GDAL path of MTD_MSIL2A.xml / MTD_MSIL1C.xml (may be /vsizip/…)
    level: str  # "L2A" or "L1C"
    product_id: str
    processing_baseline: str
    sensing_time: str
    spacecraft: str
    quantification: float
    offsets: Dict[str, float]  # per THOR band (B2…B12)
    offsets_source: str  # "metadata", "none before baseline 04.00" or "assumed: ..."
    nodata: float
    image_files: Tuple[str, ...] = field(default=())  # IMAGE_FILE entries (relative, no extension)

    @property
    def gain(self) -> float:
        """Factor bringing (DN + offset) to reflectance × 10000, THOR's input unit."""
        return 10000.0 / self.quantification

    def record(self) -> Dict[str, object]:
        return {"product_id": self.product_id, "level": self.level,
                "processing_baseline": self.processing_baseline, "sensing_time": self.sensing_time,
                "spacecraft": self.spacecraft, "quantification_value": self.quantification,
                "offsets": {b: self.offsets[b] for b in S2_BANDS}, "offsets_source": self.offsets_source,
                "nodata": self.nodata, "metadata_file": self.metadata,
                "resampling_20m": "nearest (2 x 2 blocks of the 10 m grid)"}


def read_product(path: str, log: Optional[Callable[[str], None]] = None) -> ProductInfo:
    """Parses the product metadata (offsets, quantification, identity). No pixels are read."""
    log = log or (lambda _m: None)
    mtd = metadata_path(path)
    raw = _read_text(mtd)
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as e:
        raise ThorInputError(f"the product metadata {mtd} is not valid XML ({e}): the product is damaged; "
                             "download it again") from None
    kind = _local(root.tag)
    if kind.startswith("Level-2A"):
        level = "L2A"
    elif kind.startswith("Level-1C"):
        level = "L1C"
    else:
        raise ThorInputError(f"{mtd} is not the metadata of a Sentinel-2 L2A or L1C product ({kind}); "
                             "THOR reads L2A (or L1C) products")
    values: Dict[str, str] = {}
    offsets_by_id: Dict[int, float] = {}
    image_files: List[str] = []
    nodata = 0.0
    special = None
    quant_tag = "BOA_QUANTIFICATION_VALUE" if level == "L2A" else "QUANTIFICATION_VALUE"
    offset_tag = "BOA_ADD_OFFSET" if level == "L2A" else "RADIO_ADD_OFFSET"
    for el in root.iter():
        name = _local(el.tag)
        text = (el.text or "").strip()
        if name in ("PRODUCT_URI", "PROCESSING_BASELINE", "PRODUCT_START_TIME", "DATATAKE_SENSING_START",
                    "SPACECRAFT_NAME", quant_tag) and name not in values:
            values[name] = text
        elif name == offset_tag:
            try:
                offsets_by_id[int(el.get("band_id"))] = float(text)
            except (TypeError, ValueError):
                raise ThorInputError(f"the product metadata {mtd} has an unreadable {offset_tag} "
                                     f"(band_id={el.get('band_id')!r}, value {text!r})") from None
        elif name == "IMAGE_FILE":
            image_files.append(text)
        elif name == "SPECIAL_VALUE_TEXT":
            special = text
        elif name == "SPECIAL_VALUE_INDEX" and special == "NODATA":
            try:
                nodata = float(text)
            except ValueError:
                pass
    uri = values.get("PRODUCT_URI", "")
    product_id = uri[:-5] if uri.upper().endswith(".SAFE") else (uri or os.path.basename(os.path.dirname(mtd)))
    baseline = values.get("PROCESSING_BASELINE", "")
    if not baseline:
        m = re.search(r"_N(\d{2})(\d{2})_", product_id)
        baseline = f"{m.group(1)}.{m.group(2)}" if m else ""
    try:
        quant = float(values.get(quant_tag, "10000"))
    except ValueError:
        raise ThorInputError(f"the product metadata {mtd} has an unreadable {quant_tag}: "
                             f"{values.get(quant_tag)!r}") from None
    if not quant > 0:
        raise ThorInputError(f"the product metadata {mtd} has a {quant_tag} of {quant:g}")
    if quant_tag not in values:
        log(f"The product metadata states no {quant_tag}; using 10000.")
    try:
        baseline_num = float(baseline)
    except ValueError:
        baseline_num = math.nan
    if offsets_by_id:
        missing = [b for b in S2_BANDS if ESA_BANDS.index(b) not in offsets_by_id]
        if missing:
            raise ThorInputError(f"the product metadata {mtd} gives {offset_tag} for some bands but not for "
                                 f"{', '.join(missing)}")
        offsets = {b: offsets_by_id[ESA_BANDS.index(b)] for b in S2_BANDS}
        source = "metadata"
    elif baseline_num >= OFFSET_BASELINE:
        offsets = {b: ESA_OFFSET for b in S2_BANDS}
        source = f"assumed: baseline {baseline} products carry {ESA_OFFSET:g}, but the metadata states no {offset_tag}"
        log(f"Warning: the product metadata (processing baseline {baseline}) states no {offset_tag}; using "
            f"ESA's {ESA_OFFSET:g} for baselines 04.00 and later.")
    else:
        offsets = {b: 0.0 for b in S2_BANDS}
        source = (f"none (processing baseline {baseline}, before 04.00)" if baseline_num == baseline_num
                  else "none stated (processing baseline unknown)")
    return ProductInfo(source=str(path), metadata=mtd, level=level, product_id=product_id,
                       processing_baseline=baseline,
                       sensing_time=values.get("PRODUCT_START_TIME") or values.get("DATATAKE_SENSING_START", ""),
                       spacecraft=values.get("SPACECRAFT_NAME", ""), quantification=quant, offsets=offsets,
                       offsets_source=source, nodata=nodata, image_files=tuple(image_files))


def _band_file(info: ProductInfo, band: str) -> Optional[str]:
    """The band's image file (relative to the product folder, with extension) as the metadata lists it."""
    code = _file_code(band)
    suffixes = (f"_{code}_{NATIVE_RES[band]}m", f"_{code}") if info.level == "L2A" else (f"_{code}",)
    for suffix in suffixes:
        for entry in info.image_files:
            if entry.endswith(suffix):
                return entry if entry.lower().endswith(".jp2") else entry + ".jp2"
    return None


def check_complete(info: ProductInfo) -> None:
    """Every THOR band's file, and the tile metadata, are present; else an error naming what is missing."""
    folder = os.path.dirname(info.metadata)
    missing, unlisted = [], []
    granules = set()
    for band in S2_BANDS:
        rel = _band_file(info, band)
        if rel is None:
            unlisted.append(band)
            continue
        granules.add(rel.split("/IMG_DATA/")[0])
        if not _exists(f"{folder}/{rel}"):
            missing.append(f"{band} ({rel})")
    if unlisted:
        raise ThorInputError(
            f"the product metadata {info.metadata} lists no image file for band(s) {', '.join(unlisted)}: the "
            "product is incomplete or not a standard L2A/L1C product")
    if missing:
        raise ThorInputError(
            f"the Sentinel-2 product {info.product_id} is incomplete: the file(s) of band(s) "
            f"{'; '.join(missing)} are missing from {info.source}. Download the product again (a partial "
            "download or an extraction that stopped early leaves band files out).")
    for granule in sorted(granules):
        if not _exists(f"{folder}/{granule}/MTD_TL.xml"):
            raise ThorInputError(
                f"the Sentinel-2 product {info.product_id} is incomplete: the tile metadata {granule}/MTD_TL.xml "
                f"(the tile's coordinate system and grid) is missing from {info.source}. Download the product "
                "again.")


# --- the ten bands as one 10 m raster ---------------------------------------------------------------


def _subdatasets(info: ProductInfo) -> Tuple[str, str]:
    """Names of the 10 m and 20 m subdatasets (same CRS) through GDAL's SENTINEL2 driver."""
    g = gdal_io.gdal()
    try:
        ds = g.OpenEx(info.metadata, g.OF_RASTER, allowed_drivers=["SENTINEL2"])
    except RuntimeError as e:
        raise ThorInputError(f"GDAL's SENTINEL2 driver cannot open {info.metadata}: {e}") from None
    if ds is None:
        raise ThorInputError(f"GDAL's SENTINEL2 driver cannot open {info.metadata}")
    names = [name for name, _desc in ds.GetSubDatasets()]
    by_res: Dict[str, List[str]] = {"10m": [], "20m": []}
    for name in names:
        parts = name.rsplit(":", 2)
        if len(parts) == 3 and parts[1] in by_res:
            by_res[parts[1]].append(name)
    if not by_res["10m"] or not by_res["20m"]:
        raise ThorInputError(
            f"GDAL's SENTINEL2 driver finds no 10 m and 20 m images in {info.metadata} (subdatasets: "
            f"{', '.join(names) or 'none'}): the product is incomplete")
    for s10 in by_res["10m"]:
        epsg = s10.rsplit(":", 1)[1]
        for s20 in by_res["20m"]:
            if s20.rsplit(":", 1)[1] == epsg:
                return s10, s20
    raise ThorInputError(f"the 10 m and 20 m images of {info.metadata} are in different coordinate systems")


def _bands_by_name(ds) -> Dict[str, int]:
    out = {}
    for i in range(1, ds.RasterCount + 1):
        name = ds.GetRasterBand(i).GetMetadataItem("BANDNAME")
        if name:
            out.setdefault(name, i)
    return out


def band_vrt(info: ProductInfo) -> str:
    """A VRT (as XML text) of THOR's ten bands, float32 reflectance × 10000, on the 10 m grid."""
    g = gdal_io.gdal()
    s10, s20 = _subdatasets(info)
    ds10, ds20 = g.Open(s10), g.Open(s20)
    bands10, bands20 = _bands_by_name(ds10), _bands_by_name(ds20)
    gt10, gt20 = ds10.GetGeoTransform(), ds20.GetGeoTransform()
    w, h = ds10.RasterXSize, ds10.RasterYSize
    rows = []
    for i, band in enumerate(S2_BANDS, start=1):
        if NATIVE_RES[band] == 10:
            name, idx, ds, gt = s10, bands10.get(band), ds10, gt10
        else:
            name, idx, ds, gt = s20, bands20.get(band), ds20, gt20
        if idx is None:
            raise ThorInputError(f"GDAL's SENTINEL2 driver shows no band {band} in {name}")
        fx, fy = gt[1] / gt10[1], gt[5] / gt10[5]
        dx, dy = (gt[0] - gt10[0]) / gt10[1], (gt[3] - gt10[3]) / gt10[5]
        gain = info.gain
        rows.append(
            f'  <VRTRasterBand dataType="Float32" band="{i}">\n'
            f"    <Description>{band}</Description>\n"
            "    <NoDataValue>nan</NoDataValue>\n"
            '    <ComplexSource resampling="nearest">\n'
            f'      <SourceFilename relativeToVRT="0">{escape(name)}</SourceFilename>\n'
            f"      <SourceBand>{idx}</SourceBand>\n"
            f'      <SrcRect xOff="0" yOff="0" xSize="{ds.RasterXSize}" ySize="{ds.RasterYSize}"/>\n'
            f'      <DstRect xOff="{dx:.10g}" yOff="{dy:.10g}" xSize="{ds.RasterXSize * fx:.10g}" '
            f'ySize="{ds.RasterYSize * fy:.10g}"/>\n'
            f"      <NODATA>{info.nodata:g}</NODATA>\n"
            f"      <ScaleOffset>{info.offsets[band] * gain!r}</ScaleOffset>\n"
            f"      <ScaleRatio>{gain!r}</ScaleRatio>\n"
            "    </ComplexSource>\n"
            "  </VRTRasterBand>\n")
    return (f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}">\n'
            f"  <SRS>{escape(ds10.GetProjection())}</SRS>\n"
            f"  <GeoTransform>{', '.join(repr(float(v)) for v in gt10)}</GeoTransform>\n"
            + "".join(rows) + "</VRTDataset>\n")


class S2ProductSource(RasterSource):
    """A Sentinel-2 product as THOR's imagery source: the ten bands on the 10 m grid, offsets applied.

    The offsets are applied in the virtual raster (``dn_offset`` stays 0); ``offsets`` holds them per band."""

    def __init__(self, path: str, scale_m: float = 10.0, fill_value: float = 0.0,
                 log: Optional[Callable[[str], None]] = None):
        log = log or (lambda _m: None)
        info = read_product(path, log=log)
        check_complete(info)
        if info.level == "L1C":
            log("Warning: " + L1C_WARNING)
        self.product = info
        super().__init__(band_vrt(info), band_map=None, dn_offset=0.0, scale_m=scale_m, fill_value=fill_value,
                         log=log)
        self.path = info.source
        self.offsets = dict(info.offsets)
        self._cached_row: Optional[int] = None
        self._jp2_rows = _jp2_block_rows(info)
        log(f"Sentinel-2 product {info.product_id} ({info.level}, processing baseline "
            f"{info.processing_baseline or 'unknown'}, sensed {info.sensing_time or 'unknown'}).")
        log("Bands B2 B3 B4 B8 at 10 m and B5 B6 B7 B8A B11 B12 at 20 m (nearest neighbour onto the 10 m grid) "
            "are assembled in THOR's order; the band mapping parameter is not used.")
        log(offset_summary(info))

    # JPEG 2000 files are decoded a whole JPEG 2000 tile (1024 x 1024 px in ESA's products) at a time, and
    # a THOR tile (288 px) is smaller: releasing GDAL's cached blocks after every box, as for a raster, would
    # decode each JPEG 2000 tile a dozen times (10 x slower reading, measured). Blocks are released instead
    # when boxes move down to another row of JPEG 2000 tiles: memory holds about two rows of them.
    def read_box(self, bounds: Bounds, size: int):
        gt = self.info.geotransform
        row = int(math.floor((gt[3] - bounds[3]) / (-gt[5] * self._jp2_rows) + 1e-9))
        if row != self._cached_row:
            if self._cached_row is not None:
                super()._drop_cached_blocks()
            self._cached_row = row
        return super().read_box(bounds, size)

    def _drop_cached_blocks(self) -> None:
        pass  # see read_box

    def _check_offset(self, src) -> None:
        pass  # the offsets come from the product's metadata and are applied in the virtual raster

    def provenance(self) -> Dict[str, object]:
        return {"kind": "sentinel2_product", "path": self.path, **self.product.record(),
                "dn_offset": dict(self.offsets), "resampled_to_scale": self.resampled}

    # No layout of its own: the raster's global grid (tiles at multiples of the 2880 m step from the CRS
    # origin, shifted by multiples of 160 m for overlapping tiles) already puts every tile corner on the
    # product's 20 m grid, whose origin is a multiple of 20 m in UTM, so the 20 m bands reach the model as
    # their own pixels (see the module's note).


def _jp2_block_rows(info: ProductInfo) -> int:
    """Height in 10 m pixels of the JPEG 2000 tiles of the product's 10 m bands (1024 if unknown)."""
    rel = _band_file(info, "B2")
    try:
        ds = gdal_io.gdal().Open(f"{os.path.dirname(info.metadata)}/{rel}")
        rows = int(ds.GetRasterBand(1).GetBlockSize()[1])
    except (RuntimeError, AttributeError, TypeError):
        return 1024
    return rows if rows > 0 else 1024


def offset_summary(info: ProductInfo) -> str:
    values = sorted(set(info.offsets.values()))
    if len(values) == 1:
        off = f"{values[0]:g} for every band"
    else:
        off = ", ".join(f"{b} {info.offsets[b]:g}" for b in S2_BANDS)
    name = "BOA_ADD_OFFSET" if info.level == "L2A" else "RADIO_ADD_OFFSET"
    return (f"Offsets ({name}, {info.offsets_source}): {off}; quantification value {info.quantification:g}: "
            f"THOR reads (DN + offset) × {info.gain:g}.")


def open_product(path: str, scale_m: float = 10.0, fill_value: float = 0.0,
                 log: Optional[Callable[[str], None]] = None) -> S2ProductSource:
    return S2ProductSource(path, scale_m=scale_m, fill_value=fill_value, log=log)


def product_of_layer_source(source: str) -> Optional[str]:
    """The product behind a QGIS/GDAL layer source, when it is a SENTINEL2 subdataset, else None."""
    text = (source or "").strip()
    if text.upper().startswith(SUBDATASET_PREFIXES):
        return text
    return None

