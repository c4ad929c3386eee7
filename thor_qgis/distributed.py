"""Grids computed on a Dask cluster: tiles embedded by workers, written in order by this process.

A grid run (:func:`.pipeline.write_grid`) embeds tiles in batches and writes their token grids with one
writer. Here the embedding is spread over the workers of a ``dask.distributed`` cluster:

- **Tasks** are small batches of consecutive tiles (the model's batch size by default). Each task reads its
  own imagery on the worker (raster windows from a path every worker can read, or Earth Engine tiles fetched
  by the worker) and embeds the tiles that hold data: it returns their token grids and data masks.
- **Workers** load the model once each: the loaded model is kept in the worker process, keyed like the
  in-process model cache (model, weights, device, ...), and reused by every later task. The checkpoint is
  read by each worker from its path (which must exist on the workers) or from the worker's Hugging Face
  cache. The Earth Engine session is initialised on each worker from the same project and endpoint, with
  the worker's own credentials or a service-account key file *path* that exists on the workers: no secret
  travels in a task.
- **This process** submits a bounded number of tasks at a time (memory stays flat whatever the area),
  collects results as they complete (``as_completed``) and hands them to the one writer in layout order
  (:func:`.pipeline.write_embedded_grid`): the GeoTIFF is the one an in-process run writes, blended
  overlaps included, as long as the workers compute what this process would (same libraries, same device
  kind). A worker that dies has its tasks run again elsewhere by Dask; a cancel cancels the futures and
  leaves no file.

The scheduler is given as text: ``local:N`` (a ``LocalCluster`` of N worker processes on this machine, one
thread each) or the address of a running scheduler (``tcp://host:8786``). ``dask[distributed]`` is an
optional dependency; without it the run says what to install. Never imports qgis.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.spawn
import os
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import ThorCanceled, ThorConfigError, ThorError, ThorInputError
from .specs import ModelSpec, SensorSpec, TemporalSpec
from .tiling import TileLayout

INSTALL_HINT = ('install Dask: Plugins ▸ THOR embeddings ▸ Install dependencies… with "Dask" ticked (or python -m '
                'thor_qgis.deps install --with dask), or python -m pip install "dask[distributed]" into the Python '
                'that runs QGIS (or the engine); the workers need it too. It needs neither numpy 2 nor torch: both '
                'stay as they are')
MAX_LOCAL_WORKERS = 256
WORKER_WAIT_S = 120.0  # how long a run waits for a first worker to join the scheduler
ENV_WORKER_PYTHON = "THOR_DASK_PYTHON"

_log = logging.getLogger(__name__)
Log = Optional[Callable[[str], None]]


# --------------------------------------------------------------------------------------------
# The scheduler option and the optional dependency
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchedulerSpec:
    """``local`` (a LocalCluster of ``workers`` processes) or ``address`` (a running scheduler)."""

    kind: str
    workers: int = 0
    address: str = ""

    def describe(self) -> str:
        return (f"a local Dask cluster of {self.workers} worker process(es)" if self.kind == "local"
                else f"the Dask scheduler at {self.address}")


_ADDRESS = re.compile(r"^(tcp|tls|ucx|ws|wss|inproc)://\S+$", re.I)


def parse_scheduler(text: Any) -> Optional[SchedulerSpec]:
    """``""``/None: None (in-process); ``local:N``; ``tcp://host:port`` (also ``tls://``, or ``host:port``)."""
    s = "" if text is None else str(text).strip()
    if not s:
        return None
    low = s.lower()
    if low.startswith("local"):
        m = re.fullmatch(r"local\s*:\s*(\d+)", low)
        if not m or not 1 <= int(m.group(1)) <= MAX_LOCAL_WORKERS:
            raise ThorConfigError(f"the Dask scheduler {s!r} is not understood: local:N takes a number of worker "
                                  f"processes from 1 to {MAX_LOCAL_WORKERS} (local:4)")
        return SchedulerSpec("local", workers=int(m.group(1)))
    if _ADDRESS.match(s):
        return SchedulerSpec("address", address=s)
    if re.fullmatch(r"[\w.\-\[\]:]+:\d{1,5}", s):
        return SchedulerSpec("address", address="tcp://" + s)
    raise ThorConfigError(f"the Dask scheduler {s!r} is not understood: leave it empty (this process), "
                          "local:N (N worker processes on this machine) or a scheduler's address "
                          "(tcp://host:8786)")


