"""Earth Engine faults injected by the fake service (tests/fake_ee.py), through the algorithms and the engine:
hangs, answers cut short or garbled, Retry-After, all-NaN pixels, credentials in the endpoint URL, sockets."""
import gc
import importlib
import os
import time
import warnings

import numpy as np
import pytest
from qgis.core import QgsProcessingException, QgsSettings

from tests.conftest import PLUGIN_NAME
from tests.fake_ee import DEFAULT_PROJECT, ee_env, fake_ee, utm_layout  # noqa: F401
from tests.helpers import read_raster
from tests.qgis.feedback import LogFeedback

ee = pytest.importorskip("ee")

RANDOM_TINY = {"MODEL_KEY": "thor_v1_tiny", "PRETRAINED": False}
# exactly one tile of the zone's global 2880 m grid, written as one tile
ONE_TILE = "501120,504000,3997440,4000320 [EPSG:32633]"
ONE = {"SEAMS": "none"}
COMPOSITE_AREA = "500000,500640,3999360,4000000 [EPSG:32633]"


def _engine(name):
    return importlib.import_module(f"{PLUGIN_NAME}.thor_qgis.{name}")


def run(alg, params, feedback=None):
    import processing

    return processing.run(f"thor:{alg}", params, feedback=feedback)


@pytest.fixture
def fake(plugin, fake_ee, monkeypatch):
    settings = QgsSettings()
    for key in ("thor/ee_api_url", "thor/ee_project"):
        settings.remove(key)
    for var in ("EE_PROJECT", "GOOGLE_CLOUD_PROJECT", "THOR_EE_DEADLINE_S"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("THOR_EE_API_URL", fake_ee.url)
    _engine("ee_session").reset_session()
    yield fake_ee
    _engine("ee_session").reset_session()


# --- 6. a hung server ------------------------------------------------------------------------------------

def test_a_hung_server_fails_within_the_deadline_parameter(fake, tmp_path):
    fake.hang_s = 60.0
    t0 = time.monotonic()
    with pytest.raises(QgsProcessingException) as e:
        run("ee_grid", {"EXTENT": ONE_TILE, **RANDOM_TINY, **ONE, "PROJECT": DEFAULT_PROJECT, "REQUEST_DEADLINE": 1,
                        "OUTPUT": str(tmp_path / "out.tif")})
    took = time.monotonic() - t0
    msg = str(e.value)
    assert "timed out" in msg and "1 s deadline" in msg and "request deadline" in msg
    assert fake.count() == 2  # tried once more, then given up: not 5 attempts
    print(f"hung server: failed after {took:.1f} s with a 1 s deadline")
    assert [p for p in os.listdir(tmp_path) if "out" in p] == []


def test_the_deadline_setting_from_the_environment_is_checked(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("THOR_EE_DEADLINE_S", "soon")
    with pytest.raises(QgsProcessingException, match="THOR_EE_DEADLINE_S"):
        run("ee_composite", {"EXTENT": COMPOSITE_AREA, "PROJECT": DEFAULT_PROJECT,
                             "OUTPUT": str(tmp_path / "c.tif")})


# --- 7. truncated or garbled bodies, Retry-After --------------------------------------------------------

@pytest.mark.parametrize("kind", ["truncated", "short", "garbage"])
def test_a_broken_answer_is_retried(fake, tmp_path, kind):
    fake.fault_next(kind, 1)
    fb = LogFeedback()
    res = run("ee_composite", {"EXTENT": COMPOSITE_AREA, "PROJECT": DEFAULT_PROJECT, "USE_CACHE": False,
                               "OUTPUT": str(tmp_path / "c.tif")}, fb)
    assert os.path.exists(res["OUTPUT"])
    assert fake.count() == 2 and "retry 1 of" in fb.text


@pytest.mark.parametrize("kind", ["short", "garbage"])
def test_a_persistently_broken_answer_is_called_unreadable(fake, tmp_path, kind):
    fake.fault_next(kind, 50)
    ee_fetch = _engine("ee_fetch")
    _engine("ee_session").ensure_session(project=DEFAULT_PROJECT, url=fake.url)
    with pytest.raises(_engine("errors").ThorFetchError) as e:
        list(ee_fetch.fetch_tiles(utm_layout(1, 1), _engine("specs").SensorSpec(),
                                  _engine("specs").TemporalSpec("2024-06-01", "2024-07-01"), workers=1, cache=False,
                                  policy=ee_fetch.RetryPolicy(max_attempts=3, sleep=lambda s: None)))
    msg = str(e.value)
    assert "Earth Engine sent an unreadable answer" in msg and "pickled" not in msg and "gave up after 3" in msg


def test_retry_after_is_honoured(fake):
    ee_fetch = _engine("ee_fetch")
    _engine("ee_session").ensure_session(project=DEFAULT_PROJECT, url=fake.url)
    fake.fail_next(503, 1, retry_after=7)
    sleeps = []
    policy = ee_fetch.RetryPolicy(backoff_base_s=1.0, jitter=False, sleep=sleeps.append)
    (tile, arr), = ee_fetch.fetch_tiles(utm_layout(1, 1), _engine("specs").SensorSpec(),
                                        _engine("specs").TemporalSpec("2024-06-01", "2024-07-01"), workers=1,
                                        cache=False, policy=policy)
    assert sleeps == [7.0] and arr.shape == (10, 32, 32)


def test_a_retry_after_past_the_budget_gives_up_at_once_saying_so(fake):
    ee_fetch = _engine("ee_fetch")
    _engine("ee_session").ensure_session(project=DEFAULT_PROJECT, url=fake.url)
    fake.fail_next(429, 1, retry_after=3600)
    policy = ee_fetch.RetryPolicy(deadline_s=5, total_s=30)
    t0 = time.monotonic()
    with pytest.raises(_engine("errors").ThorFetchError) as e:
        list(ee_fetch.fetch_tiles(utm_layout(1, 1), _engine("specs").SensorSpec(),
                                  _engine("specs").TemporalSpec("2024-06-01", "2024-07-01"), workers=1,
                                  cache=False, policy=policy))
    assert time.monotonic() - t0 < 20
    assert "asked to retry after 3600 s" in str(e.value) and "30 s" in str(e.value)
    assert fake.count() == 1


# --- 3. all-NaN pixels -----------------------------------------------------------------------------------

def test_all_nan_pixels_are_no_data_and_not_cached(fake, tmp_path):
    fake.pixel_value = float("nan")
    cache = tmp_path / "cache"
    os.environ["THOR_CACHE_DIR"] = str(cache)  # the ee_env fixture restores it
    fb = LogFeedback()
    out = tmp_path / "grid.tif"
    run("ee_grid", {"EXTENT": ONE_TILE, **RANDOM_TINY, **ONE, "PROJECT": DEFAULT_PROJECT, "START_DATE": "2023-06-01",
                    "END_DATE": "2023-09-01", "OUTPUT": str(out)}, fb)
    grid, *_ = read_raster(out)
    assert np.all(grid == -9999)  # nothing passed for an embedding
    assert "NaN or infinite" in fb.text and "1 of 1 tile(s) have no valid pixel" in fb.text
    cached = [f for _, _, files in os.walk(cache) for f in files] if cache.exists() else []
    assert cached == []


# --- 9. a password in the endpoint URL -------------------------------------------------------------------

def test_a_password_in_the_endpoint_url_is_not_logged(fake, tmp_path, monkeypatch):
    host = fake.url.split("://", 1)[1]
    monkeypatch.setenv("THOR_EE_API_URL", f"http://thor:s3cr3t-pw@{host}")
    fb = LogFeedback()
    res = run("ee_composite", {"EXTENT": COMPOSITE_AREA, "PROJECT": DEFAULT_PROJECT,
                               "OUTPUT": str(tmp_path / "c.tif")}, fb)
    assert os.path.exists(res["OUTPUT"])
    assert "s3cr3t-pw" not in fb.text and "[redacted]" in fb.text


# --- 12. unclosed sockets --------------------------------------------------------------------------------

def test_a_successful_run_leaves_no_unclosed_socket(fake, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        run("ee_composite", {"EXTENT": COMPOSITE_AREA, "PROJECT": DEFAULT_PROJECT,
                             "OUTPUT": str(tmp_path / "c.tif")})
        _engine("ee_session").reset_session()
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == []
