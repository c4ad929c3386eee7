"""Input preparation for THOR: the reference adapter's steps, in its order.

Raw Sentinel-2 SR reflectance (B2..B12, 0..10000) → NaN/Inf → 0 → clipped to [0, 10000] →
normalised (``thor_stats`` | ``unit_scale`` | ``none``) → bilinearly resized to the image size
(``align_corners=False``, no antialias) when it is not that size already.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .errors import ThorConfigError, ThorInputError
from .specs import NORMALIZATIONS, S2_BANDS, THOR_MEAN, THOR_STD

REFLECTANCE_MAX = 10000.0
#: A tile (or a patch of it) with more than this fraction of fill pixels gets a warning.
MOSTLY_FILL_FRACTION = 0.5

_MEAN = np.asarray(THOR_MEAN, dtype=np.float32)
_STD = np.maximum(np.asarray(THOR_STD, dtype=np.float32), 1e-6)


def _band_order() -> str:
    return ", ".join(S2_BANDS)


def as_bchw(x: Any, name: str = "input") -> np.ndarray:
    """Return ``x`` as a float32 [B, 10, H, W] array (a CHW array gets a batch axis).

    Raises :class:`ThorInputError` for anything else, naming the band count received and the
    band order THOR expects.
    """
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ThorInputError(f"{name} could not be read as an array: {exc}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ThorInputError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ThorInputError(
            f"{name} must be a CHW or BCHW array with {len(S2_BANDS)} bands ({_band_order()}), "
            f"got an array of shape {tuple(arr.shape)}")
    if arr.shape[1] != len(S2_BANDS):
        raise ThorInputError(
            f"{name} has {arr.shape[1]} band(s) but THOR needs exactly {len(S2_BANDS)} Sentinel-2 SR "
            f"bands in this order: {_band_order()} (got shape {tuple(arr.shape)})")
    if arr.shape[0] == 0 or arr.shape[2] == 0 or arr.shape[3] == 0:
        raise ThorInputError(f"{name} is empty (shape {tuple(arr.shape)})")
    return np.asarray(arr, dtype=np.float32)


def sanitize(x: np.ndarray) -> np.ndarray:
    """NaN/±Inf → 0, then clip to [0, 10000] (float32, a new array)."""
    out = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(out, 0.0, REFLECTANCE_MAX)


def normalize(x: np.ndarray, mode: str) -> np.ndarray:
    """Normalise sanitised raw reflectance [B, 10, H, W] (or [10, H, W]).

    ``thor_stats``: x/10000 then per-band z-score with THOR's pretraining mean/std;
    ``unit_scale``: x/10000 clipped to [0, 1]; ``none``: unchanged (raw, clipped).
    """
    m = str(mode).strip().lower()
    if m not in NORMALIZATIONS:
        raise ThorConfigError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {mode!r}")
    x = np.asarray(x, dtype=np.float32)
    if m == "none":
        return x.astype(np.float32, copy=True)
    x = x / np.float32(REFLECTANCE_MAX)
    if m == "unit_scale":
        return np.clip(x, 0.0, 1.0).astype(np.float32)
    shape = (-1, 1, 1) if x.ndim == 3 else (1, -1, 1, 1)
    x = (x - _MEAN.reshape(shape)) / _STD.reshape(shape)
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def resize_bilinear(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of [B, C, H, W] to size×size (align_corners=False, no antialias)."""
    import torch
    import torch.nn.functional as F

    if x.shape[-2:] == (size, size):
        return x
    with torch.inference_mode():
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        y = F.interpolate(t, size=(int(size), int(size)), mode="bilinear", align_corners=False,
                          antialias=False)
        return y.numpy().copy()


def prepare_input(x: Any, normalization: str = "thor_stats", image_size: int = 288) -> np.ndarray:
    """Raw SR [B,10,H,W] or [10,H,W] → model input float32 [B, 10, S, S]."""
    arr = as_bchw(x)
    arr = normalize(sanitize(arr), normalization)
    return resize_bilinear(arr, int(image_size))


