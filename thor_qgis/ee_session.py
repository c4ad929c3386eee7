"""The Earth Engine session: initialised once per process, with the user's Cloud project.

Credentials come, in this order, from

1. a local emulator: when the API URL is a loopback URL (127.x, ``localhost``, ``::1``) the client runs with
   anonymous credentials and the data-catalog side request of ``ee.Initialize`` is skipped, so tests and
   offline demos need neither an account nor the network;
2. a service-account JSON key file, when one is given;
3. the persistent credentials that ``earthengine authenticate`` stores (``~/.config/earthengine/credentials``);
4. Application Default Credentials from a file (``GOOGLE_APPLICATION_CREDENTIALS`` or
   ``gcloud auth application-default login``).

The Compute Engine metadata server is never probed (it is what ``ee.Initialize()`` does by default, and on a
desktop it only costs a timeout); stored credentials are not validated by a token refresh up front either:
the first request does that, and its failure is translated into a what-to-do message.

The API URL is an explicit argument (the plugin fills it from a setting), else the environment variable
``THOR_EE_API_URL``, else Google's default endpoint. The session is re-initialised whenever the project, the
URL or the credentials (their source, or the stored file) change.

Credentials never appear in logs, messages or metadata: :class:`EESessionInfo` holds only the project, the
URL and a description of where the credentials came from (a key file's path, never its content), and every
message built from a client exception goes through :func:`redact`.

``ee`` (earthengine-api) is imported lazily, so the engine imports without it.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from .errors import ThorConfigError, ThorFetchError

ENV_API_URL = "THOR_EE_API_URL"
LOCAL_EMULATOR_PROJECT = "thor-local"  # the project used against a loopback emulator when none is given
DEFAULT_DEADLINE_S = 120.0
ENV_DEADLINE = "THOR_EE_DEADLINE_S"  # the per-request deadline when no parameter gives one


def default_deadline_s(env: Optional[Mapping[str, str]] = None) -> float:
    """``$THOR_EE_DEADLINE_S`` (seconds, > 0), else 120 s; a bad value is an error naming the variable."""
    env = os.environ if env is None else env
    raw = str(env.get(ENV_DEADLINE, "") or "").strip()
    if not raw:
        return DEFAULT_DEADLINE_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value > 0 and value < 1e6):
        raise ThorConfigError(f"the environment variable {ENV_DEADLINE} must be a number of seconds above 0, "
                              f"got {raw!r}")
    return value

Log = Optional[Callable[[str], None]]

AUTH_HELP = (
    "run `earthengine authenticate` once in a terminal (or `ee.Authenticate()` in the QGIS Python console), "
    "or give the path of a service-account JSON key file")
PROJECT_HELP = (
    "set the Google Cloud project registered for Earth Engine (the 'Earth Engine project' "
    "field, or its default in the provider's settings: Settings > Options > Processing > Providers > THOR "
    "embeddings)")


def import_ee():
    try:
        import ee  # noqa: WPS433 (lazy on purpose)
    except ImportError:
        raise ThorConfigError(
            "the earthengine-api package is not installed in QGIS's Python: install it with Plugins > THOR "
            "embeddings > Install dependencies... (headless: `python3 -m thor_qgis.deps install`)") from None
    return ee


# --------------------------------------------------------------------------------------------
# Redaction: whatever the client or the server put in a message, secrets do not get through.
# --------------------------------------------------------------------------------------------

_REDACTIONS = (
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S),
     "[redacted private key]"),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+"), r"\1 [redacted]"),
    (re.compile(r"\bya29\.[A-Za-z0-9._~+/=-]+"), "[redacted token]"),
    (re.compile(r"\b1//[A-Za-z0-9._~+/=-]{10,}"), "[redacted token]"),
    (re.compile(r"\bGOCSPX-[A-Za-z0-9_-]+"), "[redacted secret]"),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"), "[redacted key]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), "[redacted token]"),
    (re.compile(r"(?i)([\"']?(?:access_token|refresh_token|id_token|client_secret|private_key|private_key_id|"
                r"assertion|api_key|token)[\"']?\s*[:=]\s*)([\"']?)[^\"'\s,;&}]+\2"),
     r"\1\2[redacted]\2"),
    (re.compile(r"(?i)\b(https?://)[^/@\s]+@"), r"\1[redacted]@"),  # user:password@ in a URL
    (re.compile(r"(?i)([?&](?:key|access_token|token)=)[^&\s]+"), r"\1[redacted]"),  # secrets in a query
)


def redact(text: Any, secrets: Tuple[str, ...] = ()) -> str:
    """``text`` with tokens, keys and the given ``secrets`` replaced by placeholders."""
    s = str(text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            s = s.replace(secret, "[redacted]")
    for pattern, repl in _REDACTIONS:
        s = pattern.sub(repl, s)
    return s


# --------------------------------------------------------------------------------------------
# The API URL
# --------------------------------------------------------------------------------------------


def resolve_api_url(url: Optional[str] = None, env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The Earth Engine REST base URL: ``url`` if given, else ``$THOR_EE_API_URL``, else None (Google's
    default). Trailing slashes are dropped; anything but an http(s) URL with a host is a ThorConfigError."""
    env = os.environ if env is None else env
    raw = url if url is not None and str(url).strip() else env.get(ENV_API_URL, "")
    raw = str(raw or "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ThorConfigError(
            f"the Earth Engine API URL must be an http(s) URL such as https://earthengine.googleapis.com "
            f"or http://127.0.0.1:8080 for a local emulator, got {raw!r}")
    return raw.rstrip("/")


