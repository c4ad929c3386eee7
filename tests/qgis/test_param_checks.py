"""Parameter checks through real QGIS: a run's checks open its input raster once however often Processing
asks (the dialog, the run, our own second call), and a file changed between checks is checked again."""
import os

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import QgsApplication, QgsProcessingContext

from tests.helpers import write_raster

RANDOM_TINY = {"MODEL_KEY": "thor_v1_tiny", "PRETRAINED": False}
GT = (600000.0, 10.0, 0.0, 5100000.0, 0.0, -10.0)


def run(alg, params, feedback=None):
    import processing

    return processing.run(f"thor:{alg}", params, feedback=feedback)


@pytest.fixture
def small_raster(tmp_path):
    """A 10-band, 64 x 64 px raster at 10 m (values 100..1100), one tile."""
    rng = np.random.default_rng(0)
    arr = (rng.random((10, 64, 64)) * 1000 + 100).astype(np.float32)
    return write_raster(tmp_path / "in.tif", arr, GT, epsg=32633)


class Opens:
    """Counts the GDAL opens of one file through the Python bindings (all the plugin's reading goes there)."""

    def __init__(self, monkeypatch, path):
        self.path = os.path.realpath(path)
        self.count = 0
        for name in ("Open", "OpenEx", "OpenShared"):
            monkeypatch.setattr(gdal, name, self._counting(getattr(gdal, name)))

    def _counting(self, opener):
        def counted(path, *args, **kwargs):
            if isinstance(path, str) and os.path.exists(path) and os.path.realpath(path) == self.path:
                self.count += 1
            return opener(path, *args, **kwargs)
        return counted


def _check(params):
    alg = QgsApplication.processingRegistry().createAlgorithmById("thor:grid_from_raster")
    return alg.checkParameterValues(params, QgsProcessingContext())


def test_repeated_checks_open_the_raster_once(plugin, small_raster, tmp_path, monkeypatch):
    opens = Opens(monkeypatch, small_raster)
    params = {"INPUT": small_raster, **RANDOM_TINY, "OUTPUT": str(tmp_path / "out.tif")}
    assert _check(params) == (True, "")  # the dialog's check
    assert _check(params) == (True, "")  # the run's
    assert opens.count == 1


def test_a_run_opens_its_input_three_times(plugin, small_raster, tmp_path, monkeypatch):
    """One check (it was two: our checks call check_values twice), the kind of raster (a plugin output is
    refused), and the reading itself."""
    opens = Opens(monkeypatch, small_raster)
    run("grid_from_raster", {"INPUT": small_raster, **RANDOM_TINY, "OUTPUT": str(tmp_path / "out.tif")})
    assert opens.count == 3


def test_a_file_changed_between_checks_is_checked_again(plugin, small_raster, tmp_path, monkeypatch):
    params = {"INPUT": small_raster, **RANDOM_TINY, "OUTPUT": str(tmp_path / "out.tif")}
    opens = Opens(monkeypatch, small_raster)
    assert _check(params)[0]
    good = open(small_raster, "rb").read()
    garbage = b"not a raster " * (len(good) // 13) + b"x" * (len(good) % 13)  # same size, not a raster
    with open(small_raster, "r+b") as f:  # rewritten in place: same inode, same size
        f.write(garbage)
    ok, msg = _check(params)
    assert not ok and "not a raster GDAL can read" in msg and opens.count >= 2
    replacement = tmp_path / "new.tif"
    replacement.write_bytes(good)
    os.replace(replacement, small_raster)  # replaced: another inode
    before = opens.count
    assert _check(params)[0] and opens.count == before + 1
    assert _check(params)[0] and opens.count == before + 1  # unchanged again: not reopened
