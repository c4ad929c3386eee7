#!/usr/bin/env python3
"""Checks the Sentinel-2 product reader against the SENTINEL2 driver of the GDAL running this script.

Needs only GDAL's Python bindings and numpy (no QGIS, no torch), so it runs with a distribution's own
python3 (e.g. to check another GDAL version than the development machine's). It writes small products
with the tests' helper (L2A baselines 04.00 and 02.09, L1C; zipped and unzipped), reads them in every form
the plugin accepts, compares the pixels with what was written, and checks the errors for incomplete
products. Prints one line per check and exits non-zero on any failure.

    python3 scripts/check_s2_product.py
"""
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from osgeo import gdal  # noqa: E402

from tests.s2_safe import make_product  # noqa: E402
from thor_qgis import s2_product as sp  # noqa: E402
from thor_qgis.errors import ThorInputError  # noqa: E402
from thor_qgis.specs import S2_BANDS  # noqa: E402

failures = []


def check(name, ok, detail=""):
    sys.stdout.write(f"{'ok  ' if ok else 'FAIL'} {name}{(': ' + detail) if detail else ''}\n")
    if not ok:
        failures.append(name)


def expected(p):
    out = []
    for band in S2_BANDS:
        px = p["pixels"][sp._file_code(band)].astype(np.float64)
        if px.shape[0] != p["pixels"]["B02"].shape[0]:
            px = np.repeat(np.repeat(px, 2, 0), 2, 1)
        out.append(px + (p["offset"] or 0.0))
    return np.stack(out).astype(np.float32)


def raises(fn, text):
    try:
        fn()
    except ThorInputError as e:
        return text in str(e), str(e)[:160]
    return False, "no error"


def main():
    sys.stdout.write(f"GDAL {gdal.__version__}, SENTINEL2 driver: {gdal.GetDriverByName('SENTINEL2') is not None}, "
                     f"JP2OpenJPEG: {gdal.GetDriverByName('JP2OpenJPEG') is not None}\n")
    with tempfile.TemporaryDirectory() as tmp:
        for level, baseline in (("L2A", "04.00"), ("L2A", "02.09"), ("L1C", "05.09")):
            d = os.path.join(tmp, f"{level}_{baseline}")
            os.makedirs(d)
            p = make_product(d, level=level, baseline=baseline, size10=96, zipped=True)
            sub = gdal.Open(p["zip"]).GetSubDatasets()
            forms = {"zip": p["zip"], "safe": p["safe"], "mtd": p["mtd"], "subdataset": sub[1][0] if sub else ""}
            for form, path in forms.items():
                try:
                    src = sp.open_product(path)
                    arr, valid = src.read_box(src.bounds, 96)
                    same = np.array_equal(arr, expected(p))
                    check(f"{level} {baseline} {form}", same and valid == 1.0,
                          f"offset {src.product.offsets['B2']:g}, baseline {src.product.processing_baseline}")
                except Exception as e:  # noqa: BLE001 (report and go on)
                    check(f"{level} {baseline} {form}", False, repr(e)[:200])
        d = os.path.join(tmp, "partial")
        os.makedirs(d)
        p = make_product(d, size10=48, omit_files=("B11",), zipped=True)
        check("missing band file named", *raises(lambda: sp.open_product(p["zip"]), "B11 (GRANULE/"))
        d = os.path.join(tmp, "nomtd")
        os.makedirs(d)
        p = make_product(d, size10=48, omit_metadata=True, zipped=True)
        check("missing metadata named (zip)", *raises(lambda: sp.open_product(p["zip"]), "MTD_MSIL2A.xml"))
        check("missing metadata named (folder)", *raises(lambda: sp.open_product(p["safe"]), "MTD_MSIL2A.xml"))
    sys.stdout.write(f"{'all checks passed' if not failures else f'{len(failures)} check(s) failed'}\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
