"""Engine tests of thor_qgis.analysis on small synthetic GeoTIFFs (no QGIS)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from osgeo import gdal, osr

from thor_qgis import analysis
from thor_qgis.analysis import (change_map, embedding_to_rgb, iter_blocks, kmeans_classes, plan_windows,
                                reference_embedding, similarity_map)
from thor_qgis.errors import ThorCanceled, ThorConfigError, ThorInputError
from thor_qgis.gdal_io import CONFIG_KEY, read_metadata_config

gdal.UseExceptions()

W, H = 50, 40
GT = (500000.0, 160.0, 0.0, 4650000.0, 0.0, -160.0)
SMALL_BLOCKS = 150  # 50x40 pixels span 14 strips, or many tile parts


def _wkt(epsg: int) -> str:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    return srs.ExportToWkt()


def write_raster(path, arr, gt=GT, epsg=32633, nodata=None, tiled=None, dtype=gdal.GDT_Float32):
    """[C, H, W] → GeoTIFF; ``tiled`` = tile side (None: strips of one row)."""
    arr = np.asarray(arr)
    c, h, w = arr.shape
    opts = ["INTERLEAVE=BAND"]
    if tiled:
        opts += ["TILED=YES", f"BLOCKXSIZE={tiled}", f"BLOCKYSIZE={tiled}"]
    else:
        opts += ["BLOCKYSIZE=1"]
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, c, dtype, options=opts)
    ds.SetGeoTransform(gt)
    if epsg:
        ds.SetProjection(_wkt(epsg))
    for i in range(c):
        band = ds.GetRasterBand(i + 1)
        if nodata is not None:
            band.SetNoDataValue(nodata)
        band.SetDescription(f"thor_{i:03d}")
        band.WriteArray(arr[i])
    ds = None
    return str(path)


def read(path):
    ds = gdal.Open(str(path))
    arr = ds.ReadAsArray()
    return arr if ds.RasterCount > 1 else arr[None]


def describe(path):
    """Plain values of a raster's grid and band settings (no GDAL object outlives the call: a dataset kept
    alive by a failed test's frame can crash the GDAL 3.6 bindings at interpreter exit)."""
    ds = gdal.Open(str(path))
    bands = [ds.GetRasterBand(i + 1) for i in range(ds.RasterCount)]
    ct = bands[0].GetRasterColorTable()
    out = {
        "geotransform": ds.GetGeoTransform(), "size": (ds.RasterXSize, ds.RasterYSize),
        "crs_wkt": ds.GetProjection(), "nodata": [b.GetNoDataValue() for b in bands],
        "color_interp": [b.GetColorInterpretation() for b in bands],
        "color_entries": ct.GetCount() if ct is not None else 0,
        "config": ds.GetMetadataItem(CONFIG_KEY),
    }
    del bands, ct, ds
    return out


def pixel_centre(col, row, gt=GT):
    return gt[0] + (col + 0.5) * gt[1], gt[3] + (row + 0.5) * gt[5]


def point_wkt(col, row):
    x, y = pixel_centre(col, row)
    return f"POINT ({x} {y})"


def orthonormal(rng, c, n):
    q, _ = np.linalg.qr(rng.normal(size=(c, n)))
    return q.T  # [n, c]


def plant_invalid(arr, nodata=-9999.0, partial=True):
    """NaN, Inf and all-band nodata pixels, plus (``partial``) one pixel with a single band at nodata,
    which is still valid."""
    arr = arr.copy()
    arr[3, 5, 7] = np.nan
    arr[0, 20, 30] = np.inf
    arr[:, 10, 10] = nodata
    arr[:, 39, 49] = nodata
    if partial:
        arr[2, 15, 15] = nodata  # one band only: valid
    invalid = np.zeros(arr.shape[1:], dtype=bool)
    for r, c in ((5, 7), (20, 30), (10, 10), (39, 49)):
        invalid[r, c] = True
    return arr, invalid


@pytest.fixture
def planted_pca():
    """12 bands: three orthonormal directions with std 6, 3, 1.5 plus noise 0.05."""
    rng = np.random.default_rng(1)
    c = 12
    dirs = orthonormal(rng, c, 3)
    lat = rng.normal(size=(3, H * W)) * np.array([6.0, 3.0, 1.5])[:, None]
    x = (dirs.T @ lat + 2.0 + rng.normal(scale=0.05, size=(c, H * W))).reshape(c, H, W).astype(np.float32)
    return dirs, x


