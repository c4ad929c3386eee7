"""A fake of the Earth Engine REST service on 127.0.0.1, for driving the real earthengine-api client.

It answers what the client asks for:

- ``GET /$discovery/rest?version=v1``: the discovery document shipped in the ee wheel
  (``ee/tests/cloud_api_discovery_document.json``, paths rewritten from v1alpha to v1);
- ``GET /v1/projects/{p}/algorithms``: ``ee/tests/algorithms.json`` from the same wheel;
- ``POST /v1/projects/{p}/image:computePixels``: parses the expression graph (collection, filters, bands,
  reducer, type, fill value) and answers an NPY structured array of shape (height, width), one named field
  per band, whose values are derived from each pixel's centre in the request's grid (see
  :func:`pixel_values`), so tests can check the georeferencing of what the client got;
- ``POST /v1/projects/{p}/value:compute``: ``Collection.size`` (``collection_size``, 0 in empty mode).

Pixel values: band ``k`` (its position in the request's final band list) at a pixel whose centre is
``(x, y)`` in the grid's CRS is ``1000 * k + ((0.37 * x + 0.61 * y) mod 997)``: always in 0..10000, different
for every band, and shifted by a few units by any half-pixel (5 m) error, a transposition or a flip. Pixels
for which ``nodata(x, y)`` is true take the expression's ``unmask`` value.

Test hooks (set as attributes, or through the methods): ``latency_s`` (per compute request),
``fail_next(status, times)`` (N scripted failures, then success), ``fail_always(status)``, ``hang_s``
(hold the answer that long: longer than the client's deadline gives a timeout), ``empty_collection``
(True, or a callable of the parsed request: answers like the real service when bands are selected on the
composite of an empty collection: HTTP 400 ``Image.select: Pattern 'B2' did not match any bands.``),
``field_order`` ("request" or "reversed": the order of the NPY fields), ``pixel_value`` (None, or a value
such as NaN that every served pixel takes), ``fault_next(kind, times)`` (the next N compute answers are
broken: "truncated" sends half the body and closes the connection, "short" sends a cut NPY body with a
matching length, "garbage" sends random bytes), ``fail_next(..., retry_after=s)`` (a Retry-After header on
the scripted failures), ``requests`` (the request log:
method, path, parsed JSON body, headers, thread, monotonic start/end times, status) and
``max_concurrency`` (the high-water mark of compute requests in flight).

Use as a context manager (``with FakeEarthEngine() as fake: ... fake.url``) or through the pytest
fixtures at the bottom of this file.
"""
from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

VALUE_OFFSET = 1000.0
DEFAULT_PROJECT = "thor-test"


# --------------------------------------------------------------------------------------------
# Pixel values
# --------------------------------------------------------------------------------------------


def pixel_centres(transform: Dict[str, float], width: int, height: int) -> Tuple[np.ndarray, np.ndarray]:
    """Map coordinates of every pixel centre of a PixelGrid ``affineTransform``: (x, y), each (h, w)."""
    t = {k: float(transform.get(k, 0.0)) for k in ("scaleX", "shearX", "translateX",
                                                   "shearY", "scaleY", "translateY")}
    cols, rows = np.meshgrid(np.arange(width, dtype=np.float64) + 0.5,
                             np.arange(height, dtype=np.float64) + 0.5)
    x = t["translateX"] + t["scaleX"] * cols + t["shearX"] * rows
    y = t["translateY"] + t["shearY"] * cols + t["scaleY"] * rows
    return x, y


