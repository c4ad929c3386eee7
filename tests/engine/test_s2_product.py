"""Sentinel-2 products (SAFE folder, zip, metadata file, subdataset) read through GDAL's SENTINEL2 driver."""
import os
import shutil
import zipfile

import numpy as np
import pytest
from osgeo import gdal

from tests.s2_safe import make_product
from thor_qgis import s2_product as sp
from thor_qgis.errors import ThorInputError
from thor_qgis.specs import S2_BANDS


def expected(product, offset=None, gain=1.0):
    """The ten bands as THOR should read them: 20 m pixels as 2 x 2 blocks, (DN + offset) x gain."""
    off = product["offset"] if offset is None else offset
    out = []
    for band in S2_BANDS:
        px = product["pixels"][sp._file_code(band)].astype(np.float64)
        if px.shape[0] != product["pixels"]["B02"].shape[0]:
            px = np.repeat(np.repeat(px, 2, axis=0), 2, axis=1)
        out.append((px + (off or 0.0)) * gain)
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def l2a_new(tmp_path_factory):
    return make_product(tmp_path_factory.mktemp("n0400"), baseline="04.00", zipped=True)


@pytest.fixture(scope="module")
def l2a_old(tmp_path_factory):
    return make_product(tmp_path_factory.mktemp("n0209"), baseline="02.09", zipped=True, seed=3)


def test_gdal_has_the_drivers_the_products_need():
    assert gdal.GetDriverByName("SENTINEL2") is not None
    assert gdal.GetDriverByName("JP2OpenJPEG") is not None


@pytest.mark.parametrize("form", ["safe", "zip", "mtd", "subdataset", "parent folder"])
def test_every_form_of_a_product_gives_the_same_pixels(l2a_new, form):
    if form == "subdataset":  # what QGIS holds when the zip is dropped on the map and a subdataset picked
        path = gdal.Open(l2a_new["zip"]).GetSubDatasets()[1][0]
        assert path.startswith("SENTINEL2_L2A:/vsizip/") and ":20m:EPSG_32632" in path
    elif form == "parent folder":
        path = os.path.dirname(l2a_new["safe"])
    else:
        path = l2a_new[form]
    src = sp.open_product(path)
    assert src.info.width == src.info.height == 240
    assert src.info.geotransform == (600000.0, 10.0, 0.0, 5000040.0, 0.0, -10.0)
    assert not src.resampled
    arr, valid = src.read_box(src.bounds, 240)
    assert valid == 1.0
    want = expected(l2a_new)
    assert want.min() > 0  # the offset was written into the files (DN = reflectance + 1000)
    np.testing.assert_array_equal(arr, want)


def test_metadata_of_baseline_04_00(l2a_new):
    info = sp.read_product(l2a_new["zip"])
    assert info.level == "L2A" and info.processing_baseline == "04.00"
    assert info.product_id == l2a_new["uri"]
    assert info.sensing_time == "2024-07-14T10:20:31.024Z"
    assert info.offsets == {b: -1000.0 for b in S2_BANDS} and info.offsets_source == "metadata"
    assert info.quantification == 10000.0
    # what we parse agrees with what GDAL's driver reports of the same file
    md = gdal.Open(info.metadata).GetMetadata()
    assert md["PROCESSING_BASELINE"] == info.processing_baseline
    assert md["PRODUCT_URI"] == info.product_id + ".SAFE"
    assert float(md["BOA_QUANTIFICATION_VALUE"]) == info.quantification


def test_baseline_02_09_has_no_offset(l2a_old):
    info = sp.read_product(l2a_old["safe"])
    assert info.processing_baseline == "02.09"
    assert set(info.offsets.values()) == {0.0} and "before 04.00" in info.offsets_source
    arr, _ = sp.open_product(l2a_old["zip"]).read_box(sp.open_product(l2a_old["zip"]).bounds, 240)
    np.testing.assert_array_equal(arr, expected(l2a_old, offset=0.0))


def test_quantification_value_scales_to_reflectance_times_10000(tmp_path):
    p = make_product(tmp_path, baseline="05.10", quantification=20000.0, size10=48)
    src = sp.open_product(p["safe"])
    arr, _ = src.read_box(src.bounds, 48)
    np.testing.assert_array_equal(arr, expected(p, gain=0.5))
    assert "× 0.5" in sp.offset_summary(src.product)