def _numpy_rgb(x, valid, percentiles=(2, 98)):
    """The whole-array reference computation of the RGB view."""
    c = x.shape[0]
    v = x.reshape(c, -1)[:, valid.ravel()].astype(np.float64)
    mean = v.mean(axis=1)
    cov = np.cov(v)
    evals, evecs = np.linalg.eigh(cov)
    comps = evecs[:, np.argsort(evals)[::-1][:3]].T
    for i in range(3):
        if comps[i, np.argmax(np.abs(comps[i]))] < 0:
            comps[i] *= -1
    proj = comps @ (v - mean[:, None])
    out = np.zeros((3, valid.size), dtype=np.uint8)
    for i in range(3):
        lo, hi = np.percentile(proj[i], percentiles)
        out[i, valid.ravel()] = np.clip(np.rint(1 + (proj[i] - lo) * 254 / (hi - lo)), 1, 255)
    return comps, out.reshape(3, *valid.shape)


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block,pixels,rows,window", [
    ((50, 1), 150, None, None),  # strips of 3 rows
    ((16, 16), 1999, None, None),  # whole rows of tiles (50x32, then 50x8)
    ((16, 16), 600, None, None),  # runs of 2 tiles
    ((16, 16), 100, None, None),  # parts of single tiles
    ((50, 1), 20, None, None),  # a single row exceeds the budget
    ((16, 16), 10 ** 6, 7, None),  # block_rows strips
    ((16, 16), 100, None, (5, 3, 30, 20)),  # a window
])
def test_plan_windows_cover_each_pixel_once_within_budget(block, pixels, rows, window):
    wins = plan_windows(W, H, block, pixels, rows, window)
    cover = np.zeros((H, W), dtype=int)
    for x, y, w, h in wins:
        cover[y:y + h, x:x + w] += 1
        if rows is None:
            assert w * h <= pixels
            # No window crosses a raster block edge unless it holds whole blocks.
            assert (x % block[0] == 0 and (w % block[0] == 0 or x + w == W)) or x // block[0] == (x + w - 1) // block[0]
        else:
            assert h <= rows and w == W
    expected = np.zeros((H, W), dtype=int)
    wx, wy, ww, wh = window or (0, 0, W, H)
    expected[wy:wy + wh, wx:wx + ww] = 1
    assert np.array_equal(cover, expected)
    assert len(wins) > 1


@pytest.mark.parametrize("tiled,pixels", [(None, SMALL_BLOCKS), (16, 600), (16, 100), (16, None)])
def test_iter_blocks_matches_whole_read(tmp_path, tiled, pixels):
    rng = np.random.default_rng(0)
    arr, invalid = plant_invalid(rng.normal(size=(6, H, W)).astype(np.float32))
    path = write_raster(tmp_path / "e.tif", arr, nodata=-9999.0, tiled=tiled)
    data = np.full(arr.shape, np.nan, dtype=np.float32)
    valid = np.zeros((H, W), dtype=int)
    n = 0
    for blk in iter_blocks(path, block_pixels=pixels):
        assert blk.data.shape == (6, blk.height, blk.width) and blk.data.dtype == np.float32
        data[:, blk.yoff:blk.yoff + blk.height, blk.xoff:blk.xoff + blk.width] = blk.data
        valid[blk.yoff:blk.yoff + blk.height, blk.xoff:blk.xoff + blk.width] += blk.valid
        n += 1
    assert n > 1 if pixels else n == 1
    assert np.array_equal(valid.astype(bool), ~invalid)
    expected = np.where(invalid[None], 0.0, arr)
    assert np.array_equal(data, expected)
    assert data[2, 15, 15] == -9999.0  # one band at nodata is still a valid pixel


# --------------------------------------------------------------------------------------------
# RGB view
# --------------------------------------------------------------------------------------------


def test_rgb_recovers_planted_components_in_order(tmp_path, planted_pca):
    dirs, x = planted_pca
    src = write_raster(tmp_path / "e.tif", x)
    res = embedding_to_rgb(src, tmp_path / "rgb.tif", block_pixels=SMALL_BLOCKS)
    comps = np.array(res["fit"]["components"])
    cos = np.abs(comps @ dirs.T)
    assert np.all(np.diag(cos) > 0.999), cos
    ratio = res["fit"]["explained_variance_ratio"]
    assert ratio[0] > ratio[1] > ratio[2] > 0.02
    assert sum(ratio) > 0.99
    # Sign convention: the largest-|loading| entry is positive.
    for c in comps:
        assert c[np.argmax(np.abs(c))] > 0
    out = read(res["output"])
    assert out.dtype == np.uint8 and out.shape == (3, H, W)
    assert out.min() >= 1  # no invalid pixels here: nothing is 0
    # The stretch spans the byte range: about 2% of pixels saturate at each end.
    assert 0.01 < np.mean(out[0] == 1) < 0.04 and 0.01 < np.mean(out[0] == 255) < 0.04


