"""Parallel fetch, retries, deadlines, cache and cancel, against the fake service.

Overlap and promptness are asserted from the order of timestamps (the fake's request log and the
consumer's, both time.monotonic()), never from wall-time thresholds.
"""
import os
import threading
import time

import numpy as np
import pytest

from tests.fake_ee import (DEFAULT_PROJECT, ee_env, ee_session_on_fake, fake_ee, request_origin,  # noqa: F401
                           utm_layout)
from thor_qgis import ee_fetch, ee_session
from thor_qgis.errors import ThorCanceled, ThorConfigError, ThorFetchError
from thor_qgis.specs import SensorSpec, TemporalSpec

pytest.importorskip("ee")

JUNE = TemporalSpec("2024-06-01", "2024-07-01")
NO_SLEEP = ee_fetch.RetryPolicy(max_attempts=3, sleep=lambda s: None)


def _start_of(fake, layout):
    """tile index -> start time of the (first) request for it."""
    by_origin = {}
    for rec in fake.compute_requests():
        by_origin.setdefault(request_origin(rec), rec.start)
    return {t.index: by_origin[(t.bounds[0], t.bounds[3])] for t in layout.tiles()}


@pytest.mark.parametrize("workers", [1, 8])
def test_fetching_overlaps_with_a_slow_consumer(ee_session_on_fake, workers):
    fake, _ = ee_session_on_fake
    fake.latency_s = 0.05
    layout = utm_layout(4, 2)
    finished = []
    order = []
    for tile, arr in ee_fetch.fetch_tiles(layout, SensorSpec(), JUNE, workers=workers, cache=False):
        order.append(tile.index)
        time.sleep(0.06)  # the "model"
        finished.append(time.monotonic())
    assert order == list(range(8))
    start = _start_of(fake, layout)
    for k in range(7):
        assert start[k + 1] < finished[k], f"the request for tile {k + 1} waited for the consumer of tile {k}"
    if workers == 1:
        assert fake.max_concurrency == 1
    else:
        assert fake.max_concurrency > 1


def test_concurrency_high_water_mark_follows_workers(ee_session_on_fake):
    fake, _ = ee_session_on_fake
    fake.latency_s = 0.05
    layout = utm_layout(4, 4)
    assert len(list(ee_fetch.fetch_tiles(layout, SensorSpec(), JUNE, workers=8, cache=False))) == 16
    assert 1 < fake.max_concurrency <= 8
    fake.reset_log()
    assert len(list(ee_fetch.fetch_tiles(layout, SensorSpec(), JUNE, workers=1, cache=False))) == 16
    assert fake.max_concurrency == 1 and fake.count() == 16


def test_look_ahead_is_bounded(ee_session_on_fake):
    fake, _ = ee_session_on_fake
    layout = utm_layout(4, 4)
    seen = []
    for tile, _ in ee_fetch.fetch_tiles(layout, SensorSpec(), JUNE, workers=2, cache=False):
        time.sleep(0.02)  # long enough for every allowed request to start
        seen.append((tile.index, fake.count()))
    for k, started in seen:
        assert started <= k + 1 + 2 * 2, f"{started} requests started while the consumer held tile {k}"
    assert seen[3][1] >= 4  # and it does look ahead


def test_workers_are_clamped_to_the_quota():
    logs = []
    assert ee_fetch.clamp_workers(0, logs.append) == 1
    assert ee_fetch.clamp_workers(100, logs.append) == 40
    assert len(logs) == 2 and "40" in logs[1]
    assert ee_fetch.clamp_workers(None) == 8
    with pytest.raises(ThorConfigError):
        ee_fetch.clamp_workers(2.5)


def test_429_then_success_is_retried_with_backoff(ee_session_on_fake):
    fake, _ = ee_session_on_fake
    fake.fail_next(429, 2)
    sleeps, logs = [], []
    policy = ee_fetch.RetryPolicy(max_attempts=5, backoff_base_s=2.0, jitter=False, sleep=sleeps.append)
    stats = ee_fetch.FetchStats()
    (tile, arr), = ee_fetch.fetch_tiles(utm_layout(1, 1), SensorSpec(), JUNE, workers=1, cache=False,
                                        policy=policy, log=logs.append, stats=stats)
    assert arr.shape == (10, 32, 32)
    assert [r.status for r in fake.compute_requests()] == [429, 429, 200]  # the client did not retry itself
    assert sleeps == [2.0, 4.0] and stats.retries == 2 and stats.requests == 3
    assert sum("retry" in m and "Too many concurrent" in m for m in logs) == 2


