"""outputs: group-aware grids, the square fallback, pooling, metadata helpers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from thor_qgis.errors import ThorConfigError, ThorInputError
from thor_qgis.outputs import (group_aware_grid, group_grids, grid_channels, grid_metadata, pooled, square_grid,
                               tokens_to_grid)


def _tokens(b=2, sides=(4, 2), d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, sum(s * s for s in sides), d, generator=g)


def test_group_grids_are_row_major_per_group():
    tok = _tokens()
    g0, g1 = group_grids(tok, (4, 2))
    assert g0.shape == (2, 3, 4, 4) and g1.shape == (2, 3, 2, 2)
    # token r*n + c of a group is grid cell (r, c)
    torch.testing.assert_close(g0[:, :, 1, 3], tok[:, 1 * 4 + 3])
    torch.testing.assert_close(g1[:, :, 1, 0], tok[:, 16 + 1 * 2 + 0])


def test_mean_sum_concat():
    tok = _tokens()
    g0, g1 = group_grids(tok, (4, 2))
    up = F.interpolate(g1, size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(group_aware_grid(tok, (4, 2), "mean"), (g0 + up) / 2)
    torch.testing.assert_close(group_aware_grid(tok, (4, 2), "sum"), g0 + up)
    cat = group_aware_grid(tok, (4, 2), "concat")
    assert cat.shape == (2, 6, 4, 4)
    torch.testing.assert_close(cat[:, :3], g0)  # g0 first
    torch.testing.assert_close(cat[:, 3:], up)


def test_upsampling_of_a_constant_group_is_constant():
    tok = torch.zeros(1, 16 + 4, 2)
    tok[:, 16:] = 5.0
    g = group_aware_grid(tok, (4, 2), "sum")
    assert torch.all(g == 5.0)


def test_layout_mismatch_is_an_input_error():
    with pytest.raises(ThorInputError, match="needs 20"):
        group_aware_grid(torch.zeros(1, 21, 2), (4, 2))


def test_invalid_merge_and_pooling():
    with pytest.raises(ThorConfigError, match="mean, sum, concat"):
        group_aware_grid(_tokens(), (4, 2), "median")
    with pytest.raises(ThorConfigError, match="mean, max"):
        pooled(_tokens(), "min")


def test_pooled():
    tok = _tokens()
    torch.testing.assert_close(pooled(tok, "mean"), tok.mean(1))
    torch.testing.assert_close(pooled(tok, "max"), tok.max(1).values)
    assert pooled(tok).shape == (2, 3)


def test_square_fallback():
    tok = torch.arange(2 * 324 * 4, dtype=torch.float32).reshape(2, 324, 4)
    g, dropped = square_grid(tok)
    assert g.shape == (2, 4, 18, 18) and dropped is False
    with_cls = torch.cat([torch.full((2, 1, 4), -1.0), tok], dim=1)
    g2, dropped2 = square_grid(with_cls)
    assert dropped2 is True
    torch.testing.assert_close(g2, g)


def test_neither_layout_nor_square_suggests_pooled():
    with pytest.raises(ThorInputError) as ei:
        square_grid(torch.zeros(1, 405, 2))
    assert "pooled" in str(ei.value) and "405" in str(ei.value)


def test_tokens_to_grid_picks_the_kind():
    tok = _tokens(1, (4, 2), 3)
    g, info = tokens_to_grid(tok, (4, 2), "concat")
    assert info == {"grid_kind": "group_aware", "group_merge": "concat", "channels": 6, "side": 4,
                    "cls_removed": False}
    sq = torch.zeros(1, 16, 3)
    g, info = tokens_to_grid(sq, None)
    assert info["grid_kind"] == "square_tokens" and g.shape == (1, 3, 4, 4)
    # a layout that does not match the tokens falls back too
    g, info = tokens_to_grid(sq, (4, 2))
    assert info["grid_kind"] == "square_tokens"


def test_fixture_tokens_give_fixture_grids(reference):
    tok = torch.from_numpy(reference["tokens_last"])
    for merge in ("mean", "sum", "concat"):
        np.testing.assert_allclose(group_aware_grid(tok, (18, 9), merge).numpy(), reference[f"grid_{merge}"],
                                   rtol=0, atol=1e-5)
    np.testing.assert_allclose(pooled(tok, "mean").numpy(), reference["pooled_mean"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(pooled(tok, "max").numpy(), reference["pooled_max"], rtol=0, atol=0)


def test_grid_channels_and_metadata():
    assert grid_channels(192, 2, "mean") == 192
    assert grid_channels(192, 2, "concat") == 384
    md = grid_metadata(grid_kind="group_aware", group_merge="concat", channels=384, side=18,
                       groups=["g0 a", "g1 b"], tokens_per_group=[324, 81])
    json.dumps(md)
    assert md["channel_blocks"][1] == {"group": "g1 b", "first_channel": 192, "channels": 192}
    assert md["tokens_per_group"] == [324, 81]


def test_bad_tokens():
    with pytest.raises(ThorInputError, match=r"\[B, N, D\]"):
        pooled(torch.zeros(3, 4))