def import_distributed():
    """The ``distributed`` module, or a ThorConfigError saying what to install."""
    try:
        import distributed  # noqa: WPS433 (optional, lazy on purpose)
    except ImportError as e:
        raise ThorConfigError(f"running on a Dask cluster needs dask.distributed, which is not installed "
                              f"({e}): {INSTALL_HINT}") from None
    return distributed


def available() -> bool:
    try:
        import_distributed()
        return True
    except ThorConfigError:
        return False


# --------------------------------------------------------------------------------------------
# What a task needs: the imagery, the model, the layout (small, picklable; no secrets)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RasterImagery:
    """A raster every worker reads at ``path`` (a shared file system, or a GDAL virtual path such as
    /vsicurl/ or /vsis3/); the options are those of :class:`.raster_source.RasterSource`."""

    path: str
    band_map: Optional[Tuple[int, ...]] = None
    dn_offset: float = 0.0
    scale_m: float = 10.0
    fill_value: float = 0.0
    product: bool = False  # a Sentinel-2 product (.zip, .SAFE, MTD_MSIL*.xml), assembled on the worker


@dataclass(frozen=True)
class EarthEngineImagery:
    """Earth Engine tiles fetched by each worker. ``service_account_key`` is the *path* of a key file that
    exists on the workers (never its content); without it a worker uses its own stored credentials.
    ``cache``: True (the worker's default cache folder), False, or a folder on the workers."""

    sensor: SensorSpec
    temporal: TemporalSpec
    project: Optional[str] = None
    api_url: Optional[str] = None
    service_account_key: Optional[str] = None
    cache: Union[bool, str] = True
    deadline_s: Optional[float] = None


@dataclass(frozen=True)
class GridWork:
    layout: TileLayout
    model: ModelSpec
    imagery: Union[RasterImagery, EarthEngineImagery]
    group_merge: str = "mean"
    scale_m: float = 10.0
    fill_value: float = 0.0


@dataclass
class RemoteModel:
    """What the workers report of their model: enough for the writer (an Embedder's describing part)."""

    metadata: Dict[str, Any]
    side: int
    channels: Dict[str, int]
    info: Dict[str, Dict[str, Any]]
    batch_size: int = 4

    def grid_side(self) -> int:
        return self.side

    def grid_channels(self, group_merge: str) -> int:
        return self.channels[group_merge]

    def grid_info(self, group_merge: str) -> Dict[str, Any]:
        return dict(self.info[group_merge])


@dataclass
class BatchResult:
    indices: List[int]
    grids: List[Optional[np.ndarray]]
    cells: List[Optional[np.ndarray]]
    worker: str  # host:pid
    seconds: float  # read + embed time on the worker


@dataclass
class RunStats:
    """What a distributed run did (for the log, tests and benchmarks)."""

    tasks: int = 0
    tasks_done: int = 0
    submitted: int = 0
    tiles: int = 0
    workers: List[str] = field(default_factory=list)
    by_worker: Dict[str, int] = field(default_factory=dict)  # tasks done per worker process (host:pid)
    task_worker: Dict[int, str] = field(default_factory=dict)  # which worker process computed each task
    worker_seconds: float = 0.0  # read + embed time summed over tasks
    max_in_flight: int = 0
    window: int = 0


# --------------------------------------------------------------------------------------------
# Worker side (runs in the worker processes; state kept per process)
# --------------------------------------------------------------------------------------------

_WORKER_LOCK = threading.RLock()
_EMBEDDERS: Dict[Tuple, Any] = {}
_SOURCES = threading.local()


def _me() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _embedder(model: ModelSpec, scale_m: float):
    """The worker's Embedder for ``model``: built once per worker process (the backend comes from the
    process-wide model cache, keyed by model, weights, device, patch size and backend)."""
    from .embedder import Embedder

    key = (model, float(scale_m))
    with _WORKER_LOCK:
        emb = _EMBEDDERS.get(key)
        if emb is None:
            emb = Embedder(model, scale_m=scale_m, log=_log.info)
            _EMBEDDERS.clear()  # one model at a time per worker
            _EMBEDDERS[key] = emb
        return emb


