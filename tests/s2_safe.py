"""Writes small but valid Sentinel-2 products (SAFE layout, compact naming) for the tests.

The layout follows what the Copernicus Data Space hands out: ``<PRODUCT_URI>.SAFE/`` with the product
metadata (``MTD_MSIL2A.xml`` or ``MTD_MSIL1C.xml``), one granule folder with its tile metadata
(``MTD_TL.xml``, which holds the tile's CRS and grids) and one JPEG 2000 file per band (L2A:
``IMG_DATA/R10m|R20m|R60m/T<tile>_<date>_<band>_<res>m.jp2``; L1C: ``IMG_DATA/T<tile>_<date>_<band>.jp2``).
Band files are written with GDAL's JP2OpenJPEG driver (lossless), so the pixels read back are exactly the
ones given. The products are read by GDAL's real SENTINEL2 driver in the tests.

``make_product`` returns the pixel arrays it wrote, per band name, so tests can build the same pixels as
a stacked GeoTIFF.
"""
from __future__ import annotations

import os
import zipfile
from typing import Dict, Optional, Sequence

import numpy as np
from osgeo import gdal, osr

gdal.UseExceptions()

# ESA's band order (band_id 0..12 in the metadata)
ALL_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
RES = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10, "B8A": 20,
       "B09": 60, "B10": 60, "B11": 20, "B12": 20}
L2A_BANDS = tuple(b for b in ALL_BANDS if b != "B10")  # L2A has no cirrus band
TILE = "T32TQR"
EPSG = 32632
ULX, ULY = 600000.0, 5000040.0


