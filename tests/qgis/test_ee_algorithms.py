"""The Earth Engine algorithms (thor:ee_composite, thor:ee_grid, thor:ee_pooled) against the fake service.

The real earthengine-api client talks to tests/fake_ee.py on 127.0.0.1 ($THOR_EE_API_URL), whose pixel
values are derived from each pixel's map coordinates: comparing an output with those values checks the
georeferencing end to end. Each test gets a fresh session, a private cache ($THOR_CACHE_DIR) and HOME.
"""
import importlib
import json
import os
import socket
import threading
import time

import numpy as np
import pytest
from osgeo import gdal, osr
from qgis.core import (
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsRectangle,
    QgsSettings,
    QgsVectorLayer,
)

from tests.conftest import FIXTURE_CKPT, PLUGIN_NAME, need_fixtures, run_qgis_process
from tests.fake_ee import (DEFAULT_PROJECT, ee_env, expected_from_geotransform, fake_ee,  # noqa: F401
                           request_origin)
from tests.helpers import epsg_of, model_output_parameter, read_raster
from tests.qgis.test_toolbox_and_modeler import child

ee = pytest.importorskip("ee")

TINY = {"MODEL_KEY": "thor_v1_tiny", "CHECKPOINT": str(FIXTURE_CKPT)}
S2_BANDS = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]
WHAT_TO_DO_EMPTY = "widen the date range, raise the cloudy-pixel threshold"


def run(alg, params, feedback=None):
    import processing

    return processing.run(f"thor:{alg}", params, feedback=feedback)


def _plugin_session():
    return importlib.import_module(PLUGIN_NAME + ".thor_qgis.ee_session")


