"""Sentinel-2 composites from Earth Engine, fetched tile by tile at each tile's exact pixel grid.

For every tile the expression is::

    ImageCollection(collection).filterBounds(tile).filterDate(start, end)
        .filter(CLOUDY_PIXEL_PERCENTAGE < cloudy_pct).select(bands)
        .<median|mean|min|max>()            # or .sort(CLOUDY_PIXEL_PERCENTAGE, descending).mosaic()
        .select(bands).toFloat().unmask(fill_value, sameFootprint=False)

and it is computed with ``computePixels`` on the tile's grid (``image_size`` pixels a side at ``scale_m`` in
the tile's UTM CRS, the affine transform of ``TileLayout.pixel_geotransform``), as NPY, into a CHW float32
array in band order. Notes on the choices:

- The second ``select(bands)`` on the composite is what makes an empty collection visible: the composite of
  no image has no bands, so the server answers HTTP 400 "Image.select: Pattern 'B2' did not match any
  bands." for exactly the tiles with no matching scene, at no extra request (a ``size()`` check per run
  would cost a round trip and could not see a tile-level gap).
- ``mosaic`` puts the least cloudy scene on top (sorted by CLOUDY_PIXEL_PERCENTAGE, descending).
- ``sameFootprint=False``: every pixel of the grid gets ``fill_value`` where there is no data (NPY carries
  no mask).

Requests run in a thread pool, at most ``2 * workers`` outstanding, yielded in tile order so the model works
on tile k while later tiles are fetched. Retries with exponential backoff on 429, 5xx, timeouts and
connection errors (the client's own retries are off); a per-request deadline; a persistent failure is a
ThorFetchError naming what to do. Answers are cached on disk as .npy files keyed by a hash of the request
(expression, grid, format, API URL; never credentials), written atomically.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import queue
import random
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .ee_session import (DEFAULT_DEADLINE_S, EESessionInfo, configure_client, import_ee, is_empty_collection_error,
                         is_retryable, is_timeout, redact, require_session, retry_after_s, session_in_use,
                         translate_ee_error)
from .errors import ThorCanceled, ThorConfigError, ThorFetchError
from .specs import SensorSpec, TemporalSpec, default_fetch_workers
from .tiling import Bounds, Tile, TileLayout, layout_for_area

GeoTransform = Tuple[float, float, float, float, float, float]
Log = Optional[Callable[[str], None]]
IsCanceled = Optional[Callable[[], bool]]

MAX_WORKERS = 40  # Earth Engine's default quota: 40 concurrent requests per project
ENV_CACHE_DIR = "THOR_CACHE_DIR"
CACHE_FORMAT = "thor-ee-npy-1"
CLOUD_PROPERTY = "CLOUDY_PIXEL_PERCENTAGE"
ON_EMPTY = ("error", "fill")
DEFAULT_COMPOSITE_TILE_PX = 256


# --------------------------------------------------------------------------------------------
# Policy, grids, statistics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How failed requests are retried. ``sleep`` replaces the (cancel-aware) wait, for tests."""

    max_attempts: int = 5
    backoff_base_s: float = 2.0
    backoff_max_s: float = 32.0
    deadline_s: float = DEFAULT_DEADLINE_S
    jitter: bool = True
    sleep: Optional[Callable[[float], None]] = None
    #: Seconds one item may take, retries and waits included (None: 2 x the deadline + 60 s). A request that
    #: timed out is tried once more at most: a server that hangs costs about 2 deadlines, not 5.
    total_s: Optional[float] = None
    max_timeouts: int = 2

    def __post_init__(self):
        if int(self.max_attempts) < 1:
            raise ThorConfigError(f"max_attempts must be at least 1, got {self.max_attempts!r}")
        if not float(self.deadline_s) >= 0:
            raise ThorConfigError(f"the request deadline must be >= 0 seconds, got {self.deadline_s!r}")

    @property
    def budget_s(self) -> float:
        if self.total_s is not None:
            return float(self.total_s)
        return 2.0 * float(self.deadline_s or DEFAULT_DEADLINE_S) + 60.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        d = min(float(self.backoff_max_s), float(self.backoff_base_s) * 2 ** (attempt - 1))
        return d * (0.5 + 0.5 * random.random()) if self.jitter else d

    def as_record(self) -> Dict[str, Any]:
        return {"max_attempts": int(self.max_attempts), "backoff_base_s": float(self.backoff_base_s),
                "backoff_max_s": float(self.backoff_max_s), "deadline_s": float(self.deadline_s),
                "total_s": self.budget_s}