def test_rgb_blocks_match_whole_array_numpy_and_nodata(tmp_path, planted_pca):
    dirs, x = planted_pca
    x, invalid = plant_invalid(x, partial=False)  # (a single-band nodata pixel would be PC1 on its own)
    src = write_raster(tmp_path / "e.tif", x, nodata=-9999.0, tiled=16)
    res = embedding_to_rgb(src, tmp_path / "rgb.tif", block_pixels=100)
    comps_np, expected = _numpy_rgb(x, ~invalid)
    assert np.allclose(np.array(res["fit"]["components"]), comps_np, atol=1e-5)
    assert np.all(np.abs(np.diag(comps_np @ dirs.T)) > 0.999)  # NaN/nodata pixels did not enter the fit
    out = read(res["output"])
    assert np.all(out[:, invalid] == 0)
    assert np.all(out[:, ~invalid] >= 1)
    diff = np.abs(out.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and np.mean(diff == 0) > 0.995
    assert res["fit"]["valid_pixels"] == res["fit"]["sample_pixels"] == (~invalid).sum()
    d = describe(res["output"])
    assert d["nodata"] == [0, 0, 0]
    assert d["color_interp"] == [gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand]


def test_rgb_subsample_is_seeded_and_independent_of_blocks(tmp_path, planted_pca):
    _, x = planted_pca
    x, _ = plant_invalid(x)
    src = write_raster(tmp_path / "e.tif", x, nodata=-9999.0)
    a = embedding_to_rgb(src, tmp_path / "a.tif", sample_size=300, seed=7, block_pixels=SMALL_BLOCKS)
    b = embedding_to_rgb(src, tmp_path / "b.tif", sample_size=300, seed=7)  # one block
    c = embedding_to_rgb(src, tmp_path / "c.tif", sample_size=300, seed=7, block_pixels=SMALL_BLOCKS)
    d = embedding_to_rgb(src, tmp_path / "d.tif", sample_size=300, seed=8, block_pixels=SMALL_BLOCKS)
    assert a["fit"]["sample_pixels"] == 300
    assert np.array_equal(read(a["output"]), read(b["output"]))
    assert np.array_equal(read(a["output"]), read(c["output"]))
    assert a["fit"] == c["fit"]
    assert a["fit"]["stretch_low"] != d["fit"]["stretch_low"]  # another seed, another sample


def test_rgb_metadata_records_the_run(tmp_path, planted_pca):
    _, x = planted_pca
    src = write_raster(tmp_path / "e.tif", x)
    res = embedding_to_rgb(src, tmp_path / "rgb.tif", sample_size=1000, seed=3, percentiles=(1, 99))
    cfg = read_metadata_config(res["output"])
    assert cfg["operation"] == "embedding_to_rgb"
    assert cfg["source"] == os.path.abspath(src)
    assert cfg["parameters"] == {"sample_size": 1000, "seed": 3, "percentiles": [1.0, 99.0]}
    assert np.array(cfg["fit"]["components"]).shape == (3, 12)
    assert len(cfg["fit"]["explained_variance"]) == 3
    assert cfg["fit"]["sample_pixels"] == 1000
    assert {k: v for k, v in res.items() if k != "output"} == cfg


def test_rgb_rejects_bad_percentiles(tmp_path, planted_pca):
    src = write_raster(tmp_path / "e.tif", planted_pca[1])
    with pytest.raises(ThorConfigError, match="percentiles"):
        embedding_to_rgb(src, tmp_path / "rgb.tif", percentiles=(98, 2))


# --------------------------------------------------------------------------------------------
# Reference embedding and similarity
# --------------------------------------------------------------------------------------------


@pytest.fixture
def planted_angles(tmp_path):
    """Pixels s·(cos θ r + sin θ r⊥), θ growing with the distance to (col 12, row 9), s random."""
    rng = np.random.default_rng(2)
    c = 16
    r, rp = orthonormal(rng, c, 2)
    yy, xx = np.mgrid[0:H, 0:W]
    theta = np.minimum(np.hypot(xx - 12, yy - 9) * 0.08, np.pi)
    scale = rng.uniform(0.5, 2.0, size=(H, W))
    x = scale * (np.cos(theta)[None] * r[:, None, None] + np.sin(theta)[None] * rp[:, None, None])
    return write_raster(tmp_path / "e.tif", x.astype(np.float32), nodata=-9999.0), x, theta, r


def test_similarity_follows_planted_angle(tmp_path, planted_angles):
    src, x, theta, r = planted_angles
    ref, n = reference_embedding(src, [point_wkt(12, 9)])
    assert n == 1
    assert np.allclose(ref, x[:, 9, 12], atol=1e-6)
    res = similarity_map(src, tmp_path / "sim.tif", ref, block_pixels=SMALL_BLOCKS)
    sim = read(res["output"])[0]
    assert sim.dtype == np.float32
    assert sim[9, 12] == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(sim, np.cos(theta), atol=1e-5)
    assert sim.min() < -0.99  # θ reaches π far away
    assert res["valid_pixels"] == W * H


def test_similarity_nodata_and_whole_array_numpy(tmp_path):
    rng = np.random.default_rng(3)
    x, invalid = plant_invalid(rng.normal(size=(10, H, W)).astype(np.float32))
    x[:, 30, 3] = 0.0  # a valid zero vector has no direction
    src = write_raster(tmp_path / "e.tif", x, nodata=-9999.0, tiled=16)
    ref = rng.normal(size=10)
    res = similarity_map(src, tmp_path / "sim.tif", ref, block_pixels=100)
    sim = read(res["output"])[0]
    v = x.reshape(10, -1).astype(np.float64)
    with np.errstate(invalid="ignore"):
        expected = ((ref @ v) / (np.linalg.norm(v, axis=0) * np.linalg.norm(ref))).reshape(H, W)
    ok = ~invalid
    ok[30, 3] = False
    assert np.allclose(sim[ok], expected[ok], atol=1e-6)
    assert np.all(sim[~ok] == analysis.FLOAT_NODATA)
    assert describe(res["output"])["nodata"] == [analysis.FLOAT_NODATA]
    cfg = read_metadata_config(res["output"])
    assert cfg["operation"] == "similarity_map" and len(cfg["parameters"]["reference_vector"]) == 10


def test_reference_embedding_polygons_points_and_union(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, H, W)).astype(np.float32)
    src = write_raster(tmp_path / "e.tif", x, tiled=16)
    # A polygon over pixels cols 14..17, rows 14..17 (crossing a tile corner), pixel edges inset by 1 m.
    x0, y0 = GT[0] + 14 * 160 + 1, GT[3] - 14 * 160 - 1
    x1, y1 = GT[0] + 18 * 160 - 1, GT[3] - 18 * 160 + 1
    poly = f"POLYGON (({x0} {y0}, {x1} {y0}, {x1} {y1}, {x0} {y1}, {x0} {y0}))"
    vec, n = reference_embedding(src, [poly], block_pixels=3)
    assert n == 16
    assert np.allclose(vec, x[:, 14:18, 14:18].reshape(5, -1).mean(axis=1), atol=1e-6)
    # Union: a point inside the polygon and a point elsewhere, as a multipoint too.
    px, py = pixel_centre(15, 15)
    qx, qy = pixel_centre(40, 33)
    vec2, n2 = reference_embedding(src, [poly, f"MULTIPOINT (({px} {py}), ({qx} {qy}))"])
    assert n2 == 17
    sel = np.concatenate([x[:, 14:18, 14:18].reshape(5, -1), x[:, 33, 40][:, None]], axis=1)
    assert np.allclose(vec2, sel.mean(axis=1), atol=1e-6)
    # A polygon smaller than a pixel: touched with all_touched, no pixel centre without.
    cx, cy = pixel_centre(3, 4)
    tiny = f"POLYGON (({cx + 10} {cy + 10}, {cx + 20} {cy + 10}, {cx + 20} {cy + 20}, {cx + 10} {cy + 10}))"
    vec3, n3 = reference_embedding(src, [tiny])
    assert n3 == 1 and np.allclose(vec3, x[:, 4, 3])
    with pytest.raises(ThorInputError, match="features 0 cover no pixel centre"):
        reference_embedding(src, [tiny], all_touched=False)
    # A line touches the pixels along it.
    lx0, ly = pixel_centre(2, 30)
    lx1, _ = pixel_centre(6, 30)
    _, n4 = reference_embedding(src, [f"LINESTRING ({lx0} {ly}, {lx1} {ly})"])
    assert n4 == 5