def _clean_settings_and_env(monkeypatch):
    settings = QgsSettings()
    for key in ("thor/ee_api_url", "thor/ee_project"):
        settings.remove(key)
    for var in ("EE_PROJECT", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fake(plugin, fake_ee, monkeypatch):
    """The fake service as $THOR_EE_API_URL, and the plugin's own copy of the engine's session reset."""
    _clean_settings_and_env(monkeypatch)
    monkeypatch.setenv("THOR_EE_API_URL", fake_ee.url)
    _plugin_session().reset_session()
    yield fake_ee
    _plugin_session().reset_session()


@pytest.fixture
def tiny():
    need_fixtures()
    return dict(TINY)


def _utm(lon, lat, epsg):
    s, d = osr.SpatialReference(), osr.SpatialReference()
    s.ImportFromEPSG(4326)
    d.ImportFromEPSG(epsg)
    for r in (s, d):
        r.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return osr.CoordinateTransformation(s, d).TransformPoint(lon, lat)[:2]


def _utm_bounds(lon0, lon1, lat0, lat1, epsg):
    pts = [_utm(lon, lat, epsg) for lon in np.linspace(lon0, lon1, 21) for lat in (lat0, lat1)]
    pts += [_utm(lon, lat, epsg) for lon in (lon0, lon1) for lat in np.linspace(lat0, lat1, 21)]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return min(xs), min(ys), max(xs), max(ys)


def _leftovers(folder, stem):
    return [p for p in os.listdir(folder) if stem in p]


def _config(ds):
    return json.loads(ds.GetMetadataItem("THOR_CONFIG"))


# --------------------------------------------------------------------------------------------
# thor:ee_composite
# --------------------------------------------------------------------------------------------


def test_composite_is_on_the_utm_grid_and_holds_the_services_pixels(fake, tmp_path):
    out = tmp_path / "composite.tif"
    res = run("ee_composite", {"EXTENT": "500003,500903,4000007,4000507 [EPSG:32633]", "PROJECT": DEFAULT_PROJECT,
                               "CLOUDY_PCT": 20, "COMPOSITE": "mosaic", "OUTPUT": str(out)})
    assert res == {"OUTPUT": str(out), "WIDTH": 91, "HEIGHT": 51, "BANDS": 10, "CRS": "EPSG:32633"}
    arr, gt, wkt, ds = read_raster(out)
    # top-left snapped outwards onto the 10 m grid; the raster covers the extent and no more
    assert gt == (500000.0, 10.0, 0.0, 4000510.0, 0.0, -10.0)
    assert epsg_of(wkt) == 32633 and arr.dtype == np.float32 and arr.shape == (10, 51, 91)
    assert [ds.GetRasterBand(i + 1).GetDescription() for i in range(10)] == S2_BANDS
    np.testing.assert_allclose(arr, expected_from_geotransform(gt, 91, 51, 10), rtol=0, atol=1e-3)
    cfg = _config(ds)
    assert cfg["collection"] == "COPERNICUS/S2_SR_HARMONIZED"
    assert (cfg["start"], cfg["end_exclusive"]) == ("2024-06-01", "2024-09-01")
    assert cfg["cloudy_pixel_percentage_lt"] == 20 and cfg["composite"] == "mosaic" and cfg["fill_value"] == 0
    assert cfg["earth_engine"]["project"] == DEFAULT_PROJECT and cfg["api_kind"] == "local emulator"
    reqs = fake.compute_requests()
    assert reqs and all(r.path == f"/v1/projects/{DEFAULT_PROJECT}/image:computePixels" for r in reqs)
    assert all(r.body["grid"]["crsCode"] == "EPSG:32633" for r in reqs)


def test_composite_of_a_geographic_extent_at_20_m(fake, tmp_path):
    out = tmp_path / "geo.tif"
    res = run("ee_composite", {"EXTENT": "9.50,9.52,45.50,45.51 [EPSG:4326]", "SCALE": 20, "OUTPUT": str(out)})
    arr, gt, wkt, _ = read_raster(out)
    assert epsg_of(wkt) == 32632 and res["CRS"] == "EPSG:32632"
    assert gt[1] == 20.0 and gt[5] == -20.0 and gt[2] == gt[4] == 0.0
    assert gt[0] % 20 == 0 and gt[3] % 20 == 0
    xmin, ymin, xmax, ymax = _utm_bounds(9.50, 9.52, 45.50, 45.51, 32632)
    assert xmin - 20 < gt[0] <= xmin and ymax <= gt[3] < ymax + 20
    assert gt[0] + 20 * res["WIDTH"] >= xmax > gt[0] + 20 * (res["WIDTH"] - 1)
    assert gt[3] - 20 * res["HEIGHT"] <= ymin < gt[3] - 20 * (res["HEIGHT"] - 1)
    np.testing.assert_allclose(arr, expected_from_geotransform(gt, res["WIDTH"], res["HEIGHT"], 10),
                               rtol=0, atol=1e-3)


def test_endpoint_from_the_setting_and_project_default_from_the_environment(fake, monkeypatch, tmp_path):
    from qgis.core import QgsApplication

    monkeypatch.setenv("EE_PROJECT", "env-project")
    alg = QgsApplication.processingRegistry().createAlgorithmById("thor:ee_composite")
    assert alg.parameterDefinition("PROJECT").defaultValue() == "env-project"
    # no $THOR_EE_API_URL: the QGIS setting thor/ee_api_url is the endpoint
    monkeypatch.delenv("THOR_EE_API_URL")
    QgsSettings().setValue("thor/ee_api_url", fake.url)
    try:
        res = run("ee_composite", {"EXTENT": "500000,501000,4000000,4001000 [EPSG:32633]",
                                   "OUTPUT": str(tmp_path / "setting.tif")})
    finally:
        QgsSettings().remove("thor/ee_api_url")
    assert res["WIDTH"] == 100
    reqs = fake.compute_requests()
    assert len(reqs) == 1 and reqs[0].path == "/v1/projects/env-project/image:computePixels"


def test_composite_uses_the_disk_cache_unless_told_not_to(fake, tmp_path):
    params = {"EXTENT": "500000,501000,4000000,4001000 [EPSG:32633]"}
    run("ee_composite", dict(params, OUTPUT=str(tmp_path / "a.tif")))
    assert fake.count() == 1
    fake.reset_log()
    run("ee_composite", dict(params, OUTPUT=str(tmp_path / "b.tif")))
    assert fake.count() == 0
    assert os.listdir(os.environ["THOR_CACHE_DIR"])  # the test's own cache folder
    run("ee_composite", dict(params, USE_CACHE=False, OUTPUT=str(tmp_path / "c.tif")))
    assert fake.count() == 1
    a, *_ = read_raster(tmp_path / "a.tif")
    b, *_ = read_raster(tmp_path / "b.tif")
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------
# thor:ee_grid
# --------------------------------------------------------------------------------------------


def test_grid_of_a_geographic_extent(fake, tiny, tmp_path):
    out = tmp_path / "grid.tif"
    res = run("ee_grid", {"EXTENT": "9.50,9.54,45.50,45.52 [EPSG:4326]", **tiny, "PROJECT": DEFAULT_PROJECT,
                          "FETCH_WORKERS": 4, "SEAMS": "none", "OUTPUT": str(out)})
    arr, gt, wkt, ds = read_raster(out)
    assert epsg_of(wkt) == 32632
    # the output covers the area on the 160 m grid of the UTM zone
    xmin, ymin, xmax, ymax = _utm_bounds(9.50, 9.54, 45.50, 45.52, 32632)
    x0, y0 = np.floor(xmin / 160) * 160, np.ceil(ymax / 160) * 160
    w, h = int(np.ceil((xmax - x0) / 160)), int(np.ceil((y0 - ymin) / 160))
    assert gt == (x0, 160.0, 0.0, y0, 0.0, -160.0)
    assert (res["WIDTH"], res["HEIGHT"], res["BANDS"]) == (w, h, 192)
    assert arr.shape == (192, h, w) and np.isfinite(arr).all()
    assert ds.GetRasterBand(1).GetDescription() == "thor_000"
    # the tiles of the zone's 2880 m grid that the output touches, each asked for on its own 288 x 288 grid
    # at 10 m, anchored at the tile's corner
    xs = np.arange(np.floor(x0 / 2880), np.ceil((x0 + 160 * w) / 2880)) * 2880
    ys = np.arange(np.ceil(y0 / 2880), np.floor((y0 - 160 * h) / 2880), -1) * 2880
    reqs = fake.compute_requests()
    assert sorted(request_origin(r) for r in reqs) == sorted((x, y) for x in xs for y in ys)
    assert res["TILES"] == len(xs) * len(ys) == res["EE_REQUESTS"]
    for r in reqs:
        g = r.body["grid"]
        assert g["dimensions"] == {"width": 288, "height": 288} and g["crsCode"] == "EPSG:32632"
        assert (g["affineTransform"]["scaleX"], g["affineTransform"]["scaleY"]) == (10.0, -10.0)
    cfg = _config(ds)
    src = cfg["source"]
    assert src["kind"] == "earth_engine" and src["collection"] == "COPERNICUS/S2_SR_HARMONIZED"
    assert (src["start"], src["end_exclusive"], src["cloudy_pixel_percentage_lt"]) == ("2024-06-01", "2024-09-01", 30)
    assert src["composite"] == "median" and src["fill_value"] == 0 and src["workers"] == 4
    assert src["earth_engine"]["project"] == DEFAULT_PROJECT and src["api_kind"] == "local emulator"
    assert src["area"]["utm_crs"] == "EPSG:32632"
    assert cfg["model"]["model_key"] == "thor_v1_tiny" and cfg["grid"]["pixel_size_m"] == 160.0
    assert ds.GetMetadataItem("THOR_MODEL") == "thor_v1_tiny"
    # where the imagery came from, and nothing about credentials but where they came from
    assert src["earth_engine"] == {"project": DEFAULT_PROJECT, "api_url": fake.url,
                                   "auth": "anonymous (local emulator)"}


def test_grid_around_a_point_covers_the_square_centred_on_it(fake, tiny, tmp_path):
    out = tmp_path / "point.tif"
    res = run("ee_grid", {"POINT": "15.01,36.1 [EPSG:4326]", **tiny, "SEAMS": "none", "OUTPUT": str(out)})
    _, gt, wkt, _ = read_raster(out)
    assert epsg_of(wkt) == 32633 and gt[1] == 160.0 and gt[0] % 160 == 0 and gt[3] % 160 == 0
    px, py = _utm(15.01, 36.1, 32633)
    # the 2880 m square around the point, snapped outwards to the 160 m grid: 18 or 19 pixels a side
    assert gt[0] <= px - 1440 + 5 < gt[0] + 160 and gt[3] - 160 < py + 1440 - 5 <= gt[3]
    assert res["WIDTH"] in (18, 19) and res["HEIGHT"] in (18, 19) and 1 <= res["TILES"] <= 4
    res = run("ee_grid", {"POINT": "15.01,36.1 [EPSG:4326]", "BUFFER": 2000, **tiny, "SEAMS": "none",
                          "OUTPUT": str(tmp_path / "point4.tif")})
    assert res["WIDTH"] in (25, 26) and res["HEIGHT"] in (25, 26)


@pytest.mark.parametrize("extra, words", [
    ({}, "Neither an extent nor a point"),
    ({"EXTENT": "500000,501000,4000000,4001000 [EPSG:32633]", "POINT": "500500,4000500 [EPSG:32633]"},
     "Both an extent and a point"),
])
def test_grid_needs_an_extent_or_a_point(fake, tmp_path, extra, words):
    with pytest.raises(QgsProcessingException) as err:
        run("ee_grid", {**TINY, **extra, "OUTPUT": str(tmp_path / "none.tif")})
    assert words in str(err.value) and "either an extent or a point" in str(err.value)
    assert fake.count() == 0 and not (tmp_path / "none.tif").exists()


class _TextFeedback(QgsProcessingFeedback):
    """Records the progress text with the time it was set, the errors and the log."""

    def __init__(self):
        super().__init__()
        self.texts, self.errors, self.infos = [], [], []

    def pushInfo(self, info):  # noqa: N802
        self.infos.append(info)
        super().pushInfo(info)

    def setProgressText(self, text):  # noqa: N802
        self.texts.append((text, time.monotonic()))
        super().setProgressText(text)

    def reportError(self, error, fatalError=False):  # noqa: N802,N803
        self.errors.append(error)
        super().reportError(error, fatalError)


def test_grid_fetches_ahead_of_the_model(fake, tiny, tmp_path):
    fake.latency_s = 0.2
    feedback = _TextFeedback()
    # 2 x 2 tiles of the zone's 2880 m grid
    res = run("ee_grid", {"EXTENT": "501120,506880,3994560,4000320 [EPSG:32633]", **tiny, "BATCH_SIZE": 1,
                          "FETCH_WORKERS": 2, "SEAMS": "none", "OUTPUT": str(tmp_path / "ahead.tif")}, feedback)
    assert res["TILES"] == 4
    # with one tile per batch, the progress text says "tile k of 4" as each tile is embedded
    embedded = [min(t for text, t in feedback.texts if text.startswith(f"tile {k + 1} of 4")) for k in range(4)]
    starts = {request_origin(r): r.start for r in fake.compute_requests()}
    order = [(501120.0, 4000320.0), (504000.0, 4000320.0), (501120.0, 3997440.0), (504000.0, 3997440.0)]
    assert sorted(starts) == sorted(order)
    for k in range(3):
        assert starts[order[k + 1]] < embedded[k], f"tile {k + 1} was not fetched while tile {k} was embedded"
    assert 1 < fake.max_concurrency <= 2
    assert any(text.startswith("Loading the THOR model thor_v1_tiny") for text, _ in feedback.texts)


def test_dry_run_plans_without_session_model_or_file(fake, tiny, tmp_path):
    params = {"EXTENT": "500000,505000,3995000,4000000 [EPSG:32633]", **tiny, "PROJECT": DEFAULT_PROJECT,
              "OUTPUT": str(tmp_path / "out" / "dry.tif")}
    (tmp_path / "out").mkdir()
    plan = run("ee_grid", {**params, "DRY_RUN": True})
    assert fake.count() == 0 and list((tmp_path / "out").iterdir()) == []
    assert "OUTPUT" not in plan and plan["TILES"] == plan["EE_REQUESTS"] > 0
    assert plan["PLAN"].startswith(f"Plan: {plan['TILES']} tile(s)") and "Earth Engine request" in plan["PLAN"]
    res = run("ee_grid", params)
    assert (res["TILES"], res["WIDTH"], res["HEIGHT"], res["BANDS"]) == \
        (plan["TILES"], plan["WIDTH"], plan["HEIGHT"], plan["BANDS"])
    assert len(fake.compute_requests()) == plan["EE_REQUESTS"]


def test_dry_run_of_a_country_reports_the_request_limit(fake, tiny, tmp_path):
    feedback = _TextFeedback()
    plan = run("ee_grid", {"EXTENT": "300000,800000,3700000,4200000 [EPSG:32633]", **tiny, "DRY_RUN": True,
                           "OUTPUT": str(tmp_path / "out" / "country.tif")}, feedback)
    assert plan["TILES"] > 10000 and plan["WIDTH"] == plan["HEIGHT"] == 3125
    assert plan["OUTPUT_BYTES"] == 3125 * 3125 * 192 * 4
    assert plan["ESTIMATED_SECONDS"] == pytest.approx(plan["TILES"] * 0.047)  # thor_v1_tiny's stored figure
    assert fake.count() == 0 and not list((tmp_path / "out").glob("*"))  # (QGIS may make the folder)
    assert any("A real run would stop here" in e and "THOR_EE_MAX_REQUESTS" in e for e in feedback.errors)


def test_tiles_laid_out_again_for_the_models_own_token_grid_meet_the_request_limit(fake, tiny, tmp_path,
                                                                                    monkeypatch):
    """As for grid_from_raster (test_hardening): the layout made again for a model whose token grid is not
    the planned one (tiny at patch size 16, 18 a side, where 8 was asked for: 36) is refused past the
    request limit before any imagery is fetched or anything written."""
    import dataclasses

    alg = importlib.import_module(PLUGIN_NAME + ".processing_provider.alg_ee_grid")
    opened = alg.open_embedder

    def own_token_grid(model, scale_m, feedback):
        return opened(dataclasses.replace(model, patch_size=16), scale_m, feedback)

    monkeypatch.setattr(alg, "open_embedder", own_token_grid)
    (tmp_path / "out").mkdir()
    params = {"EXTENT": "500000,505000,3995000,4000000 [EPSG:32633]", **tiny, "PROJECT": DEFAULT_PROJECT,
              "OUTPUT": str(tmp_path / "out" / "grid.tif")}
    planned = run("ee_grid", {**params, "PATCH_SIZE": 8, "DRY_RUN": True})["EE_REQUESTS"]
    needed = run("ee_grid", {**params, "DRY_RUN": True})["EE_REQUESTS"]  # patch size 16 as planned
    assert needed > planned
    monkeypatch.setenv("THOR_EE_MAX_REQUESTS", str(planned))
    feedback = _TextFeedback()
    with pytest.raises(QgsProcessingException) as e:
        run("ee_grid", {**params, "PATCH_SIZE": 8}, feedback)
    assert f"{needed:,} Earth Engine requests" in str(e.value) and f"limit of {planned:,}" in str(e.value)
    assert "THOR_EE_MAX_REQUESTS" in str(e.value) and any("laid out again" in line for line in feedback.infos)
    assert fake.count() == 0 and list((tmp_path / "out").iterdir()) == []


# --------------------------------------------------------------------------------------------
# thor:ee_pooled
# --------------------------------------------------------------------------------------------


def _points(rows, crs="EPSG:4326"):
    layer = QgsVectorLayer(f"Point?crs={crs}&field=name:string", "pts", "memory")
    feats = []
    for name, (x, y) in rows:
        f = QgsFeature(layer.fields())
        f.setAttributes([name])
        f.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(x, y)))
        feats.append(f)
    layer.dataProvider().addFeatures(feats)
    return layer