@dataclass(frozen=True)
class PixelGrid:
    """A north-up pixel grid: ``width x height`` pixels, GDAL geotransform, CRS ("EPSG:n" or WKT)."""

    crs: str
    geotransform: GeoTransform
    width: int
    height: int

    @property
    def pixel_size(self) -> float:
        return abs(float(self.geotransform[1]))

    @property
    def bounds(self) -> Bounds:
        gt = self.geotransform
        x1 = gt[0] + gt[1] * self.width
        y1 = gt[3] + gt[5] * self.height
        return min(gt[0], x1), min(gt[3], y1), max(gt[0], x1), max(gt[3], y1)

    def to_request(self) -> Dict[str, Any]:
        """The ``grid`` of a computePixels request (PixelGrid of the REST API)."""
        gt = [float(v) for v in self.geotransform]
        grid: Dict[str, Any] = {
            "dimensions": {"width": int(self.width), "height": int(self.height)},
            "affineTransform": {"scaleX": gt[1], "shearX": gt[2], "translateX": gt[0],
                                "shearY": gt[4], "scaleY": gt[5], "translateY": gt[3]},
        }
        kind, value = ee_crs(self.crs)
        grid[kind] = value
        return grid


_EPSG_RE = re.compile(r"^\s*EPSG\s*:\s*(\d+)\s*$", re.I)
_CRS_CACHE: Dict[str, Tuple[str, str]] = {}


def ee_crs(crs: str) -> Tuple[str, str]:
    """("crsCode", "EPSG:n") where the CRS has an EPSG code (identified with GDAL from WKT), else
    ("crsWkt", wkt)."""
    crs = str(crs)
    m = _EPSG_RE.match(crs)
    if m:
        return "crsCode", f"EPSG:{int(m.group(1))}"
    if crs in _CRS_CACHE:
        return _CRS_CACHE[crs]
    result = ("crsWkt", crs)
    try:
        from osgeo import osr

        osr.UseExceptions()
        srs = osr.SpatialReference()
        srs.SetFromUserInput(crs)
        if srs.GetAuthorityName(None) != "EPSG" or not srs.GetAuthorityCode(None):
            try:
                srs.AutoIdentifyEPSG()
            except RuntimeError:
                pass
        if srs.GetAuthorityName(None) == "EPSG" and srs.GetAuthorityCode(None):
            result = ("crsCode", f"EPSG:{int(srs.GetAuthorityCode(None))}")
        else:
            result = ("crsWkt", srs.ExportToWkt())
    except ImportError:
        pass
    except RuntimeError as e:
        raise ThorConfigError(f"the CRS {crs[:80]!r} is not understood: {e}") from None
    _CRS_CACHE[crs] = result
    return result


def tile_grid(layout: TileLayout, tile: Tile) -> PixelGrid:
    """The tile's imagery grid: ``image_size`` pixels a side at ``scale_m``, anchored at its top-left."""
    return PixelGrid(layout.crs, tuple(float(v) for v in layout.pixel_geotransform(tile)),
                     layout.image_size, layout.image_size)


def square_grid(center_x: float, center_y: float, half_side: float, crs: str, image_size: int) -> PixelGrid:
    """``image_size`` pixels a side covering exactly the square of side ``2 * half_side`` around the centre
    (pixel size ``2 * half_side / image_size``)."""
    if not (half_side > 0 and math.isfinite(half_side)):
        raise ThorConfigError(f"the half side of a patch must be a positive distance, got {half_side!r}")
    if int(image_size) <= 0:
        raise ThorConfigError(f"the patch size in pixels must be positive, got {image_size!r}")
    px = 2.0 * float(half_side) / int(image_size)
    return PixelGrid(crs, (float(center_x) - half_side, px, 0.0, float(center_y) + half_side, 0.0, -px),
                     int(image_size), int(image_size))


@dataclass
class FetchStats:
    """Counters of one or more runs (thread-safe increments)."""

    items: int = 0
    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    filled_empty: int = 0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def as_record(self) -> Dict[str, int]:
        return {"items": self.items, "requests": self.requests, "cache_hits": self.cache_hits,
                "retries": self.retries, "filled_empty": self.filled_empty}


def clamp_workers(workers: Any, log: Log = None) -> int:
    """The number of parallel requests, 1..40 (Earth Engine's concurrency quota)."""
    if workers is None:
        workers = default_fetch_workers()
    try:
        w = int(workers)
        if w != float(workers):
            raise ValueError
    except (TypeError, ValueError):
        raise ThorConfigError(f"fetch workers must be a whole number, got {workers!r}") from None
    clamped = min(MAX_WORKERS, max(1, w))
    if clamped != w and log:
        log(f"Earth Engine: {w} fetch workers asked, using {clamped} (allowed: 1 to {MAX_WORKERS})")
    return clamped


# --------------------------------------------------------------------------------------------
# The on-disk cache
# --------------------------------------------------------------------------------------------


