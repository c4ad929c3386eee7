"""preprocess: input checks, sanitising, the three normalisations, resizing, inspection."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from thor_qgis.errors import ThorConfigError, ThorInputError
from thor_qgis.preprocess import (as_bchw, inspect_input, normalize, prepare_input, resize_bilinear,
                                  sanitize)
from thor_qgis.specs import S2_BANDS, THOR_MEAN, THOR_STD

RNG = np.random.default_rng(0)


def _raw(b=2, h=16, w=16):
    return RNG.uniform(0, 10000, size=(b, 10, h, w)).astype(np.float32)


def test_chw_gets_a_batch_axis():
    x = _raw(1)[0]
    out = as_bchw(x)
    assert out.shape == (1, 10, 16, 16) and out.dtype == np.float32


@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (3, 8, 8), (12, 8, 8)])
def test_wrong_band_count_names_count_and_order(shape):
    with pytest.raises(ThorInputError) as ei:
        as_bchw(np.zeros(shape, np.float32))
    msg = str(ei.value)
    assert f"has {shape[-3]} band" in msg
    assert ", ".join(S2_BANDS) in msg


@pytest.mark.parametrize("shape", [(10, 8), (1, 1, 10, 8, 8), ()])
def test_wrong_rank(shape):
    with pytest.raises(ThorInputError, match="CHW or BCHW"):
        as_bchw(np.zeros(shape, np.float32))


def test_empty_input():
    with pytest.raises(ThorInputError, match="empty"):
        as_bchw(np.zeros((0, 10, 8, 8), np.float32))


def test_non_numeric_input():
    with pytest.raises(ThorInputError, match="numeric"):
        as_bchw(np.full((10, 2, 2), "a"))


def test_sanitize_nan_inf_and_clamp():
    x = np.array([np.nan, np.inf, -np.inf, -5, 0, 5000, 10000, 12000], np.float32).reshape(1, 1, 1, 8)
    out = sanitize(np.repeat(x, 10, axis=1))
    assert out[0, 0, 0].tolist() == [0, 0, 0, 0, 0, 5000, 10000, 10000]
    assert out.dtype == np.float32


def test_thor_stats_is_per_band_zscore_of_reflectance():
    x = sanitize(_raw())
    out = normalize(x, "thor_stats")
    mean = np.asarray(THOR_MEAN, np.float64)[None, :, None, None]
    std = np.asarray(THOR_STD, np.float64)[None, :, None, None]
    np.testing.assert_allclose(out, (x.astype(np.float64) / 10000 - mean) / std, rtol=0, atol=1e-5)
    assert out.dtype == np.float32
    # CHW works the same
    np.testing.assert_array_equal(normalize(x[0], "thor_stats"), out[0])


def test_unit_scale_and_none():
    x = sanitize(_raw())
    u = normalize(x, "unit_scale")
    np.testing.assert_allclose(u, x / 10000, rtol=1e-6)
    assert u.min() >= 0 and u.max() <= 1
    n = normalize(x, "none")
    np.testing.assert_array_equal(n, x)
    assert n is not x


def test_invalid_normalization_names_modes():
    with pytest.raises(ThorConfigError) as ei:
        normalize(np.zeros((1, 10, 2, 2), np.float32), "minmax")
    for m in ("thor_stats", "unit_scale", "none"):
        assert m in str(ei.value)


def test_resize_matches_torch_bilinear_no_antialias():
    x = _raw(1, 40, 40)
    out = resize_bilinear(x, 288)
    ref = F.interpolate(torch.from_numpy(x), size=(288, 288), mode="bilinear", align_corners=False,
                        antialias=False).numpy()
    np.testing.assert_array_equal(out, ref)
    # downsampling by 2 without antialias averages 2×2 blocks
    y = resize_bilinear(x, 20)
    np.testing.assert_allclose(y, x.reshape(1, 10, 20, 2, 20, 2).mean(axis=(3, 5)), rtol=1e-6)


def test_resize_is_skipped_at_image_size():
    x = _raw(1, 32, 32)
    assert resize_bilinear(x, 32) is x


def test_prepare_input_pipeline():
    x = _raw(2, 64, 64)
    x[0, 0, 0, 0] = np.nan
    x[1, 3, 5, 5] = 20000
    out = prepare_input(x, "thor_stats", 96)
    assert out.shape == (2, 10, 96, 96) and out.dtype == np.float32 and np.isfinite(out).all()
    manual = resize_bilinear(normalize(sanitize(x), "thor_stats"), 96)
    np.testing.assert_array_equal(out, manual)
    # normalising is per band and affine, so it commutes with the bilinear resize (up to rounding)
    other = normalize(resize_bilinear(sanitize(x), 96), "thor_stats")
    np.testing.assert_allclose(out, other, atol=1e-5)


def test_inspect_clean_input_has_no_warnings():
    x = np.clip(_raw(2, 32, 32), 1, 9999)
    rep = inspect_input(x)
    json.dumps(rep)
    assert rep["warnings"] == [] and rep["ok"]
    assert list(rep["bands"]) == list(S2_BANDS)
    b2 = rep["bands"]["B2"]
    assert b2["min"] == pytest.approx(float(x[:, 0].min()))
    assert b2["max"] == pytest.approx(float(x[:, 0].max()))
    assert b2["mean"] == pytest.approx(float(x[:, 0].mean(dtype=np.float64)), rel=1e-6)
    assert b2["fill_fraction"] == 0.0
    assert rep["shape"] == [2, 10, 32, 32]


def test_inspect_reports_range_nan_and_fill():
    x = np.clip(_raw(3, 32, 32), 1, 9999)
    x[0, 2, 0, 0] = -3
    x[0, 7, 1, 1] = 15000
    x[1, 4, :2, :2] = np.nan
    x[2, :, :24, :] = 0  # 75 % fill
    rep = inspect_input(x, fill_value=0)
    text = " | ".join(rep["warnings"])
    assert "outside" in text and "B4" in text and "B8A" in text
    assert "NaN/Inf" in text and "B6" in text
    assert "tile 2 is 75% fill" in text
    assert rep["tile_fill_fraction"][2] == pytest.approx(0.75)
    assert rep["bands"]["B2"]["fill_fraction"] == pytest.approx(0.75 / 3)
    assert rep["bands"]["B6"]["nonfinite_fraction"] == pytest.approx(4 / (3 * 32 * 32))
    assert not rep["ok"]


def test_inspect_all_fill_tile_and_patches():
    x = np.clip(_raw(2, 32, 32), 1, 9999)
    x[0] = -9999
    x[1, :, :16, :16] = -9999  # one mostly-fill 16×16 patch out of four, tile 25 % fill
    rep = inspect_input(x, fill_value=-9999, patch=16)
    text = " | ".join(rep["warnings"])
    assert "tile 0 is entirely fill" in text
    assert "tile 1: 1 of 4 16×16-pixel patches are mostly fill" in text


def test_inspect_rejects_wrong_band_count():
    with pytest.raises(ThorInputError):
        inspect_input(np.zeros((3, 8, 8)))
