"""The Earth Engine session: URL, credentials, project, re-initialisation, what-to-do errors, redaction.

The real earthengine-api client talks to the fake service on 127.0.0.1; nothing here contacts the network
(cases that would, a non-loopback URL, stop before ``ee.Initialize`` or have it replaced).
"""
import json
import os

import pytest

from tests.fake_ee import DEFAULT_PROJECT, FakeEarthEngine, ee_env, fake_ee, utm_layout  # noqa: F401
from thor_qgis import ee_fetch, ee_session
from thor_qgis.errors import ThorConfigError, ThorFetchError
from thor_qgis.specs import SensorSpec, TemporalSpec

ee = pytest.importorskip("ee")

GOOGLE_URL = "https://earthengine.googleapis.com"
SECRET = "ya29.a0AfB_SECRET-token-do-not-leak-1234567890"
REFRESH = "1//0gSECRET-refresh-token-do-not-leak-abcdefg"


def _no_network(monkeypatch):
    """Make every way out of this process an error, so a test that reaches it fails instead of hanging."""
    import google.auth

    def boom(*a, **k):
        raise AssertionError("the network (or the metadata server) was about to be contacted")

    monkeypatch.setattr(ee, "Initialize", boom)
    monkeypatch.setattr(google.auth, "default", boom)
    monkeypatch.setattr(ee.deprecation, "_FetchDataCatalogStac", boom)


# --------------------------------------------------------------------------------------------
# URLs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url, loopback", [
    ("http://127.0.0.1:8080", True), ("http://127.4.5.6", True), ("http://localhost:1/x", True),
    ("http://[::1]:9000", True), ("https://earthengine.googleapis.com", False), ("http://10.1.2.3:80", False),
    ("http://127.0.0.1.example.com", False), ("", False), (None, False),
])
def test_loopback_detection(url, loopback):
    assert ee_session.is_loopback_url(url) is loopback


def test_api_url_explicit_then_env_then_default():
    env = {ee_session.ENV_API_URL: "http://127.0.0.1:9/"}
    assert ee_session.resolve_api_url("http://localhost:5/", env) == "http://localhost:5"
    assert ee_session.resolve_api_url(None, env) == "http://127.0.0.1:9"
    assert ee_session.resolve_api_url("", {}) is None
    with pytest.raises(ThorConfigError, match="http"):
        ee_session.resolve_api_url("ftp://x", {})


# --------------------------------------------------------------------------------------------
# Loopback: anonymous credentials, no data-catalog request
# --------------------------------------------------------------------------------------------


def test_loopback_url_runs_anonymous_and_skips_the_data_catalog(fake_ee, monkeypatch):
    calls = []

    def catalog():
        calls.append(1)
        raise AssertionError("the data catalog was fetched")

    monkeypatch.setattr(ee.deprecation, "_FetchDataCatalogStac", catalog)
    logs = []
    info = ee_session.ensure_session(project=DEFAULT_PROJECT, url=fake_ee.url, log=logs.append)
    assert info.auth.startswith("anonymous")
    from google.auth.credentials import AnonymousCredentials

    assert isinstance(ee.data._get_state().credentials, AnonymousCredentials)  # what the client runs with
    assert info.project == DEFAULT_PROJECT and info.api_url == fake_ee.url
    kinds = [r.kind for r in fake_ee.requests]
    assert kinds.count("discovery") >= 1 and kinds.count("algorithms") == 1
    assert all("authorization" not in r.headers for r in fake_ee.requests)
    algo = next(r for r in fake_ee.requests if r.kind == "algorithms")
    assert algo.path.startswith(f"/v1/projects/{DEFAULT_PROJECT}/algorithms")
    assert algo.headers.get("x-goog-user-project") == DEFAULT_PROJECT
    assert calls == []
    assert ee.deprecation._FetchDataCatalogStac is catalog  # restored after Initialize
    assert ee_session.current_session() == info
    assert any("anonymous" in m for m in logs)


