"""The command line (python -m thor_qgis grid) meets the same size limits as the Processing algorithms: a run past
them is refused with the estimate and the way to raise the limit, before the model loads, a request is sent or a
file is written."""
import os
import subprocess
import sys

import numpy as np

from tests.helpers import write_raster

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(args, tmp_path, **env):
    return subprocess.run([sys.executable, "-m", "thor_qgis", "grid", *args], cwd=str(tmp_path), text=True,
                          capture_output=True, timeout=600, env=dict(os.environ, PYTHONPATH=REPO, **env))


def test_command_line_refuses_a_grid_past_the_tile_limit(tmp_path):
    arr = np.random.default_rng(0).uniform(200, 4000, (10, 128, 128)).astype(np.float32)
    raster = write_raster(tmp_path / "r.tif", arr, (499200.0, 10.0, 0.0, 4999680.0, 0.0, -10.0))
    common = ["--raster", str(raster), "--model", "thor_v1_tiny", "--weights", "random", "--image-size", "64",
              "--seams", "none"]
    r = _cli(common + ["-o", "refused.tif"], tmp_path, THOR_MAX_TILES="3")
    assert r.returncode == 1, r.stderr
    assert "Error: this area needs 4 tiles of 640 m" in r.stderr and "more than the limit of 3" in r.stderr
    assert "Check --extent and --extent-crs." in r.stderr and "THOR_MAX_TILES" in r.stderr
    assert "Loading" not in r.stderr and not (tmp_path / "refused.tif").exists()
    r = _cli(common + ["-o", "ok.tif"], tmp_path, THOR_MAX_TILES="4")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ok.tif").is_file()


def test_command_line_refuses_earth_engine_requests_past_the_limit(tmp_path):
    # a 20 km square: dozens of tiles of 2880 m; nothing is asked of Earth Engine (no endpoint is reachable here)
    r = _cli(["--ee", "--point", "9.15,45.45", "--buffer", "10000", "--model", "thor_v1_tiny", "--weights", "random",
              "-o", "ee.tif", "--api-url", "http://127.0.0.1:9"], tmp_path, THOR_EE_MAX_REQUESTS="10")
    assert r.returncode == 1, r.stderr
    assert "Earth Engine requests (tiles of 2880 m)" in r.stderr and "more than the limit of 10" in r.stderr
    assert "THOR_EE_MAX_REQUESTS" in r.stderr and not (tmp_path / "ee.tif").exists()