def default_cache_dir(env: Optional[Mapping[str, str]] = None) -> str:
    env = os.environ if env is None else env
    d = env.get(ENV_CACHE_DIR, "").strip()
    return os.path.abspath(os.path.expanduser(d)) if d else os.path.join(
        os.path.expanduser("~"), ".cache", "thor_qgis", "ee")


class TileCache:
    """Fetched arrays as ``<dir>/<k[:2]>/<k>.npy``; written under a temporary name, then renamed."""

    def __init__(self, directory: Optional[str] = None):
        self.directory = os.path.abspath(os.fspath(directory)) if directory else default_cache_dir()

    def path_for(self, key: str) -> str:
        return os.path.join(self.directory, key[:2], key + ".npy")

    def get(self, key: str) -> Optional[np.ndarray]:
        path = self.path_for(key)
        try:
            return np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):
            try:  # a damaged entry is fetched again
                os.remove(path)
            except OSError:
                pass
            return None

    def put(self, key: str, arr: np.ndarray) -> None:
        path = self.path_for(key)
        d = os.path.dirname(path)
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix="." + key[:12] + ".", suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise


def resolve_cache(cache: Union[bool, None, str, os.PathLike, TileCache]) -> Optional[TileCache]:
    """True: the default directory ($THOR_CACHE_DIR or ~/.cache/thor_qgis/ee); a path; a TileCache;
    False/None: no cache."""
    if isinstance(cache, TileCache):
        return cache
    if cache is True:
        return TileCache()
    if cache is None or cache is False:
        return None
    return TileCache(os.fspath(cache))


def request_key(expression: Mapping[str, Any], grid: Mapping[str, Any], file_format: str = "NPY",
                api_url: Optional[str] = None) -> str:
    """SHA-256 of the request: expression graph, grid, format and API URL (an emulator's pixels never mix
    with the service's). Credentials and the project are not part of it."""
    payload = {"format": CACHE_FORMAT, "expression": expression, "grid": grid, "fileFormat": file_format,
               "api": api_url or "default"}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# Expressions
# --------------------------------------------------------------------------------------------


def _ee_projection(ee, crs: str):
    kind, value = ee_crs(crs)
    return value if kind == "crsCode" else ee.Projection(value)


def composite_image(sensor: SensorSpec, temporal: TemporalSpec, region: Bounds, crs: str):
    """The ee.Image of the composite over ``region`` (xmin, ymin, xmax, ymax in ``crs``). No HTTP call;
    needs an initialised session."""
    ee = import_ee()
    bands = list(sensor.bands)
    start, end = temporal.iso()
    geom = ee.Geometry.Rectangle([float(v) for v in region], _ee_projection(ee, crs), False)
    col = (ee.ImageCollection(sensor.collection)
           .filterBounds(geom)
           .filterDate(start, end)
           .filter(ee.Filter.lt(CLOUD_PROPERTY, float(sensor.cloudy_pct)))
           .select(bands))
    if sensor.composite == "mosaic":
        img = col.sort(CLOUD_PROPERTY, False).mosaic()  # least cloudy on top
    else:
        img = getattr(col, sensor.composite)()
    return img.select(bands).toFloat().unmask(float(sensor.fill_value), False)


def to_chw(result: Any, bands: Sequence[str], height: int, width: int) -> np.ndarray:
    """A computePixels NPY answer (structured (h, w), one field per band) as [C, h, w] float32."""
    arr = np.asarray(result)
    names = arr.dtype.names
    if not names:
        raise ThorFetchError(f"Earth Engine answered an array of {arr.dtype} instead of one field per band")
    missing = [b for b in bands if b not in names]
    if missing:
        raise ThorFetchError(f"Earth Engine's answer lacks the bands {', '.join(missing)} "
                             f"(it has {', '.join(names)})")
    if arr.shape != (int(height), int(width)):
        raise ThorFetchError(f"Earth Engine answered {arr.shape} pixels for a {height}x{width} grid")
    out = np.empty((len(bands), int(height), int(width)), dtype=np.float32)
    for i, b in enumerate(bands):
        out[i] = arr[b]
    return out


# --------------------------------------------------------------------------------------------
# The runner: one request with cache and retries; the ordered parallel iterator
# --------------------------------------------------------------------------------------------


@dataclass
class _Job:
    label: str
    grid: PixelGrid
    region: Bounds
    payload: Any = None  # what the caller gets back with the array (a Tile, an index)


@dataclass
class _Prepared:
    job: _Job
    request: Dict[str, Any]
    key: Optional[str]