def is_loopback_url(url: Optional[str]) -> bool:
    """True for a URL on this machine: 127.0.0.0/8, ``localhost`` or ``::1``."""
    if not url:
        return False
    try:
        host = urlsplit(str(url)).hostname
    except ValueError:
        return False
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EESessionInfo:
    """What a session runs with, safe to log and to store in an output's metadata (no secrets)."""

    project: str
    api_url: Optional[str]  # None: Google's default endpoint
    auth: str  # where the credentials came from, in words

    def as_record(self) -> Dict[str, Any]:
        return {"project": self.project, "api_url": redact(self.api_url) if self.api_url else "default",
                "auth": self.auth}


def _file_stamp(path: str) -> Tuple[str, int, int]:
    try:
        st = os.stat(path)
        return path, st.st_mtime_ns, st.st_size
    except OSError:
        return path, 0, -1


def persistent_credentials_path() -> str:
    """Where ``earthengine authenticate`` stores its credentials."""
    try:
        return import_ee().oauth.get_credentials_path()
    except AttributeError:  # pragma: no cover - older clients
        return os.path.expanduser("~/.config/earthengine/credentials")


def _adc_path(env: Mapping[str, str]) -> Optional[str]:
    explicit = env.get("GOOGLE_APPLICATION_CREDENTIALS", "").strip()
    if explicit:
        return explicit
    cfg = env.get("CLOUDSDK_CONFIG", "").strip()
    if not cfg:
        if os.name == "nt":
            cfg = os.path.join(env.get("APPDATA", ""), "gcloud")
        else:
            cfg = os.path.join(os.path.expanduser("~"), ".config", "gcloud")
    path = os.path.join(cfg, "application_default_credentials.json")
    return path if os.path.isfile(path) else None


