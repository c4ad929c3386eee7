"""Reading an embedding raster in windows: all bands of a window as float32 with its valid pixels, and
scattered cells read block by block.

A pixel is invalid when any band is NaN or infinite, or when every band that declares a nodata value
holds it (see :mod:`.analysis`); data at invalid pixels is 0.
"""
from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from .gdal_io import RasterInfo, gdal

CellsFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]


def _nodata32(info: RasterInfo) -> List[Optional[np.float32]]:
    out: List[Optional[np.float32]] = []
    for nd in info.nodata:
        if nd is None or not math.isfinite(nd):
            out.append(None)  # NaN/Inf nodata is caught by the finiteness test
        else:
            with np.errstate(over="ignore"):
                out.append(np.float32(nd))
    return out


def _bands(ds) -> List[Any]:
    return [ds.GetRasterBand(i + 1) for i in range(ds.RasterCount)]


def _heap_trimmer() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``, or a no-op elsewhere.

    Reading hundreds of bands one block at a time, GDAL allocates and frees a block buffer per band;
    glibc places the next buffers past small allocations made in between and does not hand the freed
    holes back to the system, so the process keeps about one block per band resident (192 MiB for 768
    bands of 256 x 256 float32 tiles) although almost all of it is free. Trimming every few dozen bands
    returns those pages (and costs well under a millisecond). Other C libraries: nothing to do here.
    """
    try:
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
    except (OSError, AttributeError, ImportError):
        return lambda: None
    return lambda: trim(0) and None


_trim_heap = _heap_trimmer()
TRIM_EVERY_BYTES = 16 * 1024 * 1024  # GDAL block bytes read between two heap trims


def _trim_interval(band) -> int:
    bw, bh = band.GetBlockSize()
    size = max(1, gdal().GetDataTypeSize(band.DataType) // 8)
    return max(1, TRIM_EVERY_BYTES // max(1, bw * bh * size))


def _read_window(ds, bands: Sequence[Any], nodata32: Sequence[Optional[np.float32]],
                 xoff: int, yoff: int, w: int, h: int) -> Tuple[np.ndarray, np.ndarray]:
    """Read all ``bands`` over a window inside the raster: ([C, h, w] float32, valid [h, w]).

    Each band's cached blocks are released right after it is read: with hundreds of bands, GDAL's
    block cache would otherwise fill up to its limit (5% of RAM by default) on every pass; and the
    freed buffers are handed back to the system every few dozen bands (see :func:`_heap_trimmer`).
    """
    data = np.empty((len(bands), h, w), dtype=np.float32)
    every = _trim_interval(bands[0]) if len(bands) > 1 else 0
    for i, band in enumerate(bands):
        band.ReadAsArray(xoff, yoff, w, h, buf_obj=data[i])
        band.FlushCache()
        if every and i % every == every - 1:
            _trim_heap()
    valid = np.ones((h, w), dtype=bool)
    all_nodata = np.ones((h, w), dtype=bool) if any(v is not None for v in nodata32) else None
    for i in range(len(bands)):
        plane = data[i]
        valid &= np.isfinite(plane)
        if all_nodata is not None and nodata32[i] is not None:
            all_nodata &= plane == nodata32[i]
    if all_nodata is not None:
        valid &= ~all_nodata
    if not valid.all():
        data[:, ~valid] = 0.0
    return data, valid


def read_sparse(ds, info: RasterInfo, flat: np.ndarray, pixels: int, visit: CellsFn,
                after_block: Optional[Callable[[int, int], None]] = None) -> None:
    """Read the cells ``flat`` (flat indices, sorted and unique) of an open raster: each raster block that
    holds any of them is read once, in windows of whole rows of about ``pixels`` cells at most.

    For each window read, ``visit(positions, data, valid, rows, cols)`` gets the positions in ``flat`` of
    the cells it holds, the window's data [C, h, w] float32 and valid flags [h, w], and those cells'
    rows and columns in the window; the window is released before the next one is read.
    ``after_block(done, total)`` is called once a raster block's cells are all visited."""
    if flat.size == 0:
        return
    bands = _bands(ds)
    nodata32 = _nodata32(info)
    bw, bh = bands[0].GetBlockSize()
    rows, cols = flat // info.width, flat % info.width
    tiles_x = -(-info.width // bw)
    tile = (rows // bh) * tiles_x + cols // bw
    order = np.argsort(tile, kind="stable")
    bounds = np.flatnonzero(np.diff(tile[order])) + 1
    groups = np.split(order, bounds)
    for gi, group in enumerate(groups):
        rr, cc = rows[group], cols[group]
        x0, x1, y0, y1 = int(cc.min()), int(cc.max()) + 1, int(rr.min()), int(rr.max()) + 1
        step = max(1, pixels // (x1 - x0))
        for ys in range(y0, y1, step):
            h = min(step, y1 - ys)
            sel = (rr >= ys) & (rr < ys + h)
            if not sel.any():
                continue
            data, valid = _read_window(ds, bands, nodata32, x0, ys, x1 - x0, h)
            visit(group[sel], data, valid, rr[sel] - ys, cc[sel] - x0)
            del data, valid
        if after_block is not None:
            after_block(gi + 1, len(groups))
