"""Bad inputs and faults through processing.run and qgis_process: a clear message, fast, nothing left behind.

Runs use thor_v1_tiny with random weights (no checkpoint needed). Disk-full and read-only folders are real:
qgis_process runs in a private mount namespace (``unshare -rm``) with a small or read-only tmpfs as the
output folder; where the kernel does not allow that, those tests are skipped and say why.
"""
import json
import os
import shutil
import subprocess
import threading

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import QgsProcessingException

from tests.conftest import QGIS_PROCESS, run_qgis_process
from tests.helpers import read_raster, write_raster
from tests.qgis.feedback import LogFeedback

RANDOM_TINY = {"MODEL_KEY": "thor_v1_tiny", "PRETRAINED": False}
GT = (600000.0, 10.0, 0.0, 5100000.0, 0.0, -10.0)


def _output_files():
    import importlib

    from tests.conftest import PLUGIN_NAME

    return importlib.import_module(PLUGIN_NAME + ".thor_qgis.output_files")  # the plugin's own copy


def run(alg, params, feedback=None):
    import processing

    return processing.run(f"thor:{alg}", params, feedback=feedback)


def refused(alg, params, feedback=None):
    """The message of the QgsProcessingException a run ends with."""
    with pytest.raises(QgsProcessingException) as e:
        run(alg, params, feedback)
    return str(e.value)


@pytest.fixture
def small_raster(tmp_path):
    """A 10-band, 64 x 64 px raster at 10 m (values 100..1100), one tile."""
    rng = np.random.default_rng(0)
    arr = (rng.random((10, 64, 64)) * 1000 + 100).astype(np.float32)
    return write_raster(tmp_path / "in.tif", arr, GT, epsg=32633)


def no_outputs(folder, stem="out"):
    return [p for p in os.listdir(folder) if p.startswith(stem) or p.startswith("." + stem)]


# --- 1. parameter values that exhaust memory ------------------------------------------------------------

@pytest.mark.parametrize("extra, tokens", [({"PATCH_SIZE": 1}, "103,680"), ({"PATCH_SIZE": 2}, "25,920"),
                                           ({"IMAGE_SIZE": 4096}, "81,920")])
def test_memory_exhausting_settings_are_refused_before_the_model_loads(plugin, small_raster, tmp_path, extra,
                                                                       tokens):
    fb = LogFeedback()
    msg = refused("grid_from_raster", {"INPUT": small_raster, **RANDOM_TINY, **extra,
                                       "OUTPUT": str(tmp_path / "out.tif")}, fb)
    assert f"{tokens} tokens per tile" in msg and "GiB" in msg and "limit of 16,384 tokens" in msg
    assert "THOR_MAX_TOKENS" in msg
    assert "Loading" not in fb.text and no_outputs(tmp_path) == []


def test_raising_the_token_limit_still_meets_the_memory_limit(plugin, small_raster, tmp_path, monkeypatch):
    monkeypatch.setenv("THOR_MAX_TOKENS", "1000000")
    msg = refused("grid_from_raster", {"INPUT": small_raster, **RANDOM_TINY, "PATCH_SIZE": 2,
                                       "OUTPUT": str(tmp_path / "out.tif")})
    assert "GiB of memory" in msg and "THOR_MAX_MEMORY_GB" in msg


# --- 2. no size limit for raster runs --------------------------------------------------------------------

def test_a_huge_raster_extent_is_refused_with_an_estimate(plugin, small_raster, tmp_path):
    fb = LogFeedback()
    msg = refused("grid_from_raster", {"INPUT": small_raster, **RANDOM_TINY,
                                       "EXTENT": "0,3000000,3000000,6000000 [EPSG:32633]",
                                       "OUTPUT": str(tmp_path / "out.tif")}, fb)
    assert "2,446,096 tiles of 2880 m" in msg and "limit of 10,000" in msg  # the default blended tiles
    assert "GB" in msg and "CPU" in msg and "THOR_MAX_TILES" in msg
    assert "Loading" not in fb.text and no_outputs(tmp_path) == []


