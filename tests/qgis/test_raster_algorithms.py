"""THOR grid and pooled embeddings from a local raster: numbers, georeferencing, errors."""
import json
import math
import os

import numpy as np
import pytest
from osgeo import gdal, osr
from qgis.core import (
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingException,
    QgsRectangle,
    QgsVectorLayer,
)

from tests.conftest import FIXTURE_CKPT, FIXTURE_INPUT, FIXTURE_OUTPUTS, need_fixtures, run_qgis_process
from tests.helpers import epsg_of, read_raster, write_raster

TINY = {"MODEL_KEY": "thor_v1_tiny", "CHECKPOINT": str(FIXTURE_CKPT)}
# the fixture tile sits on the global tile grid (multiples of 2880 m) and is written as one tile
FX_GT = (599040.0, 10.0, 0.0, 5100480.0, 0.0, -10.0)
ONE = {"SEAMS": "none"}


@pytest.fixture(scope="module")
def fixtures():
    need_fixtures()
    return np.load(FIXTURE_INPUT), np.load(FIXTURE_OUTPUTS)


@pytest.fixture(scope="module")
def fixture_raster(tmp_path_factory, fixtures):
    """288 x 288 px at 10 m holding the fixture's first input (B2..B12), exactly one tile of the grid."""
    x, _ = fixtures
    path = tmp_path_factory.mktemp("fx") / "fixture_s2.tif"
    return write_raster(path, x[0], FX_GT, epsg=32633)


def run(alg, params):
    import processing

    return processing.run(f"thor:{alg}", params)


def test_grid_equals_fixture_grid_mean(plugin, fixtures, fixture_raster, tmp_path):
    _, ref = fixtures
    out = tmp_path / "grid.tif"
    res = run("grid_from_raster", {"INPUT": fixture_raster, **TINY, **ONE, "OUTPUT": str(out)})
    assert res["OUTPUT"] == str(out) and res["BANDS"] == 192 and res["TILES"] == 1
    arr, gt, wkt, ds = read_raster(out)
    assert arr.shape == (192, 18, 18)
    np.testing.assert_allclose(arr, ref["grid_mean"][0], atol=1e-4, rtol=0)
    assert gt == (599040.0, 160.0, 0.0, 5100480.0, 0.0, -160.0)
    assert epsg_of(wkt) == 32633
    assert ds.GetRasterBand(1).GetDescription() == "thor_000"
    assert ds.GetRasterBand(192).GetDescription() == "thor_191"
    cfg = json.loads(ds.GetMetadataItem("THOR_CONFIG"))
    assert cfg["model"]["model_key"] == "thor_v1_tiny"
    assert cfg["engine"]["weights"]["source"] == "checkpoint"
    assert cfg["engine"]["weights"]["sha256"]
    assert cfg["ground_cover_m"] == 2880.0
    assert cfg["output"]["group_merge"] == "mean"
    assert cfg["grid"]["pixel_size_m"] == 160.0
    assert cfg["source"]["path"] == fixture_raster


def test_grid_concat_and_sum_channels(plugin, fixtures, fixture_raster, tmp_path):
    _, ref = fixtures
    for merge, key in (("concat", "grid_concat"), ("sum", "grid_sum")):
        out = tmp_path / f"grid_{merge}.tif"
        res = run("grid_from_raster", {"INPUT": fixture_raster, **TINY, **ONE, "GROUP_MERGE": merge,
                                       "OUTPUT": str(out)})
        arr, *_ = read_raster(out)
        assert res["BANDS"] == ref[key].shape[1]
        np.testing.assert_allclose(arr, ref[key][0], atol=1e-4, rtol=0)


def test_pooled_point_at_centre_equals_fixture(plugin, fixtures, fixture_raster, tmp_path):
    _, ref = fixtures
    pts = QgsVectorLayer("Point?crs=EPSG:32633&field=name:string", "pts", "memory")
    feats = []
    for name, (x, y) in (("centre", (600480.0, 5099040.0)), ("far away", (700000.0, 5000000.0))):
        f = QgsFeature(pts.fields())
        f.setAttributes([name])
        f.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(x, y)))
        feats.append(f)
    pts.dataProvider().addFeatures(feats)
    out = str(tmp_path / "pooled.gpkg")
    res = run("pooled_from_raster", {"FEATURES": pts, "INPUT": fixture_raster, **TINY, "OUTPUT": out})
    assert res["EMBEDDED"] == 1
    layer = QgsVectorLayer(res["OUTPUT"], "pooled", "ogr")
    rows = {f["name"]: f for f in layer.getFeatures()}
    centre = rows["centre"]
    vec = np.array([centre[f"thor_{i:03d}"] for i in range(192)])
    np.testing.assert_allclose(vec, ref["pooled_mean"][0], atol=1e-4, rtol=0)
    assert centre["thor_status"] == "ok" and centre["thor_model"] == "thor_v1_tiny"
    assert json.loads(centre["thor_weights"])["source"] == "checkpoint"
    far = rows["far away"]
    assert far["thor_status"].startswith("outside raster")
    assert far["thor_000"] is None or (isinstance(far["thor_000"], float) and math.isnan(far["thor_000"])) \
        or str(far["thor_000"]) == "NULL"