def _rows(path):
    layer = QgsVectorLayer(str(path), "pooled", "ogr")
    assert layer.isValid()
    return layer, {f["name"]: f for f in layer.getFeatures()}


def _vector(f, dim=192):
    """The embedding fields as floats, NULL as NaN."""
    values = [f[f"thor_{i:03d}"] for i in range(dim)]
    return np.array([v if isinstance(v, float) else np.nan for v in values], dtype=float)


def test_pooled_points_one_row_each_with_finite_vectors(fake, tiny, tmp_path):
    fake.latency_s = 0.1
    pts = _points([("a", (15.01, 36.1)), ("b", (15.05, 36.12)), ("c", (14.98, 36.05))])
    out = tmp_path / "pooled.gpkg"
    res = run("ee_pooled", {"FEATURES": pts, **tiny, "FETCH_WORKERS": 3, "OUTPUT": str(out)})
    assert res["EMBEDDED"] == 3
    assert fake.max_concurrency > 1  # the squares were fetched in parallel
    layer, rows = _rows(out)
    assert layer.featureCount() == 3 and set(rows) == {"a", "b", "c"}
    for name, f in rows.items():
        assert f["thor_status"] == "ok" and f["thor_model"] == "thor_v1_tiny"
        assert json.loads(f["thor_weights"])["source"] == "checkpoint"
        v = _vector(f)
        assert np.isfinite(v).all() and np.abs(v).sum() > 0
    assert not np.allclose(_vector(rows["a"]), _vector(rows["b"]))
    # each point's square: 2880 m around it in its UTM zone, 288 px at 10 m
    reqs = fake.compute_requests()
    assert len(reqs) == 3
    centres = []
    for r in reqs:
        t, d = r.body["grid"]["affineTransform"], r.body["grid"]["dimensions"]
        assert r.body["grid"]["crsCode"] == "EPSG:32633" and d == {"width": 288, "height": 288}
        assert t["scaleX"] == pytest.approx(10.0)
        centres.append((t["translateX"] + 1440.0, t["translateY"] - 1440.0))
    for lon, lat in ((15.01, 36.1), (15.05, 36.12), (14.98, 36.05)):
        x, y = _utm(lon, lat, 32633)
        assert min(abs(cx - x) + abs(cy - y) for cx, cy in centres) < 1e-3