def _raster(imagery: RasterImagery):
    """The worker thread's open RasterSource (GDAL datasets are not shared between threads)."""
    from .raster_source import RasterSource

    cache = getattr(_SOURCES, "by_key", None)
    if cache is None:
        cache = _SOURCES.by_key = {}
    src = cache.get(imagery)
    if src is None:
        cache.clear()
        if imagery.product:
            from .s2_product import S2ProductSource

            src = S2ProductSource(imagery.path, scale_m=imagery.scale_m, fill_value=imagery.fill_value)
        else:
            src = RasterSource(imagery.path, band_map=imagery.band_map, dn_offset=imagery.dn_offset,
                               scale_m=imagery.scale_m, fill_value=imagery.fill_value)
        cache[imagery] = src
    return src


def _ee_session(imagery: EarthEngineImagery):
    from . import ee_session

    return ee_session.ensure_session(imagery.project, url=imagery.api_url,
                                     service_account_key=imagery.service_account_key)


def probe_worker(imagery: Union[RasterImagery, EarthEngineImagery], model: ModelSpec) -> Dict[str, Any]:
    """Run on every worker before the tasks: can it read the imagery and the weights? Returns the worker's
    name, its problems in words (empty when ready), and its Earth Engine session when it opened one."""
    problems: List[str] = []
    out: Dict[str, Any] = {"worker": _me(), "problems": problems, "session": None}
    if isinstance(imagery, RasterImagery):
        path = imagery.path
        if not path.startswith("/vsi") and not os.path.exists(path):
            problems.append(f"the raster {path} does not exist there: put it where every worker reads it at the "
                            "same path (a shared file system) or give a URL GDAL reads (/vsicurl/, /vsis3/)")
        else:
            try:
                _raster(imagery)
            except ThorError as e:
                problems.append(f"the raster {path} cannot be used there: {e}")
            except Exception as e:  # GDAL's own errors
                problems.append(f"the raster {path} cannot be read there: {type(e).__name__}: {e}")
    else:
        try:
            out["session"] = _ee_session(imagery)
        except ThorError as e:
            problems.append(f"Earth Engine: {e}")
    if model.weights == "checkpoint" and not os.path.isfile(os.path.expanduser(str(model.checkpoint))):
        problems.append(f"the checkpoint {model.checkpoint} does not exist there: copy it to that path on every "
                        "worker (or use the hub weights, read from each worker's Hugging Face cache)")
    try:
        import torch  # noqa: F401
    except ImportError:
        problems.append("torch is not installed there")
    return out


def describe_model(model: ModelSpec, scale_m: float, merges: Sequence[str]) -> RemoteModel:
    """Load the model on a worker (once) and say what it produces."""
    emb = _embedder(model, scale_m)
    return RemoteModel(metadata=dict(emb.metadata), side=int(emb.grid_side()),
                       channels={m: int(emb.grid_channels(m)) for m in merges},
                       info={m: emb.grid_info(m) for m in merges}, batch_size=int(emb.batch_size))


def _imagery_of(work: GridWork, indices: Sequence[int]) -> Iterator[tuple]:
    layout, imagery = work.layout, work.imagery
    tiles = [layout.tile(i) for i in indices]
    if isinstance(imagery, RasterImagery):
        src = _raster(imagery)
        for t in tiles:
            arr, valid = src.read_tile(layout, t)
            yield t, arr, valid
        return
    from . import ee_fetch

    _ee_session(imagery)
    policy = ee_fetch.RetryPolicy() if imagery.deadline_s is None else \
        ee_fetch.RetryPolicy(deadline_s=float(imagery.deadline_s))
    yield from ee_fetch.fetch_tiles(layout, imagery.sensor, imagery.temporal, workers=len(tiles),
                                    cache=imagery.cache, on_empty="error", tiles=tiles, policy=policy)