def test_georeferencing_of_size_not_multiple_of_tile(plugin, tmp_path):
    # 300 x 200 px at 10 m from (350010, 4200000): the output covers it on the 160 m token grid of the CRS
    # (349920 to 353120, 4198000 to 4200000: 20 x 13 pixels), from 2 x 2 tiles of the global 2880 m grid
    rng = np.random.default_rng(0)
    data = rng.uniform(100, 3000, (10, 200, 300)).astype(np.float32)
    src = write_raster(tmp_path / "odd.tif", data, (350010.0, 10.0, 0.0, 4200000.0, 0.0, -10.0), epsg=32631)
    out = tmp_path / "odd_grid.tif"
    res = run("grid_from_raster", {"INPUT": src, **TINY, **ONE, "OUTPUT": str(out)})
    arr, gt, wkt, _ = read_raster(out)
    assert (res["WIDTH"], res["HEIGHT"], res["TILES"]) == (20, 13, 4)
    assert arr.shape == (192, 13, 20)
    assert gt == (349920.0, 160.0, 0.0, 4200000.0, 0.0, -160.0)
    assert epsg_of(wkt) == 32631
    assert np.isfinite(arr).all() and not np.any(arr == -9999.0)  # every pixel holds some imagery


def test_georeferencing_of_a_custom_extent(plugin, sample_raster, tmp_path):
    # an extent that starts mid-pixel snaps outwards onto the CRS's 160 m token grid
    out = tmp_path / "ext.tif"
    extent = "501234.5,503000,4996100,4999001.2 [EPSG:32632]"
    res = run("grid_from_raster", {"INPUT": str(sample_raster), **TINY, **ONE, "EXTENT": extent,
                                   "OUTPUT": str(out)})
    _, gt, _, _ = read_raster(out)
    assert gt == (501120.0, 160.0, 0.0, 4999040.0, 0.0, -160.0)
    assert (res["WIDTH"], res["HEIGHT"]) == (12, 19)  # 501120..503040, 4996000..4999040


def test_georeferencing_of_a_geographic_input(plugin, tmp_path):
    # EPSG:4326 input near 9.5°E 45.5°N: warped to 10 m in UTM 32N, tiles on that 10 m grid
    rng = np.random.default_rng(1)
    data = rng.uniform(100, 3000, (10, 120, 150)).astype(np.float32)
    src = write_raster(tmp_path / "geo.tif", data, (9.48, 0.0002, 0.0, 45.51, 0.0, -0.0002), epsg=4326)
    out = tmp_path / "geo_grid.tif"
    run("grid_from_raster", {"INPUT": src, **TINY, **ONE, "OUTPUT": str(out)})
    arr, gt, wkt, _ = read_raster(out)
    assert epsg_of(wkt) == 32632
    assert gt[1] == 160.0 and gt[5] == -160.0 and gt[2] == gt[4] == 0.0
    # the origin is the top-left corner of the raster's footprint in UTM, snapped outwards to the 160 m grid
    s, d = osr.SpatialReference(), osr.SpatialReference()
    s.ImportFromEPSG(4326)
    d.ImportFromEPSG(32632)
    for r in (s, d):
        r.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    ct = osr.CoordinateTransformation(s, d)
    corners = [ct.TransformPoint(lon, lat)[:2] for lon in (9.48, 9.51) for lat in (45.486, 45.51)]
    xmin = min(c[0] for c in corners)
    ymax = max(c[1] for c in corners)
    assert gt[0] % 160 == 0 and gt[3] % 160 == 0
    assert xmin - 170 <= gt[0] <= xmin + 0.5
    assert ymax - 0.5 <= gt[3] <= ymax + 170
    # footprint ≈ 2340 m x 2670 m → 15 or 16 x 17 or 18 pixels of 160 m
    assert arr.shape[0] == 192 and arr.shape[2] in (15, 16, 17) and arr.shape[1] in (17, 18, 19)


