"""Training-sample export: vectors under points and polygons, per cell and per feature, to CSV."""
import csv

import numpy as np
import pytest

from tests.engine.planted import GT
from tests.helpers import write_raster
from thor_qgis import samples_export
from thor_qgis.errors import ThorConfigError, ThorInputError


def test_cells_and_feature_means_match_the_raster(tmp_path):
    arr = np.random.default_rng(0).normal(size=(5, 10, 12)).astype(np.float32)
    arr[:, 0, 0] = -9999  # a nodata cell under the polygon
    src = write_raster(tmp_path / "e.tif", arr, GT, epsg=32633, nodata=-9999)
    x0, y0 = GT[0], GT[3]
    poly = f"POLYGON (({x0} {y0}, {x0 + 30} {y0}, {x0 + 30} {y0 - 20}, {x0} {y0 - 20}, {x0} {y0}))"  # 3 x 2 cells
    point = f"POINT ({x0 + 75} {y0 - 45})"  # cell row 4, col 7
    wkts = [poly, point, "POINT (0 0)"]
    s = samples_export.extract_samples(src, wkts, "cells", all_touched=False)
    assert s.feature.tolist() == [0] * 5 + [1]
    assert (s.row[-1], s.col[-1]) == (4, 7)
    assert np.array_equal(s.vectors[-1], arr[:, 4, 7])
    assert np.array_equal(s.vectors[0], arr[:, 0, 1])
    assert s.xy[-1].tolist() == [x0 + 75, y0 - 45]
    assert s.report["features_outside_raster"] == 1 and s.columns[0] == "band_001"
    m = samples_export.extract_samples(src, wkts, "feature_mean", all_touched=False)
    assert m.cells.tolist() == [5, 1]
    expect = np.concatenate([arr[:, 0, 1:3], arr[:, 1, 0:3]], axis=1).mean(axis=1)
    assert np.allclose(m.vectors[0], expect, atol=1e-6)
    out = samples_export.write_csv(str(tmp_path / "t.csv"), m, ["name", "n"], [["a,b", 1], [None, 2.5], ["c", 3]],
                                   [10, 11, 12])
    rows = list(csv.reader(open(out)))
    assert rows[0][:8] == ["name", "n", "thor_fid", "thor_row", "thor_col", "thor_x", "thor_y", "thor_cells"]
    assert rows[1][0] == "a,b" and rows[2][:3] == ["", "2.5", "11"]
    assert np.allclose([float(v) for v in rows[2][8:]], arr[:, 4, 7])
    with pytest.raises(ThorConfigError, match=r"\.csv"):
        samples_export.write_csv(str(tmp_path / "t.txt"), m, [], [[], [], []], [1, 2, 3])
    with pytest.raises(ThorInputError, match="outside"):
        samples_export.extract_samples(src, ["POINT (0 0)"])


def test_large_polygons_are_thinned_small_features_kept_whole(tmp_path):
    from thor_qgis import labels

    arr = np.random.default_rng(1).normal(size=(3, 40, 40)).astype(np.float32)
    src = write_raster(tmp_path / "e.tif", arr, GT, epsg=32633)
    x0, y0 = GT[0], GT[3]
    big = f"POLYGON (({x0} {y0}, {x0 + 300} {y0}, {x0 + 300} {y0 - 300}, {x0} {y0 - 300}, {x0} {y0}))"  # 900 cells
    small = f"POLYGON (({x0 + 351} {y0 - 351}, {x0 + 369} {y0 - 351}, {x0 + 369} {y0 - 369}, {x0 + 351} {y0 - 369}, " \
            f"{x0 + 351} {y0 - 351}))"  # 2 x 2 cells
    full = labels.cells_under_features(src, [big, small], all_touched=False)
    assert np.bincount(full.pairs_feature).tolist() == [900, 4]
    thin = labels.cells_under_features(src, [big, small], all_touched=False, max_cells=50, seed=3)
    assert np.bincount(thin.pairs_feature).tolist() == [46, 4]
    assert set(thin.flat.tolist()) <= set(full.flat.tolist())
    assert labels.per_feature_quota([1, 2, 100, 1000], 50) == 23
