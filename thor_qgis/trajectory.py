"""Change over several dates: the per-cell trajectory through embedding rasters of one grid.

Given embedding rasters of one place for several date ranges, in time order and on the same grid
(CRS, geotransform, size, band count), :func:`trajectory_map` streams them together and writes

* ``magnitude``: the sum of the cosine distances (1 - cos) between successive dates, float32 0..2(n-1);
* ``largest``: the largest single step (cosine distance), float32 0..2;
* ``when``: which step it was, 1 = between date 1 and 2, ..., uint8/uint16 with 0 as nodata;

as one three-band GeoTIFF, nodata :data:`~.analysis.FLOAT_NODATA` (the step band holds the step
number in float32 too, so one file carries all three). A cell invalid (or all-zero) at any date is nodata.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence

import numpy as np

from .analysis import (FLOAT_NODATA, CancelFn, ProgressFn, _block_pixels_arg, _check_dst, _grid_differences,
                       _open_embedding, _Run, _writer, plan_windows)
from .errors import ThorConfigError, ThorInputError
from .window_read import _bands, _nodata32, _read_window

BANDS = ["trajectory_magnitude", "largest_change", "largest_change_step"]
__all__ = ["trajectory_map", "BANDS"]


def trajectory_map(sources: Sequence[str], dst: str, labels: Optional[Sequence[str]] = None,
                   progress: ProgressFn = None, is_canceled: CancelFn = None,
                   block_pixels: Optional[int] = None) -> Dict[str, Any]:
    """Trajectory of every cell through ``sources`` (time order; see the module doc). ``labels`` name
    the dates (default: the file names) in the record and in the step descriptions."""
    sources = [os.fspath(s) for s in sources]
    if len(sources) < 3:
        raise ThorConfigError(f"a trajectory needs at least 3 embedding rasters in time order, got {len(sources)}: "
                              f"for two dates use the change map")
    if len(set(os.path.realpath(s) for s in sources)) < len(sources):
        raise ThorConfigError("the same raster is given twice: give one raster per date")
    labels = [str(v) for v in labels] if labels else [os.path.splitext(os.path.basename(s))[0] for s in sources]
    if len(labels) != len(sources):
        raise ThorConfigError(f"{len(labels)} date labels for {len(sources)} rasters")
    opened = [_open_embedding(s, f"date {i + 1}") for i, s in enumerate(sources)]
    dst = _check_dst(dst, *sources)
    first = opened[0][1]
    for i, (_, info) in enumerate(opened[1:], start=2):
        diffs = _grid_differences(first, info)
        if diffs:
            raise ThorInputError(f"{sources[i - 1]} (date {i}) is not on the grid of {sources[0]} (date 1): "
                                 + "; ".join(d.replace("A ", "date 1 ").replace("B ", f"date {i} ") for d in diffs)
                                 + ". Embed every date over the same area with the same settings")
    c = first.band_count
    pixels = _block_pixels_arg(block_pixels, c) // 2  # two dates are held at once
    run = _Run(progress, is_canceled, (1.0,))
    steps = [f"{labels[i]} → {labels[i + 1]}" for i in range(len(labels) - 1)]
    config = {
        "operation": "trajectory_map",
        "source": [os.path.abspath(s) for s in sources],
        "parameters": {"dates": labels, "metric": "cosine_distance"},
        "steps": {str(i + 1): s for i, s in enumerate(steps)},
        "format": {"dtype": "float32", "nodata": FLOAT_NODATA, "bands": BANDS},
    }
    bands = [_bands(ds) for ds, _ in opened]
    nds = [_nodata32(info) for _, info in opened]
    windows = plan_windows(first.width, first.height, tuple(bands[0][0].GetBlockSize()), max(256, pixels))
    total = first.width * first.height
    done = 0
    n_valid = 0
    run.check()
    with _writer(dst, first, 3, "float32", FLOAT_NODATA, BANDS, config) as w:
        for xoff, yoff, ww, hh in windows:
            m = ww * hh
            mag = np.zeros(m, dtype=np.float64)
            big = np.full(m, -1.0)
            when = np.zeros(m, dtype=np.float64)
            ok = np.ones(m, dtype=bool)
            prev, prev_norm = None, None
            for t, (ds, _) in enumerate(opened):
                x, valid = _read_window(ds, bands[t], nds[t], xoff, yoff, ww, hh)
                x = x.reshape(c, -1)
                norm = np.sqrt(np.einsum("ij,ij->j", x, x, dtype=np.float64))
                ok &= valid.ravel() & (norm > 0)
                if prev is not None:
                    dot = np.einsum("ij,ij->j", prev, x, dtype=np.float64)
                    with np.errstate(divide="ignore", invalid="ignore"):
                        dist = np.clip(1.0 - dot / (prev_norm * norm), 0.0, 2.0)
                    dist = np.where(np.isfinite(dist), dist, 0.0)
                    mag += dist
                    larger = dist > big
                    big = np.where(larger, dist, big)
                    when = np.where(larger, t, when)
                prev, prev_norm = x, norm
                run.check()
            out = np.stack([mag, big, when]).astype(np.float32)
            out[:, ~ok] = FLOAT_NODATA
            w.write(out.reshape(3, hh, ww), xoff, yoff)
            n_valid += int(ok.sum())
            done += m
            del prev, out
            run.report(0, done / total)
            run.check()
        for i, name in enumerate(BANDS):
            w.ds.GetRasterBand(i + 1).SetDescription(name)
    run.done()
    return dict(config, output=os.fspath(dst), valid_pixels=n_valid)