def _pixels(band: str, size10: int, seed: int) -> np.ndarray:
    """A deterministic, spatially structured reflectance field (DN without offset) at the band's own
    resolution: smooth patterns plus noise, 200..6000."""
    res = RES[band]
    n = size10 * 10 // res
    rng = np.random.default_rng(seed + ALL_BANDS.index(band))
    yy, xx = np.mgrid[0:n, 0:n] / max(1, n - 1)
    k = ALL_BANDS.index(band) + 1
    base = 1500 + 1200 * np.sin(3.1 * xx * k / 4 + 2 * yy) + 900 * np.cos(5 * yy * (1 + k / 13))
    base[n // 3: n // 2, n // 4: n // 2] += 1800  # a bright block
    return np.clip(base + rng.normal(0, 120, (n, n)), 200, 6000).astype(np.uint16)


def _write_jp2(path: str, arr: np.ndarray, res: int) -> None:
    mem = gdal.GetDriverByName("MEM").Create("", arr.shape[1], arr.shape[0], 1, gdal.GDT_UInt16)
    mem.SetGeoTransform((ULX, res, 0, ULY, 0, -res))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(EPSG)
    mem.SetProjection(srs.ExportToWkt())
    mem.GetRasterBand(1).WriteArray(arr)
    gdal.GetDriverByName("JP2OpenJPEG").CreateCopy(path, mem, options=["REVERSIBLE=YES", "QUALITY=100",
                                                                       "NBITS=15"])


def _offsets_xml(level: str, offset: Optional[float]) -> str:
    if offset is None:
        return ""
    if level == "L2A":
        items = "".join(f'<BOA_ADD_OFFSET band_id="{i}">{offset:g}</BOA_ADD_OFFSET>' for i in range(13))
        return f"<BOA_ADD_OFFSET_VALUES_LIST>{items}</BOA_ADD_OFFSET_VALUES_LIST>"
    items = "".join(f'<RADIO_ADD_OFFSET band_id="{i}">{offset:g}</RADIO_ADD_OFFSET>' for i in range(13))
    return f"<Radiometric_Offset_List>{items}</Radiometric_Offset_List>"


def _product_xml(level: str, uri: str, baseline: str, image_files: Sequence[str], offset: Optional[float],
                 quantification: float, sensing: str) -> str:
    tag = "Level-2A_User_Product" if level == "L2A" else "Level-1C_User_Product"
    xsd = "User_Product_Level-2A.xsd" if level == "L2A" else "User_Product_Level-1C.xsd"
    ptype = "S2MSI2A" if level == "L2A" else "S2MSI1C"
    files = "\n".join(f"            <IMAGE_FILE>{f}</IMAGE_FILE>" for f in image_files)
    if level == "L2A":
        quant = (f'<QUANTIFICATION_VALUES_LIST><BOA_QUANTIFICATION_VALUE unit="none">{quantification:g}'
                 '</BOA_QUANTIFICATION_VALUE><AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>'
                 '<WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE></QUANTIFICATION_VALUES_LIST>')
    else:
        quant = f'<QUANTIFICATION_VALUE unit="none">{quantification:g}</QUANTIFICATION_VALUE>'
    spectral = "".join(
        f'<Spectral_Information bandId="{i}" physicalBand="{b if b != "B8A" else "B8A"}">'
        f"<RESOLUTION>{RES[b]}</RESOLUTION></Spectral_Information>" for i, b in enumerate(ALL_BANDS))
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:{tag} xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/{xsd}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="https://psd-14.sentinel2.eo.esa.int/PSD/{xsd}">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>{sensing}</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>{sensing}</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{uri}</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-{level[1:]}</PROCESSING_LEVEL>
      <PRODUCT_TYPE>{ptype}</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
      <GENERATION_TIME>{sensing}</GENERATION_TIME>
      <Datatake datatakeIdentifier="GS2A_TEST_N{baseline}">
        <SPACECRAFT_NAME>Sentinel-2A</SPACECRAFT_NAME>
        <DATATAKE_SENSING_START>{sensing}</DATATAKE_SENSING_START>
        <SENSING_ORBIT_NUMBER>22</SENSING_ORBIT_NUMBER>
        <SENSING_ORBIT_DIRECTION>DESCENDING</SENSING_ORBIT_DIRECTION>
      </Datatake>
      <Query_Options completeSingleTile="true"><PRODUCT_FORMAT>SAFE_COMPACT</PRODUCT_FORMAT></Query_Options>
      <Product_Organisation>
        <Granule_List>
          <Granule datastripIdentifier="DS_TEST" granuleIdentifier="GR_TEST" imageFormat="JPEG2000">
{files}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values><SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX></Special_Values>
      <Special_Values><SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX></Special_Values>
      {quant}
      {_offsets_xml(level, offset)}
      <Spectral_Information_List>{spectral}</Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
  <n1:Geometric_Info>
    <Product_Footprint><Product_Footprint><Global_Footprint>
      <EXT_POS_LIST>45.1 12.9 45.1 13.0 45.0 13.0 45.0 12.9 45.1 12.9</EXT_POS_LIST>
    </Global_Footprint></Product_Footprint></Product_Footprint>
  </n1:Geometric_Info>
</n1:{tag}>
"""


def _tile_xml(level: str, size10: int, sensing: str) -> str:
    tag = "Level-2A_Tile_ID" if level == "L2A" else "Level-1C_Tile_ID"
    sizes = "".join(f'<Size resolution="{r}"><NROWS>{size10 * 10 // r}</NROWS><NCOLS>{size10 * 10 // r}</NCOLS></Size>'
                    for r in (10, 20, 60))
    geo = "".join(f'<Geoposition resolution="{r}"><ULX>{ULX:.0f}</ULX><ULY>{ULY:.0f}</ULY><XDIM>{r}</XDIM>'
                  f'<YDIM>-{r}</YDIM></Geoposition>' for r in (10, 20, 60))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<n1:{tag} xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_{tag.replace('_ID', '')}_Metadata.xsd">
  <n1:General_Info><SENSING_TIME>{sensing}</SENSING_TIME></n1:General_Info>
  <n1:Geometric_Info>
    <Tile_Geocoding>
      <HORIZONTAL_CS_NAME>WGS84 / UTM zone 32N</HORIZONTAL_CS_NAME>
      <HORIZONTAL_CS_CODE>EPSG:{EPSG}</HORIZONTAL_CS_CODE>
      {sizes}
      {geo}
    </Tile_Geocoding>
  </n1:Geometric_Info>
</n1:{tag}>
"""


def make_product(folder, level: str = "L2A", baseline: str = "04.00", size10: int = 240, seed: int = 0,
                 offset: Optional[float] = "auto", quantification: float = 10000.0, zipped: bool = False,
                 omit_files: Sequence[str] = (), omit_metadata: bool = False,
                 sensing: str = "2024-07-14T10:20:31.024Z") -> Dict[str, object]:
    """Writes a product under ``folder``; returns ``{"safe": path, "zip": path or None, "mtd": path,
    "uri": product id, "pixels": {band: DN array as stored}, "offset": offset written}``.

    ``size10`` is the side in 10 m pixels (a multiple of 6 so the 20 m and 60 m grids line up).
    ``offset="auto"`` writes −1000 from baseline 04.00, none before (as ESA does). ``omit_files`` names
    band files (e.g. ``"B11"``) to leave out of the folder while the metadata still lists them.
    """
    assert size10 % 6 == 0
    if offset == "auto":
        offset = -1000.0 if float(baseline) >= 4.0 else None
    date = "20240714T102031"
    uri = f"S2A_MSI{level}_{date}_N{baseline.replace('.', '')}_R022_{TILE}_20240714T150000.SAFE"
    safe = os.path.join(str(folder), uri)
    granule = f"GRANULE/{level}_{TILE}_A047000_{date}"
    os.makedirs(os.path.join(safe, granule), exist_ok=True)
    pixels: Dict[str, np.ndarray] = {}
    image_files = []
    add = 0 if offset is None else -offset  # stored DN = reflectance DN - offset
    if level == "L2A":
        for band in L2A_BANDS:  # each band at its own resolution (ESA adds coarser copies; not needed)
            res = RES[band]
            rel = f"{granule}/IMG_DATA/R{res}m/{TILE}_{date}_{band}_{res}m"
            image_files.append(rel)
            os.makedirs(os.path.join(safe, os.path.dirname(rel)), exist_ok=True)
            arr = (_pixels(band, size10, seed) + add).astype(np.uint16)
            pixels[band] = arr
            if band not in omit_files:
                _write_jp2(os.path.join(safe, rel + ".jp2"), arr, res)
        # the auxiliary layers GDAL's driver looks for (aerosol, water vapour, scene classification,
        # cloud and snow probabilities): small ramps, so opening the product raises no warning
        for res in (10, 20, 60):
            n = size10 * 10 // res
            for aux in ("AOT", "WVP") + (("SCL",) if res > 10 else ()):
                rel = f"{granule}/IMG_DATA/R{res}m/{TILE}_{date}_{aux}_{res}m"
                image_files.append(rel)
                _write_jp2(os.path.join(safe, rel + ".jp2"), _ramp(n, 12), res)
            if res > 10:
                os.makedirs(os.path.join(safe, granule, "QI_DATA"), exist_ok=True)
                for aux in ("CLDPRB", "SNWPRB"):
                    _write_jp2(os.path.join(safe, granule, "QI_DATA", f"MSK_{aux}_{res}m.jp2"),
                               _ramp(n, 100), res)
    else:
        for band in ALL_BANDS:
            rel = f"{granule}/IMG_DATA/{TILE}_{date}_{band}"
            image_files.append(rel)
            os.makedirs(os.path.join(safe, os.path.dirname(rel)), exist_ok=True)
            arr = (_pixels(band, size10, seed) + add).astype(np.uint16)
            pixels[band] = arr
            if band in omit_files:
                continue
            _write_jp2(os.path.join(safe, rel + ".jp2"), arr, RES[band])
    mtd = os.path.join(safe, f"MTD_MSI{level}.xml")
    if not omit_metadata:
        with open(mtd, "w", encoding="utf-8") as f:
            f.write(_product_xml(level, uri, baseline, image_files, offset, quantification, sensing))
    with open(os.path.join(safe, granule, "MTD_TL.xml"), "w", encoding="utf-8") as f:
        f.write(_tile_xml(level, size10, sensing))
    zpath = None
    if zipped:
        zpath = safe[:-len(".SAFE")] + ".zip"
        with zipfile.ZipFile(zpath, "w", zipfile.ZIP_STORED) as z:
            for root, _dirs, names in os.walk(safe):
                for name in sorted(names):
                    full = os.path.join(root, name)
                    z.write(full, os.path.relpath(full, str(folder)))
    return {"safe": safe, "zip": zpath, "mtd": mtd, "uri": uri[:-len(".SAFE")], "pixels": pixels,
            "offset": offset, "quantification": quantification}


def _ramp(n: int, top: int) -> np.ndarray:
    return (np.add.outer(np.arange(n), np.arange(n)) % (top + 1)).astype(np.uint16)