def test_l1c_is_read_with_its_radiometric_offset_and_a_warning(tmp_path):
    p = make_product(tmp_path, level="L1C", baseline="05.09", size10=48, zipped=True)
    logs = []
    src = sp.open_product(p["zip"], log=logs.append)
    assert src.product.level == "L1C" and src.product.offsets["B12"] == -1000.0
    arr, _ = src.read_box(src.bounds, 48)
    np.testing.assert_array_equal(arr, expected(p))
    assert any("Level-1C" in m and "pretrained on Level-2A" in m for m in logs)


def test_nodata_pixels_stay_nodata(tmp_path):
    p = make_product(tmp_path, size10=48)
    # zero (the product's NODATA) in the top-left 10 m pixels of B2
    b02 = [os.path.join(r, f) for r, _d, fs in os.walk(p["safe"]) for f in fs if f.endswith("_B02_10m.jp2")][0]
    arr = p["pixels"]["B02"].copy()
    arr[:6, :6] = 0
    ds = gdal.Open(b02)
    mem = gdal.GetDriverByName("MEM").CreateCopy("", ds)
    ds = None
    mem.GetRasterBand(1).WriteArray(arr)
    gdal.GetDriverByName("JP2OpenJPEG").CreateCopy(b02, mem, options=["REVERSIBLE=YES", "QUALITY=100"])
    src = sp.open_product(p["safe"], fill_value=-5.0)
    out, valid = src.read_box(src.bounds, 48)
    assert valid == pytest.approx(1 - 36 / 48 ** 2)
    assert (out[:, :6, :6] == -5.0).all()  # filled, not read as reflectance -1000
    assert out[:, 6:, 6:].min() > -1000


def test_layout_is_anchored_on_the_20m_grid(l2a_new):
    src = sp.open_product(l2a_new["safe"])
    b = src.bounds
    # the global grid (tile corners at multiples of the step from the CRS origin) keeps them on the product's
    # 20 m grid, whatever the area asked for: here odd 10 m pixels from the corner
    for seams, margin in (("none", 0), ("crop", 1), ("blend", 0)):
        layout = src.layout((b[0] + 10, b[1], b[2], b[3] - 30), 48, 3, margin=margin, seams=seams)
        for tile in layout.tiles():
            x0, y1 = tile.bounds[0], tile.bounds[3]
            assert (x0 - b[0]) % 20 == 0 and (b[3] - y1) % 20 == 0, (seams, tile.bounds)


def test_provenance_names_the_product(l2a_new):
    rec = sp.open_product(l2a_new["zip"]).provenance()
    assert rec["kind"] == "sentinel2_product" and rec["path"] == l2a_new["zip"]
    assert rec["product_id"] == l2a_new["uri"] and rec["processing_baseline"] == "04.00"
    assert rec["offsets"]["B8A"] == -1000.0 and rec["sensing_time"].startswith("2024-07-14")


# --- incomplete or damaged products ----------------------------------------------------------------


def test_missing_band_file_is_named(tmp_path):
    p = make_product(tmp_path, size10=48, omit_files=("B11",), zipped=True)
    for path in (p["safe"], p["zip"]):
        with pytest.raises(ThorInputError, match=r"incomplete.*B11 \(GRANULE/.*_B11_20m\.jp2\)"):
            sp.open_product(path)


def test_missing_metadata_is_named(tmp_path):
    p = make_product(tmp_path, size10=48, omit_metadata=True, zipped=True)
    with pytest.raises(ThorInputError, match=r"no Sentinel-2 product metadata \(MTD_MSIL2A\.xml or MTD_MSIL1C"):
        sp.open_product(p["safe"])
    with pytest.raises(ThorInputError, match=r"zip file .* holds no Sentinel-2 product metadata"):
        sp.open_product(p["zip"])


def test_missing_tile_metadata_is_named(tmp_path):
    p = make_product(tmp_path, size10=48)
    granule = os.path.join(p["safe"], "GRANULE", os.listdir(os.path.join(p["safe"], "GRANULE"))[0])
    os.remove(os.path.join(granule, "MTD_TL.xml"))
    with pytest.raises(ThorInputError, match=r"tile metadata GRANULE/L2A_\w+/MTD_TL\.xml .* is missing"):
        sp.open_product(p["safe"])