def test_pooled_polygons_by_bounding_square(fake, tiny, tmp_path):
    layer = QgsVectorLayer("Polygon?crs=EPSG:32633&field=name:string", "polys", "memory")
    feats = []
    for name, (x0, y0, w, h) in (("small", (500000, 4000000, 1000, 600)), ("large", (510000, 4000000, 5000, 2000)),
                                 ("mid", (520000, 4000000, 3000, 1000)), ("tall", (530000, 4000000, 800, 2400))):
        f = QgsFeature(layer.fields())
        f.setAttributes([name])
        f.setGeometry(QgsGeometry.fromRect(QgsRectangle(x0, y0, x0 + w, y0 + h)))
        feats.append(f)
    layer.dataProvider().addFeatures(feats)
    out = tmp_path / "polys.gpkg"
    fake.latency_s = 0.1
    res = run("ee_pooled", {"FEATURES": layer, **tiny, "OUTPUT": str(out)})
    assert res["EMBEDDED"] == 4
    assert fake.max_concurrency > 1  # squares of different sizes are fetched in parallel too
    _, rows = _rows(out)
    assert all(f["thor_status"] == "ok" and np.isfinite(_vector(f)).all() for f in rows.values())
    sizes = sorted(r.body["grid"]["affineTransform"]["scaleX"] * 288 for r in fake.compute_requests())
    assert sizes == pytest.approx([1000.0, 2400.0, 3000.0, 5000.0])  # the bounding squares' sides


