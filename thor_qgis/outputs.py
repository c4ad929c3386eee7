"""Embeddings from THOR tokens [B, N, D]: group-aware grids, a fallback grid, pooled vectors."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .errors import ThorConfigError, ThorInputError
from .specs import GROUP_MERGES, POOLINGS


def _check_tokens(tokens: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(tokens) or tokens.ndim != 3:
        raise ThorInputError(f"THOR tokens must be a [B, N, D] tensor, got {getattr(tokens, 'shape', None)}")
    return tokens


def _merge_choice(group_merge: str) -> str:
    m = str(group_merge).strip().lower()
    if m not in GROUP_MERGES:
        raise ThorConfigError(f"group merge must be one of {', '.join(GROUP_MERGES)}, got {group_merge!r}")
    return m


def group_grids(tokens: torch.Tensor, sides: Sequence[int]) -> list:
    """Split tokens into per-group maps [B, D, n_k, n_k] (row-major tokens, groups in order)."""
    tokens = _check_tokens(tokens)
    b, n, d = tokens.shape
    expected = sum(int(s) * int(s) for s in sides)
    if n != expected:
        raise ThorInputError(
            f"THOR returned {n} tokens but the group layout {list(sides)} needs {expected}")
    maps, start = [], 0
    for s in sides:
        s = int(s)
        t = tokens[:, start:start + s * s, :].reshape(b, s, s, d).permute(0, 3, 1, 2)
        maps.append(t)
        start += s * s
    return maps


def group_aware_grid(tokens: torch.Tensor, sides: Sequence[int], group_merge: str = "mean") -> torch.Tensor:
    """Group-aware grid: each group's map, the smaller ones bilinearly upsampled
    (align_corners=False) to the largest; ``mean`` / ``sum`` over groups → [B, D, n, n],
    ``concat`` → [B, G·D, n, n] with g0's channels first."""
    merge = _merge_choice(group_merge)
    maps = group_grids(tokens, sides)
    top = max(int(s) for s in sides)
    up = []
    for m in maps:
        if m.shape[-1] != top:
            m = F.interpolate(m, size=(top, top), mode="bilinear", align_corners=False)
        up.append(m)
    if merge == "concat":
        return torch.cat(up, dim=1)
    stacked = torch.stack(up, dim=0)
    return stacked.sum(dim=0) if merge == "sum" else stacked.mean(dim=0)


def square_grid(tokens: torch.Tensor) -> Tuple[torch.Tensor, bool]:
    """Fallback grid when the group layout is unknown: N (or N − 1, dropping one leading token)
    must be a square. Returns ([B, D, n, n], leading_token_dropped)."""
    tokens = _check_tokens(tokens)
    b, n, d = tokens.shape
    for drop in (0, 1):
        m = n - drop
        s = math.isqrt(m) if m > 0 else 0
        if s > 0 and s * s == m:
            grid = tokens[:, drop:, :].reshape(b, s, s, d).permute(0, 3, 1, 2)
            return grid, bool(drop)
    raise ThorInputError(
        f"cannot arrange {n} THOR tokens as a square grid (neither {n} nor {n - 1} is a square number) "
        "and the spectral group layout is unknown; use the pooled output instead")


def tokens_to_grid(tokens: torch.Tensor, sides: Optional[Sequence[int]] = None,
                   group_merge: str = "mean") -> Tuple[torch.Tensor, Dict[str, Any]]:
    """Grid from tokens: group-aware when ``sides`` is known and matches, else the square fallback."""
    merge = _merge_choice(group_merge)
    if sides:
        expected = sum(int(s) * int(s) for s in sides)
        if int(tokens.shape[1]) == expected:
            grid = group_aware_grid(tokens, sides, merge)
            return grid, {"grid_kind": "group_aware", "group_merge": merge, "channels": int(grid.shape[1]),
                          "side": int(grid.shape[-1]), "cls_removed": False}
    grid, dropped = square_grid(tokens)
    return grid, {"grid_kind": "square_tokens", "group_merge": None, "channels": int(grid.shape[1]),
                  "side": int(grid.shape[-1]), "cls_removed": dropped}


def pooled(tokens: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """Mean (or max) over all patch tokens, unweighted across groups → [B, D]."""
    tokens = _check_tokens(tokens)
    p = str(pooling).strip().lower()
    if p not in POOLINGS:
        raise ThorConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    return tokens.mean(dim=1) if p == "mean" else tokens.amax(dim=1)


def grid_channels(embed_dim: int, num_groups: int, group_merge: str) -> int:
    return int(embed_dim) * (int(num_groups) if _merge_choice(group_merge) == "concat" else 1)


def grid_metadata(*, grid_kind: str, group_merge: Optional[str], channels: int, side: int,
                  groups: Sequence[str] = (), tokens_per_group: Sequence[int] = ()) -> Dict[str, Any]:
    """JSON-serialisable description of a grid output."""
    meta: Dict[str, Any] = {"grid_kind": grid_kind, "group_merge": group_merge, "channels": int(channels),
                            "side": int(side)}
    if groups:
        meta["groups_used"] = list(groups)
    if tokens_per_group:
        meta["tokens_per_group"] = [int(t) for t in tokens_per_group]
    if grid_kind == "group_aware" and group_merge == "concat" and groups:
        meta["channel_blocks"] = [{"group": g, "first_channel": i * (int(channels) // len(groups)),
                                   "channels": int(channels) // len(groups)} for i, g in enumerate(groups)]
    return meta