def test_the_tile_limit_can_be_raised_or_lowered(plugin, sample_raster, tmp_path, monkeypatch):
    one = {"SEAMS": "none"}  # tiles side by side: the sample touches 3 x 3 tiles of the global grid
    monkeypatch.setenv("THOR_MAX_TILES", "8")
    msg = refused("grid_from_raster", {"INPUT": str(sample_raster), **RANDOM_TINY, **one,
                                       "OUTPUT": str(tmp_path / "o.tif")})
    assert "needs 9 tiles" in msg and "limit of 8" in msg
    monkeypatch.setenv("THOR_MAX_TILES", "9")
    assert run("grid_from_raster", {"INPUT": str(sample_raster), **RANDOM_TINY, **one,
                                    "OUTPUT": str(tmp_path / "o.tif")})["TILES"] == 9
    monkeypatch.setenv("THOR_MAX_TILES", "many")
    assert "THOR_MAX_TILES must be a positive whole number" in refused(
        "grid_from_raster", {"INPUT": str(sample_raster), **RANDOM_TINY, "OUTPUT": str(tmp_path / "p.tif")})


def test_tiles_laid_out_again_for_the_models_own_token_grid_meet_the_tile_limit(plugin, sample_raster, tmp_path,
                                                                                 monkeypatch):
    """The plan comes from the parameters' token grid; when the loaded model has another one (a backend's
    own), the tiles are laid out again, and that layout is refused past the limits as the planned one is,
    before anything is written. No backend installed here has a token grid of its own (the builtin one
    takes the parameters'), so the model opened is thor_v1_tiny at patch size 16 where 8 was asked for: a
    real model whose grid (18 a side) is not the planned one (36)."""
    import dataclasses
    import importlib

    from tests.conftest import PLUGIN_NAME

    alg = importlib.import_module(PLUGIN_NAME + ".processing_provider.alg_raster_grid")
    opened = alg.open_embedder

    def own_token_grid(model, scale_m, feedback):
        return opened(dataclasses.replace(model, patch_size=16), scale_m, feedback)

    monkeypatch.setattr(alg, "open_embedder", own_token_grid)
    params = {"INPUT": str(sample_raster), **RANDOM_TINY, "PATCH_SIZE": 8, "OUTPUT": str(tmp_path / "out.tif")}
    assert run("grid_from_raster", dict(params, DRY_RUN=True))["TILES"] == 12  # blended tiles, 36 a side
    monkeypatch.setenv("THOR_MAX_TILES", "12")
    fb = LogFeedback()
    msg = refused("grid_from_raster", params, fb)
    assert "needs 20 tiles of 2880 m" in msg and "limit of 12" in msg and "THOR_MAX_TILES" in msg
    assert "laid out again" in fb.text and no_outputs(tmp_path) == []
    monkeypatch.setenv("THOR_MAX_TILES", "20")
    out = run("grid_from_raster", params)
    assert out["TILES"] == 20 and out["WIDTH"] == 36 and gdal.Open(out["OUTPUT"]).RasterXSize == 36


# --- 3. NaN taken for data -------------------------------------------------------------------------------

def test_nan_fill_value_leaves_the_padding_past_the_edge_as_nodata(plugin, tmp_path):
    arr = np.full((10, 200, 200), 500.0, np.float32)
    src = write_raster(tmp_path / "edge.tif", arr, GT, epsg=32633)
    out = tmp_path / "out.tif"
    run("grid_from_raster", {"INPUT": src, **RANDOM_TINY, "FILL_VALUE": "nan", "SEAMS": "none",
                             "EXTENT": "600000,602880,5097120,5100000 [EPSG:32633]", "OUTPUT": str(out)})
    grid, *_ = read_raster(out)
    assert grid.shape[1:] == (18, 18)
    # 200 px = 2000 m of the tile's 2880 m: 12.5 of 18 cells per side hold imagery
    assert np.all(grid[:, :13, :13] != -9999) and np.all(np.isfinite(grid[:, :13, :13]))
    assert np.all(grid[:, 13:, :] == -9999) and np.all(grid[:, :, 13:] == -9999)


# --- 4. GDAL failures: one line, before the model loads --------------------------------------------------