def _service_account_credentials(key_path: str):
    ee = import_ee()
    path = os.path.abspath(os.path.expanduser(os.fspath(key_path)))
    if not os.path.isfile(path):
        raise ThorConfigError(f"the service-account key file {path} does not exist: give the path of the JSON "
                              "key downloaded from the Cloud console (IAM > Service accounts > Keys)")
    try:
        with open(path, "r", encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        raise ThorConfigError(f"the service-account key file {path} is not a readable JSON key: download a "
                              "JSON key for the service account from the Cloud console") from None
    if not isinstance(info, dict) or info.get("type") != "service_account" or not info.get("client_email"):
        raise ThorConfigError(f"{path} is not a service-account JSON key (no \"type\": \"service_account\" "
                              "and client_email): download a JSON key for the service account")
    try:
        creds = ee.ServiceAccountCredentials(None, key_file=path)
    except Exception as e:  # the key material is malformed; never echo it
        raise ThorConfigError(
            f"the service-account key in {path} cannot be used ({type(e).__name__}: "
            f"{redact(e)}): download a new JSON key for the service account") from None
    project = str(info.get("project_id") or "") or None
    return creds, project, f"service-account key file {path}", _file_stamp(path)


def _persistent_credentials(env: Mapping[str, str]):
    """Stored user credentials or ADC from a file, without contacting the network; None when absent."""
    ee = import_ee()
    path = persistent_credentials_path()
    if os.path.isfile(path):
        try:
            args = ee.oauth.get_credentials_arguments()
        except (OSError, ValueError):
            raise ThorConfigError(f"the Earth Engine credentials file {path} cannot be read: "
                                  + AUTH_HELP) from None
        if args.get("refresh_token"):
            from google.oauth2 import credentials as oauth_credentials

            creds = oauth_credentials.Credentials(None, **args)
            project = args.get("quota_project_id") or None
            return creds, project, f"persistent credentials ({path})", _file_stamp(path)
    adc = _adc_path(env)
    if adc:
        if not os.path.isfile(adc):
            raise ThorConfigError(f"GOOGLE_APPLICATION_CREDENTIALS points to {adc}, which does not exist: "
                                  + AUTH_HELP)
        import google.auth
        import google.auth.exceptions

        try:
            creds, adc_project = google.auth.default(scopes=list(ee.oauth.SCOPES))
        except google.auth.exceptions.DefaultCredentialsError as e:
            raise ThorConfigError(f"the application default credentials in {adc} cannot be used "
                                  f"({redact(e)}): " + AUTH_HELP) from None
        project = getattr(creds, "quota_project_id", None) or None
        return creds, project, f"application default credentials ({adc})", _file_stamp(adc)
    return None


def resolve_credentials(url: Optional[str], service_account_key: Optional[str] = None,
                        env: Optional[Mapping[str, str]] = None):
    """``(credentials, project_from_credentials, description, identity)`` for ``url``; no network.

    Raises ThorConfigError saying what to do when there are none.
    """
    env = os.environ if env is None else env
    if is_loopback_url(url):
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials(), None, "anonymous (local emulator)", ("anonymous",)
    if service_account_key is not None and str(service_account_key).strip():
        return _service_account_credentials(str(service_account_key).strip())
    found = _persistent_credentials(env)
    if found is None:
        raise ThorConfigError("Earth Engine is not authenticated on this computer: " + AUTH_HELP + ".")
    return found


# --------------------------------------------------------------------------------------------
# The session
# --------------------------------------------------------------------------------------------

_LOCK = threading.RLock()
_STATE: Dict[str, Any] = {"key": None, "info": None, "deadline_s": None}
_IN_USE = {"count": 0}  # runs fetching with the current session: it must not be re-initialised under them


@contextlib.contextmanager
def session_in_use(expected: Optional["EESessionInfo"] = None):
    """Hold the current session for a run: while held, :func:`ensure_session` refuses to switch the
    process-wide client to another project, URL or credentials (which would send this run's remaining
    requests elsewhere). ``expected``: the session the run was set up with; a different current one is
    an error."""
    with _LOCK:
        current = _STATE["info"]
        if current is None or (expected is not None and current != expected):
            raise ThorFetchError(
                "the Earth Engine session changed since this run was set up (another run started with another "
                "project or endpoint): run it again")
        _IN_USE["count"] += 1
    try:
        yield current
    finally:
        with _LOCK:
            _IN_USE["count"] -= 1


def current_session() -> Optional[EESessionInfo]:
    """The session initialised by :func:`ensure_session`, or None."""
    with _LOCK:
        if _STATE["info"] is None:
            return None
        try:
            if not import_ee().data.is_initialized():
                return None
        except ThorConfigError:
            return None
        return _STATE["info"]


def reset_session() -> None:
    """Forget the session (``ee.Reset()``); the next :func:`ensure_session` initialises again."""
    with _LOCK:
        _STATE.update(key=None, info=None, deadline_s=None)
        try:
            ee = import_ee()
        except ThorConfigError:
            return
        _close_client_session(ee)
        ee.Reset()


def ensure_session(project: Optional[str] = None, *, url: Optional[str] = None,
                   service_account_key: Optional[str] = None, credentials: Any = None,
                   log: Log = None, env: Optional[Mapping[str, str]] = None) -> EESessionInfo:
    """Initialise Earth Engine once for this process (thread-safe); again only when something changed.

    ``project``: the Cloud project registered for Earth Engine (else the one stored with the credentials,
    the service account's own project, or ``thor-local`` against a loopback emulator).
    ``url``: the REST base URL (else ``$THOR_EE_API_URL``, else Google's). ``service_account_key``: a JSON key
    file path. ``credentials``: a ready google-auth credentials object, for embedding (wins over the rest).
    Returns the session's :class:`EESessionInfo`; raises ThorConfigError / ThorFetchError saying what to do.
    """
    env = os.environ if env is None else env
    api_url = resolve_api_url(url, env)
    ee = import_ee()
    with _LOCK:
        if credentials is not None:
            creds, cred_project, auth, ident = credentials, None, "credentials given by the caller", \
                ("object", id(credentials))
        else:
            creds, cred_project, auth, ident = resolve_credentials(api_url, service_account_key, env)
        chosen = str(project).strip() if project is not None and str(project).strip() else None
        if chosen is None:
            chosen = cred_project or (LOCAL_EMULATOR_PROJECT if is_loopback_url(api_url) else None)
        if chosen is None:
            raise ThorConfigError("no Google Cloud project for Earth Engine: " + PROJECT_HELP + ".")
        key = (chosen, api_url, ident)
        if _STATE["key"] == key and _STATE["info"] is not None and ee.data.is_initialized():
            return _STATE["info"]
        if _IN_USE["count"] > 0 and _STATE["info"] is not None:
            busy = _STATE["info"]
            raise ThorFetchError(
                f"another Earth Engine run (project {busy.project}) is in progress in this QGIS session, and the "
                "Earth Engine client serves one project and endpoint at a time per process: wait for it to "
                "finish, or run this one with the same project")
        info = EESessionInfo(project=chosen, api_url=api_url, auth=auth)
        if log:
            log(f"Earth Engine: initialising (project {chosen}, API {redact(api_url) if api_url else 'default'}, "
                f"credentials: {auth})")
        _STATE.update(key=None, info=None, deadline_s=None)
        _close_client_session(ee)
        ee.Reset()
        ee.data.setMaxRetries(0)  # before Initialize too: its own requests would otherwise retry for ~30 s
        try:
            _initialize(ee, creds, chosen, api_url)
        except Exception as e:
            ee.Reset()
            raise translate_ee_error(e, what="initialising Earth Engine", project=chosen) from None
        # Our retry policy governs (see ee_fetch); the client's own retries would add up to a minute.
        ee.data.setMaxRetries(0)
        _widen_connection_pool(ee)
        _STATE.update(key=key, info=info)
        return info


def _initialize(ee, creds, project: str, api_url: Optional[str]) -> None:
    if not is_loopback_url(api_url):
        ee.Initialize(credentials=creds, project=project, url=api_url)
        return
    # A local emulator: the data-catalog file Initialize fetches from Google's storage is not asked for.
    dep = getattr(ee, "deprecation", None)
    original = getattr(dep, "_FetchDataCatalogStac", None)
    if original is not None:
        dep._FetchDataCatalogStac = lambda: {}
    try:
        ee.Initialize(credentials=creds, project=project, url=api_url)
    finally:
        if original is not None:
            dep._FetchDataCatalogStac = original


def _close_client_session(ee) -> None:
    """Close the client's HTTP session before it is dropped (ee.Reset), so its sockets are not left open."""
    try:
        session = ee.data._get_state().requests_session  # noqa: SLF001
    except AttributeError:
        return
    if session is not None:
        try:
            session.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


def _widen_connection_pool(ee) -> None:
    """Let up to 40 parallel requests keep their connections (urllib3's pool holds 10 by default).

    Uses the client's session object; skipped quietly if a future client hides it.
    """
    try:
        from requests.adapters import HTTPAdapter

        session = ee.data._get_state().requests_session  # noqa: SLF001
    except (AttributeError, ImportError):
        return
    if session is None:
        return
    for prefix in ("https://", "http://"):
        old = session.adapters.get(prefix)
        session.mount(prefix, HTTPAdapter(pool_connections=4, pool_maxsize=40))
        if old is not None:
            old.close()  # its pooled connections (Initialize's requests) would be left unclosed


def configure_client(deadline_s: float = DEFAULT_DEADLINE_S) -> None:
    """Set the per-request deadline (seconds, 0: none) and keep the client's own retries off.

    Changing the deadline rebuilds the client's API resource (two discovery requests), so it is done only
    when the value changes; call it before starting parallel requests.
    """
    ee = import_ee()
    with _LOCK:
        ee.data.setMaxRetries(0)
        wanted = max(0.0, float(deadline_s))
        if _STATE["deadline_s"] != wanted:
            ee.data.setDeadline(int(round(wanted * 1000)))
            _STATE["deadline_s"] = wanted


def require_session(log: Log = None) -> EESessionInfo:
    """The current session, or one initialised from the defaults (environment, stored credentials)."""
    info = current_session()
    return info if info is not None else ensure_session(log=log)


# --------------------------------------------------------------------------------------------
# Errors: what happened, and what to do
# --------------------------------------------------------------------------------------------

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})