def test_loopback_without_project_uses_the_local_project(fake_ee):
    info = ee_session.ensure_session(url=fake_ee.url)
    assert info.project == ee_session.LOCAL_EMULATOR_PROJECT


def test_url_from_environment(fake_ee, monkeypatch):
    monkeypatch.setenv(ee_session.ENV_API_URL, fake_ee.url + "/")
    info = ee_session.ensure_session(project=DEFAULT_PROJECT)
    assert info.api_url == fake_ee.url
    assert fake_ee.count("algorithms") == 1


def test_reinitialises_only_when_project_url_or_credentials_change(fake_ee):
    ee_session.ensure_session(project=DEFAULT_PROJECT, url=fake_ee.url)
    n = len(fake_ee.requests)
    ee_session.ensure_session(project=DEFAULT_PROJECT, url=fake_ee.url)
    assert len(fake_ee.requests) == n  # nothing changed: no new initialisation

    ee_session.ensure_session(project="other-project", url=fake_ee.url)
    algo = [r for r in fake_ee.requests if r.kind == "algorithms"]
    assert len(algo) == 2 and algo[-1].path.startswith("/v1/projects/other-project/")

    with FakeEarthEngine() as second:
        info = ee_session.ensure_session(project="other-project", url=second.url)
        assert second.count("algorithms") == 1
        n_first = len(fake_ee.requests)
        tiles = list(ee_fetch.fetch_tiles(utm_layout(1, 1), SensorSpec(),
                                          TemporalSpec("2024-06-01", "2024-07-01"), cache=False))
        assert len(tiles) == 1
        assert second.count() == 1 and len(fake_ee.requests) == n_first
        assert second.compute_requests()[0].path.startswith("/v1/projects/other-project/image:computePixels")
        assert info.api_url == second.url

    from google.oauth2.credentials import Credentials

    ee_session.ensure_session(project=DEFAULT_PROJECT, url=fake_ee.url)
    n = fake_ee.count("algorithms")
    ee_session.ensure_session(project=DEFAULT_PROJECT, url=fake_ee.url, credentials=Credentials(token="t1"))
    assert fake_ee.count("algorithms") == n + 1  # other credentials: initialised again


# --------------------------------------------------------------------------------------------
# A real endpoint without credentials or project: the what-to-do messages, no network
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [GOOGLE_URL, None])
def test_no_credentials_says_how_to_authenticate(ee_env, monkeypatch, url):
    _no_network(monkeypatch)
    assert not os.path.exists(ee_session.persistent_credentials_path())
    with pytest.raises(ThorConfigError) as err:
        ee_session.ensure_session(project="my-project", url=url)
    msg = str(err.value)
    assert "earthengine authenticate" in msg and "service-account" in msg
    assert ee_session.current_session() is None


def _write_persistent_credentials(home, **extra):
    path = os.path.join(str(home), ".config", "earthengine", "credentials")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"refresh_token": REFRESH, **extra}, f)
    return path


def test_no_project_says_to_set_the_cloud_project(ee_env, monkeypatch):
    _no_network(monkeypatch)
    _write_persistent_credentials(ee_env / "home")
    with pytest.raises(ThorConfigError) as err:
        ee_session.ensure_session(url=GOOGLE_URL)
    msg = str(err.value)
    assert "Cloud project" in msg and "setting" in msg
    assert REFRESH not in msg


def test_persistent_credentials_are_read_without_network(ee_env, monkeypatch):
    _no_network(monkeypatch)
    path = _write_persistent_credentials(ee_env / "home", project="stored-project")
    creds, project, auth, ident = ee_session.resolve_credentials(GOOGLE_URL)
    assert project == "stored-project"
    assert creds.refresh_token == REFRESH  # the real thing, handed to the client only
    assert path in auth and REFRESH not in auth and REFRESH not in repr(ident)