class _Runner:
    def __init__(self, sensor: SensorSpec, temporal: TemporalSpec, session: EESessionInfo, *,
                 cache: Optional[TileCache], policy: RetryPolicy, is_canceled: IsCanceled, on_empty: str,
                 stats: FetchStats):
        if on_empty not in ON_EMPTY:
            raise ThorConfigError(f"on_empty must be error or fill, got {on_empty!r}")
        self.sensor, self.temporal, self.session = sensor, temporal, session
        self.cache, self.policy, self.on_empty, self.stats = cache, policy, on_empty, stats
        self._is_canceled = is_canceled
        self.cancel_event = threading.Event()
        self.notes: "queue.SimpleQueue[str]" = queue.SimpleQueue()

    # cancel -------------------------------------------------------------------------------
    def canceled(self) -> bool:
        if self.cancel_event.is_set():
            return True
        if self._is_canceled is not None:
            try:
                if self._is_canceled():
                    self.cancel_event.set()
                    return True
            except Exception:  # a broken callback must not stop the fetch
                return False
        return False

    def flush(self, log: Log) -> None:
        while True:
            try:
                msg = self.notes.get_nowait()
            except queue.Empty:
                return
            if log:
                log(msg)

    # one request ----------------------------------------------------------------------------
    def prepare(self, job: _Job) -> _Prepared:
        """Build the expression and request (main thread: the ee objects are built in one thread)."""
        ee = import_ee()
        image = composite_image(self.sensor, self.temporal, job.region, job.grid.crs)
        grid = job.grid.to_request()
        request = {"expression": image, "fileFormat": "NUMPY_NDARRAY", "grid": grid}
        key = None
        if self.cache is not None:
            encoded = ee.serializer.encode(image, for_cloud_api=True)
            key = request_key(encoded, grid, "NPY", self.session.api_url)
        return _Prepared(job, request, key)

    def _empty_message(self, label: str) -> str:
        s, t = self.sensor, self.temporal
        return (f"no image of {s.collection} between {t.start.isoformat()} and {t.end.isoformat()} (end "
                f"excluded) with {CLOUD_PROPERTY} < {s.cloudy_pct:g} covers {label}: widen the date range, "
                "raise the cloudy-pixel threshold or check the area")

    def run(self, prep: _Prepared) -> np.ndarray:
        """Cache, else the request with retries (worker thread)."""
        job, grid = prep.job, prep.job.grid
        bands = list(self.sensor.bands)
        if self.canceled():
            raise ThorCanceled("canceled")
        if prep.key is not None:
            cached = self.cache.get(prep.key)
            if cached is not None and cached.shape == (len(bands), grid.height, grid.width):
                self.stats.add(cache_hits=1)
                return cached.astype(np.float32, copy=False)
        ee = import_ee()
        attempts = int(self.policy.max_attempts)
        budget = self.policy.budget_s
        started = time.monotonic()
        timeouts = 0
        for attempt in range(1, attempts + 1):
            if self.canceled():
                raise ThorCanceled("canceled")
            failure = None
            try:
                self.stats.add(requests=1)
                raw = ee.data.computePixels(dict(prep.request))
                arr = to_chw(raw, bands, grid.height, grid.width)
                break
            except (ThorFetchError, ThorCanceled):
                raise
            except Exception as e:  # the client raises EEException, TimeoutError, ConnectionError, ...
                if is_empty_collection_error(e):
                    if self.on_empty == "fill":
                        self.stats.add(filled_empty=1)
                        self.notes.put(f"Earth Engine: {self._empty_message(job.label)}; "
                                       f"filled with {self.sensor.fill_value:g}")
                        return np.full((len(bands), grid.height, grid.width), self.sensor.fill_value,
                                       dtype=np.float32)
                    raise ThorFetchError(self._empty_message(job.label)) from None
                timeouts += int(is_timeout(e))
                failure = self._retry_or_fail(e, job.label, attempt, attempts, timeouts, started, budget)
            if isinstance(failure, Exception):
                raise failure
            self._wait(failure)
        else:  # pragma: no cover - the loop always breaks or raises
            raise ThorFetchError(f"fetching {job.label} failed")
        bad = ~np.isfinite(arr)
        if bad.any():
            # NaN / Inf are no data: the fill value, and the answer is not cached (an all-NaN answer is more
            # likely a fault than imagery, and must not be served again as such)
            arr[bad] = self.sensor.fill_value
            share = float(bad.mean())
            self.notes.put(f"Earth Engine: {job.label}: {100 * share:.0f}% of the values are NaN or infinite: "
                           "taken as no data (not cached)")
            return arr
        if prep.key is not None:
            try:
                self.cache.put(prep.key, arr)
            except OSError as e:
                self.notes.put(f"Earth Engine: cannot write the cache in {self.cache.directory} ({e}); "
                               "continuing without it")
        return arr

    def _retry_or_fail(self, e: BaseException, label: str, attempt: int, attempts: int, timeouts: int,
                       started: float, budget: float) -> Union[float, Exception]:
        """The seconds to wait before the next attempt, or the error to raise (retries, the Retry-After the
        server asked for and the item's time budget all decide)."""
        deadline = self.policy.deadline_s or None
        what = f"fetching {label}"
        if not is_retryable(e):
            return translate_ee_error(e, what=what, project=self.session.project, deadline_s=deadline)
        delay = self.policy.delay(attempt)
        asked = retry_after_s(e)
        if asked is not None:
            delay = max(delay, asked)
        elapsed = time.monotonic() - started
        stop = ""
        if attempt >= attempts:
            stop = f"gave up after {attempts} attempts"
        elif is_timeout(e) and timeouts >= int(self.policy.max_timeouts):
            stop = f"gave up after {attempt} attempts, {timeouts} of them past the deadline"
        elif self.policy.sleep is None and elapsed + delay > budget:
            stop = (f"gave up after {attempt} attempt(s) in {elapsed:.0f} s: "
                    + (f"Earth Engine asked to retry after {asked:g} s, " if asked is not None else
                       f"the next retry in {delay:.0f} s would go ")
                    + f"past the {budget:g} s allowed for one request with its retries")
        if stop:
            err = translate_ee_error(e, what=what, project=self.session.project, deadline_s=deadline)
            return type(err)(f"{err} ({stop})")
        self.stats.add(retries=1)
        reason = redact(e).splitlines()[0][:160] if str(e) else type(e).__name__
        told = f" (Retry-After: {asked:g} s)" if asked is not None else ""
        self.notes.put(f"Earth Engine: {label}: {type(e).__name__}: {reason}; "
                       f"retry {attempt} of {attempts - 1} in {delay:.1f} s{told}")
        return delay

    def _wait(self, seconds: float) -> None:
        if self.policy.sleep is not None:
            self.policy.sleep(seconds)
        else:
            deadline = time.monotonic() + seconds
            while not self.canceled():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cancel_event.wait(min(left, 0.1))
        if self.canceled():
            raise ThorCanceled("canceled")