def base_value(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.mod(0.37 * x + 0.61 * y, 997.0)


def pixel_values(transform: Dict[str, float], width: int, height: int, band_count: int) -> np.ndarray:
    """The values the fake serves for a grid, [band_count, height, width] float64."""
    x, y = pixel_centres(transform, width, height)
    base = base_value(x, y)
    return np.stack([VALUE_OFFSET * k + base for k in range(band_count)])


def expected_from_geotransform(gt: Sequence[float], width: int, height: int, band_count: int) -> np.ndarray:
    """:func:`pixel_values` for a GDAL geotransform."""
    t = {"translateX": gt[0], "scaleX": gt[1], "shearX": gt[2],
         "translateY": gt[3], "shearY": gt[4], "scaleY": gt[5]}
    return pixel_values(t, width, height, band_count)


# --------------------------------------------------------------------------------------------
# Expression graphs
# --------------------------------------------------------------------------------------------


def resolve_graph(expression: Dict[str, Any]) -> Any:
    """The serialised expression as a tree: calls are ``{"fn": name, "args": {...}}``, constants are
    plain values, function definitions ``{"params": [...], "body": tree}``, arguments ``{"argref": name}``."""
    values = expression.get("values", {})

    def node(v: Any, depth: int = 0) -> Any:
        if depth > 200:
            raise ValueError("expression graph too deep")
        if not isinstance(v, dict):
            return v
        if "constantValue" in v:
            return v["constantValue"]
        if "valueReference" in v:
            return node(values[v["valueReference"]], depth + 1)
        if "functionInvocationValue" in v:
            inv = v["functionInvocationValue"]
            return {"fn": inv.get("functionName") or inv.get("functionReference"),
                    "args": {k: node(a, depth + 1) for k, a in inv.get("arguments", {}).items()}}
        if "functionDefinitionValue" in v:
            d = v["functionDefinitionValue"]
            return {"params": d.get("argumentNames", []), "body": node(values[d["body"]], depth + 1)}
        if "argumentReference" in v:
            return {"argref": v["argumentReference"]}
        if "arrayValue" in v:
            return [node(x, depth + 1) for x in v["arrayValue"].get("values", [])]
        if "dictionaryValue" in v:
            return {k: node(x, depth + 1) for k, x in v["dictionaryValue"].get("values", {}).items()}
        if "bytesValue" in v:
            return v["bytesValue"]
        if "integerValue" in v:
            return int(v["integerValue"])
        if "nullValue" in v:
            return None
        return v

    return node({"valueReference": expression["result"]})


def find_calls(tree: Any, name: str) -> List[Dict[str, Any]]:
    """The ``args`` of every call to ``name`` in a resolved tree, outermost first."""
    out: List[Dict[str, Any]] = []

    def walk(t: Any) -> None:
        if isinstance(t, dict):
            if t.get("fn") == name:
                out.append(t["args"])
            for v in t.values():
                walk(v)
        elif isinstance(t, list):
            for v in t:
                walk(v)

    walk(tree)
    return out


REDUCERS = {"reduce.median": "median", "reduce.mean": "mean", "reduce.min": "min", "reduce.max": "max",
            "ImageCollection.mosaic": "mosaic"}


@dataclass
class ParsedImage:
    """What the fake understands of an image expression."""

    collection: Optional[str] = None
    start: Optional[str] = None
    end: Optional[str] = None
    cloud_field: Optional[str] = None
    cloud_lt: Optional[float] = None
    region: Optional[Dict[str, Any]] = None  # Rectangle args: coordinates, crs
    collection_bands: Optional[List[str]] = None  # select on the collection (via map)
    composite: Optional[str] = None
    image_bands: Optional[List[str]] = None  # select on the composite
    dtype: str = "<f8"
    fill: Optional[float] = None
    fill_same_footprint: Optional[bool] = None
    sort_key: Optional[str] = None
    sort_ascending: Optional[bool] = None
    tree: Any = None

    @property
    def bands(self) -> List[str]:
        return list(self.image_bands or self.collection_bands or [])


def parse_image(expression: Dict[str, Any]) -> ParsedImage:
    tree = resolve_graph(expression)
    p = ParsedImage(tree=tree)
    loads = find_calls(tree, "ImageCollection.load")
    if loads:
        p.collection = loads[0].get("id")
    for dr in find_calls(tree, "DateRange"):
        p.start, p.end = dr.get("start"), dr.get("end")
    for lt in find_calls(tree, "Filter.lessThan"):
        p.cloud_field, p.cloud_lt = lt.get("leftField"), lt.get("rightValue")
    rects = find_calls(tree, "GeometryConstructors.Rectangle")
    if rects:
        crs = rects[0].get("crs")
        if isinstance(crs, dict) and crs.get("fn") == "Projection":
            crs = crs["args"].get("crs")
        p.region = {"coordinates": rects[0].get("coordinates"), "crs": crs}
    # Walk down the image chain from the outermost call.
    t = tree
    while isinstance(t, dict) and "fn" in t:
        fn, args = t["fn"], t["args"]
        if fn == "Image.unmask":
            v = args.get("value")
            if isinstance(v, dict) and v.get("fn") == "Image.constant":
                v = v["args"].get("value")
            p.fill = float(v) if isinstance(v, (int, float)) else None
            p.fill_same_footprint = args.get("sameFootprint", True)
            t = args.get("input")
        elif fn in ("Image.toFloat", "Image.toDouble"):
            p.dtype = "<f4" if fn == "Image.toFloat" else "<f8"
            t = args.get("value", args.get("input"))
        elif fn == "Image.select":
            p.image_bands = list(args.get("bandSelectors") or [])
            t = args.get("input")
        elif fn in REDUCERS:
            p.composite = REDUCERS[fn]
            t = args.get("collection")
        elif fn == "Collection.map":
            body = (args.get("baseAlgorithm") or {}).get("body")
            if isinstance(body, dict) and body.get("fn") == "Image.select":
                p.collection_bands = list(body["args"].get("bandSelectors") or [])
            t = args.get("collection")
        elif fn == "Collection.limit":  # what ImageCollection.sort() serialises to
            p.sort_key, p.sort_ascending = args.get("key"), args.get("ascending", True)
            t = args.get("collection")
        elif fn == "Collection.filter":
            t = args.get("collection")
        else:
            t = None
    return p


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


@dataclass
class RequestRecord:
    method: str
    path: str
    body: Any
    headers: Dict[str, str]  # names in lower case
    thread: str
    start: float  # time.monotonic() when the request was read
    end: float = 0.0  # when the answer was sent (or abandoned)
    status: int = 0

    @property
    def kind(self) -> str:
        if self.path.startswith("/$discovery"):
            return "discovery"
        if "/algorithms" in self.path:
            return "algorithms"
        if ":computePixels" in self.path:
            return "computePixels"
        if "value:compute" in self.path:
            return "compute"
        return "other"


def _ee_tests_dir() -> str:
    import ee  # the wheel carries the documents

    return os.path.join(os.path.dirname(ee.__file__), "tests")


_DOCS: Dict[str, bytes] = {}


def _documents() -> Dict[str, bytes]:
    if not _DOCS:
        d = _ee_tests_dir()
        with open(os.path.join(d, "cloud_api_discovery_document.json"), "rb") as f:
            _DOCS["discovery"] = f.read().replace(b"v1alpha", b"v1")
        with open(os.path.join(d, "algorithms.json"), "rb") as f:
            _DOCS["algorithms"] = f.read()
    return _DOCS


_STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
                 504: "DEADLINE_EXCEEDED"}