def test_band_mapping_picks_bands_from_a_12_band_stack(plugin, fixtures, tmp_path):
    x, ref = fixtures
    # B1 B2 B3 B4 B5 B6 B7 B8 B8A B9 B11 B12: put junk in B1 and B9
    stack = np.concatenate([np.full((1, 288, 288), 7777, np.float32), x[0][:8], np.full((1, 288, 288), 5555, np.float32),
                            x[0][8:]])
    src = write_raster(tmp_path / "s12.tif", stack, FX_GT, epsg=32633)
    out = tmp_path / "g12.tif"
    run("grid_from_raster", {"INPUT": src, "BAND_MAP": "2,3,4,5,6,7,8,9,11,12", **TINY, **ONE, "OUTPUT": str(out)})
    arr, *_ = read_raster(out)
    np.testing.assert_allclose(arr, ref["grid_mean"][0], atol=1e-4, rtol=0)


def test_dn_offset_is_applied(plugin, fixtures, tmp_path):
    x, ref = fixtures
    src = write_raster(tmp_path / "off.tif", x[0] + 1000.0, FX_GT, epsg=32633)
    out = tmp_path / "off_grid.tif"
    run("grid_from_raster", {"INPUT": src, "DN_OFFSET": -1000, **TINY, **ONE, "OUTPUT": str(out)})
    arr, *_ = read_raster(out)
    np.testing.assert_allclose(arr, ref["grid_mean"][0], atol=2e-4, rtol=0)


@pytest.mark.parametrize("case, extra, message", [
    ("wrong band count", {}, "has 5 band(s); THOR needs 10"),
    ("band map out of range", {"BAND_MAP": "1,2,3,4,5,6,7,8,9,14"}, "out of range"),
    ("band map too short", {"BAND_MAP": "1,2,3"}, "needs 10"),
    ("inverted extent", {"EXTENT": "600500,600100,5099000,5099800 [EPSG:32633]"}, "empty or inverted"),
    ("empty extent", {"EXTENT": "600100,600100,5099000,5099800 [EPSG:32633]"}, "empty"),
    ("extent outside", {"EXTENT": "700000,701000,5000000,5001000 [EPSG:32633]"}, "outside the raster"),
    ("unreadable checkpoint", {"CHECKPOINT": "__BAD__"}, "checkpoint"),
    ("invalid group merge", {"GROUP_MERGE": "max"}, "GROUP_MERGE"),
    ("image size vs patch", {"IMAGE_SIZE": 100}, "not divisible by the patch size"),
])
def test_bad_inputs_fail_clearly_and_leave_nothing(plugin, fixture_raster, tmp_path, case, extra, message):
    src = fixture_raster
    if case in ("wrong band count", "band map out of range", "band map too short"):
        n = 5 if case == "wrong band count" else 13
        src = write_raster(tmp_path / "bands.tif", np.ones((n, 32, 32), np.float32) * 500,
                           FX_GT, epsg=32633)
    params = {"INPUT": src, **TINY, "OUTPUT": str(tmp_path / "out.tif")}
    if extra.get("CHECKPOINT") == "__BAD__":
        bad = tmp_path / "broken.pt"
        bad.write_bytes(b"this is not a checkpoint")
        extra = {"CHECKPOINT": str(bad)}
    params.update(extra)
    with pytest.raises(QgsProcessingException) as e:
        run("grid_from_raster", params)
    assert message in str(e.value)
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith("out") or p.startswith(".out")]
    assert leftovers == []


def test_grid_on_the_real_sentinel2_sample(plugin, tmp_path):
    """The bundled real L1C crop (sample/): its UTM 18N grid kept, finite embeddings. Its corner (443220,
    4175560) is not on the 160 m token grid: the output covers it snapped outwards, 37 x 37 pixels, from the
    5 x 5 tiles of the default blending that touch it."""
    import shutil

    src = str(tmp_path / "s2_l1c_eastern_shore_576.tif")  # a copy: QGIS writes .aux.xml files beside inputs
    shutil.copy(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                             "sample", "s2_l1c_eastern_shore_576.tif"), src)
    out = tmp_path / "real_grid.tif"
    res = run("grid_from_raster", {"INPUT": src, **TINY, "OUTPUT": str(out)})
    assert (res["WIDTH"], res["HEIGHT"], res["BANDS"], res["TILES"]) == (37, 37, 192, 25)
    arr, gt, wkt, _ = read_raster(out)
    assert gt == (443200.0, 160.0, 0.0, 4175680.0, 0.0, -160.0) and epsg_of(wkt) == 32618
    assert np.isfinite(arr).all()
    assert float(arr.std(axis=(1, 2)).min()) > 0  # every channel varies over the scene