def _prepare_run(sensor: SensorSpec, temporal: TemporalSpec, *, cache: Any, policy: Optional[RetryPolicy],
                 is_canceled: IsCanceled, on_empty: str, stats: Optional[FetchStats], log: Log) -> _Runner:
    if not isinstance(sensor, SensorSpec):
        raise ThorConfigError("sensor must be a SensorSpec")
    if not isinstance(temporal, TemporalSpec):
        raise ThorConfigError("temporal must be a TemporalSpec")
    policy = policy or RetryPolicy()
    session = require_session(log)
    configure_client(policy.deadline_s)
    tile_cache = resolve_cache(cache)
    if tile_cache is not None and temporal.end > _dt.date.today():
        if log:
            log(f"Earth Engine: the date range ends {temporal.end.isoformat()}, after today: new scenes can "
                "still change the composite, so the cache is not used")
        tile_cache = None
    return _Runner(sensor, temporal, session, cache=tile_cache, policy=policy, is_canceled=is_canceled,
                   on_empty=on_empty, stats=stats if stats is not None else FetchStats())


def _ordered(jobs: Iterable[_Job], runner: _Runner, workers: int, limit: int,
             log: Log) -> Iterator[Tuple[_Job, np.ndarray]]:
    """Run the jobs on ``workers`` threads, at most ``limit`` outstanding, yielding in job order."""
    pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="thor-ee-fetch")
    pending: "collections.deque[Tuple[_Job, cf.Future]]" = collections.deque()
    it = iter(jobs)
    done_count = 0
    finished = False

    def top_up() -> None:
        while len(pending) < limit and not runner.canceled():
            job = next(it, None)
            if job is None:
                return
            pending.append((job, pool.submit(runner.run, runner.prepare(job))))

    hold = session_in_use()
    hold.__enter__()
    try:
        top_up()
        while pending:
            job, fut = pending[0]
            while True:
                if runner.canceled():
                    raise ThorCanceled(f"canceled: the Earth Engine fetch stopped after {done_count} items")
                if cf.wait([fut], timeout=0.05).done:
                    break
                runner.flush(log)
            try:
                arr = fut.result()
            except ThorCanceled:
                raise ThorCanceled(f"canceled: the Earth Engine fetch stopped after {done_count} items") \
                    from None
            pending.popleft()
            top_up()  # keep the pool busy while the consumer works on this one
            runner.flush(log)
            done_count += 1
            runner.stats.add(items=1)
            yield job, arr
        if runner.canceled():
            raise ThorCanceled(f"canceled: the Earth Engine fetch stopped after {done_count} items")
        finished = True
    finally:
        if not finished:
            runner.cancel_event.set()  # no new requests, retry waits end
        for _, f in pending:
            f.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        runner.flush(log)
        hold.__exit__(None, None, None)


