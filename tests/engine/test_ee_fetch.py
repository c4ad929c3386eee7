"""What a tile request carries and what its answer becomes: the real earthengine-api client against the
fake service, with assertions on the JSON the fake received and on coordinate-derived pixel values."""
import json
import math
import os

import numpy as np
import pytest

from tests.fake_ee import (DEFAULT_PROJECT, ee_env, ee_session_on_fake, expected_from_geotransform,  # noqa: F401
                           fake_ee, find_calls, parse_image, request_tree, utm_layout)
from thor_qgis import ee_fetch
from thor_qgis.errors import ThorConfigError, ThorFetchError
from thor_qgis.specs import S2_BANDS, SensorSpec, TemporalSpec

pytest.importorskip("ee")

JUNE = TemporalSpec("2024-06-01", "2024-07-01")


def _fetch_all(layout, sensor=None, temporal=JUNE, **kw):
    kw.setdefault("cache", False)
    kw.setdefault("workers", 4)
    return list(ee_fetch.fetch_tiles(layout, sensor or SensorSpec(), temporal, **kw))


@pytest.mark.parametrize("composite, reducer", [
    ("median", "reduce.median"), ("mean", "reduce.mean"), ("min", "reduce.min"), ("max", "reduce.max"),
    ("mosaic", "ImageCollection.mosaic"),
])
def test_the_request_carries_collection_dates_cloud_bands_reducer_and_fill(ee_session_on_fake, composite,
                                                                          reducer):
    fake, _ = ee_session_on_fake
    layout = utm_layout(2, 1, image_size=32)
    sensor = SensorSpec(collection="COPERNICUS/S2_SR_HARMONIZED", cloudy_pct=25, composite=composite,
                        fill_value=-7.5)
    _fetch_all(layout, sensor, TemporalSpec("2023-05-01", "2023-08-15"))
    reqs = fake.compute_requests()
    assert len(reqs) == 2
    tiles = list(layout.tiles())
    for rec in reqs:
        assert rec.method == "POST" and rec.path.startswith(f"/v1/projects/{DEFAULT_PROJECT}/image:computePixels")
        body = rec.body
        assert body["fileFormat"] == "NPY"
        tree = request_tree(rec)
        assert find_calls(tree, "ImageCollection.load") == [{"id": "COPERNICUS/S2_SR_HARMONIZED"}]
        (dates,) = find_calls(tree, "DateRange")
        assert dates == {"start": "2023-05-01", "end": "2023-08-15"}
        (date_filter,) = find_calls(tree, "Filter.dateRangeContains")
        assert date_filter["rightField"] == "system:time_start"
        (cloud,) = find_calls(tree, "Filter.lessThan")
        assert cloud == {"leftField": "CLOUDY_PIXEL_PERCENTAGE", "rightValue": 25.0}
        (bounds_filter,) = find_calls(tree, "Filter.intersects")
        (rect,) = find_calls(bounds_filter, "GeometryConstructors.Rectangle")
        assert rect["geodesic"] is False
        assert find_calls(rect, "Projection") == [{"crs": "EPSG:32633"}]
        # the filter region is the very tile this request is for
        t = rec.body["grid"]["affineTransform"]
        tile = next(tl for tl in tiles if (tl.bounds[0], tl.bounds[3]) == (t["translateX"], t["translateY"]))
        assert rect["coordinates"] == list(tile.bounds)
        assert len(find_calls(tree, reducer)) == 1
        assert [c["bandSelectors"] for c in find_calls(tree, "Image.select")] == [list(S2_BANDS)] * 2
        assert len(find_calls(tree, "Image.toFloat")) == 1
        (unmask,) = find_calls(tree, "Image.unmask")
        assert unmask["sameFootprint"] is False
        assert find_calls(unmask["value"], "Image.constant") == [{"value": -7.5}]
        parsed = parse_image(body["expression"])
        assert (parsed.collection_bands, parsed.image_bands) == (list(S2_BANDS), list(S2_BANDS))
        assert parsed.composite == composite and parsed.dtype == "<f4" and parsed.fill == -7.5
        if composite == "mosaic":  # least cloudy on top
            assert (parsed.sort_key, parsed.sort_ascending) == ("CLOUDY_PIXEL_PERCENTAGE", False)
        else:
            assert parsed.sort_key is None


def test_the_grid_is_the_tiles_utm_grid_at_10m(ee_session_on_fake):
    fake, _ = ee_session_on_fake
    layout = utm_layout(3, 2, image_size=32, epsg=32633, x0=499_990.0, y0=4_100_020.0)
    got = _fetch_all(layout, workers=3)
    assert [t.index for t, _ in got] == list(range(6))
    grids = {tuple(rec.body["grid"]["affineTransform"][k] for k in ("translateX", "translateY")): rec.body["grid"]
             for rec in fake.compute_requests()}
    assert len(grids) == 6
    for tile in layout.tiles():
        grid = grids[(tile.bounds[0], tile.bounds[3])]
        assert grid["crsCode"] == "EPSG:32633" and "crsWkt" not in grid
        assert grid["dimensions"] == {"width": 32, "height": 32}
        assert grid["affineTransform"] == {"scaleX": 10.0, "shearX": 0.0, "translateX": tile.bounds[0],
                                           "shearY": 0.0, "scaleY": -10.0, "translateY": tile.bounds[3]}
        assert tile.bounds[2] - tile.bounds[0] == 320.0


