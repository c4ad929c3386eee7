"""Grids on a Dask cluster (thor_qgis.distributed): the same GeoTIFF as in-process, byte for byte.

Light on purpose: the tiny model with random weights, 2 worker processes of one thread each, small tiles
(64 px, a 4 x 4 token grid) except on the real sample."""
import contextlib
import datetime as dt
import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import distributed  # in requirements.txt: its absence is a failure here, not a skip

from tests.fake_ee import DEFAULT_PROJECT, FakeEarthEngine, ee_env  # noqa: F401
from tests.helpers import write_raster
from thor_qgis import distributed as D
from thor_qgis import pipeline
from thor_qgis.embedder import Embedder
from thor_qgis.errors import ThorCanceled, ThorConfigError, ThorInputError
from thor_qgis.raster_source import RasterSource
from thor_qgis.specs import ModelSpec, SensorSpec, TemporalSpec
from thor_qgis.tiling import global_layout

SMALL = ModelSpec(model_key="thor_v1_tiny", weights="random", image_size=64, batch_size=4)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
META = {"test": "distributed"}


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def in_process(layout, tiles, model, path, fill_value=0.0):
    return pipeline.write_grid(layout, tiles, Embedder(model), "mean", str(path), metadata=META,
                               fill_value=fill_value)


@pytest.fixture(scope="module")
def client():
    """Two worker processes of one thread each, shared by the tests of this module."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def raster16(tmp_path_factory):
    """A 4 x 4-tile raster (640 m tiles of 64 px on the global grid) with a hole of nodata: tile 5 has no
    valid pixel and tile 6 only part, so the workers' batches differ from the in-process ones."""
    rng = np.random.default_rng(3)
    arr = rng.uniform(200, 4000, (10, 256, 256)).astype(np.float32)
    arr[:, 64:128, 64:128] = -1.0  # tile 5
    arr[:, 64:100, 128:150] = -1.0  # part of tile 6
    path = tmp_path_factory.mktemp("r16") / "r16.tif"
    return write_raster(path, arr, (499200.0, 10.0, 0.0, 4999680.0, 0.0, -10.0), nodata=-1.0)


def layout16(path, seams="none"):
    src = RasterSource(path)
    return src, src.layout(src.area(), 64, 4, margin=1 if seams != "none" else 0, seams=seams)


def test_parse_scheduler():
    assert D.parse_scheduler("") is None and D.parse_scheduler(None) is None
    assert D.parse_scheduler(" local:3 ") == D.SchedulerSpec("local", workers=3)
    assert D.parse_scheduler("tcp://10.0.0.5:8786").address == "tcp://10.0.0.5:8786"
    assert D.parse_scheduler("node7:8786").address == "tcp://node7:8786"
    for bad in ("local", "local:0", "local:x", "http://x:1", "my cluster"):
        with pytest.raises(ThorConfigError, match="not understood"):
            D.parse_scheduler(bad)


def test_without_dask_the_option_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    with pytest.raises(ThorConfigError, match=r'Install dependencies… with "Dask" ticked \(or python -m thor_qgis.deps '
                                              r'install --with dask\), or python -m pip install "dask\[distributed\]"'):
        D.import_distributed()
    assert not D.available()


def test_the_installer_offers_dask_without_touching_numpy_or_torch(tmp_path, capsys):
    from thor_qgis import deps

    base = deps.make_plan(str(tmp_path), torch="cpu", driver=None)
    assert "distributed" not in base.check_modules and not any("dask" in r for r in base.requirements)
    plan = deps.make_plan(str(tmp_path), torch="cpu", driver=None, extras=("dask",))
    assert plan.requirements == base.requirements + ["dask[distributed]==2026.8.0"]
    assert plan.check_modules == base.check_modules + ["distributed"]  # checked after the install
    assert plan.constraints == base.constraints  # numpy stays QGIS's, torch the chosen build
    with pytest.raises(deps.DepsError, match="unknown optional package 'spark'"):
        deps.make_plan(str(tmp_path), torch="cpu", driver=None, extras=("spark",))
    assert deps.main(["install", "--target", str(tmp_path), "--torch", "cpu", "--with", "dask", "--dry-run"]) == 0
    assert "dask[distributed]==2026.8.0" in capsys.readouterr().out


def test_an_unreachable_scheduler_is_said_in_words():
    with pytest.raises(ThorConfigError, match=r"cannot reach the Dask scheduler at tcp://127.0.0.1:9 .*check that it "
                                              r"runs"):
        with D.connect("tcp://127.0.0.1:9", timeout_s=2):
            pass