def _describe(sensor: SensorSpec, temporal: TemporalSpec) -> str:
    return (f"{sensor.collection} {temporal.start.isoformat()} to {temporal.end.isoformat()} (end excluded), "
            f"{CLOUD_PROPERTY} < {sensor.cloudy_pct:g}, {sensor.composite} composite")


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def fetch_tiles(layout: TileLayout, sensor: SensorSpec, temporal: TemporalSpec, *, workers: Optional[int] = None,
                cache: Union[bool, None, str, os.PathLike, TileCache] = True, is_canceled: IsCanceled = None,
                log: Log = None, policy: Optional[RetryPolicy] = None, on_empty: str = "error",
                stats: Optional[FetchStats] = None, tiles: Optional[Iterable[Tile]] = None,
                max_outstanding: Optional[int] = None) -> Iterator[Tuple[Tile, np.ndarray]]:
    """Fetch every tile of ``layout`` (or the given ``tiles``) as [bands, S, S] float32, yielded in order.

    ``workers`` parallel requests (default ``RS_EMBED_THOR_FETCH_WORKERS`` or 8, clamped to 1..40), at most
    ``max_outstanding`` (default ``2 * workers``) requests or unconsumed results at a time. Needs an Earth
    Engine session (:func:`thor_qgis.ee_session.ensure_session`; the defaults are used otherwise).
    ``on_empty``: "error" (a tile with no matching scene is a ThorFetchError) or "fill" (it is filled with
    ``fill_value`` and logged). ``is_canceled`` is also polled from the fetch threads (so it must be
    thread-safe, as ``QgsFeedback.isCanceled`` is); ``log`` is only called from the iterating thread.
    Raises ThorCanceled promptly once ``is_canceled()`` is true, ThorFetchError
    when a tile cannot be fetched. Session set-up and argument errors are raised by this call, the rest
    while iterating.
    """
    w = clamp_workers(workers, log)
    runner = _prepare_run(sensor, temporal, cache=cache, policy=policy, is_canceled=is_canceled,
                          on_empty=on_empty, stats=stats, log=log)
    chosen = list(layout.tiles() if tiles is None else tiles)
    limit = max(w, int(max_outstanding) if max_outstanding else 2 * w)
    if log:
        cache_txt = runner.cache.directory if runner.cache is not None else "off"
        log(f"Earth Engine: {len(chosen)} tiles of {layout.image_size}x{layout.image_size} px at "
            f"{layout.scale_m:g} m, {_describe(sensor, temporal)}; {w} parallel requests; cache {cache_txt}")
    jobs = (_Job(f"tile {t.index} (row {t.row}, column {t.col})", tile_grid(layout, t), t.bounds, t)
            for t in chosen)

    def gen() -> Iterator[Tuple[Tile, np.ndarray]]:
        for job, arr in _ordered(jobs, runner, w, limit, log):
            yield job.payload, arr
        if log:
            s = runner.stats
            log(f"Earth Engine: {s.items} tiles fetched ({s.requests} requests, {s.cache_hits} from the cache, "
                f"{s.retries} retries)")

    return gen()


def composite_layout(bounds: Bounds, crs: str, scale_m: float, *,
                     tile_px: int = DEFAULT_COMPOSITE_TILE_PX) -> TileLayout:
    """Blocks of ``tile_px`` pixels at ``scale_m`` covering ``bounds``, the top-left corner snapped outwards
    to a multiple of ``scale_m`` (so the pixels line up with the UTM grid of Sentinel-2 at 10 m)."""
    if int(tile_px) <= 0:
        raise ThorConfigError(f"the block size must be a positive number of pixels, got {tile_px!r}")
    return layout_for_area(bounds, crs, float(scale_m), int(tile_px), 1, snap_to=float(scale_m))


def fetch_area(bounds: Bounds, crs: str, sensor: SensorSpec, temporal: TemporalSpec, *,
               tile_px: int = DEFAULT_COMPOSITE_TILE_PX, **kwargs: Any
               ) -> Tuple[TileLayout, Iterator[Tuple[Tile, np.ndarray]]]:
    """An arbitrary extent (``bounds`` in the metric ``crs``) at ``sensor.scale_m``: its block layout and the
    iterator of its blocks (keyword arguments as :func:`fetch_tiles`)."""
    layout = composite_layout(bounds, crs, sensor.scale_m, tile_px=tile_px)
    return layout, fetch_tiles(layout, sensor, temporal, **kwargs)


@dataclass(frozen=True)
class CompositeResult:
    path: str
    width: int
    height: int
    geotransform: GeoTransform
    crs: str
    blocks: int
    record: Dict[str, Any]