def test_pooled_feature_without_imagery_gets_a_status_not_a_vector(fake, tiny, tmp_path):
    empty_x, empty_y = _utm(15.05, 36.12, 32633)

    def empty_here(parsed):
        x0, y0, x1, y1 = parsed.region["coordinates"]
        return x0 <= empty_x <= x1 and y0 <= empty_y <= y1

    fake.empty_collection = empty_here
    pts = _points([("a", (15.01, 36.1)), ("nothing", (15.05, 36.12)), ("c", (14.98, 36.05))])
    out = tmp_path / "partly.gpkg"
    feedback = QgsProcessingFeedback()
    res = run("ee_pooled", {"FEATURES": pts, **tiny, "OUTPUT": str(out)}, feedback)
    assert res["EMBEDDED"] == 2
    _, rows = _rows(out)
    assert len(rows) == 3
    assert rows["a"]["thor_status"] == "ok" and rows["c"]["thor_status"] == "ok"
    assert rows["nothing"]["thor_status"] and rows["nothing"]["thor_status"] != "ok"
    assert rows["nothing"]["thor_status"].startswith("no imagery: no scene matches")
    assert np.isnan(_vector(rows["nothing"])).all()
    assert np.isfinite(_vector(rows["a"])).all()


# --------------------------------------------------------------------------------------------
# Chaining, qgis_process
# --------------------------------------------------------------------------------------------