_EMPTY_PATTERNS = re.compile(r"did not match any bands|image has no bands|no bands in image|"
                             r"collection is empty|empty collection", re.I)
_QUOTA_PATTERNS = re.compile(r"too many (concurrent|requests)|quota|rate limit|resource.?exhausted", re.I)
_PERMISSION_PATTERNS = re.compile(r"permission|not (been )?registered|has not been used in project|"
                                  r"not authorized|access denied|forbidden|caller does not have", re.I)
_AUTH_PATTERNS = re.compile(r"authorize access|earthengine authenticate|invalid_grant|unauthenticated|"
                            r"invalid authentication|could not refresh|credentials", re.I)


def http_status(exc: BaseException) -> Optional[int]:
    """The HTTP status behind a client exception (the client keeps it on ``__context__``), or None."""
    seen = 0
    e: Optional[BaseException] = exc
    while e is not None and seen < 5:
        status = getattr(e, "status_code", None)
        if status is None:
            status = getattr(getattr(e, "resp", None), "status", None)
        if isinstance(status, int) or (isinstance(status, str) and status.isdigit()):
            return int(status)
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or type(exc).__name__ in ("Timeout", "ReadTimeout", "ConnectTimeout")


def is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError) or type(exc).__name__ in ("ServerNotFoundError",)