def test_truncated_input_is_reported_before_the_model_loads(plugin, tmp_path):
    rng = np.random.default_rng(1)
    src = write_raster(tmp_path / "cut.tif", (rng.random((10, 512, 512)) * 3000).astype(np.float32), GT, epsg=32633)
    size = os.path.getsize(src)
    with open(src, "r+b") as f:
        f.truncate(size // 2)
    fb = LogFeedback()
    msg = refused("grid_from_raster", {"INPUT": src, **RANDOM_TINY, "OUTPUT": str(tmp_path / "out.tif")}, fb)
    assert "cut.tif" in msg and "truncated or damaged" in msg and "Traceback" not in msg
    assert "Loading" not in fb.text and no_outputs(tmp_path) == []


def _namespace_ok():
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


needs_namespace = pytest.mark.skipif(not _namespace_ok(), reason="unshare -rm (user and mount namespaces) is not "
                                     "allowed here: a real full or read-only disk cannot be made")


def qgis_process_on_mount(mount_opts, folder, *args, env_extra=None):
    """qgis_process with ``folder`` a fresh tmpfs mounted with ``mount_opts``; returns (result, files left
    in the folder after the run, as listed inside the namespace)."""
    env = dict(os.environ)
    env.pop("QT_QPA_PLATFORM", None)
    env.update(env_extra or {})
    os.makedirs(folder, exist_ok=True)
    quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in args)
    script = (f"mount -t tmpfs -o {mount_opts} tmpfs '{folder}' && {QGIS_PROCESS} {quoted}; rc=$?; "
              f"echo '--LEFT--' >&2; ls -A '{folder}' >&2; exit $rc")
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env,
                       timeout=600)
    err, _, left = r.stderr.rpartition("--LEFT--\n")
    return r, err, left.split()


@needs_namespace
def test_disk_full_is_said_in_words_and_leaves_no_partial_file(plugin, sample_raster, tmp_path):
    out_dir = tmp_path / "full"
    r, err, left = qgis_process_on_mount("size=64k", str(out_dir), "run", "thor:grid_from_raster", "--",
                                         f"INPUT={sample_raster}", "MODEL_KEY=thor_v1_tiny", "PRETRAINED=false",
                                         f"OUTPUT={out_dir / 'grid.tif'}")
    assert r.returncode == 1
    assert "the disk is full" in err and "grid.tif" in err and "Traceback" not in err
    assert left == []


@needs_namespace
def test_embedding_to_rgb_on_a_full_disk_leaves_no_partial_file(plugin, tmp_path):
    rng = np.random.default_rng(2)
    emb = write_raster(tmp_path / "emb.tif", rng.standard_normal((8, 400, 400)).astype(np.float32), GT,
                       epsg=32633)
    out_dir = tmp_path / "full"
    r, err, left = qgis_process_on_mount("size=100k", str(out_dir), "run", "thor:embedding_to_rgb", "--",
                                         f"INPUT={emb}", f"OUTPUT={out_dir / 'rgb.tif'}")
    assert r.returncode == 1 and "the disk is full" in err and "Traceback" not in err
    assert left == []


@needs_namespace
def test_read_only_output_folder_is_refused_before_the_model_loads(plugin, sample_raster, tmp_path):
    out_dir = tmp_path / "ro"
    r, err, left = qgis_process_on_mount("ro,size=1m", str(out_dir), "run", "thor:grid_from_raster", "--",
                                         f"INPUT={sample_raster}", "MODEL_KEY=thor_v1_tiny", "PRETRAINED=false",
                                         f"OUTPUT={out_dir / 'grid.tif'}")
    assert r.returncode == 1
    assert "read-only" in err and str(out_dir) in err and "Traceback" not in err
    assert "Loading" not in r.stdout + err
    assert left == []


# --- 5. partial files of a killed run are swept --------------------------------------------------------

def test_stale_partials_of_the_same_output_are_swept(plugin, small_raster, tmp_path):
    stale = tmp_path / ".out.tif.deadbeef.partial.tif"
    stale.write_bytes(b"left by a killed run")
    (tmp_path / ".out.tif.deadbeef.partial.tif.aux.xml").write_text("<x/>")
    other = tmp_path / ".other.tif.deadbeef.partial.tif"
    other.write_bytes(b"another output's")
    run("grid_from_raster", {"INPUT": small_raster, **RANDOM_TINY, "OUTPUT": str(tmp_path / "out.tif")})
    assert sorted(no_outputs(tmp_path)) == ["out.thor.json", "out.tif"]  # the output and its run record
    assert other.exists()