_STATUS_MESSAGES = {429: "Too many concurrent aggregations.", 500: "An internal error has occurred.",
                    502: "Bad gateway.", 503: "The service is currently unavailable.",
                    504: "Deadline exceeded.", 403: "Permission denied."}


class FakeEarthEngine:
    """The fake service. ``start()``/``stop()`` or ``with``; ``url`` is its base URL."""

    def __init__(self, *, latency_s: float = 0.0, collection_size: int = 12, host: str = "127.0.0.1"):
        _documents()
        self.latency_s = float(latency_s)
        self.hang_s = 0.0
        self.collection_size = int(collection_size)
        self.empty_collection: Union[bool, Callable[[ParsedImage], bool]] = False
        self.nodata: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None
        self.field_order = "request"
        self.pixel_value: Optional[float] = None
        self.retry_after: Optional[float] = None
        self._faults: List[str] = []
        self.error_message: Optional[str] = None  # override the message of scripted failures
        self.requests: List[RequestRecord] = []
        self.max_concurrency = 0
        self._in_flight = 0
        self._scripted: List[int] = []
        self._always: Optional[int] = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._host = host
        self._connections: set = set()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # Hooks --------------------------------------------------------------------------------------
    def fail_next(self, status: int, times: int = 1, message: Optional[str] = None,
                  retry_after: Optional[float] = None) -> None:
        """The next ``times`` compute requests are answered with HTTP ``status``; then success. With
        ``retry_after``, the failures carry a ``Retry-After`` header of that many seconds."""
        with self._lock:
            self._scripted.extend([int(status)] * int(times))
            if message is not None:
                self.error_message = message
            self.retry_after = retry_after

    def fault_next(self, kind: str, times: int = 1) -> None:
        """The next ``times`` compute answers are broken: "truncated", "short" or "garbage"."""
        if kind not in ("truncated", "short", "garbage"):
            raise ValueError(kind)
        with self._lock:
            self._faults.extend([kind] * int(times))

    def _next_fault(self) -> Optional[str]:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def fail_always(self, status: Optional[int], message: Optional[str] = None) -> None:
        """Every compute request is answered with HTTP ``status`` (None: stop failing)."""
        with self._lock:
            self._always = None if status is None else int(status)
            if message is not None:
                self.error_message = message

    def reset_log(self) -> None:
        with self._lock:
            self.requests = []
            self.max_concurrency = 0

    def compute_requests(self, kind: str = "computePixels") -> List[RequestRecord]:
        with self._lock:
            return [r for r in self.requests if r.kind == kind]

    def count(self, kind: str = "computePixels") -> int:
        return len(self.compute_requests(kind))

    # Life cycle ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake Earth Engine server is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeEarthEngine":
        if self._server is not None:
            return self
        fake = self

        class Handler(_Handler):
            owner = fake

        server = ThreadingHTTPServer((self._host, 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._stopping.clear()
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-ee-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()  # releases hanging and sleeping handlers
        self._server.shutdown()
        self._server.server_close()
        with self._lock:  # and the kept-alive connections: a stopped server refuses everything
            conns, self._connections = list(self._connections), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> "FakeEarthEngine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # Request handling (called from handler threads) -------------------------------------------
    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self.requests.append(rec)

    def _enter_compute(self) -> Optional[int]:
        with self._lock:
            self._in_flight += 1
            self.max_concurrency = max(self.max_concurrency, self._in_flight)
            if self._scripted:
                return self._scripted.pop(0)
            return self._always

    def _leave_compute(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _is_empty(self, parsed: ParsedImage) -> bool:
        e = self.empty_collection
        return bool(e(parsed)) if callable(e) else bool(e)

    def compute_pixels(self, body: Dict[str, Any]) -> Tuple[int, bytes, str]:
        expr = body.get("expression")
        if not isinstance(expr, dict):
            return _error(400, "computePixels: no expression.")
        if body.get("fileFormat") != "NPY":
            return _error(400, f"fake: only NPY is served, got {body.get('fileFormat')!r}.")
        grid = body.get("grid") or {}
        dims = grid.get("dimensions") or {}
        w, h = int(dims.get("width", 0)), int(dims.get("height", 0))
        transform = grid.get("affineTransform")
        if w <= 0 or h <= 0 or not transform or not (grid.get("crsCode") or grid.get("crsWkt")):
            return _error(400, "fake: a grid with dimensions, affineTransform and crsCode/crsWkt is required.")
        try:
            parsed = parse_image(expr)
        except (KeyError, ValueError) as e:
            return _error(400, f"fake: cannot parse the expression: {e}")
        if self._is_empty(parsed):
            if parsed.image_bands and parsed.composite:
                return _error(400, f"Image.select: Pattern '{parsed.image_bands[0]}' did not match any bands.")
            return _error(400, "Image has no bands.")  # a guess: not observed on the real service
        bands = list(body.get("bandIds") or parsed.bands)
        if not bands:
            return _error(400, "fake: the expression selects no bands.")
        values = pixel_values(transform, w, h, len(bands))
        if self.pixel_value is not None:
            values[:] = self.pixel_value
        if self.nodata is not None and parsed.fill is not None:
            x, y = pixel_centres(transform, w, h)
            mask = np.asarray(self.nodata(x, y), dtype=bool)
            values[:, mask] = parsed.fill
        order = list(range(len(bands)))
        if self.field_order == "reversed":
            order.reverse()
        dtype = np.dtype([(bands[i], parsed.dtype) for i in order])
        arr = np.zeros((h, w), dtype=dtype)
        for i in order:
            arr[bands[i]] = values[i]
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        return 200, buf.getvalue(), "application/octet-stream"

    def compute_value(self, body: Dict[str, Any]) -> Tuple[int, bytes, str]:
        expr = body.get("expression")
        if not isinstance(expr, dict):
            return _error(400, "value:compute: no expression.")
        tree = resolve_graph(expr)
        if isinstance(tree, dict) and tree.get("fn") in ("Collection.size", "ImageCollection.size"):
            parsed = parse_image(expr)
            size = 0 if self._is_empty(parsed) else self.collection_size
            return 200, json.dumps({"result": size}).encode(), "application/json"
        fn = tree.get("fn") if isinstance(tree, dict) else type(tree).__name__
        return _error(400, f"fake: value:compute of {fn} is not simulated.")


def _error(status: int, message: str) -> Tuple[int, bytes, str]:
    body = {"error": {"code": status, "message": message, "status": _STATUS_NAMES.get(status, "UNKNOWN")}}
    return status, json.dumps(body).encode(), "application/json"


class _Handler(BaseHTTPRequestHandler):
    owner: FakeEarthEngine
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner._connections.add(self.connection)

    def finish(self) -> None:
        with self.owner._lock:
            self.owner._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def _send(self, status: int, body: bytes, ctype: str, fault: Optional[str] = None,
              headers: Optional[Dict[str, str]] = None) -> None:
        length = len(body)
        if fault == "short":
            body = body[: len(body) // 2]
            length = len(body)
        elif fault == "garbage":
            body = np.random.default_rng(len(body)).integers(0, 256, len(body), dtype=np.uint8).tobytes()
            length = len(body)
        elif fault == "truncated":
            body = body[: len(body) // 2]  # Content-Length says the whole body; the connection then closes
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(length))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if fault == "truncated":
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            if fault == "truncated":
                self.close_connection = True
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True  # the client gave up (deadline)

    def _record(self, body: Any) -> RequestRecord:
        rec = RequestRecord(method=self.command, path=self.path, body=body,
                            headers={k.lower(): v for k, v in self.headers.items()},
                            thread=threading.current_thread().name, start=time.monotonic())
        self.owner._record(rec)
        return rec

    def do_GET(self) -> None:  # noqa: N802
        rec = self._record(None)
        docs = _documents()
        if self.path.startswith("/$discovery/rest"):
            status, body, ctype = 200, docs["discovery"], "application/json"
        elif "/algorithms" in self.path.split("?")[0]:
            status, body, ctype = 200, docs["algorithms"], "application/json"
        else:
            status, body, ctype = _error(404, f"fake: no such resource {self.path}")
        rec.status = status
        self._send(status, body, ctype)
        rec.end = time.monotonic()

    def do_POST(self) -> None:  # noqa: N802
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            body = json.loads(raw.decode("utf-8")) if raw else {}
        except ValueError:
            body = None
        rec = self._record(body)
        owner = self.owner
        path = self.path.split("?")[0]
        fault, headers = None, {}
        if not isinstance(body, dict):
            status, out, ctype = _error(400, "fake: the body is not JSON.")
        elif path.endswith(":computePixels") or path.endswith("value:compute"):
            scripted = owner._enter_compute()
            try:
                owner._wait(owner.latency_s)
                if owner.hang_s:
                    owner._wait(owner.hang_s)
                if scripted is not None:
                    status, out, ctype = _error(scripted, owner.error_message
                                                or _STATUS_MESSAGES.get(scripted, "Error."))
                    if owner.retry_after is not None:
                        headers["Retry-After"] = f"{owner.retry_after:g}"
                elif path.endswith(":computePixels"):
                    status, out, ctype = owner.compute_pixels(body)
                    if status == 200:
                        fault = owner._next_fault()
                else:
                    status, out, ctype = owner.compute_value(body)
            finally:
                owner._leave_compute()
        else:
            status, out, ctype = _error(404, f"fake: no such method {path}")
        rec.status = status
        self._send(status, out, ctype, fault, headers)
        rec.end = time.monotonic()


# --------------------------------------------------------------------------------------------
# pytest fixtures (import them into a test module: ``from fake_ee import fake_ee, ee_env``)
# --------------------------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - the bench script runs without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture
    def ee_env(monkeypatch, tmp_path):
        """An environment with no credentials, no proxy for 127.0.0.1, a private cache, a fresh session."""
        from thor_qgis import ee_session

        home = tmp_path / "home"
        home.mkdir()
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("USERPROFILE", str(home))
        monkeypatch.setenv("CLOUDSDK_CONFIG", str(home / "gcloud"))
        for var in ("GOOGLE_APPLICATION_CREDENTIALS", "THOR_EE_API_URL", "RS_EMBED_THOR_FETCH_WORKERS"):
            monkeypatch.delenv(var, raising=False)
        no_proxy = "127.0.0.1,localhost,::1"
        for var in ("NO_PROXY", "no_proxy"):
            old = os.environ.get(var, "")
            monkeypatch.setenv(var, f"{old},{no_proxy}" if old else no_proxy)
        monkeypatch.setenv("THOR_CACHE_DIR", str(tmp_path / "cache"))
        ee_session.reset_session()
        yield tmp_path
        ee_session.reset_session()

    @pytest.fixture
    def fake_ee(ee_env):
        """A started fake, stopped (and the ee session reset) after the test."""
        with FakeEarthEngine() as fake:
            yield fake

    @pytest.fixture
    def ee_session_on_fake(fake_ee):
        """The fake plus an ee session initialised against it."""
        from thor_qgis import ee_session

        info = ee_session.ensure_session(project=DEFAULT_PROJECT, url=fake_ee.url)
        fake_ee.reset_log()
        return fake_ee, info


# --------------------------------------------------------------------------------------------
# Small helpers for the tests
# --------------------------------------------------------------------------------------------


def request_tree(rec: RequestRecord) -> Any:
    """The resolved expression tree of a logged compute request."""
    return resolve_graph(rec.body["expression"])


def request_origin(rec: RequestRecord) -> Tuple[float, float]:
    """(translateX, translateY) of a logged computePixels request's grid: which tile it was."""
    t = rec.body["grid"]["affineTransform"]
    return float(t["translateX"]), float(t["translateY"])


def utm_layout(tiles_x: int, tiles_y: int, *, image_size: int = 32, scale_m: float = 10.0, epsg: int = 32633,
               x0: float = 500000.0, y0: float = 4000000.0):
    """A TileLayout of exactly ``tiles_x * tiles_y`` tiles whose bottom-left corner is (x0, y0)."""
    from thor_qgis.tiling import layout_for_area

    g = scale_m * image_size
    return layout_for_area((x0, y0, x0 + tiles_x * g, y0 + tiles_y * g), f"EPSG:{epsg}", scale_m, image_size,
                           max(1, image_size // 16))