def test_qgis_process_runs_grid(plugin, sample_raster, tmp_path):
    out = tmp_path / "qp_grid.tif"
    r = run_qgis_process("--json", "run", "thor:grid_from_raster", "--", f"INPUT={sample_raster}",
                         "MODEL_KEY=thor_v1_tiny", f"CHECKPOINT={FIXTURE_CKPT}", f"OUTPUT={out}")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    res = doc["results"]
    assert res["OUTPUT"] == str(out)
    # the default: blended overlapping tiles (3-token margin, 1920 m step) over the sample's 36 x 36 pixels
    assert (res["WIDTH"], res["HEIGHT"], res["BANDS"], res["TILES"]) == (36, 36, 192, 20)
    assert res["PLAN"].startswith("Plan: 20 tile(s)")
    ds = gdal.Open(str(out))
    assert ds.RasterCount == 192 and (ds.RasterXSize, ds.RasterYSize) == (36, 36)


def test_cells_past_the_imagery_are_nodata(plugin, tmp_path):
    """An extent of 36 x 36 pixels (160 m) over a 400 x 300 px raster: pixels with no imagery are nodata,
    every pixel with imagery holds an embedding."""
    rng = np.random.default_rng(5)
    data = rng.uniform(100, 3000, (10, 300, 400)).astype(np.float32)
    src = write_raster(tmp_path / "part.tif", data, (300000.0, 10.0, 0.0, 4100000.0, 0.0, -10.0), epsg=32631)
    out = tmp_path / "part_grid.tif"
    run("grid_from_raster", {"INPUT": src, **TINY, **ONE, "EXTENT": "300000,305760,4094240,4100000 [EPSG:32631]",
                             "OUTPUT": str(out)})
    arr, _, _, ds = read_raster(out)
    assert arr.shape == (192, 36, 36)
    assert ds.GetRasterBand(1).GetNoDataValue() == -9999.0
    nodata = np.all(arr == -9999.0, axis=0)
    # 400 px = 25 cells of 16 px, 300 px = 18.75 → 19 cells hold imagery
    expected = np.ones((36, 36), bool)
    expected[:19, :25] = False
    np.testing.assert_array_equal(nodata, expected)
    assert np.isfinite(arr[:, :19, :25]).all() and (np.abs(arr[:, :19, :25]) < 1000).all()


def test_extent_given_as_a_layer_path_with_digits(plugin, fixture_raster, tmp_path):
    """An extent parameter naming a layer (whose name holds numbers) takes that layer's extent."""
    import shutil
    from pathlib import Path

    # a path whose numbers, read as coordinates, are inverted (pid ≥ 10 > 9): a typed-extent check that
    # misreads paths refuses it
    folder = Path(f"/tmp/thor-extent-check-{os.getpid()}")
    folder.mkdir(exist_ok=True)
    named = folder / "s2_9_8_7_6.tif"
    shutil.copy(fixture_raster, named)
    try:
        out = tmp_path / "by_layer.tif"
        res = run("grid_from_raster", {"INPUT": fixture_raster, "EXTENT": str(named), **TINY, **ONE,
                                       "OUTPUT": str(out)})
        assert res["TILES"] == 1
    finally:
        shutil.rmtree(folder)


def test_canceled_pooled_run_leaves_no_file(plugin, fixture_raster, tmp_path):
    import processing
    from qgis.core import QgsProcessingFeedback
    from qgis.PyQt.QtCore import Qt

    pts = QgsVectorLayer("Point?crs=EPSG:32633", "pts", "memory")
    feats = []
    for i in range(12):
        f = QgsFeature()
        f.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(599540.0 + 150 * i, 5099000.0)))
        feats.append(f)
    pts.dataProvider().addFeatures(feats)
    for name in ("canceled.gpkg", "canceled.shp"):
        feedback = QgsProcessingFeedback()
        feedback.progressChanged.connect(lambda p, f=feedback: p > 50 and f.cancel(),
                                         Qt.ConnectionType.DirectConnection)
        out = tmp_path / name
        with pytest.raises(QgsProcessingException, match="Canceled"):
            processing.run("thor:pooled_from_raster", {"FEATURES": pts, "INPUT": fixture_raster, **TINY,
                                                       "BATCH_SIZE": 2, "OUTPUT": str(out)}, feedback=feedback)
        assert list(tmp_path.iterdir()) == []
        # and nothing of it is still held open
        held = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                if os.path.exists(f"/proc/self/fd/{fd}")]
        assert not [h for h in held if "canceled." in h]