def test_model_chains_composite_into_grid_from_raster_like_ee_grid(fake, tiny, tmp_path):
    import processing

    extent = "501120,504000,3997440,4000320 [EPSG:32633]"  # exactly one tile of the zone's 2880 m grid
    static = QgsProcessingModelChildParameterSource.fromStaticValue
    model = QgsProcessingModelAlgorithm("ee chain", "tests")
    # fill (and so nodata) -1: the fake serves a few exact zeros, which a nodata of 0 would blank
    comp = child("thor:ee_composite", "composite", {"EXTENT": static(extent), "PROJECT": static(DEFAULT_PROJECT),
                                                    "FILL_VALUE": static(-1.0)})
    model.addChildAlgorithm(comp)
    grid = child("thor:grid_from_raster", "grid", {
        "INPUT": QgsProcessingModelChildParameterSource.fromChildOutput("composite", "OUTPUT"),
        "MODEL_KEY": static("thor_v1_tiny"), "CHECKPOINT": static(str(FIXTURE_CKPT)), "SEAMS": static("none")})
    out_def = QgsProcessingModelOutput("thor_grid", "THOR grid")
    out_def.setChildOutputName("OUTPUT")
    grid.setModelOutputs({"thor_grid": out_def})
    model.addChildAlgorithm(grid)
    chained = str(tmp_path / "chained.tif")
    name = model_output_parameter(model, "grid", "thor_grid")
    res = processing.run(model, {name: chained})
    assert os.path.exists(chained) and res[name] == chained
    a, gt_a, wkt_a, _ = read_raster(chained)
    assert a.shape == (192, 18, 18) and gt_a == (501120.0, 160.0, 0.0, 4000320.0, 0.0, -160.0)
    assert epsg_of(wkt_a) == 32633
    # the same area through thor:ee_grid gives the same grid: same tiling, same pixels, same model
    direct = tmp_path / "direct.tif"
    run("ee_grid", {"EXTENT": extent, **tiny, "SEAMS": "none", "OUTPUT": str(direct)})
    b, gt_b, _, _ = read_raster(direct)
    assert gt_b == gt_a
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-4)