def test_persistent_5xx_is_a_clear_error_and_leaves_no_file(ee_session_on_fake, tmp_path):
    fake, _ = ee_session_on_fake
    fake.fail_always(500)
    out = tmp_path / "out"
    path = out / "composite.tif"
    with pytest.raises(ThorFetchError) as err:
        ee_fetch.write_composite_geotiff((500_000, 4_000_000, 500_300, 4_000_300), SensorSpec(), JUNE,
                                         str(path), crs="EPSG:32633", tile_px=32, workers=1, cache=False,
                                         policy=NO_SLEEP)
    msg = str(err.value)
    assert "server error 500" in msg and "gave up after 3 attempts" in msg and "tile 0" in msg
    assert fake.count() == 3
    assert not path.exists() and os.listdir(out) == []


def test_requests_past_the_deadline_end_in_a_clear_error(ee_session_on_fake, tmp_path):
    fake, _ = ee_session_on_fake
    fake.hang_s = 5.0
    policy = ee_fetch.RetryPolicy(max_attempts=2, deadline_s=0.3, sleep=lambda s: None)
    path = tmp_path / "timeout" / "t.tif"
    with pytest.raises(ThorFetchError) as err:
        ee_fetch.write_composite_geotiff(utm_layout(1, 1), SensorSpec(), JUNE, str(path), workers=1, cache=False,
                                         policy=policy)
    assert "timed out" in str(err.value) and "0.3 s" in str(err.value)
    assert fake.count() == 2 and not path.exists() and os.listdir(path.parent) == []


def test_an_unreachable_service_is_a_clear_error(ee_session_on_fake):
    fake, _ = ee_session_on_fake
    iterator = ee_fetch.fetch_tiles(utm_layout(1, 1), SensorSpec(), JUNE, workers=1, cache=False,
                                    policy=NO_SLEEP)
    fake.stop()
    with pytest.raises(ThorFetchError, match="cannot reach the Earth Engine API"):
        list(iterator)


def test_the_cache_prevents_a_second_fetch(ee_session_on_fake, tmp_path):
    from google.oauth2.credentials import Credentials

    fake, _ = ee_session_on_fake
    layout = utm_layout(2, 2)
    cache_dir = tmp_path / "cache"
    first = list(ee_fetch.fetch_tiles(layout, SensorSpec(), JUNE, workers=4, cache=str(cache_dir)))
    assert fake.count() == 4
    files = [f for _, _, fs in os.walk(cache_dir) for f in fs]
    assert len(files) == 4 and all(f.endswith(".npy") for f in files)  # no temporary left
    # another session with other credentials, same service: the cache is still used
    ee_session.ensure_session(project=DEFAULT_PROJECT, url=fake.url, credentials=Credentials(token="other"))
    stats = ee_fetch.FetchStats()
    second = list(ee_fetch.fetch_tiles(layout, SensorSpec(), JUNE, workers=4, cache=str(cache_dir), stats=stats))
    assert fake.count() == 4 and stats.cache_hits == 4 and stats.requests == 0
    for (t1, a1), (t2, a2) in zip(first, second):
        assert t1 == t2 and np.array_equal(a1, a2)
    # another request (date range) is another key
    list(ee_fetch.fetch_tiles(layout, SensorSpec(), TemporalSpec("2024-07-01", "2024-08-01"), workers=4,
                              cache=str(cache_dir)))
    assert fake.count() == 8
    # the default directory comes from THOR_CACHE_DIR
    assert ee_fetch.resolve_cache(True).directory == os.environ["THOR_CACHE_DIR"]


def test_a_damaged_cache_entry_is_fetched_again(ee_session_on_fake, tmp_path):
    fake, _ = ee_session_on_fake
    cache = ee_fetch.TileCache(str(tmp_path / "c"))
    list(ee_fetch.fetch_tiles(utm_layout(1, 1), SensorSpec(), JUNE, cache=cache))
    (path,) = [os.path.join(d, f) for d, _, fs in os.walk(cache.directory) for f in fs]
    with open(path, "wb") as f:
        f.write(b"not an npy file")
    (_, arr), = ee_fetch.fetch_tiles(utm_layout(1, 1), SensorSpec(), JUNE, cache=cache)
    assert fake.count() == 2 and arr.shape == (10, 32, 32)