def test_the_answer_becomes_a_georeferenced_chw_array(ee_session_on_fake):
    layout = utm_layout(2, 2, image_size=32)
    got = _fetch_all(layout)
    for tile, arr in got:
        assert arr.shape == (10, 32, 32) and arr.dtype == np.float32
        expected = expected_from_geotransform(layout.pixel_geotransform(tile), 32, 32, 10)
        np.testing.assert_allclose(arr, expected, atol=2e-3)
        # band k is band 0 + 1000 k: the bands come in the sensor's order
        np.testing.assert_allclose(arr - arr[:1], np.broadcast_to(np.arange(10)[:, None, None] * 1000.0, arr.shape),
                                   atol=2e-3)
    # a half-pixel error would be seen: the values move by more than the tolerance
    tile, arr = got[0]
    gt = list(layout.pixel_geotransform(tile))
    gt[0] += 5.0
    assert np.abs(arr - expected_from_geotransform(gt, 32, 32, 10)).max() > 1.0


def test_bands_are_taken_by_name_not_position(ee_session_on_fake):
    fake, _ = ee_session_on_fake
    fake.field_order = "reversed"
    layout = utm_layout(1, 1)
    (tile, arr), = _fetch_all(layout)
    np.testing.assert_allclose(arr, expected_from_geotransform(layout.pixel_geotransform(tile), 32, 32, 10),
                               atol=2e-3)


def test_fill_value_where_there_is_no_data(ee_session_on_fake):
    fake, _ = ee_session_on_fake
    fake.nodata = lambda x, y: x < 500_100.0
    layout = utm_layout(1, 1)
    (tile, arr), = _fetch_all(layout, SensorSpec(fill_value=-1.0))
    assert np.all(arr[:, :, :10] == -1.0)  # pixel centres 500005 .. 500095
    expected = expected_from_geotransform(layout.pixel_geotransform(tile), 32, 32, 10)
    np.testing.assert_allclose(arr[:, :, 10:], expected[:, :, 10:], atol=2e-3)


def test_a_wkt_crs_is_sent_as_its_epsg_code(ee_session_on_fake):
    from osgeo import osr

    fake, _ = ee_session_on_fake
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32631)
    wkt = srs.ExportToWkt()
    from thor_qgis.tiling import layout_for_area

    layout = layout_for_area((400_000, 5_000_000, 400_320, 5_000_320), wkt, 10.0, 32, 2)
    _fetch_all(layout)
    (rec,) = fake.compute_requests()
    assert rec.body["grid"]["crsCode"] == "EPSG:32631"
    assert ee_fetch.ee_crs("epsg:32601") == ("crsCode", "EPSG:32601")


def test_fetch_patch_covers_exactly_the_square(ee_session_on_fake):
    fake, _ = ee_session_on_fake
    patch = ee_fetch.fetch_patch(500_123.0, 4_000_456.0, 200.0, "EPSG:32633", SensorSpec(), JUNE,
                                 image_size=32, cache=False)
    assert patch.pixel_size == 12.5 and patch.array.shape == (10, 32, 32)
    assert patch.grid.bounds == (499_923.0, 4_000_256.0, 500_323.0, 4_000_656.0)
    (rec,) = fake.compute_requests()
    assert rec.body["grid"]["affineTransform"] == {"scaleX": 12.5, "shearX": 0.0, "translateX": 499_923.0,
                                                   "shearY": 0.0, "scaleY": -12.5, "translateY": 4_000_656.0}
    (rect,) = find_calls(request_tree(rec), "GeometryConstructors.Rectangle")
    assert rect["coordinates"] == [499_923.0, 4_000_256.0, 500_323.0, 4_000_656.0]
    np.testing.assert_allclose(patch.array, expected_from_geotransform(patch.grid.geotransform, 32, 32, 10),
                               atol=2e-3)
    got = list(ee_fetch.fetch_patches([(500_000.0, 4_000_000.0), (501_000.0, 4_001_000.0)], 160.0,
                                      "EPSG:32633", SensorSpec(), JUNE, image_size=32, workers=2, cache=False))
    assert [i for i, _ in got] == [0, 1] and got[1][1].grid.geotransform[0] == 500_840.0
    assert got[1][1].pixel_size == 10.0


def test_an_empty_collection_is_a_clear_error(ee_session_on_fake):
    fake, _ = ee_session_on_fake
    fake.empty_collection = True
    with pytest.raises(ThorFetchError) as err:
        _fetch_all(utm_layout(2, 2), SensorSpec(cloudy_pct=5), TemporalSpec("2024-01-01", "2024-01-03"),
                   workers=1, policy=ee_fetch.RetryPolicy(sleep=lambda s: None))
    msg = str(err.value)
    for words in ("COPERNICUS/S2_SR_HARMONIZED", "2024-01-01", "2024-01-03", "CLOUDY_PIXEL_PERCENTAGE < 5",
                  "tile 0", "widen the date range"):
        assert words in msg
    first = fake.compute_requests()[0]
    assert first.status == 400
    assert 1 <= fake.count() <= 2  # not retried; at most the one queued behind it had started


def test_an_empty_collection_can_be_filled_instead(ee_session_on_fake):
    fake, _ = ee_session_on_fake
    fake.empty_collection = lambda parsed: parsed.start == "2024-01-01"
    logs = []
    stats = ee_fetch.FetchStats()
    got = _fetch_all(utm_layout(2, 1), SensorSpec(fill_value=-3.0), TemporalSpec("2024-01-01", "2024-01-03"),
                     on_empty="fill", log=logs.append, stats=stats)
    assert all(np.all(arr == -3.0) for _, arr in got) and stats.filled_empty == 2
    assert sum("filled with -3" in m for m in logs) == 2
    with pytest.raises(ThorConfigError):
        ee_fetch.fetch_tiles(utm_layout(1, 1), SensorSpec(), JUNE, on_empty="skip")


def test_write_composite_geotiff_streams_an_exactly_georeferenced_raster(ee_session_on_fake, tmp_path):
    from tests.helpers import epsg_of, read_raster

    fake, _ = ee_session_on_fake
    bounds = (500_003.0, 4_000_007.0, 500_703.0, 4_000_457.0)
    path = tmp_path / "out" / "composite.tif"
    logs = []
    res = ee_fetch.write_composite_geotiff(bounds, SensorSpec(fill_value=0.0), JUNE, str(path), crs="EPSG:32633",
                                           tile_px=32, workers=4, cache=False, log=logs.append,
                                           metadata={"algorithm": "thor:fetch_composite"})
    # top-left snapped outwards to the 10 m grid; the raster covers the bounds and no more than a pixel past
    assert res.geotransform == (500_000.0, 10.0, 0.0, 4_000_460.0, 0.0, -10.0)
    assert (res.width, res.height) == (71, 46)
    assert res.blocks == 3 * 2 == fake.count()
    arr, gt, wkt, ds = read_raster(path)
    assert arr.shape == (10, 46, 71) and arr.dtype == np.float32
    assert gt == res.geotransform and epsg_of(wkt) == 32633
    np.testing.assert_allclose(arr, expected_from_geotransform(gt, 71, 46, 10), atol=2e-3)
    assert [ds.GetRasterBand(i + 1).GetDescription() for i in range(10)] == list(S2_BANDS)
    assert ds.GetRasterBand(1).GetNoDataValue() == 0.0
    cfg = json.loads(ds.GetMetadataItem("THOR_CONFIG"))
    assert cfg["collection"] == "COPERNICUS/S2_SR_HARMONIZED" and cfg["start"] == "2024-06-01"
    assert cfg["earth_engine"]["project"] == DEFAULT_PROJECT and cfg["algorithm"] == "thor:fetch_composite"
    assert cfg["grid"]["crs"] == "EPSG:32633" and cfg["stats"]["requests"] == 6
    assert sorted(os.listdir(path.parent)) == ["composite.tif"]
    assert any("wrote 71x46" in m for m in logs)


def test_write_composite_geotiff_from_a_layout_needs_the_sensor_scale(ee_session_on_fake, tmp_path):
    layout = utm_layout(2, 1, scale_m=20.0)
    with pytest.raises(ThorConfigError, match="scale"):
        ee_fetch.write_composite_geotiff(layout, SensorSpec(), JUNE, str(tmp_path / "x.tif"), cache=False)
    res = ee_fetch.write_composite_geotiff(layout, SensorSpec(scale_m=20.0), JUNE, str(tmp_path / "y.tif"),
                                           cache=False)
    assert (res.width, res.height) == (64, 32) and res.geotransform[1] == 20.0


def test_count_images_asks_once(ee_session_on_fake):
    fake, _ = ee_session_on_fake
    n = ee_fetch.count_images((500_000, 4_000_000, 501_000, 4_001_000), "EPSG:32633", SensorSpec(), JUNE)
    assert n == fake.collection_size and fake.count("compute") == 1
    (rec,) = fake.compute_requests("compute")
    tree = request_tree(rec)
    assert tree["fn"] == "Collection.size" and find_calls(tree, "DateRange") == [
        {"start": "2024-06-01", "end": "2024-07-01"}]
    fake.empty_collection = True
    assert ee_fetch.count_images((500_000, 4_000_000, 501_000, 4_001_000), "EPSG:32633", SensorSpec(), JUNE) == 0


def test_argument_errors_are_raised_by_the_call(ee_session_on_fake):
    with pytest.raises(ThorConfigError):
        ee_fetch.fetch_tiles(utm_layout(1, 1), SensorSpec(), JUNE, workers="many")
    with pytest.raises(ThorConfigError):
        ee_fetch.square_grid(0, 0, -1, "EPSG:32633", 32)
    assert math.isclose(ee_fetch.square_grid(0, 0, 144, "EPSG:32633", 288).pixel_size, 1.0)