def test_qgis_process_runs_ee_grid(fake, tiny, tmp_path):
    out = tmp_path / "qp_ee_grid.tif"
    r = run_qgis_process("--json", "run", "thor:ee_grid", "--",
                         "EXTENT=500000,502880,3997120,4000000 [EPSG:32633]", f"PROJECT={DEFAULT_PROJECT}",
                         "MODEL_KEY=thor_v1_tiny", f"CHECKPOINT={FIXTURE_CKPT}", f"OUTPUT={out}",
                         env_extra={"THOR_EE_API_URL": fake.url, "THOR_CACHE_DIR": str(tmp_path / "qp_cache")})
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    res = doc["results"]
    assert res["OUTPUT"] == str(out)
    # the default blends overlapping tiles: 3 x 3 tiles of the 1920 m step touch these 18 x 18 pixels
    assert (res["WIDTH"], res["HEIGHT"], res["BANDS"], res["TILES"]) == (18, 18, 192, 9)
    ds = gdal.Open(str(out))
    assert ds.RasterCount == 192 and ds.GetGeoTransform() == (500000.0, 160.0, 0.0, 4000000.0, 0.0, -160.0)
    reqs = fake.compute_requests()
    assert len(reqs) == 9 == res["EE_REQUESTS"]
    assert all(r.path == f"/v1/projects/{DEFAULT_PROJECT}/image:computePixels" for r in reqs)


def test_ee_grid_from_the_toolbox_runs_off_the_main_thread_and_loads_styled(fake, tiny, tmp_path):
    from qgis.core import QgsProject, QgsRasterLayer

    from tests.qgis.test_toolbox_and_modeler import _run_as_toolbox

    project = QgsProject.instance()
    out = str(tmp_path / "task_ee_grid.tif")
    params = {"EXTENT": "500000,502880,3997120,4000000 [EPSG:32633]", **tiny, "OUTPUT": out}
    ok, results, threads, _ = _run_as_toolbox(params, alg_id="thor:ee_grid")
    assert ok and results["OUTPUT"] == out
    assert threads and threading.get_ident() not in threads, "processAlgorithm ran on the main thread"
    layers = [lyr for lyr in project.mapLayers().values()
              if isinstance(lyr, QgsRasterLayer) and os.path.abspath(lyr.source()) == out]
    assert len(layers) == 1
    layer = layers[0]
    assert layer.bandCount() == 192 and layer.crs().authid() == "EPSG:32633"
    assert layer.renderer().type() == "multibandcolor"
    project.removeMapLayer(layer.id())


# --------------------------------------------------------------------------------------------
# Errors and cancel
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ee_grid", "ee_composite"])
def test_empty_collection_says_what_to_do_and_leaves_no_file(fake, tiny, tmp_path, alg):
    fake.empty_collection = True
    out = tmp_path / "out_empty.tif"
    params = {"EXTENT": "500000,502880,3997120,4000000 [EPSG:32633]", "OUTPUT": str(out)}
    if alg == "ee_grid":
        params.update(tiny)
    with pytest.raises(QgsProcessingException) as err:
        run(alg, params)
    msg = str(err.value)
    assert "no image of COPERNICUS/S2_SR_HARMONIZED" in msg and WHAT_TO_DO_EMPTY in msg
    assert _leftovers(tmp_path, "out_empty") == []


@pytest.fixture
def no_network(monkeypatch):
    """Every connection off this machine and every ee.Initialize is an error (the test fails, not hangs)."""
    real_connect = socket.socket.connect

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else str(address)
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"the network was about to be contacted: {address}")
        return real_connect(sock, address)

    def boom(*a, **k):
        raise AssertionError("ee.Initialize was called")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(ee, "Initialize", boom)
    monkeypatch.setattr(ee.deprecation, "_FetchDataCatalogStac", boom)


@pytest.mark.parametrize("stored_credentials", [False, True])
@pytest.mark.parametrize("url", [None, "https://earthengine.googleapis.com"])
def test_no_project_against_the_real_endpoint_says_to_set_it(plugin, ee_env, monkeypatch, no_network, tmp_path,
                                                              stored_credentials, url):
    _clean_settings_and_env(monkeypatch)
    if url:
        monkeypatch.setenv("THOR_EE_API_URL", url)
    if stored_credentials:  # `earthengine authenticate` done, but no project set anywhere
        path = ee_env / "home" / ".config" / "earthengine" / "credentials"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"refresh_token": "1//0gSECRET-refresh-token-abcdefghijkl"}))
    _plugin_session().reset_session()
    out = tmp_path / "out_noproj.tif"
    with pytest.raises(QgsProcessingException) as err:
        run("ee_composite", {"EXTENT": "500000,501000,4000000,4001000 [EPSG:32633]", "PROJECT": "",
                             "OUTPUT": str(out)})
    msg = str(err.value)
    assert "no Google Cloud project" in msg and "'Earth Engine project' field" in msg
    assert ("earthengine authenticate" in msg) is (not stored_credentials)
    assert "SECRET" not in msg
    assert _leftovers(tmp_path, "out_noproj") == []
    assert _plugin_session().current_session() is None