def fetch_record(sensor: SensorSpec, temporal: TemporalSpec, session: Optional[EESessionInfo] = None, *,
                 policy: Optional[RetryPolicy] = None, workers: Optional[int] = None,
                 stats: Optional[FetchStats] = None, **extra: Any) -> Dict[str, Any]:
    """A JSON-serialisable record of where the imagery came from (no credentials)."""
    rec: Dict[str, Any] = {
        "source": "earth_engine",
        "collection": sensor.collection,
        "bands": list(sensor.bands),
        "start": temporal.start.isoformat(),
        "end_exclusive": temporal.end.isoformat(),
        "cloudy_pixel_percentage_lt": sensor.cloudy_pct,
        "composite": sensor.composite,
        "fill_value": sensor.fill_value,
        "scale_m": sensor.scale_m,
    }
    if session is not None:
        rec["earth_engine"] = session.as_record()
    if policy is not None:
        rec["retry"] = policy.as_record()
    if workers is not None:
        rec["workers"] = int(workers)
    if stats is not None:
        rec["stats"] = stats.as_record()
    rec.update(extra)
    return rec


def write_composite_geotiff(area: Union[TileLayout, Bounds], sensor: SensorSpec, temporal: TemporalSpec,
                            path: str, *, crs: Optional[str] = None, tile_px: int = DEFAULT_COMPOSITE_TILE_PX,
                            workers: Optional[int] = None, cache: Any = True, is_canceled: IsCanceled = None,
                            log: Log = None, policy: Optional[RetryPolicy] = None, on_empty: str = "error",
                            metadata: Optional[Mapping[str, Any]] = None,
                            stats: Optional[FetchStats] = None) -> CompositeResult:
    """Stream the composite into a float32 GeoTIFF with one band per Sentinel-2 band, at ``scale_m``.

    ``area``: bounds (xmin, ymin, xmax, ymax) in the metric ``crs`` (the raster covers them, its top-left
    snapped to a multiple of ``scale_m``), or a TileLayout at ``scale_m`` (the raster covers its tiles).
    Nodata is ``fill_value``; the THOR_CONFIG metadata item records the request (no credentials). Written
    under a temporary name and renamed when complete: an error or cancel leaves no file.
    """
    from .gdal_io import CONFIG_KEY, GeoTiffWriter, crs_to_wkt

    if isinstance(area, TileLayout):
        layout = area
        if abs(layout.scale_m - sensor.scale_m) > 1e-9 * max(1.0, sensor.scale_m):
            raise ThorConfigError(f"the layout's pixel size is {layout.scale_m:g} m but the sensor's scale is "
                                  f"{sensor.scale_m:g} m: build the layout at the sensor's scale")
        width, height = layout.tiles_x * layout.image_size, layout.tiles_y * layout.image_size
    else:
        if not crs:
            raise ThorConfigError("the CRS of the area is needed to write a composite")
        layout = composite_layout(tuple(area), crs, sensor.scale_m, tile_px=tile_px)
        s = layout.scale_m
        width = max(1, math.ceil((float(area[2]) - layout.origin_x) / s - 1e-9))
        height = max(1, math.ceil((layout.origin_y - float(area[1])) / s - 1e-9))
    gt = (layout.origin_x, layout.scale_m, 0.0, layout.origin_y, 0.0, -layout.scale_m)
    stats = stats if stats is not None else FetchStats()
    w = clamp_workers(workers, log)
    blocks = fetch_tiles(layout, sensor, temporal, workers=w, cache=cache, is_canceled=is_canceled, log=log,
                         policy=policy, on_empty=on_empty, stats=stats)
    session = require_session()
    record = fetch_record(sensor, temporal, session, policy=policy or RetryPolicy(), workers=w,
                          grid={"crs": ee_crs(layout.crs)[1], "geotransform": list(gt), "width": width,
                                "height": height})
    if metadata:
        record.update(dict(metadata))
    n = 0
    with GeoTiffWriter(path, width, height, len(sensor.bands), gt, crs_to_wkt(layout.crs), dtype="float32",
                       nodata=sensor.fill_value, band_names=list(sensor.bands)) as writer:
        try:
            for tile, arr in blocks:
                writer.write(arr, tile.col * layout.image_size, tile.row * layout.image_size)
                n += 1
        finally:
            blocks.close()
        record["stats"] = stats.as_record()
        writer.set_metadata({CONFIG_KEY: record})
    if log:
        log(f"Earth Engine: wrote {width}x{height} px, {len(sensor.bands)} bands at {layout.scale_m:g} m to {path}")
    return CompositeResult(os.path.abspath(os.fspath(path)), width, height, gt, layout.crs, n, record)