def test_web_mercator_input_is_warped_to_utm(plugin, tmp_path):
    """EPSG:3857 "10 m" pixels are 10·cos(lat) m on the ground: such a raster is warped to true 10 m UTM."""
    rng = np.random.default_rng(2)
    data = rng.uniform(100, 3000, (10, 200, 200)).astype(np.float32)
    # near 9.5°E 45.5°N
    src = write_raster(tmp_path / "wm.tif", data, (1057500.0, 10.0, 0.0, 5702000.0, 0.0, -10.0), epsg=3857)
    out = tmp_path / "wm_grid.tif"
    run("grid_from_raster", {"INPUT": src, **TINY, **ONE, "OUTPUT": str(out)})
    _, gt, wkt, _ = read_raster(out)
    assert epsg_of(wkt) == 32632
    assert gt[1] == 160.0 and gt[0] % 160 == 0 and gt[3] % 160 == 0


def test_seam_modes_share_the_output_grid(plugin, sample_raster, tmp_path):
    runs = {}
    for seams in ("none", "crop", "blend"):
        out = tmp_path / f"{seams}.tif"
        res = run("grid_from_raster", {"INPUT": str(sample_raster), **TINY, "SEAMS": seams, "OUTPUT": str(out)})
        runs[seams] = (res, *read_raster(out))
    # 5760 m from (500000, 5000000): 3 x 3 tiles of 2880 m; 4 x 4 of the 1920 m step (crop); blending also
    # takes the tiles whose outer margin reaches the area (5 x 4)
    assert [runs[k][0]["TILES"] for k in ("none", "crop", "blend")] == [9, 16, 20]
    gts = {runs[k][2] for k in runs}
    assert gts == {(500000.0, 160.0, 0.0, 5000000.0, 0.0, -160.0)}
    for seams, (res, arr, _, _, ds) in runs.items():
        assert (res["WIDTH"], res["HEIGHT"]) == (36, 36)
        assert np.isfinite(arr).all() and not np.any(arr == -9999.0)
        cfg = json.loads(ds.GetMetadataItem("THOR_CONFIG"))
        assert cfg["grid"]["seams"] == seams
    cfg = json.loads(runs["crop"][4].GetMetadataItem("THOR_CONFIG"))
    assert cfg["grid"]["context_margin_tokens"] == 3 and cfg["grid"]["tile_step_m"] == 1920.0


@pytest.mark.parametrize("seams, margin, message", [
    ("crop", 9, "context margin must be 0 to 8"),
    ("blend", 5, "for blending, the margin must be 0 to 4"),
])
def test_context_margin_out_of_range_is_refused_before_running(plugin, fixture_raster, tmp_path, seams, margin,
                                                               message):
    with pytest.raises(QgsProcessingException, match=message):
        run("grid_from_raster", {"INPUT": fixture_raster, **TINY, "SEAMS": seams, "CONTEXT_MARGIN": margin,
                                 "OUTPUT": str(tmp_path / "m.tif")})
    assert not list(tmp_path.iterdir())


def test_dry_run_writes_nothing_and_plans_the_run(plugin, sample_raster, tmp_path):
    params = {"INPUT": str(sample_raster), **TINY, "OUTPUT": str(tmp_path / "planned.tif")}
    plan = run("grid_from_raster", {**params, "DRY_RUN": True})
    assert list(tmp_path.iterdir()) == [] and "OUTPUT" not in plan
    assert plan["PLAN"].startswith(f"Plan: {plan['TILES']} tile(s) of 2880 m")
    assert plan["OUTPUT_BYTES"] == 36 * 36 * 192 * 4 and plan["ESTIMATED_SECONDS"] > 0
    assert plan["EE_REQUESTS"] == 0
    res = run("grid_from_raster", params)
    assert (res["TILES"], res["WIDTH"], res["HEIGHT"], res["BANDS"]) == \
        (plan["TILES"], plan["WIDTH"], plan["HEIGHT"], plan["BANDS"])
    assert os.path.exists(res["OUTPUT"])


def test_qgis_process_dry_run(plugin, sample_raster, tmp_path):
    out = tmp_path / "never.tif"
    r = run_qgis_process("--json", "run", "thor:grid_from_raster", "--", f"INPUT={sample_raster}",
                         "MODEL_KEY=thor_v1_large", "PRETRAINED=false", "DRY_RUN=true", f"OUTPUT={out}")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["results"]
    assert res["TILES"] == 20 and (res["WIDTH"], res["HEIGHT"], res["BANDS"]) == (36, 36, 1024)
    assert "Plan: 20 tile(s)" in res["PLAN"] and res["ESTIMATED_SECONDS"] > 0
    assert not out.exists() and list(tmp_path.iterdir()) == []