_UNREADABLE_PATTERNS = re.compile(r"EOF|reading array data|pickled (\(object\) )?data|magic string|not a NPY|"
                                  r"failed to interpret|header|truncated|IncompleteRead|ChunkedEncoding|"
                                  r"Connection broken|invalid load key|unexpected end", re.I)


def is_unreadable_answer(exc: BaseException) -> bool:
    """An answer cut short or garbled on the way (numpy could not read it, the body ended early)."""
    e: Optional[BaseException] = exc
    seen = 0
    while e is not None and seen < 5:
        name = type(e).__name__
        if name in ("IncompleteRead", "ChunkedEncodingError", "ProtocolError", "ContentDecodingError",
                    "UnpicklingError") or isinstance(e, EOFError):
            return True
        if isinstance(e, ValueError) and http_status(e) is None and _UNREADABLE_PATTERNS.search(str(e)):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


def retry_after_s(exc: BaseException) -> Optional[float]:
    """The seconds of an HTTP ``Retry-After`` header behind a client exception (a number or an HTTP date)."""
    e: Optional[BaseException] = exc
    seen = 0
    while e is not None and seen < 5:
        resp = getattr(e, "resp", None) or getattr(e, "response", None)
        headers = getattr(resp, "headers", resp)
        value = None
        try:
            value = headers.get("retry-after") or headers.get("Retry-After")
        except AttributeError:
            pass
        if value:
            value = str(value).strip()
            try:
                return max(0.0, float(value))
            except ValueError:
                try:
                    import email.utils
                    import time as _time

                    return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - _time.time())
                except (TypeError, ValueError, IndexError):
                    return None
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def is_retryable(exc: BaseException) -> bool:
    """429, 5xx, timeouts, connection errors and unreadable answers are worth another try; the rest are not."""
    if is_timeout(exc) or is_connection_error(exc) or is_unreadable_answer(exc):
        return True
    return http_status(exc) in RETRYABLE_STATUS