def test_damaged_zip_and_metadata(tmp_path):
    p = make_product(tmp_path, size10=48, zipped=True)
    cut = tmp_path / "S2B_MSIL2A_cut.zip"
    with open(p["zip"], "rb") as f:
        cut.write_bytes(f.read()[: os.path.getsize(p["zip"]) // 3])
    with pytest.raises(ThorInputError, match="damaged"):
        sp.open_product(str(cut))
    bad = tmp_path / "bad.SAFE"
    bad.mkdir()
    (bad / "MTD_MSIL2A.xml").write_text("<n1:Level-2A_User_Product><unclosed>")
    with pytest.raises(ThorInputError, match="not valid XML"):
        sp.open_product(str(bad))
    with pytest.raises(ThorInputError, match="does not exist"):
        sp.open_product(str(tmp_path / "nothing.zip"))


def test_zip_named_like_a_download(tmp_path, l2a_new):
    """Downloads may be called <id>.SAFE.zip, or be renamed: the product is found inside whatever the name."""
    for name in (l2a_new["uri"] + ".SAFE.zip", "my_download.zip"):
        dst = tmp_path / name
        shutil.copy(l2a_new["zip"], dst)
        assert zipfile.is_zipfile(dst)
        src = sp.open_product(str(dst))
        assert src.product.product_id == l2a_new["uri"]
        np.testing.assert_array_equal(src.read_box(src.bounds, 240)[0], expected(l2a_new))


def test_looks_like_product():
    assert sp.looks_like_product("/d/S2A_MSIL2A_X.zip") and sp.looks_like_product("/d/S2A_MSIL2A_X.SAFE/")
    assert sp.looks_like_product("/d/X.SAFE/MTD_MSIL1C.xml")
    assert sp.looks_like_product("SENTINEL2_L2A:/d/X.SAFE/MTD_MSIL2A.xml:10m:EPSG_32632")
    assert not sp.looks_like_product("/d/stack.tif") and not sp.looks_like_product("")


def test_a_zip_is_a_product_by_its_name_or_its_content(tmp_path, l2a_new):
    renamed = tmp_path / "download.zip"
    shutil.copy(l2a_new["zip"], renamed)
    other = tmp_path / "rasters.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("stack.tif", b"not a product")
    assert sp.looks_like_product(l2a_new["zip"])
    assert not sp.looks_like_product(str(renamed)) and sp.looks_like_product(str(renamed), inspect=True)
    assert not sp.looks_like_product(str(other), inspect=True)


def test_cached_blocks_are_released_row_by_row(l2a_new, monkeypatch):
    """Blocks are kept while boxes stay in one row of JPEG 2000 tiles and released when they move down; the
    pixels are the same either way."""
    src = sp.open_product(l2a_new["zip"])
    assert src._jp2_rows == 240  # the helper's small files are one JPEG 2000 tile
    src._jp2_rows = 96  # pretend smaller tiles: the 48 px boxes below span three rows of them
    flushes = []
    monkeypatch.setattr(sp.RasterSource, "_drop_cached_blocks", lambda self: flushes.append(1))
    layout = src.layout(src.bounds, 48, 3, margin=0, seams="none")
    want = expected(l2a_new)
    h, w = want.shape[1:]
    jp2_rows = []
    for tile, arr, _valid in src.tiles(layout):
        c, r = int(round((tile.bounds[0] - 600000.0) / 10)), int(round((5000040.0 - tile.bounds[3]) / 10))
        r0, c0, r1, c1 = max(r, 0), max(c, 0), min(r + 48, h), min(c + 48, w)  # the part inside the product
        np.testing.assert_array_equal(arr[:, r0 - r:r1 - r, c0 - c:c1 - c], want[:, r0:r1, c0:c1])
        jp2_rows.append(r // 96)
    # tiles of the global grid start 12 px above the product here: rows of 96 px are entered at -12, 84, 180;
    # blocks are released each time a box moves into the next one, and only then
    assert jp2_rows == sorted(jp2_rows) and len(set(jp2_rows)) >= 3
    assert len(flushes) == len(set(jp2_rows)) - 1