@dataclass(frozen=True)
class Patch:
    """A fetched square: [bands, S, S] float32, its grid, and the pixel size it was fetched at."""

    array: np.ndarray
    grid: PixelGrid

    @property
    def pixel_size(self) -> float:
        return self.grid.pixel_size


def fetch_patches(centers: Sequence[Tuple[float, float]], half_side: Union[float, Sequence[float]], crs: str,
                  sensor: SensorSpec,
                  temporal: TemporalSpec, *, image_size: int, workers: Optional[int] = None, cache: Any = True,
                  is_canceled: IsCanceled = None, log: Log = None, policy: Optional[RetryPolicy] = None,
                  on_empty: str = "error", stats: Optional[FetchStats] = None,
                  max_outstanding: Optional[int] = None) -> Iterator[Tuple[int, Patch]]:
    """For each centre (in the metric ``crs``), the square of side ``2 * half_side`` as ``image_size``
    pixels a side (pixel size ``2 * half_side / image_size``, recorded in each Patch), yielded in order
    with its index. ``half_side`` is one distance for all, or one per centre (squares of different sizes
    are fetched in parallel too). Parallel like :func:`fetch_tiles`."""
    w = clamp_workers(workers, log)
    if isinstance(half_side, (int, float)):
        halves = [float(half_side)] * len(centers)
    else:
        halves = [float(h) for h in half_side]
        if len(halves) != len(centers):
            raise ThorConfigError(f"{len(halves)} half sides for {len(centers)} centres")
    grids = [square_grid(float(x), float(y), h, crs, image_size) for (x, y), h in zip(centers, halves)]
    runner = _prepare_run(sensor, temporal, cache=cache, policy=policy, is_canceled=is_canceled,
                          on_empty=on_empty, stats=stats, log=log)
    limit = max(w, int(max_outstanding) if max_outstanding else 2 * w)
    if grids and log:
        lo, hi = min(g.pixel_size for g in grids), max(g.pixel_size for g in grids)
        px = f"{lo:g} m" if hi - lo < 1e-9 else f"{lo:g} to {hi:g} m"
        note = "" if abs(hi - sensor.scale_m) < 1e-9 and abs(lo - sensor.scale_m) < 1e-9 else \
            f" (not the sensor's {sensor.scale_m:g} m)"
        log(f"Earth Engine: {len(grids)} patches of {image_size}x{image_size} px at {px}{note}, "
            f"{_describe(sensor, temporal)}; {w} parallel requests")
    jobs = (_Job(f"feature {i}", g, g.bounds, i) for i, g in enumerate(grids))

    def gen() -> Iterator[Tuple[int, Patch]]:
        for job, arr in _ordered(jobs, runner, w, limit, log):
            yield job.payload, Patch(arr, job.grid)

    return gen()


def fetch_patch(center_x: float, center_y: float, half_side: float, crs: str, sensor: SensorSpec,
                temporal: TemporalSpec, *, image_size: int, cache: Any = True, is_canceled: IsCanceled = None,
                log: Log = None, policy: Optional[RetryPolicy] = None, on_empty: str = "error",
                stats: Optional[FetchStats] = None) -> Patch:
    """One square around (center_x, center_y): see :func:`fetch_patches`."""
    it = fetch_patches([(center_x, center_y)], half_side, crs, sensor, temporal, image_size=image_size,
                       workers=1, cache=cache, is_canceled=is_canceled, log=log, policy=policy,
                       on_empty=on_empty, stats=stats)
    try:
        for _, patch in it:
            return patch
    finally:
        it.close()
    raise ThorFetchError("no patch was fetched")  # pragma: no cover


def count_images(bounds: Bounds, crs: str, sensor: SensorSpec, temporal: TemporalSpec, *,
                 policy: Optional[RetryPolicy] = None, log: Log = None) -> int:
    """How many images of the collection match the filters over ``bounds`` (one ``value:compute``)."""
    ee = import_ee()
    policy = policy or RetryPolicy()
    session = require_session(log)
    configure_client(policy.deadline_s)
    start, end = temporal.iso()
    geom = ee.Geometry.Rectangle([float(v) for v in bounds], _ee_projection(ee, crs), False)
    col = (ee.ImageCollection(sensor.collection).filterBounds(geom).filterDate(start, end)
           .filter(ee.Filter.lt(CLOUD_PROPERTY, float(sensor.cloudy_pct))))
    attempts = int(policy.max_attempts)
    for attempt in range(1, attempts + 1):
        try:
            return int(col.size().getInfo())
        except Exception as e:
            if not is_retryable(e) or attempt == attempts:
                raise translate_ee_error(e, what="counting the matching images", project=session.project,
                                         deadline_s=policy.deadline_s or None) from None
            delay = policy.delay(attempt)
            (policy.sleep or time.sleep)(delay)
    raise ThorFetchError("counting the matching images failed")  # pragma: no cover