# --- 8. misleading messages ------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, words, not_words", [
    ({"SCALE": 0}, ["SCALE", "at least 0.1"], ["context margin"]),
    ({"SCALE": 0.1}, ["covers 28.8 m", "patch size 16", "10 m"], ["context margin"]),
    ({"PATCH_SIZE": 1000}, ["PATCH_SIZE", "at most 64"], ["image size"]),
    ({"GROUP_MERGE": "max"}, ["GROUP_MERGE", "mean, sum, concat"], []),
    ({"DEVICE": "tpu"}, ["DEVICE", "auto, cpu, cuda"], []),
])
def test_messages_name_the_parameter_and_what_is_allowed(plugin, small_raster, tmp_path, extra, words, not_words):
    msg = refused("grid_from_raster", {"INPUT": small_raster, **RANDOM_TINY, **extra,
                                       "OUTPUT": str(tmp_path / "out.tif")})
    for w in words:
        assert w in msg
    for w in not_words:
        assert w not in msg


@pytest.mark.parametrize("content, words", [
    (b"", "is empty (0 bytes)"),
    (b"GIF89a this is not an image at all" * 10, "not a raster GDAL can read"),
    (b"II*\x00" + b"\x00" * 200, "not a raster GDAL can read"),
    ("vector", "is a vector dataset"),
    (None, "does not exist"),
])
def test_unusable_input_files_are_described(plugin, tmp_path, content, words):
    path = tmp_path / "input.tif"
    if content == "vector":
        path = tmp_path / "input.geojson"
        path.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, '
                        '"geometry": {"type": "Point", "coordinates": [1, 2]}}]}')
    elif content is not None:
        path.write_bytes(content)
    for alg, extra in (("grid_from_raster", RANDOM_TINY), ("embedding_to_rgb", {})):
        msg = refused(alg, {"INPUT": str(path), **extra, "OUTPUT": str(tmp_path / "out.tif")})
        assert words in msg and "INPUT" in msg and "not found" not in msg.lower().replace("does not exist", "")


@pytest.mark.parametrize("var, value", [("RS_EMBED_THOR_PATCH_SIZE", "abc"), ("RS_EMBED_THOR_MODEL_KEY", "huge"),
                                        ("RS_EMBED_THOR_PRETRAINED", "perhaps"),
                                        ("RS_EMBED_THOR_CKPT", "/nowhere/model.pt")])
