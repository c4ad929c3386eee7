#!/usr/bin/env python3
"""Reading cost of a Sentinel-2 product (JPEG 2000 bands through GDAL's SENTINEL2 driver and the plugin's
10 m virtual raster) against the same pixels as a stacked, tiled GeoTIFF, tile by tile as the grid algorithm
reads them. No model runs: this is the imagery side only.

    .venv/bin/python scripts/bench_s2_product.py [side_in_10m_pixels]   (default 1728 = 17.3 km)

Prints the seconds per 288 px tile for both and their ratio, measured in one run.
"""
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from osgeo import gdal, osr  # noqa: E402

from tests.s2_safe import make_product  # noqa: E402
from thor_qgis import s2_product as sp  # noqa: E402
from thor_qgis.raster_source import RasterSource  # noqa: E402
from thor_qgis.specs import S2_BANDS  # noqa: E402


def read_all(source, image_size=288):
    layout = source.layout(source.bounds, image_size, 18)
    t = time.perf_counter()
    total = 0.0
    for _tile, arr, _valid in source.tiles(layout):
        total += float(arr[0, 0, 0])
    return time.perf_counter() - t, layout.n_tiles


def main():
    side = int(sys.argv[1]) if len(sys.argv) > 1 else 1728
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        p = make_product(tmp, size10=side, zipped=True)
        sys.stdout.write(f"product {side} x {side} px at 10 m written in {time.perf_counter() - t:.1f} s "
                         f"(zip {os.path.getsize(p['zip']) / 1e6:.1f} MB)\n")
        bands = []
        for b in S2_BANDS:
            px = p["pixels"][sp._file_code(b)]
            bands.append(np.repeat(np.repeat(px, 2, 0), 2, 1) if px.shape[0] != side else px)
        stack = os.path.join(tmp, "stack.tif")
        ds = gdal.GetDriverByName("GTiff").Create(stack, side, side, 10, gdal.GDT_UInt16,
                                                  ["TILED=YES", "COMPRESS=DEFLATE"])
        ds.SetGeoTransform((600000.0, 10.0, 0.0, 5000040.0, 0.0, -10.0))
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(32632)
        ds.SetProjection(srs.ExportToWkt())
        for i, arr in enumerate(bands):
            ds.GetRasterBand(i + 1).WriteArray(arr)
        ds = None
        results = {}
        for name, make in (("GeoTIFF stack", lambda: RasterSource(stack, dn_offset=-1000.0)),
                           ("product .SAFE", lambda: sp.open_product(p["safe"])),
                           ("product .zip", lambda: sp.open_product(p["zip"]))):
            seconds, n = read_all(make())
            results[name] = seconds / n
            sys.stdout.write(f"{name:14s}: {n} tiles, {seconds:.2f} s, {seconds / n * 1000:.0f} ms per tile\n")
        base = results["GeoTIFF stack"]
        for name in ("product .SAFE", "product .zip"):
            sys.stdout.write(f"{name} / GeoTIFF stack: x{results[name] / base:.1f}\n")


if __name__ == "__main__":
    main()