def is_empty_collection_error(exc: BaseException) -> bool:
    status = http_status(exc)
    return (status in (None, 400)) and bool(_EMPTY_PATTERNS.search(str(exc)))


def translate_ee_error(exc: BaseException, *, what: str = "the Earth Engine request",
                       project: Optional[str] = None, deadline_s: Optional[float] = None):
    """A ThorFetchError / ThorConfigError for a client exception, saying what to do (secrets redacted).

    Returned, not raised, so callers can ``raise translate_ee_error(e) from None``.
    """
    if isinstance(exc, (ThorConfigError, ThorFetchError)):
        return exc
    msg = redact(exc).strip() or type(exc).__name__
    status = http_status(exc)
    proj = f" {project}" if project else ""
    name = type(exc).__name__
    if "no project found" in msg.lower():
        return ThorConfigError(f"{what} failed: no Google Cloud project: " + PROJECT_HELP + ".")
    if name in ("RefreshError", "DefaultCredentialsError") or status == 401 or (
            status is None and _AUTH_PATTERNS.search(msg) and not is_timeout(exc)):
        return ThorConfigError(f"{what} failed: Earth Engine did not accept the credentials ({msg}): "
                               + AUTH_HELP + ".")
    if is_timeout(exc):
        limit = f" within the {deadline_s:g} s deadline" if deadline_s else ""
        return ThorFetchError(f"{what} timed out: Earth Engine did not answer{limit}. Try again later, use "
                              "fewer parallel requests, or raise the request deadline (the advanced parameter "
                              f"'Earth Engine request deadline', or the environment variable {ENV_DEADLINE}).")
    if is_unreadable_answer(exc):
        return ThorFetchError(f"{what} failed: Earth Engine sent an unreadable answer (cut short or garbled on "
                              "the way). Try again later; check any proxy between this computer and Earth "
                              "Engine.")
    if is_connection_error(exc):
        return ThorFetchError(f"{what} failed: cannot reach the Earth Engine API ({msg}). Check the network "
                              "connection and the Earth Engine API URL setting.")
    if status == 429 or (status is None and _QUOTA_PATTERNS.search(msg)):
        return ThorFetchError(f"{what} failed: the Earth Engine quota of project{proj} is exceeded ({msg}). "
                              "Use fewer parallel requests (fetch workers), wait a minute and run again.")
    if is_empty_collection_error(exc):
        return ThorFetchError(f"{what} failed: no image matches the filters ({msg}). Widen the date range, "
                              "raise the cloudy-pixel threshold or check that the area is covered.")
    if status == 403 or (status is None and _PERMISSION_PATTERNS.search(msg)):
        return ThorFetchError(f"{what} failed: permission denied for project{proj} ({msg}). Check that the "
                              "project is registered for Earth Engine and that the account has the Earth "
                              "Engine Resource Viewer and Service Usage Consumer roles on it.")
    if status is not None and status >= 500:
        return ThorFetchError(f"{what} failed: Earth Engine server error {status} ({msg}). Try again later.")
    prefix = f"HTTP {status}: " if status else ""
    return ThorFetchError(f"{what} failed: {prefix}{msg}")