def test_reference_features_outside_or_on_nodata(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, H, W)).astype(np.float32)
    x[:, 0:3, 0:3] = -9999.0
    src = write_raster(tmp_path / "e.tif", x, nodata=-9999.0)
    far = "POLYGON ((0 0, 10 0, 10 10, 0 0))"
    with pytest.raises(ThorInputError) as e:
        reference_embedding(src, [point_wkt(5, 5), far, "POINT (1 2)"])
    msg = str(e.value)
    assert "features 1, 2 lie outside the raster" in msg and "must overlap the raster" in msg
    assert "EPSG:32633" in msg
    # A point just past the right edge is outside too.
    ex, ey = GT[0] + W * 160 + 1, GT[3] - 100
    with pytest.raises(ThorInputError, match="features 1 lie outside"):
        reference_embedding(src, [point_wkt(5, 5), f"POINT ({ex} {ey})"])
    with pytest.raises(ThorInputError, match="features 1 cover only nodata pixels"):
        reference_embedding(src, [point_wkt(5, 5), point_wkt(1, 1)])
    with pytest.raises(ThorInputError, match="not valid"):
        reference_embedding(src, ["POINT (oops)"])
    with pytest.raises(ThorInputError, match="no reference features"):
        reference_embedding(src, [])
    # Partly on nodata: only the valid pixels count (pixels cols 2..3, rows 2..3; (2, 2) is nodata).
    x0, y0 = GT[0] + 2 * 160 + 1, GT[3] - 2 * 160 - 1
    x1, y1 = GT[0] + 4 * 160 - 1, GT[3] - 4 * 160 + 1
    poly = f"POLYGON (({x0} {y0}, {x1} {y0}, {x1} {y1}, {x0} {y1}, {x0} {y0}))"
    vec, n = reference_embedding(src, [poly, point_wkt(5, 5)])
    assert n == 4
    assert np.allclose(vec, np.stack([x[:, 2, 3], x[:, 3, 2], x[:, 3, 3], x[:, 5, 5]]).mean(axis=0), atol=1e-6)