def _service_account_key(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {"type": "service_account", "project_id": "sa-project", "private_key_id": "abc123def456",
            "private_key": pem, "client_email": "thor@sa-project.iam.gserviceaccount.com",
            "client_id": "1234567890", "token_uri": "https://oauth2.googleapis.com/token"}
    path = tmp_path / "sa-key.json"
    path.write_text(json.dumps(info))
    return str(path), pem


def test_service_account_key_file(ee_env, monkeypatch):
    from google.oauth2 import service_account

    key_path, pem = _service_account_key(ee_env)
    creds, project, auth, _ = ee_session.resolve_credentials(GOOGLE_URL, key_path)
    assert isinstance(creds, service_account.Credentials)
    assert project == "sa-project" and key_path in auth

    seen = {}

    def fake_initialize(credentials=None, url=None, project=None, **kw):
        seen.update(credentials=credentials, url=url, project=project)

    _no_network(monkeypatch)
    monkeypatch.setattr(ee, "Initialize", fake_initialize)
    logs = []
    info = ee_session.ensure_session(url=GOOGLE_URL, service_account_key=key_path, log=logs.append)
    assert isinstance(seen["credentials"], service_account.Credentials)
    assert seen["project"] == "sa-project" and seen["url"] == GOOGLE_URL
    text = json.dumps(info.as_record()) + "\n".join(logs)
    assert key_path in text
    body = pem.splitlines()[1]
    assert body not in text and "PRIVATE KEY" not in text


def test_bad_service_account_keys_say_what_to_do(ee_env):
    with pytest.raises(ThorConfigError, match="does not exist"):
        ee_session.resolve_credentials(GOOGLE_URL, str(ee_env / "missing.json"))
    not_sa = ee_env / "not-sa.json"
    not_sa.write_text(json.dumps({"type": "authorized_user", "refresh_token": REFRESH}))
    with pytest.raises(ThorConfigError, match="not a service-account JSON key") as err:
        ee_session.resolve_credentials(GOOGLE_URL, str(not_sa))
    assert REFRESH not in str(err.value)
    broken_body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcSECRETKEYMATERIAL"
    broken = ee_env / "broken.json"
    broken.write_text(json.dumps({"type": "service_account", "client_email": "a@b.c", "token_uri": "https://x",
                                  "private_key": f"-----BEGIN PRIVATE KEY-----\n{broken_body}\n"
                                                 "-----END PRIVATE KEY-----\n"}))
    with pytest.raises(ThorConfigError, match="download a new JSON key") as err:
        ee_session.resolve_credentials(GOOGLE_URL, str(broken))
    assert broken_body not in str(err.value)


# --------------------------------------------------------------------------------------------
# Credentials never in logs, messages or metadata
# --------------------------------------------------------------------------------------------


def test_token_reaches_the_server_but_no_log_message_or_metadata(fake_ee, tmp_path):
    from google.oauth2.credentials import Credentials

    logs = []
    info = ee_session.ensure_session(project=DEFAULT_PROJECT, url=fake_ee.url,
                                     credentials=Credentials(token=SECRET), log=logs.append)
    assert fake_ee.requests[-1].headers.get("authorization") == f"Bearer {SECRET}"

    layout = utm_layout(1, 1)
    sensor, temporal = SensorSpec(), TemporalSpec("2024-06-01", "2024-07-01")
    # a retry message and an error message built from server answers that echo the token
    fake_ee.fail_next(429, 1, message=f"Too many requests for Bearer {SECRET}")
    policy = ee_fetch.RetryPolicy(max_attempts=3, sleep=lambda s: None)
    result = ee_fetch.write_composite_geotiff(layout, sensor, temporal, str(tmp_path / "c.tif"), workers=1,
                                              cache=False, log=logs.append, policy=policy)
    fake_ee.fail_always(403, message=f"Permission denied: access_token={SECRET} Bearer {SECRET}")
    with pytest.raises(ThorFetchError) as err:
        list(ee_fetch.fetch_tiles(layout, sensor, temporal, workers=1, cache=False, log=logs.append,
                                  policy=policy))
    assert "permission denied" in str(err.value)

    from tests.helpers import read_raster

    _, _, _, ds = read_raster(result.path)
    stored = json.dumps(ds.GetMetadata())
    everything = "\n".join(logs) + str(err.value) + json.dumps(info.as_record()) + json.dumps(result.record) \
        + stored
    assert any("retry 1 of 2" in m for m in logs)
    assert SECRET not in everything and SECRET[:20] not in everything


def test_redact_removes_tokens_and_keys():
    text = (f"Bearer {SECRET} refresh_token={REFRESH} {{\"private_key\": \"-----BEGIN PRIVATE KEY-----\\nMIIE"
            f"\\n-----END PRIVATE KEY-----\\n\"}} key AIzaSyA-1234567890abcdefghijklmnopqrs "
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEsecret\n-----END RSA PRIVATE KEY-----")
    out = ee_session.redact(text)
    for secret in (SECRET, REFRESH, "MIIEsecret", "AIzaSyA-1234567890", "MIIE\\n"):
        assert secret not in out
    assert ee_session.redact("Image.select: Pattern 'B2' did not match any bands.") == \
        "Image.select: Pattern 'B2' did not match any bands."


# --------------------------------------------------------------------------------------------
# Error translation
# --------------------------------------------------------------------------------------------


def test_client_errors_become_what_to_do_messages():
    import google.auth.exceptions

    no_project = ee_session.translate_ee_error(ee.EEException(ee.NO_PROJECT_EXCEPTION))
    assert isinstance(no_project, ThorConfigError) and "Cloud project" in str(no_project)
    not_auth = ee_session.translate_ee_error(ee.EEException(
        "Please authorize access to your Earth Engine account by running\n\nearthengine authenticate"))
    assert isinstance(not_auth, ThorConfigError) and "earthengine authenticate" in str(not_auth)
    expired = ee_session.translate_ee_error(google.auth.exceptions.RefreshError(
        "invalid_grant: Token has been expired or revoked."))
    assert isinstance(expired, ThorConfigError) and "earthengine authenticate" in str(expired)
    timeout = ee_session.translate_ee_error(TimeoutError("read timed out"), deadline_s=30)
    assert isinstance(timeout, ThorFetchError) and "30 s" in str(timeout)
    refused = ee_session.translate_ee_error(ConnectionError("refused"))
    assert "cannot reach" in str(refused) and "URL" in str(refused)
    assert ee_session.is_retryable(TimeoutError()) and ee_session.is_retryable(ConnectionError())
    assert not ee_session.is_retryable(ee.EEException("Image.select: bad"))


@pytest.mark.parametrize("status, words", [
    (403, "permission denied"), (429, "quota"), (503, "server error 503"), (400, "HTTP 400"),
])
def test_http_errors_from_the_service_are_translated(fake_ee, status, words):
    ee_session.ensure_session(project=DEFAULT_PROJECT, url=fake_ee.url)
    fake_ee.fail_always(status)
    policy = ee_fetch.RetryPolicy(max_attempts=2, sleep=lambda s: None)
    with pytest.raises(ThorFetchError) as err:
        list(ee_fetch.fetch_tiles(utm_layout(1, 1), SensorSpec(), TemporalSpec("2024-06-01", "2024-07-01"),
                                  workers=1, cache=False, policy=policy))
    assert words in str(err.value)
    retried = status in ee_session.RETRYABLE_STATUS
    assert fake_ee.count() == (2 if retried else 1)


def test_secrets_in_an_endpoint_url_are_redacted():
    info = ee_session.EESessionInfo(project="p", api_url="https://user:pa55word@ee.example.org/api?key=s3cr3tk3y&x=1",
                                    auth="a")
    rec = str(info.as_record())
    assert "pa55word" not in rec and "s3cr3tk3y" not in rec and "user:" not in rec
    assert "ee.example.org/api" in rec and "x=1" in rec


def test_numpy_refusing_a_garbled_answer_counts_as_unreadable():
    """numpy 1 and numpy 2 word the refusal differently ("pickled data" / "pickled (object) data")."""
    import io

    import numpy as np

    with pytest.raises(ValueError) as e:
        np.load(io.BytesIO(b"\x80\x04garbled answer from the service" * 8), allow_pickle=False)
    assert ee_session.is_unreadable_answer(e.value), str(e.value)