def test_a_date_range_reaching_into_the_future_is_not_cached(ee_session_on_fake, tmp_path):
    import datetime as dt

    fake, _ = ee_session_on_fake
    today = dt.date.today()
    temporal = TemporalSpec(today - dt.timedelta(days=30), today + dt.timedelta(days=2))
    logs = []
    for _ in range(2):
        list(ee_fetch.fetch_tiles(utm_layout(1, 1), SensorSpec(), temporal, cache=str(tmp_path), log=logs.append))
    assert fake.count() == 2 and any("cache is not used" in m for m in logs)


def test_cancel_stops_promptly(ee_session_on_fake):
    fake, _ = ee_session_on_fake
    fake.latency_s = 0.5
    layout = utm_layout(4, 4)
    flag = threading.Event()
    got = []
    with pytest.raises(ThorCanceled):
        for tile, _ in ee_fetch.fetch_tiles(layout, SensorSpec(), JUNE, workers=2, cache=False,
                                            is_canceled=flag.is_set):
            got.append(tile.index)
            if tile.index == 1:
                time.sleep(0.1)  # the requests for tiles 2 and 3 are surely under way: "in flight"
                flag.set()
                canceled_at = time.monotonic()
    raised_at = time.monotonic()
    assert got == [0, 1]
    started_before = [r for r in fake.compute_requests() if r.start <= canceled_at]
    assert len(started_before) <= 2 + 2 * 2  # the two consumed and at most the look-ahead (2 * workers)
    in_flight = [r for r in started_before if r.end == 0.0 or r.end > raised_at]
    assert in_flight, "the cancel waited for the requests in flight to finish"
    time.sleep(1.1)  # longer than two more rounds of requests would take
    assert all(r.start <= canceled_at for r in fake.compute_requests()), "a request started after the cancel"
    assert fake.count() <= 4


def test_leaving_the_loop_early_stops_the_fetch(ee_session_on_fake):
    fake, _ = ee_session_on_fake
    fake.latency_s = 0.1
    tiles = ee_fetch.fetch_tiles(utm_layout(4, 4), SensorSpec(), JUNE, workers=2, cache=False)
    for tile, _ in tiles:
        time.sleep(0.05)  # the requests for tiles 1..3 are under way
        break
    tiles.close()
    closed_at = time.monotonic()
    time.sleep(0.35)
    assert all(r.start <= closed_at for r in fake.compute_requests())
    assert fake.count() <= 2 + 2  # the first round of two, and the two in flight when the loop was left


def test_a_cancel_while_writing_leaves_no_file(ee_session_on_fake, tmp_path):
    fake, _ = ee_session_on_fake
    fake.latency_s = 0.05
    out = tmp_path / "cancel"
    path = out / "composite.tif"
    logs = []

    def canceled():
        return any("tiles fetched" in m for m in logs) or fake.count() >= 3

    with pytest.raises(ThorCanceled):
        ee_fetch.write_composite_geotiff(utm_layout(4, 4), SensorSpec(), JUNE, str(path), workers=2, cache=False,
                                         is_canceled=canceled, log=logs.append)
    assert fake.count() < 16 and not path.exists() and os.listdir(out) == []


def test_a_run_in_progress_keeps_its_project(ee_session_on_fake):
    """The client is process-wide: while a fetch runs, another run cannot switch it to another project
    (its requests would silently go there); once the fetch ends, it can."""
    fake, info = ee_session_on_fake
    tiles = ee_fetch.fetch_tiles(utm_layout(2, 2), SensorSpec(), JUNE, workers=2, cache=False)
    next(tiles)
    with pytest.raises(ThorFetchError, match="another Earth Engine run"):
        ee_session.ensure_session(project="another-project", url=fake.url)
    assert ee_session.ensure_session(project=DEFAULT_PROJECT, url=fake.url) == info  # same session: fine
    rest = list(tiles)
    assert len(rest) == 3
    projects = {rec.path.split("/")[3] for rec in fake.compute_requests()}
    assert projects == {DEFAULT_PROJECT}
    assert ee_session.ensure_session(project="another-project", url=fake.url).project == "another-project"
    # a run set up with a session that has since changed is refused rather than sent elsewhere
    with pytest.raises(ThorFetchError, match="session changed"):
        with ee_session.session_in_use(info):
            pass