def test_cancel_during_ee_grid_stops_promptly_and_leaves_nothing(fake, tiny, tmp_path):
    fake.latency_s = 0.5
    feedback = QgsProcessingFeedback()
    marks = {}

    def cancel_when_fetching():
        t0 = time.monotonic()
        while fake.count() < 3 and time.monotonic() - t0 < 60:
            time.sleep(0.01)
        time.sleep(0.05)
        marks["canceled"] = time.monotonic()
        feedback.cancel()

    canceller = threading.Thread(target=cancel_when_fetching, daemon=True)
    canceller.start()
    out = tmp_path / "out_cancel.tif"
    # 4 x 4 tiles: at 2 requests in flight and 0.5 s each, about 4 s of fetching if not canceled
    with pytest.raises(QgsProcessingException) as err:
        run("ee_grid", {"EXTENT": "500000,511520,3988480,4000000 [EPSG:32633]", **tiny, "FETCH_WORKERS": 2,
                        "OUTPUT": str(out)}, feedback)
    raised = time.monotonic()
    canceller.join(5)
    assert "Canceled" in str(err.value)
    reqs = fake.compute_requests()
    assert len(reqs) < 16
    # no request started after the cancel, and the run did not wait for the ones in flight to answer
    assert all(r.start <= marks["canceled"] + 0.01 for r in reqs)
    assert any(r.end == 0.0 or r.end > raised for r in reqs), "the cancel waited for the requests in flight"
    assert _leftovers(tmp_path, "out_cancel") == []


def test_an_extent_typed_in_the_wrong_order_is_refused_before_any_request(fake, tiny, tmp_path):
    # xmin, ymin, xmax, ymax instead of QGIS's xmin, xmax, ymin, ymax: a 3500 km x 3500 km area
    for alg in ("ee_grid", "ee_composite"):
        with pytest.raises(QgsProcessingException, match="Earth Engine requests"):
            run(alg, {"EXTENT": "500000,4000000,501000,4001000 [EPSG:32633]", **tiny,
                      "OUTPUT": str(tmp_path / f"{alg}.tif")})
    assert fake.compute_requests() == []
    assert not list(tmp_path.glob("*.tif"))


def test_qgis_process_runs_ee_composite_and_ee_pooled(fake, tiny, tmp_path):
    env = {"THOR_EE_API_URL": fake.url, "THOR_CACHE_DIR": str(tmp_path / "qp_cache")}
    comp = tmp_path / "qp_composite.tif"
    r = run_qgis_process("--json", "run", "thor:ee_composite", "--",
                         "EXTENT=500000,501000,3999000,4000000 [EPSG:32633]", f"PROJECT={DEFAULT_PROJECT}",
                         f"OUTPUT={comp}", env_extra=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["results"]["OUTPUT"] == str(comp)
    ds = gdal.Open(str(comp))
    assert ds.RasterCount == 10 and (ds.RasterXSize, ds.RasterYSize) == (100, 100)
    assert ds.GetGeoTransform() == (500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0)
    assert epsg_of(ds.GetProjection()) == 32633

    pts = tmp_path / "pts.geojson"
    x, y = _utm(15.01, 36.1, 32633)
    pts.write_text(json.dumps({"type": "FeatureCollection", "crs": {"type": "name", "properties": {
        "name": "urn:ogc:def:crs:EPSG::32633"}}, "features": [{"type": "Feature", "properties": {"name": "a"},
                                                               "geometry": {"type": "Point", "coordinates": [x, y]}}]}))
    out = tmp_path / "qp_pooled.gpkg"
    r = run_qgis_process("--json", "run", "thor:ee_pooled", "--", f"FEATURES={pts}", f"PROJECT={DEFAULT_PROJECT}",
                         "MODEL_KEY=thor_v1_tiny", f"CHECKPOINT={FIXTURE_CKPT}", f"OUTPUT={out}", env_extra=env)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["results"]
    assert res["EMBEDDED"] == 1
    _, rows = _rows(out)
    assert rows["a"]["thor_status"] == "ok" and np.isfinite(_vector(rows["a"])).all()