# --------------------------------------------------------------------------------------------
# Input inspection
# --------------------------------------------------------------------------------------------


def inspect_input(x: Any, fill_value: float = 0, band_names: Optional[Sequence[str]] = None,
                  mostly_fill: float = MOSTLY_FILL_FRACTION, patch: Optional[int] = None) -> Dict[str, Any]:
    """Look at raw SR input before it is used and say what looks wrong.

    Returns a JSON-serialisable dict:

    - ``bands``: {band name: {"min", "max", "mean", "fill_fraction", "nonfinite_fraction"}} over
      the finite values of all tiles (None when a band has no finite value);
    - ``tile_fill_fraction``: per tile, the fraction of pixels where every band equals
      ``fill_value`` (or is NaN/Inf);
    - ``warnings``: list of human-readable strings (values outside 0..10000, NaN/Inf present,
      tiles — and, with ``patch``, patch-sized blocks — that are mostly fill);
    - ``shape`` and ``ok`` (True when there is no warning).
    """
    arr = as_bchw(x)
    b, c, h, w = arr.shape
    names = list(band_names) if band_names is not None else list(S2_BANDS)
    if len(names) != c:
        names = [f"band{i + 1}" for i in range(c)]
    finite = np.isfinite(arr)
    fill = float(fill_value)
    is_fill = (arr == fill) | ~finite
    warnings: List[str] = []
    bands: Dict[str, Any] = {}
    n_pix = b * h * w
    for i, name in enumerate(names):
        v = arr[:, i]
        f = finite[:, i]
        vals = v[f]
        stats: Dict[str, Any] = {
            "min": float(vals.min()) if vals.size else None,
            "max": float(vals.max()) if vals.size else None,
            "mean": float(vals.mean(dtype=np.float64)) if vals.size else None,
            "fill_fraction": float(is_fill[:, i].sum()) / n_pix,
            "nonfinite_fraction": float((~f).sum()) / n_pix,
        }
        bands[name] = stats
    nonfinite = int((~finite).sum())
    if nonfinite:
        which = [n for n in names if bands[n]["nonfinite_fraction"] > 0]
        warnings.append(f"{nonfinite} NaN/Inf value(s) in band(s) {', '.join(which)}; they are set to 0 "
                        "before encoding")
    below = [n for n in names if bands[n]["min"] is not None and bands[n]["min"] < 0]
    above = [n for n in names if bands[n]["max"] is not None and bands[n]["max"] > REFLECTANCE_MAX]
    if below or above:
        parts = []
        if below:
            parts.append("below 0 in " + ", ".join(below))
        if above:
            parts.append("above 10000 in " + ", ".join(above))
        warnings.append("values outside the Sentinel-2 SR range 0..10000 (" + "; ".join(parts)
                        + "); they are clipped. Is the input scaled reflectance (×10000)?")
    all_fill = is_fill.all(axis=1)  # [B, H, W]
    tile_fill = [float(t.mean()) for t in all_fill]
    for i, f in enumerate(tile_fill):
        if f >= 1.0:
            warnings.append(f"tile {i} is entirely fill ({fill:g} or NaN): its embedding carries no information")
        elif f > mostly_fill:
            warnings.append(f"tile {i} is {100 * f:.0f}% fill ({fill:g} or NaN)")
    if patch and patch > 0 and h >= patch and w >= patch:
        ph, pw = h // patch, w // patch
        blocks = all_fill[:, : ph * patch, : pw * patch].reshape(b, ph, patch, pw, patch).mean(axis=(2, 4))
        for i in range(b):
            nb = int((blocks[i] > mostly_fill).sum())
            if nb and tile_fill[i] <= mostly_fill:
                warnings.append(f"tile {i}: {nb} of {ph * pw} {patch}×{patch}-pixel patches are mostly fill")
    return {
        "shape": [int(s) for s in arr.shape],
        "bands": bands,
        "tile_fill_fraction": tile_fill,
        "warnings": warnings,
        "ok": not warnings,
    }
