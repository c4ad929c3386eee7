"""Trajectory over several dates: magnitude, largest change and its step, on planted changes."""
import numpy as np
import pytest
from osgeo import gdal

from tests.engine.planted import GT
from tests.helpers import write_raster
from thor_qgis import analysis, trajectory
from thor_qgis.errors import ThorConfigError, ThorInputError


def _dates(tmp_path, n=4):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(8, 20, 30)).astype(np.float32)
    other = rng.normal(size=(8, 20, 30)).astype(np.float32)
    paths = []
    for t in range(n):
        arr = base + 0.01 * rng.normal(size=base.shape).astype(np.float32)
        if t >= 2:  # the left third changes between date 2 and date 3 (step 2)
            arr[:, :, :10] = other[:, :, :10]
        if t == n - 1:  # the bottom rows change at the last step, a little
            arr[:, 15:, :] += 0.3 * other[:, 15:, :]
        paths.append(write_raster(tmp_path / f"d{t}.tif", arr, GT, nodata=-9999))
    return paths


def test_planted_changes_and_their_steps(tmp_path):
    paths = _dates(tmp_path)
    out = tmp_path / "traj.tif"
    rec = trajectory.trajectory_map(paths, str(out), labels=["2019", "2020", "2021", "2022"], block_pixels=64)
    ds = gdal.Open(str(out))
    mag, big, when = ds.ReadAsArray()
    assert [ds.GetRasterBand(i + 1).GetDescription() for i in range(3)] == trajectory.BANDS
    assert rec["steps"]["2"] == "2020 → 2021"
    assert (when[:15, :10] == 2).all() and big[:15, :10].min() > 0.1
    assert (when[15:, 10:] == 3).all()
    assert big[:15, 10:].max() < 0.01 and mag[:15, 10:].max() < 0.03
    # magnitude = sum of the successive change maps
    steps = []
    for a, b in zip(paths, paths[1:]):
        analysis.change_map(a, b, str(tmp_path / "c.tif"))
        steps.append(gdal.Open(str(tmp_path / "c.tif")).ReadAsArray())
    assert np.allclose(mag, np.sum(steps, axis=0), atol=1e-5)
    assert np.allclose(big, np.max(steps, axis=0), atol=1e-6)


def test_nodata_at_any_date_and_bad_inputs(tmp_path):
    paths = _dates(tmp_path)
    ds = gdal.Open(paths[1], gdal.GA_Update)
    for b in range(ds.RasterCount):
        band = ds.GetRasterBand(b + 1)
        a = band.ReadAsArray()
        a[0, 0] = -9999
        band.WriteArray(a)
    ds = None
    out = tmp_path / "t.tif"
    trajectory.trajectory_map(paths, str(out))
    assert (gdal.Open(str(out)).ReadAsArray()[:, 0, 0] == -9999).all()
    with pytest.raises(ThorConfigError, match="at least 3"):
        trajectory.trajectory_map(paths[:2], str(tmp_path / "x.tif"))
    shifted = write_raster(tmp_path / "shift.tif", np.ones((8, 20, 30), np.float32),
                           (GT[0] + 10, 10.0, 0, GT[3], 0, -10.0))
    with pytest.raises(ThorInputError, match="not on the grid"):
        trajectory.trajectory_map(paths[:2] + [shifted], str(tmp_path / "x.tif"))
    assert not (tmp_path / "x.tif").exists()