def test_similarity_rejects_a_reference_of_another_length(tmp_path, planted_angles):
    src = planted_angles[0]
    with pytest.raises(ThorInputError, match="reference vector has 3 values but .* has 16 bands"):
        similarity_map(src, tmp_path / "s.tif", [1.0, 2.0, 3.0])
    with pytest.raises(ThorInputError, match="not all zero"):
        similarity_map(src, tmp_path / "s.tif", np.zeros(16))


# --------------------------------------------------------------------------------------------
# k-means
# --------------------------------------------------------------------------------------------


@pytest.fixture
def planted_clusters(tmp_path):
    rng = np.random.default_rng(6)
    c, k = 8, 4
    centres = rng.normal(size=(k, c)) * 10
    labels = rng.integers(0, k, size=(H, W))
    x = (centres[labels].transpose(2, 0, 1) + rng.normal(scale=0.2, size=(c, H, W))).astype(np.float32)
    x, invalid = plant_invalid(x, partial=False)  # (a single-band nodata pixel would be an outlier cluster)
    return write_raster(tmp_path / "e.tif", x, nodata=-9999.0, tiled=16), labels, invalid


def test_kmeans_recovers_planted_clusters_deterministically(tmp_path, planted_clusters):
    src, labels, invalid = planted_clusters
    res = kmeans_classes(src, tmp_path / "k.tif", 4, seed=0, block_pixels=100)
    out = read(res["output"])[0]
    assert out.dtype == np.uint8
    assert np.all(out[invalid] == 0)
    got = out[~invalid]
    assert set(np.unique(got)) == {1, 2, 3, 4}
    # A bijection between planted labels and classes.
    pairs = set(zip(labels[~invalid].tolist(), got.tolist()))
    assert len(pairs) == 4
    # Class 1 is the largest cluster of the sample.
    counts = res["fit"]["sample_class_counts"]
    assert counts == sorted(counts, reverse=True) and sum(counts) == (~invalid).sum()
    assert res["fit"]["centres"] == 4 and res["fit"]["iterations"] >= 1 and res["fit"]["converged"]
    # Inertia = noise only: about 8 bands x 0.04 variance per pixel.
    assert res["fit"]["inertia"] / (~invalid).sum() == pytest.approx(8 * 0.04, rel=0.15)
    again = kmeans_classes(src, tmp_path / "k2.tif", 4, seed=0, block_pixels=100)
    assert np.array_equal(read(again["output"])[0], out)
    one_block = kmeans_classes(src, tmp_path / "k3.tif", 4, seed=0)
    assert np.array_equal(read(one_block["output"])[0], out)
    d = describe(res["output"])
    assert d["nodata"] == [0]
    assert d["color_entries"] >= 5 and d["color_interp"] == [gdal.GCI_PaletteIndex]
    cfg = read_metadata_config(res["output"])
    assert cfg["operation"] == "kmeans_classes" and cfg["parameters"]["k"] == 4
    assert cfg["fit"]["inertia"] == pytest.approx(res["fit"]["inertia"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_separates_high_dimensional_noisy_clusters(tmp_path, seed):
    """768-d clusters whose noise gives every pixel a large squared distance (within a cluster ~384,
    between clusters ~1920): plain k-means++ merges two clusters here for most seeds."""
    rng = np.random.default_rng(20)
    c, k = 768, 8
    centres = rng.normal(size=(k, c)).astype(np.float32)
    labels = rng.integers(0, k, size=(H, W))
    x = centres[labels].transpose(2, 0, 1) + 0.5 * rng.standard_normal((c, H, W), dtype=np.float32)
    src = write_raster(tmp_path / "e.tif", x, tiled=16)
    res = kmeans_classes(src, tmp_path / "k.tif", k, seed=seed)
    out = read(res["output"])[0]
    assert len(set(zip(labels.ravel().tolist(), out.ravel().tolist()))) == k
    assert res["fit"]["inertia"] / (W * H) == pytest.approx(c * 0.25, rel=0.05)


def test_kmeans_assignment_matches_whole_array_nearest_centre(tmp_path):
    """Every pixel gets its nearest centre; centres recomputed from the output classes (each is the
    mean of its pixels at convergence) give back the same assignment."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(6, H, W)).astype(np.float32)
    src = write_raster(tmp_path / "e.tif", x)
    res = kmeans_classes(src, tmp_path / "k.tif", 5, seed=1, max_iter=300, tol=0, block_pixels=SMALL_BLOCKS)
    assert res["fit"]["converged"]
    out = read(res["output"])[0].ravel()
    v = x.reshape(6, -1).T.astype(np.float64)
    centres = np.stack([v[out == j].mean(axis=0) for j in range(1, 6)])
    nearest = np.argmin(((v[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1) + 1
    assert np.array_equal(nearest, out)
    inertia = ((v - centres[out - 1]) ** 2).sum()
    assert res["fit"]["inertia"] == pytest.approx(inertia, rel=1e-6)


def test_kmeans_many_classes_use_uint16(tmp_path):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(3, H, W)).astype(np.float32)
    src = write_raster(tmp_path / "e.tif", x)
    res = kmeans_classes(src, tmp_path / "k.tif", 300, max_iter=3)
    out = read(res["output"])[0]
    assert out.dtype == np.uint16 and out.min() >= 1 and out.max() <= 300
    assert res["output"] and res["fit"]["centres"] == 300


def test_kmeans_rejects_bad_k(tmp_path):
    x = np.random.default_rng(9).normal(size=(4, H, W)).astype(np.float32)
    x[:, :, :] = -9999.0
    x[:, 0, 0:3] = np.eye(4, 3) * 5  # three valid, distinct pixels
    src = write_raster(tmp_path / "e.tif", x, nodata=-9999.0)
    with pytest.raises(ThorConfigError, match="at least 2"):
        kmeans_classes(src, tmp_path / "k.tif", 1)
    with pytest.raises(ThorConfigError, match="k=4 classes exceed the 3 valid pixels"):
        kmeans_classes(src, tmp_path / "k.tif", 4)
    with pytest.raises(ThorConfigError, match="sample_size is 3"):
        kmeans_classes(src, tmp_path / "k.tif", 4, sample_size=3)
    with pytest.raises(ThorConfigError, match="must be an integer"):
        kmeans_classes(src, tmp_path / "k.tif", 2.5)
    assert not os.path.exists(tmp_path / "k.tif")
    res = kmeans_classes(src, tmp_path / "k.tif", 3)  # exactly as many as valid pixels
    assert sorted(read(res["output"])[0, 0, 0:3].tolist()) == [1, 2, 3]


# --------------------------------------------------------------------------------------------
# Change
# --------------------------------------------------------------------------------------------


def test_change_is_zero_for_identical_and_high_where_planted(tmp_path):
    rng = np.random.default_rng(10)
    a = rng.normal(size=(32, H, W)).astype(np.float32)
    b = a * rng.uniform(0.5, 2.0, size=(1, H, W)).astype(np.float32)  # rescaled: no change in direction
    b[:, 10:20, 30:45] = rng.normal(size=(32, 10, 15))
    pa = write_raster(tmp_path / "a.tif", a, tiled=16)
    pb = write_raster(tmp_path / "b.tif", b)  # other internal layout, same grid
    same = change_map(pa, pa, tmp_path / "same.tif", block_pixels=SMALL_BLOCKS)
    assert np.abs(read(same["output"])).max() < 1e-6
    res = change_map(pa, pb, tmp_path / "chg.tif", block_pixels=SMALL_BLOCKS)
    d = read(res["output"])[0]
    planted = np.zeros((H, W), dtype=bool)
    planted[10:20, 30:45] = True
    assert d[~planted].max() < 1e-5
    assert d[planted].min() > 0.4 and d[planted].mean() > 0.8  # random 32-d directions: cos ≈ 0
    va, vb = a.reshape(32, -1).astype(np.float64), b.reshape(32, -1).astype(np.float64)
    expected = 1 - (va * vb).sum(0) / (np.linalg.norm(va, axis=0) * np.linalg.norm(vb, axis=0))
    assert np.allclose(d.ravel(), expected, atol=1e-6)
    cfg = read_metadata_config(res["output"])
    assert cfg["operation"] == "change_map" and cfg["source"] == [os.path.abspath(pa), os.path.abspath(pb)]


def test_change_nodata_in_either_input(tmp_path):
    rng = np.random.default_rng(11)
    a = rng.normal(size=(6, H, W)).astype(np.float32)
    b = a.copy()
    a, inv_a = plant_invalid(a)
    b[:, 0, 0] = np.nan
    pa = write_raster(tmp_path / "a.tif", a, nodata=-9999.0)
    pb = write_raster(tmp_path / "b.tif", b, nodata=-9999.0)
    res = change_map(pa, pb, tmp_path / "c.tif", block_pixels=SMALL_BLOCKS)
    d = read(res["output"])[0]
    invalid = inv_a.copy()
    invalid[0, 0] = True
    assert np.all(d[invalid] == analysis.FLOAT_NODATA)
    assert np.all(np.abs(d[~invalid & ~np.isclose(a[2], -9999.0)]) < 1e-6)
    assert res["valid_pixels"] == (~invalid).sum()


@pytest.mark.parametrize("kind,b_kwargs,bands,shape,pattern", [
    ("crs", {"epsg": 32634}, 6, (H, W), r"CRS differs: A is EPSG:32633 \(WGS 84 / UTM zone 33N\), "
                                        r"B is EPSG:32634 \(WGS 84 / UTM zone 34N\)"),
    ("no crs", {"epsg": 0}, 6, (H, W), r"CRS differs: A is EPSG:32633 .*, B is no CRS"),
    ("origin", {"gt": (500160.0, 160.0, 0.0, 4650000.0, 0.0, -160.0)}, 6, (H, W),
     r"origin/extent differs: A's top-left corner is \(500000.000000, 4650000.000000\), B's is \(500160"),
    ("pixel size", {"gt": (500000.0, 80.0, 0.0, 4650000.0, 0.0, -80.0)}, 6, (H, W),
     r"pixel size differs: A is 160 x -160, B is 80 x -80"),
    ("size", {}, 6, (H, W + 1), r"size differs: A is 50x40 pixels, B is 51x40"),
    ("bands", {}, 7, (H, W), r"band count differs: A has 6, B has 7"),
])
def test_change_rejects_mismatched_grids(tmp_path, kind, b_kwargs, bands, shape, pattern):
    rng = np.random.default_rng(12)
    pa = write_raster(tmp_path / "a.tif", rng.normal(size=(6, H, W)).astype(np.float32))
    pb = write_raster(tmp_path / "b.tif", rng.normal(size=(bands,) + shape).astype(np.float32), **b_kwargs)
    with pytest.raises(ThorInputError, match=pattern) as e:
        change_map(pa, pb, tmp_path / "c.tif")
    # Only what differs is named.
    assert str(e.value).count("differs") == 1
    assert not os.path.exists(tmp_path / "c.tif")


# --------------------------------------------------------------------------------------------
# Every operation: grid, single band, cancel, progress
# --------------------------------------------------------------------------------------------


def _ops(src, ref):
    return {
        "rgb": lambda dst, **kw: embedding_to_rgb(src, dst, sample_size=500, **kw),
        "similarity": lambda dst, **kw: similarity_map(src, dst, ref, **kw),
        "kmeans": lambda dst, **kw: kmeans_classes(src, dst, 3, sample_size=500, **kw),
        "change": lambda dst, **kw: change_map(src, src, dst, **kw),
    }


OPS = ("rgb", "similarity", "kmeans", "change")
ROTATED_GT = (300000.0, 10.0, 2.0, 5000000.0, 1.5, -10.0)


@pytest.fixture
def small_src(tmp_path):
    rng = np.random.default_rng(13)
    x, _ = plant_invalid(rng.normal(size=(5, H, W)).astype(np.float32))
    return write_raster(tmp_path / "e.tif", x, gt=ROTATED_GT, epsg=3035, nodata=-9999.0, tiled=16)


@pytest.mark.parametrize("op", OPS)
def test_output_keeps_the_input_grid(tmp_path, small_src, op):
    res = _ops(small_src, np.ones(5))[op](str(tmp_path / "out" / f"{op}.tif"), block_pixels=SMALL_BLOCKS)
    src, out = describe(small_src), describe(res["output"])
    assert out["geotransform"] == src["geotransform"] == ROTATED_GT
    assert out["size"] == (W, H)
    a, b = osr.SpatialReference(), osr.SpatialReference()
    a.ImportFromWkt(src["crs_wkt"])
    b.ImportFromWkt(out["crs_wkt"])
    assert a.IsSame(b) and a.GetAuthorityCode(None) == "3035"
    # Invalid input pixels are the output's nodata, and only those.
    arr = read(res["output"])
    nodata_px = np.all(arr == out["nodata"][0], axis=0)
    expected = np.zeros((H, W), dtype=bool)
    for r, c in ((5, 7), (20, 30), (10, 10), (39, 49)):
        expected[r, c] = True
    assert np.array_equal(nodata_px, expected)
    assert json.loads(out["config"])["source"]
    # Nothing else is left in the output folder (no temporary or side files).
    assert os.listdir(tmp_path / "out") == [f"{op}.tif"]


@pytest.mark.parametrize("op", OPS + ("reference",))
def test_single_band_input_is_rejected(tmp_path, op):
    src = write_raster(tmp_path / "one.tif", np.ones((1, H, W), dtype=np.float32))
    with pytest.raises(ThorInputError, match="has 1 band; an embedding raster has one band per embedding channel"):
        if op == "reference":
            reference_embedding(src, [point_wkt(1, 1)])
        else:
            _ops(src, np.ones(1))[op](str(tmp_path / "o.tif"))
    assert not os.path.exists(tmp_path / "o.tif")


def test_change_rejects_a_single_band_second_input(tmp_path, small_src):
    one = write_raster(tmp_path / "one.tif", np.ones((1, H, W), dtype=np.float32))
    with pytest.raises(ThorInputError, match="second"):
        change_map(small_src, one, tmp_path / "c.tif")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("when", ["first", "late"])
def test_cancel_leaves_no_output(tmp_path, small_src, op, when):
    out_dir = tmp_path / "out"
    calls, seen_at_cancel = [], []

    def is_canceled():
        calls.append(1)
        # "late" cancels on the next-to-last poll, in the last pass, while the output is being written.
        cancel = len(calls) >= (1 if when == "first" else limit)
        if cancel:
            seen_at_cancel.extend(os.listdir(out_dir) if out_dir.exists() else [])
        return cancel

    # Count the polls of a full run first.
    full = []
    _ops(small_src, np.ones(5))[op](str(tmp_path / "full" / "x.tif"), block_pixels=SMALL_BLOCKS,
                                    is_canceled=lambda: full.append(1) and False)
    limit = len(full) - 1
    with pytest.raises(ThorCanceled):
        _ops(small_src, np.ones(5))[op](str(out_dir / "x.tif"), block_pixels=SMALL_BLOCKS, is_canceled=is_canceled)
    if when == "late":  # the partial output existed when the cancel came...
        assert len(seen_at_cancel) == 1 and seen_at_cancel[0].endswith(".partial.tif")
    else:
        assert seen_at_cancel == []
    # ...and nothing is left behind.
    assert not os.path.exists(out_dir / "x.tif")
    assert not out_dir.exists() or os.listdir(out_dir) == []


@pytest.mark.parametrize("op", OPS)
def test_progress_rises_to_one(tmp_path, small_src, op):
    seen = []
    _ops(small_src, np.ones(5))[op](str(tmp_path / "x.tif"), block_pixels=SMALL_BLOCKS, progress=seen.append)
    assert len(seen) > 5
    assert all(0 <= a <= b <= 1 for a, b in zip(seen, seen[1:]))
    assert seen[-1] == 1.0


def test_output_may_not_overwrite_the_input(tmp_path, small_src):
    with pytest.raises(ThorConfigError, match="overwrite its input"):
        similarity_map(small_src, small_src, np.ones(5))


def test_integer_embedding_rasters_are_read_as_float(tmp_path):
    rng = np.random.default_rng(14)
    x = rng.integers(-100, 100, size=(4, H, W)).astype(np.int16)
    src = write_raster(tmp_path / "e.tif", x, dtype=gdal.GDT_Int16, nodata=-32768)
    res = change_map(src, src, tmp_path / "c.tif")
    assert np.abs(read(res["output"])).max() < 1e-6