def test_local2_on_the_real_sample_is_identical_to_in_process(tmp_path):
    """local:2 (a LocalCluster started for the run) on the real Sentinel-2 sample, blended seams: same bytes."""
    path = os.path.join(REPO, "sample", "s2_l1c_eastern_shore_576.tif")
    model = ModelSpec(model_key="thor_v1_tiny", weights="random", batch_size=4)
    src = RasterSource(path)
    layout = src.layout(src.area(), 288, 18)
    a = in_process(layout, src.tiles(layout), model, tmp_path / "a.tif")
    stats = D.RunStats()
    logs = []
    work = D.GridWork(layout=layout, model=model, imagery=D.RasterImagery(path))
    b = D.write_grid(work, str(tmp_path / "b.tif"), "local:2", metadata=META, log=logs.append, stats=stats)
    assert (a.width, a.height, a.tiles) == (b.width, b.height, b.tiles) and layout.seams == "blend"
    assert sha(a.path) == sha(b.path)
    assert len(stats.by_worker) == 2 and stats.tasks_done == stats.tasks == -(-layout.n_tiles // 4)
    assert any("local Dask cluster of 2 worker" in m for m in logs)


def test_16_tiles_with_a_hole_are_identical(client, raster16, tmp_path):
    for seams in ("none", "blend"):
        src, layout = layout16(raster16, seams)
        a = in_process(layout, src.tiles(layout), SMALL, tmp_path / f"a{seams}.tif")
        if seams == "none":
            assert layout.n_tiles == 16 and a.tiles_embedded == 15  # the hole: a tile without data
        stats = D.RunStats()
        work = D.GridWork(layout=layout, model=SMALL, imagery=D.RasterImagery(raster16))
        b = D.write_grid(work, str(tmp_path / f"b{seams}.tif"), client, metadata=META, batch_tiles=3, stats=stats)
        assert sha(a.path) == sha(b.path), seams
        assert stats.max_in_flight <= stats.window == 4  # 2 workers x 1 thread x 2


def test_cancel_stops_within_a_few_tasks_and_leaves_no_file(client, raster16, tmp_path):
    _, layout = layout16(raster16)
    out = tmp_path / "out"
    out.mkdir()
    stats = D.RunStats()
    work = D.GridWork(layout=layout, model=SMALL, imagery=D.RasterImagery(raster16))
    with pytest.raises(ThorCanceled):
        D.write_grid(work, str(out / "c.tif"), client, metadata=META, batch_tiles=1, stats=stats,
                     is_canceled=lambda: stats.tasks_done >= 3)
    assert os.listdir(out) == []
    # 16 tasks of one tile, canceled once 3 are back (results arrive in bunches): never more than the window
    # of 4 submitted ahead of what was written
    assert stats.tasks == 16 and 3 <= stats.tasks_done <= 3 + stats.window
    assert stats.submitted <= stats.tasks_done + stats.window < 16
    # the scheduler forgets the canceled tasks
    deadline = time.monotonic() + 30
    while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0


def test_workers_that_cannot_read_the_raster_are_named(client, raster16, tmp_path):
    _, layout = layout16(raster16)
    work = D.GridWork(layout=layout, model=SMALL, imagery=D.RasterImagery(str(tmp_path / "elsewhere.tif")))
    with pytest.raises(ThorInputError, match=r"elsewhere.tif does not exist there: put it where every worker"):
        D.write_grid(work, str(tmp_path / "x.tif"), client)
    assert not (tmp_path / "x.tif").exists()


def test_a_killed_worker_has_its_tasks_run_again_and_the_output_is_identical(client, raster16, tmp_path):
    src, layout = layout16(raster16)
    a = in_process(layout, src.tiles(layout), SMALL, tmp_path / "a.tif")
    pids = client.run(os.getpid)
    killed = {}

    def progress(_f):
        if killed:
            return
        busy = {w: keys for w, keys in client.processing().items() if keys}
        if not busy:
            return
        worker, keys = sorted(busy.items())[0]
        killed.update(worker=worker, keys=set(keys), pid=pids[worker])
        os.kill(pids[worker], signal.SIGKILL)

    stats = D.RunStats()
    work = D.GridWork(layout=layout, model=SMALL, imagery=D.RasterImagery(raster16))
    b = D.write_grid(work, str(tmp_path / "b.tif"), client, metadata=META, batch_tiles=1, stats=stats,
                     progress=progress)
    assert killed, "no worker was busy when the run started"
    assert sha(a.path) == sha(b.path)
    # the tasks the killed worker held were computed again by a live worker process
    lost = [int(k.rsplit("-", 1)[1]) for k in killed["keys"]]
    assert lost and all(not stats.task_worker[t].endswith(f":{killed['pid']}") for t in lost)
    assert stats.tasks_done == 16


# --- Earth Engine: a scheduler and workers started as separate processes -----------------------------

@contextlib.contextmanager
def dask_commands(tmp_path, nworkers=2, pythonpath=REPO):
    """`dask scheduler` and `dask worker --nworkers N --nthreads 1` started as commands; yields the address."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    sched_file = str(tmp_path / "scheduler.json")
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", sched_file], env=env, cwd=str(tmp_path),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(sched_file) and time.monotonic() < deadline:
            time.sleep(0.2)
        procs.append(subprocess.Popen([dask, "worker", "--scheduler-file", sched_file, "--nworkers", str(nworkers),
                                       "--nthreads", "1", "--no-dashboard"], env=env, cwd=str(tmp_path),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        c = distributed.Client(scheduler_file=sched_file, timeout="60s")
        c.wait_for_workers(nworkers, timeout=240)
        address = c.scheduler.address
        c.close()
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def dask_processes(tmp_path, ee_env):
    with dask_commands(tmp_path) as address:
        yield address


def test_workers_without_the_engine_are_told_where_to_get_it(raster16, tmp_path):
    _, layout = layout16(raster16)
    work = D.GridWork(layout=layout, model=SMALL, imagery=D.RasterImagery(raster16))
    with dask_commands(tmp_path, nworkers=1, pythonpath=None) as address:
        with pytest.raises(ThorConfigError, match=r"cannot load the THOR engine .*No module named 'thor_qgis'.*"
                                                  r"copy the plugin's folder to every worker"):
            D.write_grid(work, str(tmp_path / "x.tif"), address)
    assert not (tmp_path / "x.tif").exists()


def test_earth_engine_tiles_fetched_by_worker_processes_are_identical(dask_processes, tmp_path):
    from thor_qgis import ee_fetch, ee_session

    with FakeEarthEngine() as fake:
        sensor = SensorSpec(fill_value=0.0)
        temporal = TemporalSpec(dt.date(2024, 6, 1), dt.date(2024, 9, 1))
        layout = global_layout((500100.0, 3999000.0, 501900.0, 4000500.0), "EPSG:32633", 10.0, 64, 4,
                               seams="blend", margin=1)
        ee_session.ensure_session(DEFAULT_PROJECT, url=fake.url)
        tiles = ee_fetch.fetch_tiles(layout, sensor, temporal, workers=2, cache=False)
        a = in_process(layout, tiles, SMALL, tmp_path / "a.tif")
        in_process_requests = fake.count()
        stats = D.RunStats()
        imagery = D.EarthEngineImagery(sensor, temporal, project=DEFAULT_PROJECT, api_url=fake.url, cache=False)
        work = D.GridWork(layout=layout, model=SMALL, imagery=imagery)
        b = D.write_grid(work, str(tmp_path / "b.tif"), dask_processes, metadata=META, batch_tiles=2, stats=stats)
        assert sha(a.path) == sha(b.path)
        assert fake.count() == 2 * in_process_requests  # every tile fetched once more, by the workers
        assert len(stats.by_worker) == 2 and all(str(os.getpid()) not in w for w in stats.by_worker)


# --- the command line ----------------------------------------------------------------------------------


def test_command_line_grid_with_dask_is_identical_to_in_process(raster16, tmp_path):
    common = [sys.executable, "-m", "thor_qgis", "grid", "--raster", str(raster16), "--model", "thor_v1_tiny",
              "--weights", "random", "--image-size", "64", "--seams", "none"]
    env = dict(os.environ, PYTHONPATH=REPO)
    a = subprocess.run(common + ["-o", str(tmp_path / "a.tif")], env=env, cwd=str(tmp_path), capture_output=True,
                       text=True, timeout=600)
    assert a.returncode == 0, a.stderr
    b = subprocess.run(common + ["-o", str(tmp_path / "b.tif"), "--dask", "local:2"], env=env, cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=600)
    assert b.returncode == 0, b.stderr
    assert a.stdout == b.stdout == ""  # messages go to stderr
    assert "on a local Dask cluster of 2 worker" in b.stderr and "Wrote" in b.stderr
    assert sha(tmp_path / "a.tif") == sha(tmp_path / "b.tif")
    bad = subprocess.run(common + ["-o", str(tmp_path / "c.tif"), "--dask", "local:zero"], env=env,
                         cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1 and "local:N takes a number" in bad.stderr and not (tmp_path / "c.tif").exists()