def test_invalid_environment_values_are_named(plugin, small_raster, tmp_path, monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    msg = refused("grid_from_raster", {"INPUT": small_raster, **RANDOM_TINY, "OUTPUT": str(tmp_path / "out.tif")})
    assert var in msg and value in msg


# --- 10. baseline 04.00 offset ---------------------------------------------------------------------------

def test_values_all_above_1000_warn_about_the_offset(plugin, small_raster, tmp_path):
    arr, *_ = read_raster(small_raster)
    shifted = write_raster(tmp_path / "b0400.tif", arr + 1000, GT, epsg=32633)
    fb = LogFeedback()
    run("grid_from_raster", {"INPUT": shifted, **RANDOM_TINY, "OUTPUT": str(tmp_path / "out.tif")}, fb)
    assert "DN_OFFSET=-1000" in fb.text
    fb = LogFeedback()
    run("grid_from_raster", {"INPUT": small_raster, **RANDOM_TINY, "OUTPUT": str(tmp_path / "plain.tif")}, fb)
    assert "DN_OFFSET" not in fb.text  # values from 100: no warning
    fb = LogFeedback()
    run("grid_from_raster", {"INPUT": shifted, **RANDOM_TINY, "DN_OFFSET": -1000,
                             "OUTPUT": str(tmp_path / "fixed.tif")}, fb)
    assert "DN_OFFSET=-1000" not in fb.text


def test_the_offset_stated_in_the_metadata_is_applied(plugin, small_raster, tmp_path):
    arr, *_ = read_raster(small_raster)
    shifted = write_raster(tmp_path / "b0400.tif", arr + 1000, GT, epsg=32633)
    ds = gdal.Open(shifted, gdal.GA_Update)
    ds.SetMetadataItem("BOA_ADD_OFFSET", "-1000")
    ds = None
    fb = LogFeedback()
    run("grid_from_raster", {"INPUT": shifted, **RANDOM_TINY, "OUTPUT": str(tmp_path / "meta.tif")}, fb)
    assert "-1000 stated in the raster's metadata (BOA_ADD_OFFSET)" in fb.text
    run("grid_from_raster", {"INPUT": small_raster, **RANDOM_TINY, "OUTPUT": str(tmp_path / "plain.tif")})
    a, *_ = read_raster(tmp_path / "meta.tif")
    b, *_ = read_raster(tmp_path / "plain.tif")
    np.testing.assert_allclose(a, b, atol=1e-4)
    cfg = json.loads(gdal.Open(str(tmp_path / "meta.tif")).GetMetadataItem("THOR_CONFIG"))
    assert cfg["source"]["dn_offset"] == -1000


# --- 11. two runs writing the same output ----------------------------------------------------------------

def test_a_second_writer_of_the_same_output_is_refused(plugin, engine, small_raster, tmp_path):
    out = tmp_path / "out.tif"
    held, release = threading.Event(), threading.Event()

    def other_run():  # another run (thread) holding the output path
        with _output_files().claim(str(out)):
            held.set()
            release.wait(30)

    t = threading.Thread(target=other_run)
    t.start()
    try:
        held.wait(10)
        msg = refused("grid_from_raster", {"INPUT": small_raster, **RANDOM_TINY, "OUTPUT": str(out)})
        assert "another run is writing" in msg and str(out) in msg
        assert not out.exists()
    finally:
        release.set()
        t.join()
    assert run("grid_from_raster", {"INPUT": small_raster, **RANDOM_TINY, "OUTPUT": str(out)})["OUTPUT"] == str(out)


def test_a_second_writer_in_another_process_is_refused(plugin, engine, small_raster, tmp_path):
    out = tmp_path / "out.tif"
    with _output_files().claim(str(out)):
        r = run_qgis_process("run", "thor:grid_from_raster", "--", f"INPUT={small_raster}",
                             "MODEL_KEY=thor_v1_tiny", "PRETRAINED=false", f"OUTPUT={out}")
    assert r.returncode == 1 and "another run is writing" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


# --- found while testing beyond the issue -----------------------------------------------------------------

def test_more_bad_inputs_say_what_is_wrong(plugin, small_raster, tmp_path):
    out = str(tmp_path / "out.tif")
    assert "finite number" in refused("grid_from_raster", {"INPUT": small_raster, **RANDOM_TINY, "DN_OFFSET": "nan",
                                                           "OUTPUT": out})
    assert "is not an extent" in refused("grid_from_raster", {"INPUT": small_raster, **RANDOM_TINY, "EXTENT": "abc",
                                                              "OUTPUT": out})
    assert "would replace its own input" in refused("grid_from_raster", {"INPUT": small_raster, **RANDOM_TINY,
                                                                         "OUTPUT": small_raster})
    assert "ending in .tif" in refused("grid_from_raster", {"INPUT": small_raster, **RANDOM_TINY,
                                                            "OUTPUT": str(tmp_path / "out.png")})
    os.makedirs(tmp_path / "folder.tif")
    assert "is a folder" in refused("grid_from_raster", {"INPUT": small_raster, **RANDOM_TINY,
                                                         "OUTPUT": str(tmp_path / "folder.tif")})
    assert no_outputs(tmp_path) == []


def test_an_unexpected_error_is_one_line_with_the_traceback_in_the_log(plugin, small_raster, tmp_path,
                                                                         monkeypatch):
    import importlib

    from tests.conftest import PLUGIN_NAME

    pipeline = importlib.import_module(PLUGIN_NAME + ".thor_qgis.pipeline")

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(pipeline, "write_grid", broken)
    fb = LogFeedback()
    fb.debug = []
    fb.pushDebugInfo = fb.debug.append
    msg = refused("grid_from_raster", {"INPUT": small_raster, **RANDOM_TINY, "OUTPUT": str(tmp_path / "out.tif")},
                  fb)
    assert msg.startswith("KeyError: 'a bug'") and "Traceback" not in msg and "\n" not in msg
    assert no_outputs(tmp_path) == []