def embed_batch(work: GridWork, indices: Sequence[int]) -> BatchResult:
    """A task: read (or fetch) tiles ``indices`` of the layout and embed those with data, exactly as
    :func:`.pipeline.embed_tiles` does in-process."""
    from . import pipeline

    t0 = time.perf_counter()
    emb = _embedder(work.model, work.scale_m)
    grids: List[Optional[np.ndarray]] = []
    cells: List[Optional[np.ndarray]] = []
    done: List[int] = []
    for tile, g, c in pipeline.embed_tiles(_imagery_of(work, indices), emb, work.group_merge, work.fill_value):
        done.append(tile.index)
        grids.append(g)
        cells.append(c)
    return BatchResult(done, grids, cells, _me(), time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# Client side: the cluster, the checks, the ordered stream of results
# --------------------------------------------------------------------------------------------


def _worker_python() -> Optional[str]:
    """The Python interpreter that starts local worker processes when ``sys.executable`` is not this Python
    (QGIS embeds Python: its ``sys.executable`` is QGIS's binary, or whatever ``python3`` its PATH finds):
    $THOR_DASK_PYTHON, else the interpreter of the installation this Python runs from. None: keep it."""
    explicit = os.environ.get(ENV_WORKER_PYTHON, "").strip()
    if explicit:
        return explicit
    exe = sys.executable or ""
    home = os.path.realpath(sys.base_exec_prefix)
    if os.path.basename(exe).lower().startswith("python") and \
            os.path.realpath(exe).startswith(home + os.sep):
        return None
    v = f"{sys.version_info.major}.{sys.version_info.minor}"
    for c in (os.path.join(home, "bin", f"python{v}"), os.path.join(home, "bin", "python3"),
              os.path.join(home, "python.exe"), os.path.join(home, "python3.exe")):
        if os.path.isfile(c):
            return c
    raise ThorConfigError("local Dask workers need a Python interpreter to start, and none was found next to this "
                          f"one: set {ENV_WORKER_PYTHON} to the path of the Python that QGIS embeds")


@contextlib.contextmanager
def connect(scheduler: Any, log: Log = None, timeout_s: float = 20.0) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler`` (text, a SchedulerSpec, or a Client that is used as it is
    and left open); a LocalCluster it started is closed on exit. ``timeout_s``: to reach a scheduler."""
    dd = import_distributed()
    if isinstance(scheduler, dd.Client):
        yield scheduler
        return
    spec = scheduler if isinstance(scheduler, SchedulerSpec) else parse_scheduler(scheduler)
    if spec is None:
        raise ThorConfigError("no Dask scheduler was given")
    log = log or (lambda _m: None)
    if spec.kind == "local":
        python = _worker_python()
        previous = multiprocessing.spawn.get_executable()
        if python:  # for this run only (a worker restarted mid-run needs it too)
            multiprocessing.set_executable(python)
        try:
            log(f"Dask: starting {spec.describe()} (one thread each) …")
            cluster = dd.LocalCluster(n_workers=spec.workers, threads_per_worker=1, processes=True,
                                      dashboard_address=None, silence_logs=logging.ERROR)
            try:
                client = dd.Client(cluster)
                try:
                    yield client
                finally:
                    client.close()
            finally:
                cluster.close()
        finally:
            if python:
                multiprocessing.set_executable(previous)
        return
    log(f"Dask: connecting to {spec.describe()} …")
    try:
        client = dd.Client(spec.address, timeout=f"{float(timeout_s):g}s")
    except (OSError, TimeoutError) as e:
        raise ThorConfigError(f"cannot reach the Dask scheduler at {spec.address} ({type(e).__name__}: {e}): "
                              "check that it runs and that this computer can reach its port") from None
    try:
        yield client
    finally:
        client.close()


def _never() -> bool:
    return False


def _workers(client) -> Dict[str, int]:
    """{worker address: threads} of the workers the scheduler knows now."""
    info = client.scheduler_info(n_workers=-1) if _takes_n_workers(client) else client.scheduler_info()
    return {addr: int(w.get("nthreads", 1)) for addr, w in info.get("workers", {}).items()}


def _takes_n_workers(client) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False


def _wait(fut, is_canceled: Callable[[], bool], what: str):
    """``fut.result()``, checking for a cancel meanwhile."""
    while not fut.done():
        if is_canceled():
            fut.cancel()
            raise ThorCanceled(f"canceled while {what}")
        time.sleep(0.05)
    return fut.result()


@dataclass
class Prepared:
    model: RemoteModel
    session: Any  # the workers' EESessionInfo (Earth Engine imagery), else None
    workers: List[str]


class ClusterGrid:
    """One grid run on a cluster: ``prepare`` (workers checked, model loaded on them), then ``write_grid``.

    ``batch_tiles``: tiles per task (default: the model's batch size); ``max_in_flight``: tasks submitted and
    not yet written at any time (default: twice the workers' threads)."""

    def __init__(self, client, log: Log = None, is_canceled: Optional[Callable[[], bool]] = None,
                 batch_tiles: Optional[int] = None, max_in_flight: Optional[int] = None):
        self.client = client
        self.log = log or (lambda _m: None)
        self.is_canceled = is_canceled or _never
        self.batch_tiles = batch_tiles
        self.max_in_flight = max_in_flight
        self.stats = RunStats()

    def _wait_for_workers(self) -> Dict[str, int]:
        deadline = time.monotonic() + WORKER_WAIT_S
        workers = _workers(self.client)
        while not workers:
            if self.is_canceled():
                raise ThorCanceled("canceled while waiting for Dask workers")
            if time.monotonic() > deadline:
                raise ThorConfigError(f"the Dask scheduler has had no worker for {WORKER_WAIT_S:g} s: start "
                                      "workers (dask worker <scheduler address>) or scale the cluster")
            time.sleep(0.2)
            workers = _workers(self.client)
        return workers

    def prepare(self, work: GridWork, merges: Sequence[str] = ()) -> Prepared:
        workers = self._wait_for_workers()
        try:
            probes = self.client.run(probe_worker, work.imagery, work.model)
        except Exception as e:  # a worker that cannot unpickle the probe answers "No module named ..."
            if not isinstance(e, (ImportError, AttributeError)) and "No module named" not in str(e):
                raise
            raise ThorConfigError(
                f"the Dask workers cannot load the THOR engine ({e}): copy the plugin's folder to every worker "
                f"and put what {__name__.split('.')[0]} is imported from on their PYTHONPATH (see the README's "
                "cluster section)") from None
        problems = [f"worker {addr} ({p['worker']}): {msg}" for addr, p in sorted(probes.items())
                    for msg in p["problems"]]
        if problems:
            raise ThorInputError("the Dask workers cannot run this grid: " + "; ".join(problems[:4])
                                 + (f"; and {len(problems) - 4} more" if len(problems) > 4 else ""))
        sessions = {p["worker"]: p["session"] for p in probes.values() if p["session"] is not None}
        if len(set(sessions.values())) > 1:
            raise ThorConfigError("the Dask workers opened different Earth Engine sessions (project or "
                                  f"credentials): {sorted(set(map(str, sessions.values())))}")
        self.log(f"Dask: {len(workers)} worker(s), {sum(workers.values())} thread(s); loading the model on "
                 "each worker …")
        merges = tuple(dict.fromkeys(tuple(merges) + (work.group_merge,)))
        # one task per worker (in its task threads, not its event loop): every worker loads the model now
        futs = [self.client.submit(describe_model, work.model, work.scale_m, merges, pure=False, workers=[addr],
                                   allow_other_workers=True, key=f"thor-model-{uuid.uuid4().hex[:8]}")
                for addr in sorted(workers)]
        try:
            models = [_wait(f, self.is_canceled, "loading the model on the Dask workers") for f in futs]
        finally:
            self.client.cancel([f for f in futs if not f.done()])
        model = models[0]
        kinds = {(m.metadata.get("device"), m.metadata.get("backend")) for m in models}
        if len(kinds) > 1:
            self.log(f"WARNING: the workers run the model on different devices or backends ({sorted(kinds)}): "
                     "their embeddings may differ in the last float digits")
        for w in model.metadata.get("warnings", []):
            self.log("WARNING: " + w)
        self.stats.workers = [p["worker"] for p in probes.values()]
        return Prepared(model=model, session=next(iter(sessions.values()), None), workers=sorted(workers))

    def results(self, work: GridWork, batch_size: Optional[int] = None
                ) -> Iterator[Tuple[Any, Optional[np.ndarray], Optional[np.ndarray]]]:
        """``(tile, grid, cells)`` of every tile of the layout, in layout order, computed by the workers."""
        dd = import_distributed()
        layout = work.layout
        n = layout.n_tiles
        # tiles per task: as asked, else the batch size the workers' model runs with (it may be automatic)
        size = max(1, int(self.batch_tiles or batch_size or work.model.batch_size or 4))
        batches = [list(range(i, min(n, i + size))) for i in range(0, n, size)]
        st = self.stats
        st.tasks, st.tiles = len(batches), n

        def window() -> int:  # follows the cluster as workers join or leave (adaptive clusters)
            threads = sum(_workers(self.client).values()) or 1
            st.window = max(2, int(self.max_in_flight or 2 * threads))
            return st.window

        run = uuid.uuid4().hex[:8]
        futures: Dict[int, Any] = {}
        number: Dict[str, int] = {}
        ready: Dict[int, BatchResult] = {}
        done_set = dd.as_completed()
        nxt_submit = nxt_write = 0
        try:
            while nxt_write < len(batches):
                # top up: at most `window` tasks submitted and not yet written (memory stays flat)
                limit = window()
                while nxt_submit < len(batches) and nxt_submit - nxt_write < limit:
                    f = self.client.submit(embed_batch, work, batches[nxt_submit], pure=False,
                                           key=f"thor-tiles-{run}-{nxt_submit}")
                    futures[nxt_submit], number[f.key] = f, nxt_submit
                    done_set.add(f)
                    nxt_submit += 1
                    st.submitted = nxt_submit
                st.max_in_flight = max(st.max_in_flight, nxt_submit - nxt_write)
                while nxt_write not in ready:
                    if self.is_canceled():
                        raise ThorCanceled("canceled")
                    got = done_set.next_batch(block=False) if done_set.has_ready() else []
                    if not got:
                        time.sleep(0.02)
                        continue
                    for f in got:
                        b = number.pop(f.key)
                        try:
                            res = f.result()
                        except ThorError:
                            raise
                        except Exception as e:
                            raise _task_error(e, batches[b]) from None
                        futures.pop(b, None)
                        ready[b] = res
                        st.tasks_done += 1
                        st.by_worker[res.worker] = st.by_worker.get(res.worker, 0) + 1
                        st.task_worker[b] = res.worker
                        st.worker_seconds += res.seconds
                res = ready.pop(nxt_write)
                if res.indices != batches[nxt_write]:
                    raise RuntimeError(f"task {nxt_write} returned tiles {res.indices}, not {batches[nxt_write]}")
                nxt_write += 1
                for i, g, c in zip(res.indices, res.grids, res.cells):
                    yield layout.tile(i), g, c
        finally:
            left = list(futures.values())
            if left:
                self.client.cancel(left)
            done_set.clear()

    def write_grid(self, work: GridWork, model: RemoteModel, path: str, metadata: Optional[Dict[str, Any]] = None,
                   progress: Optional[Callable[[float], None]] = None, log: Log = None,
                   progress_text: Optional[Callable[[str], None]] = None):
        from . import pipeline

        t0 = time.perf_counter()
        result = pipeline.write_embedded_grid(work.layout, self.results(work, model.batch_size), model, work.group_merge, path,
                                              metadata=metadata, progress=progress, is_canceled=self.is_canceled,
                                              log=log or self.log, progress_text=progress_text)
        st = self.stats
        wall = time.perf_counter() - t0
        self.log(f"Dask: {st.tasks} task(s) done by {len(st.by_worker)} worker process(es) in {wall:.1f} s "
                 f"({st.tiles / wall if wall > 0 else 0:.2f} tiles/s; at most {st.max_in_flight} task(s) in "
                 "flight).")
        return result


def _task_error(e: BaseException, indices: Sequence[int]) -> ThorError:
    name = type(e).__name__
    if name == "KilledWorker":
        return ThorError(f"the Dask workers running tiles {indices[0]}–{indices[-1]} died several times (out of "
                         f"memory, or killed): {e}")
    if name == "CancelledError":
        return ThorCanceled("the Dask tasks were canceled (the cluster or the scheduler was shut down)")
    return ThorError(f"a Dask worker failed on tiles {indices[0]}–{indices[-1]}: {name}: {e}")


def write_grid(work: GridWork, path: str, scheduler: Any, metadata: Optional[Dict[str, Any]] = None,
               progress: Optional[Callable[[float], None]] = None,
               is_canceled: Optional[Callable[[], bool]] = None, log: Log = None,
               progress_text: Optional[Callable[[str], None]] = None,
               relayout: Optional[Callable[[int], TileLayout]] = None,
               batch_tiles: Optional[int] = None, max_in_flight: Optional[int] = None,
               stats: Optional[RunStats] = None):
    """:func:`.pipeline.write_grid` on a Dask cluster (see the module's docstring): returns its GridResult.

    ``relayout(grid_side)`` rebuilds the layout when the workers' model has another token grid than
    ``work.layout``'s (a backend's own); ``stats`` is filled with what the run did."""
    with connect(scheduler, log) as client:
        run = ClusterGrid(client, log=log, is_canceled=is_canceled, batch_tiles=batch_tiles,
                          max_in_flight=max_in_flight)
        if stats is not None:
            run.stats = stats
        ready = run.prepare(work)
        if ready.model.grid_side() != work.layout.grid_side:
            if relayout is None:
                raise ThorConfigError(f"the workers' model has a {ready.model.grid_side()}-token grid, the layout "
                                      f"{work.layout.grid_side}")
            work = dataclasses.replace(work, layout=relayout(ready.model.grid_side()))
        return run.write_grid(work, ready.model, path, metadata=metadata, progress=progress, log=log,
                              progress_text=progress_text)
