"""Analysis of embedding rasters: false-colour view, similarity search, k-means classes, change.

Every operation reads any multiband embedding raster (one band per channel, e.g. the ``thor_000...``
rasters this plugin writes) in bounded blocks, so memory stays flat however large the raster is, and
writes a GeoTIFF on exactly the input's grid (size, geotransform, CRS) through
:class:`~.gdal_io.GeoTiffWriter`: a canceled or failed run leaves no file behind. What was done is
recorded as JSON in the output's ``gdal_io.CONFIG_KEY`` metadata item (operation, parameters, source,
small fitted statistics) and returned as a dict.

Conventions
-----------
* A pixel is *invalid* when any band is NaN or infinite, or when every band that declares a nodata
  value holds it (bands without a nodata value are not considered for that second test). Invalid
  pixels are never used for fitting and come out as the output's nodata.
* Outputs and their nodata: RGB view uint8 1..255 with 0 as nodata; similarity float32 -1..1 and change
  (cosine distance 1 - cos) float32 0..2, both with nodata :data:`FLOAT_NODATA` (-9999, a finite value
  that every tool reads as nodata, unlike NaN); k-means classes 1..k with 0 as nodata, uint8 up to
  k = 254, uint16 above. A valid pixel whose embedding is the zero vector has no direction: its
  similarity and change are nodata too.
* Fitting (PCA, k-means) uses a sample of at most ``sample_size`` valid pixels drawn in one streamed
  pass: each pixel gets a pseudo-random key from its position and the seed, and the valid pixels with
  the smallest keys are kept. The sample therefore depends only on the seed and on which pixels are
  valid, not on the block size or reading order, and reruns are identical.
* ``progress(fraction)`` receives 0..1, ``is_canceled()`` is polled once per block (and per k-means
  iteration); a cancel raises :class:`~.errors.ThorCanceled`.
* Blocks hold at most ``block_pixels`` pixels (default: :data:`DEFAULT_BLOCK_BYTES` of float32 per
  input, 96 MiB) and follow the raster's own blocks: whole rows or runs of tiles when one tile of all
  bands fits in the budget, so each tile is decoded once; otherwise equal parts of a tile, each of
  which decodes the whole tile again (with 768 bands, a 256 x 256 tile of all bands is 192 MiB, so the
  default reads each tile twice). GDAL's block cache is released band by band, so memory does not grow
  with the raster: peak memory is about one block, plus the fitting sample for PCA and k-means
  (``sample_size`` x bands x 4 bytes, 147 MiB for 50000 x 768), plus two blocks for the change map.
"""
from __future__ import annotations

import colorsys
import math
import os
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .errors import ThorCanceled, ThorConfigError, ThorInputError
from .gdal_io import CONFIG_KEY, GTIFF_OPTIONS, GeoTiffWriter, RasterInfo, gdal, open_raster, osr, raster_info
from .window_read import _bands, _nodata32, _read_window, read_sparse

ProgressFn = Optional[Callable[[float], None]]
CancelFn = Optional[Callable[[], bool]]
Window = Tuple[int, int, int, int]  # xoff, yoff, width, height

DEFAULT_BLOCK_BYTES = 96 * 1024 * 1024  # float32 bytes of one input block (all bands)
CHUNK_BYTES = 16 * 1024 * 1024  # float64 scratch of one computation chunk
FLOAT_NODATA = -9999.0
CLASS_NODATA = 0
RGB_NODATA = 0
MAX_CLASSES = 65535

__all__ = [
    "Block", "iter_blocks", "plan_windows", "default_block_pixels",
    "embedding_to_rgb", "reference_embedding", "similarity_map", "kmeans_classes", "change_map",
    "DEFAULT_BLOCK_BYTES", "FLOAT_NODATA", "CLASS_NODATA", "RGB_NODATA",
]


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class Block(NamedTuple):
    xoff: int
    yoff: int
    width: int
    height: int
    data: np.ndarray  # [C, height, width] float32; 0 at invalid pixels
    valid: np.ndarray  # [height, width] bool


def default_block_pixels(band_count: int, block_bytes: Optional[int] = None) -> int:
    """Pixels per block so that one block of ``band_count`` float32 bands takes about ``block_bytes``
    (default :data:`DEFAULT_BLOCK_BYTES`)."""
    budget = DEFAULT_BLOCK_BYTES if block_bytes is None else int(block_bytes)
    return max(256, budget // (4 * max(1, int(band_count))))


def _even_split(total: int, max_part: int) -> int:
    """The part size that cuts ``total`` into equal parts of at most ``max_part``."""
    parts = -(-total // max(1, max_part))
    return -(-total // parts)


def plan_windows(width: int, height: int, block_size: Tuple[int, int], block_pixels: int,
                 block_rows: Optional[int] = None, window: Optional[Window] = None) -> List[Window]:
    """Windows covering ``window`` (default: the whole raster) once, each of at most ``block_pixels``.

    With ``block_rows`` the windows are full-width strips of that many rows. Otherwise they follow the
    raster's blocks (``block_size`` = GDAL's natural block width, height): whole rows of blocks when
    they fit, else runs of blocks along a row of blocks, else equal parts of single blocks.
    """
    wx, wy, ww, wh = window if window is not None else (0, 0, width, height)
    if ww <= 0 or wh <= 0:
        return []
    if block_rows is not None:
        rows = max(1, int(block_rows))
        return [(wx, y, ww, min(rows, wy + wh - y)) for y in range(wy, wy + wh, rows)]
    budget = max(1, int(block_pixels))
    bw, bh = max(1, int(block_size[0])), max(1, int(block_size[1]))
    # Block edges are those of the whole raster, not of the window.
    col_edges = _edges(wx, ww, bw)
    row_edges = _edges(wy, wh, bh)
    out: List[Window] = []
    if ww * max(b - a for a, b in row_edges) <= budget:
        # Full-width strips of whole block rows.
        strip: List[Tuple[int, int]] = []
        for a, b in row_edges:
            if strip and ww * (b - strip[0][0]) > budget:
                out.append((wx, strip[0][0], ww, strip[-1][1] - strip[0][0]))
                strip = []
            strip.append((a, b))
        if strip:
            out.append((wx, strip[0][0], ww, strip[-1][1] - strip[0][0]))
        return out
    if max(b - a for a, b in col_edges) * max(b - a for a, b in row_edges) <= budget:
        # Runs of whole blocks along each row of blocks.
        for ra, rb in row_edges:
            run: List[Tuple[int, int]] = []
            for ca, cb in col_edges:
                if run and (cb - run[0][0]) * (rb - ra) > budget:
                    out.append((run[0][0], ra, run[-1][1] - run[0][0], rb - ra))
                    run = []
                run.append((ca, cb))
            if run:
                out.append((run[0][0], ra, run[-1][1] - run[0][0], rb - ra))
        return out
    # A single block exceeds the budget: cut each block into equal parts, one block after another.
    for ra, rb in row_edges:
        for ca, cb in col_edges:
            bwid, bhei = cb - ca, rb - ra
            pw = _even_split(bwid, budget)
            ph = _even_split(bhei, max(1, budget // pw))
            for y in range(ra, rb, ph):
                for x in range(ca, cb, pw):
                    out.append((x, y, min(pw, cb - x), min(ph, rb - y)))
    return out


def _edges(start: int, size: int, step: int) -> List[Tuple[int, int]]:
    """[a, b) intervals of ``[start, start + size)`` cut at multiples of ``step``."""
    edges = []
    a, end = start, start + size
    while a < end:
        b = min(end, (a // step + 1) * step)
        edges.append((a, b))
        a = b
    return edges


def iter_blocks(ds, block_pixels: Optional[int] = None, block_rows: Optional[int] = None,
                window: Optional[Window] = None) -> Iterator[Block]:
    """Stream a raster (a GDAL dataset or a path) as :class:`Block` tuples
    ``(xoff, yoff, width, height, data [C, h, w] float32, valid [h, w])``, covering it (or ``window``)
    once, in row-major order of the raster's blocks. Data at invalid pixels is 0.

    Each block is a new array: to keep only one block in memory, drop every reference to the previous
    one (``del blk``) at the end of the loop body, before the next one is read."""
    if isinstance(ds, (str, os.PathLike)):
        ds = open_raster(ds)
    info = raster_info(ds)
    bands = _bands(ds)
    pixels = _block_pixels_arg(block_pixels, info.band_count)
    nodata32 = _nodata32(info)
    for xoff, yoff, w, h in plan_windows(info.width, info.height, tuple(bands[0].GetBlockSize()), pixels,
                                         block_rows, window):
        data, valid = _read_window(ds, bands, nodata32, xoff, yoff, w, h)
        yield Block(xoff, yoff, w, h, data, valid)
        del data, valid  # hold one block, not two, while the next one is read


def _block_pixels_arg(block_pixels: Optional[int], band_count: int) -> int:
    if block_pixels is None:
        return default_block_pixels(band_count)
    if isinstance(block_pixels, bool) or not isinstance(block_pixels, (int, np.integer)) or block_pixels < 1:
        raise ThorConfigError(f"block_pixels must be a positive integer, got {block_pixels!r}")
    return int(block_pixels)


def _chunk_len(band_count: int) -> int:
    return max(64, CHUNK_BYTES // (8 * max(1, band_count)))


# --------------------------------------------------------------------------------------------
# Progress, cancel, inputs, outputs
# --------------------------------------------------------------------------------------------


class _Run:
    """Progress over weighted stages, and the cancel check."""

    def __init__(self, progress: ProgressFn, is_canceled: CancelFn, weights: Sequence[float]):
        self._progress = progress
        self._is_canceled = is_canceled
        total = float(sum(weights))
        self._starts = [sum(weights[:i]) / total for i in range(len(weights))]
        self._spans = [w / total for w in weights]
        self._last = 0.0

    def check(self) -> None:
        if self._is_canceled is not None and self._is_canceled():
            raise ThorCanceled("canceled by the user; no output was written")

    def report(self, stage: int, fraction: float) -> None:
        if self._progress is None:
            return
        value = self._starts[stage] + self._spans[stage] * min(1.0, max(0.0, fraction))
        value = min(1.0, max(self._last, value))
        self._last = value
        self._progress(value)

    def done(self) -> None:
        if self._progress is not None:
            self._last = 1.0
            self._progress(1.0)


def _open_embedding(path: Any, role: str = "input") -> Tuple[Any, RasterInfo]:
    ds = open_raster(path)
    info = raster_info(ds)
    if info.band_count < 2:
        raise ThorInputError(
            f"{role} raster {os.fspath(path)} has {info.band_count} band; an embedding raster has one band "
            f"per embedding channel (e.g. 192 or 768 bands thor_000...): choose the embedding raster, not "
            f"a derived single-band product")
    return ds, info


def _check_dst(dst: Any, *sources: Any) -> str:
    if dst is None or not os.fspath(dst):
        raise ThorConfigError("an output path is required")
    out = os.path.realpath(os.fspath(dst))
    for s in sources:
        if os.path.realpath(os.fspath(s)) == out:
            raise ThorConfigError(f"the output {os.fspath(dst)} would overwrite its input: choose another path")
    return os.fspath(dst)


def _sig(v: float, digits: int = 7) -> float:
    return float(f"{float(v):.{digits}g}")


def _sig_list(a: Any, digits: int = 7) -> Any:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 0:
        return _sig(arr, digits)
    return [_sig_list(x, digits) for x in arr]


def _writer(dst: str, info: RasterInfo, band_count: int, dtype: str, nodata: float, band_names: Sequence[str],
            config: Dict[str, Any], options: Sequence[str] = GTIFF_OPTIONS) -> GeoTiffWriter:
    return GeoTiffWriter(dst, info.width, info.height, band_count, info.geotransform, info.crs_wkt,
                         dtype=dtype, nodata=nodata, band_names=band_names, metadata={CONFIG_KEY: config},
                         options=options)


def _int_arg(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ThorConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _pixel_keys(flat_index: np.ndarray, salt: np.uint64) -> np.ndarray:
    """A bijective 64-bit hash (splitmix64) of pixel indices: distinct pixels get distinct keys."""
    z = flat_index.astype(np.uint64) * _GOLDEN + salt
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _seed_arg(seed: Any) -> int:
    return _int_arg("seed", seed, 0)


def _permute_rows(a: np.ndarray, order: np.ndarray) -> None:
    """``a[:] = a[order]`` in place (one row of scratch instead of a copy of the whole sample)."""
    n = len(order)
    order_l = order.tolist()
    done = bytearray(n)
    for start in range(n):
        if done[start]:
            continue
        if order_l[start] == start:
            done[start] = 1
            continue
        saved = a[start].copy()
        i = start
        while True:
            done[i] = 1
            j = order_l[i]
            if j == start:
                a[i] = saved
                break
            a[i] = a[j]
            i = j


def _gather_rows(dst: np.ndarray, rows: np.ndarray, x: np.ndarray, cols: np.ndarray) -> None:
    """``dst[rows] = x[:, cols].T`` in bounded pieces (no block-sized temporary)."""
    for sl in _row_chunks(rows.size, x.shape[0]):
        dst[rows[sl]] = x[:, cols[sl]].T


def _sample_pixels(ds, info: RasterInfo, sample_size: int, seed: int, pixels: int, run: _Run,
                   stage: int) -> Tuple[np.ndarray, np.ndarray, int]:
    """Up to ``sample_size`` valid pixels, in raster order: (flat indices, [S, C] float32, valid count)."""
    cap = int(min(sample_size, info.width * info.height))
    salt = np.random.SeedSequence(seed).generate_state(1, dtype=np.uint64)[0]
    keys = np.empty(cap, dtype=np.uint64)
    index = np.empty(cap, dtype=np.int64)
    data = np.empty((cap, info.band_count), dtype=np.float32)
    n = 0
    n_valid = 0
    total = info.width * info.height
    done = 0
    run.check()
    for blk in iter_blocks(ds, pixels):
        pos = np.flatnonzero(blk.valid.ravel())
        done += blk.width * blk.height
        if pos.size:
            n_valid += pos.size
            flat = (blk.yoff + pos // blk.width) * info.width + blk.xoff + pos % blk.width
            bkeys = _pixel_keys(flat, salt)
            if n == cap:
                keep = bkeys < keys.max()
                pos, flat, bkeys = pos[keep], flat[keep], bkeys[keep]
            m = pos.size
            x = blk.data.reshape(info.band_count, -1)
            if m and n + m <= cap:
                keys[n:n + m], index[n:n + m] = bkeys, flat
                _gather_rows(data, np.arange(n, n + m), x, pos)
                n += m
            elif m:
                cutoff = np.partition(np.concatenate([keys[:n], bkeys]), cap - 1)[cap - 1]
                win = bkeys <= cutoff
                slots = np.concatenate([np.flatnonzero(keys[:n] > cutoff), np.arange(n, cap)])
                keys[slots], index[slots] = bkeys[win], flat[win]
                _gather_rows(data, slots, x, pos[win])
                n = cap
            del x
        del blk
        run.report(stage, done / total)
        run.check()
    if n_valid == 0:
        raise ThorInputError(f"{info.path} has no valid pixels (every pixel is NaN/Inf or nodata)")
    order = np.argsort(index[:n], kind="stable")
    index = index[:n][order]
    data = data[:n]
    _permute_rows(data, order)
    return index, data, n_valid


def _row_chunks(n: int, band_count: int) -> Iterator[slice]:
    step = _chunk_len(band_count)
    for s in range(0, n, step):
        yield slice(s, min(n, s + step))


def _col_chunks(n: int, band_count: int) -> Iterator[slice]:
    return _row_chunks(n, band_count)


# --------------------------------------------------------------------------------------------
# RGB view (PCA)
# --------------------------------------------------------------------------------------------


def _pca(sample: np.ndarray, n_components: int) -> Dict[str, np.ndarray]:
    """PCA of an [S, C] float32 sample from its float64 covariance; components with a fixed sign
    (largest-|loading| entry positive)."""
    s, c = sample.shape
    mean = np.zeros(c, dtype=np.float64)
    for sl in _row_chunks(s, c):
        mean += sample[sl].sum(axis=0, dtype=np.float64)
    mean /= s
    cov = np.zeros((c, c), dtype=np.float64)
    for sl in _row_chunks(s, c):
        xc = sample[sl].astype(np.float64) - mean
        cov += xc.T @ xc
    cov /= max(1, s - 1)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1][:n_components]
    comps = np.zeros((n_components, c), dtype=np.float64)
    var = np.zeros(n_components, dtype=np.float64)
    comps[:len(order)] = evecs[:, order].T
    var[:len(order)] = np.clip(evals[order], 0.0, None)
    for i in range(n_components):
        j = int(np.argmax(np.abs(comps[i])))
        if comps[i, j] < 0:
            comps[i] = -comps[i]
    total = float(np.clip(evals, 0.0, None).sum())
    ratio = var / total if total > 0 else np.zeros_like(var)
    return {"mean": mean, "components": comps, "variance": var, "ratio": ratio}


def _stretch(proj: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """[3, n] projections → bytes 1..255 (a flat component maps to 128)."""
    out = np.empty(proj.shape, dtype=np.uint8)
    for i in range(proj.shape[0]):
        span = hi[i] - lo[i]
        if span > 0:
            v = 1.0 + (proj[i] - lo[i]) * (254.0 / span)
            out[i] = np.clip(np.rint(v), 1, 255)
        else:
            out[i] = 128
    return out


def embedding_to_rgb(src: str, dst: str, sample_size: int = 50000, seed: int = 0,
                     percentiles: Tuple[float, float] = (2, 98), progress: ProgressFn = None,
                     is_canceled: CancelFn = None, block_pixels: Optional[int] = None) -> Dict[str, Any]:
    """A false-colour view: the first three principal components of the embedding, fitted on a sample
    of at most ``sample_size`` valid pixels, each stretched between its ``percentiles`` (of the sample
    projections) to bytes 1..255; 3-band uint8 GeoTIFF with 0 as nodata. Returns the recorded config
    plus ``output``."""
    sample_size = _int_arg("sample_size", sample_size, 2)
    seed = _seed_arg(seed)
    try:
        p_lo, p_hi = (float(v) for v in percentiles)
    except (TypeError, ValueError):
        raise ThorConfigError(f"percentiles must be two numbers (low, high), got {percentiles!r}") from None
    if not (0.0 <= p_lo < p_hi <= 100.0):
        raise ThorConfigError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}")
    ds, info = _open_embedding(src)
    dst = _check_dst(dst, src)
    pixels = _block_pixels_arg(block_pixels, info.band_count)
    run = _Run(progress, is_canceled, (1.0, 0.1, 1.0))

    index, sample, n_valid = _sample_pixels(ds, info, sample_size, seed, pixels, run, 0)
    if len(index) < 2:
        raise ThorInputError(f"{src} has only {len(index)} valid pixel; a colour view needs at least 2")
    fit = _pca(sample, 3)
    comps, mean = fit["components"], fit["mean"]
    proj = np.empty((3, len(index)), dtype=np.float64)
    for sl in _row_chunks(len(index), info.band_count):
        proj[:, sl] = comps @ (sample[sl].astype(np.float64) - mean).T
    del sample
    lo = np.array([np.percentile(proj[i], p_lo) for i in range(3)])
    hi = np.array([np.percentile(proj[i], p_hi) for i in range(3)])
    del proj
    run.report(1, 1.0)

    offset = comps @ mean
    config = {
        "operation": "embedding_to_rgb",
        "source": os.path.abspath(os.fspath(src)),
        "parameters": {"sample_size": sample_size, "seed": seed, "percentiles": [p_lo, p_hi]},
        "fit": {
            "method": "pca_covariance_eigh",
            "sample_pixels": int(len(index)),
            "valid_pixels": int(n_valid),
            "explained_variance": _sig_list(fit["variance"]),
            "explained_variance_ratio": _sig_list(fit["ratio"]),
            "components": _sig_list(comps),
            "mean": _sig_list(mean),
            "stretch_low": _sig_list(lo),
            "stretch_high": _sig_list(hi),
            "sign_convention": "largest-|loading| entry of each component positive",
        },
        "format": {"dtype": "uint8", "nodata": RGB_NODATA, "bands": ["pc1", "pc2", "pc3"],
                   "scale": "1..255 between the percentiles"},
    }
    run.check()
    with _writer(dst, info, 3, "uint8", RGB_NODATA, ["pc1", "pc2", "pc3"], config,
                 tuple(GTIFF_OPTIONS) + ("PHOTOMETRIC=RGB",)) as w:
        _apply(ds, info, pixels, run, 2, w,
               lambda x: _stretch(comps @ x.astype(np.float64) - offset[:, None], lo, hi), 3, np.uint8, RGB_NODATA)
    run.done()
    return dict(config, output=w.path)


def _apply(ds, info: RasterInfo, pixels: int, run: _Run, stage: int, writer: GeoTiffWriter,
           fn: Callable[[np.ndarray], np.ndarray], out_bands: int, dtype: Any, nodata: float) -> int:
    """Stream the raster, compute ``fn`` ([C, m] float32 → [out_bands, m]) on the valid pixels in
    chunks, write; returns the valid pixel count. ``fn`` accumulates in float64."""
    total = info.width * info.height
    done = 0
    n_valid = 0
    run.check()
    for blk in iter_blocks(ds, pixels):
        out = np.full((out_bands, blk.height * blk.width), nodata, dtype=dtype)
        pos = np.flatnonzero(blk.valid.ravel())
        if pos.size:
            x = blk.data.reshape(info.band_count, -1)
            dense = pos.size == blk.valid.size
            for sl in _col_chunks(pos.size, info.band_count):
                cols = pos[sl]
                xs = x[:, sl] if dense else x[:, cols]
                out[:, cols] = fn(xs)
            del x, xs
        writer.write(out.reshape(out_bands, blk.height, blk.width), blk.xoff, blk.yoff)
        n_valid += pos.size
        done += blk.width * blk.height
        del blk, out
        run.report(stage, done / total)
        run.check()
    return n_valid


# --------------------------------------------------------------------------------------------
# Reference embedding and similarity
# --------------------------------------------------------------------------------------------


def _crs_label(crs_wkt: str) -> str:
    if not crs_wkt:
        return "no CRS"
    srs = osr().SpatialReference()
    try:
        srs.SetFromUserInput(crs_wkt)
    except RuntimeError:
        return crs_wkt[:80]
    name = srs.GetName() or "unnamed CRS"
    auth, code = srs.GetAuthorityName(None), srs.GetAuthorityCode(None)
    return f"{auth}:{code} ({name})" if auth and code else name


def _feature_pixels(geom, info: RasterInfo, inv_gt: Sequence[float], all_touched: bool) -> np.ndarray:
    """Flat indices (sorted, unique) of the raster pixels a geometry selects."""
    ogr = _ogr()
    flat_type = ogr.GT_Flatten(geom.GetGeometryType())
    if flat_type in (ogr.wkbPoint, ogr.wkbMultiPoint):
        pts = [geom] if flat_type == ogr.wkbPoint else [geom.GetGeometryRef(i) for i in range(geom.GetGeometryCount())]
        idx = []
        for p in pts:
            if p.IsEmpty():
                continue
            x, y = p.GetX(), p.GetY()
            col = math.floor(inv_gt[0] + inv_gt[1] * x + inv_gt[2] * y)
            row = math.floor(inv_gt[3] + inv_gt[4] * x + inv_gt[5] * y)
            if 0 <= col < info.width and 0 <= row < info.height:
                idx.append(row * info.width + col)
        return np.unique(np.array(idx, dtype=np.int64))
    minx, maxx, miny, maxy = geom.GetEnvelope()
    cols, rows = [], []
    for x in (minx, maxx):
        for y in (miny, maxy):
            cols.append(inv_gt[0] + inv_gt[1] * x + inv_gt[2] * y)
            rows.append(inv_gt[3] + inv_gt[4] * x + inv_gt[5] * y)
    x0 = max(0, math.floor(min(cols)) - 1)
    x1 = min(info.width, math.ceil(max(cols)) + 1)
    y0 = max(0, math.floor(min(rows)) - 1)
    y1 = min(info.height, math.ceil(max(rows)) + 1)
    if x1 <= x0 or y1 <= y0:
        return np.zeros(0, dtype=np.int64)
    g = gdal()
    gt = info.geotransform
    mem = g.GetDriverByName("MEM").Create("", x1 - x0, y1 - y0, 1, g.GDT_Byte)
    mem.SetGeoTransform((gt[0] + x0 * gt[1] + y0 * gt[2], gt[1], gt[2],
                         gt[3] + x0 * gt[4] + y0 * gt[5], gt[4], gt[5]))
    vds = ogr.GetDriverByName("Memory").CreateDataSource("reference")
    layer = vds.CreateLayer("reference", geom_type=ogr.wkbUnknown)
    feat = ogr.Feature(layer.GetLayerDefn())
    feat.SetGeometry(geom)
    layer.CreateFeature(feat)
    g.RasterizeLayer(mem, [1], layer, burn_values=[1], options=[f"ALL_TOUCHED={'TRUE' if all_touched else 'FALSE'}"])
    mask = mem.GetRasterBand(1).ReadAsArray()
    del feat, layer
    vds = mem = None  # the layer belongs to its datasource: release it first, then the datasource
    rr, cc = np.nonzero(mask)
    return np.unique((rr + y0).astype(np.int64) * info.width + (cc + x0))


def _ogr():
    from osgeo import ogr as _o

    _o.UseExceptions()
    return _o


def reference_embedding(src: str, geometries_wkt: Sequence[str], all_touched: bool = True,
                        block_pixels: Optional[int] = None,
                        labels: Optional[Sequence[Any]] = None) -> Tuple[np.ndarray, int]:
    """The mean embedding (float64 [C]) of the valid pixels under reference features, and how many
    pixels it averages. Geometries are WKT in the raster's CRS: a point selects the pixel containing it,
    other geometries the pixels GDAL rasterises (touched by the geometry when ``all_touched``, else
    those whose centre it covers). A pixel under several features counts once. Errors name the
    features by ``labels`` (e.g. feature ids) when given, else by their position in the list."""
    ds, info = _open_embedding(src)
    if isinstance(geometries_wkt, str):
        geometries_wkt = [geometries_wkt]
    if not geometries_wkt:
        raise ThorInputError("no reference features were given: select at least one point or polygon")
    pixels = _block_pixels_arg(block_pixels, info.band_count)
    ogr = _ogr()
    inv_gt = gdal().InvGeoTransform(info.geotransform)
    if inv_gt is None:
        raise ThorInputError(f"{src} has a degenerate geotransform {info.geotransform}: it cannot be georeferenced")
    per_feature: List[np.ndarray] = []
    bad_wkt, empty, outside, no_centre = [], [], [], []
    for i, wkt in enumerate(geometries_wkt):
        try:
            geom = ogr.CreateGeometryFromWkt(str(wkt))
        except RuntimeError:
            geom = None
        if geom is None:
            bad_wkt.append(i)
            per_feature.append(np.zeros(0, dtype=np.int64))
            continue
        if geom.IsEmpty():
            empty.append(i)
            per_feature.append(np.zeros(0, dtype=np.int64))
            continue
        idx = _feature_pixels(geom, info, inv_gt, bool(all_touched))
        if idx.size == 0:
            if not all_touched and _feature_pixels(geom, info, inv_gt, True).size:
                no_centre.append(i)
            else:
                outside.append(i)
        per_feature.append(idx)
    if bad_wkt or empty:
        raise ThorInputError(
            f"reference features {_index_list(bad_wkt + empty, labels)} are not valid non-empty WKT geometries")
    if outside or no_centre:
        parts = []
        if outside:
            xmin, ymin, xmax, ymax = info.bounds
            parts.append(f"reference features {_index_list(outside, labels)} lie outside the raster: features must "
                         f"overlap the raster (extent {xmin:g}, {ymin:g} to {xmax:g}, {ymax:g}) and be given "
                         f"in its CRS, {_crs_label(info.crs_wkt)}")
        if no_centre:
            parts.append(f"reference features {_index_list(no_centre, labels)} cover no pixel centre: use "
                         f"all_touched=True or larger features")
        raise ThorInputError("; ".join(parts))

    owner = np.concatenate([np.full(a.size, i, dtype=np.int64) for i, a in enumerate(per_feature)])
    union, inverse = np.unique(np.concatenate(per_feature), return_inverse=True)
    union_valid, total, count = _read_pixels(ds, info, union, pixels)
    feature_ok = np.zeros(len(per_feature), dtype=bool)
    np.logical_or.at(feature_ok, owner, union_valid[inverse])
    invalid = [i for i in range(len(per_feature)) if not feature_ok[i]]
    if invalid:
        raise ThorInputError(
            f"reference features {_index_list(invalid, labels)} cover only nodata pixels: features must overlap "
            f"valid pixels of the raster")
    return total / count, int(count)


def _index_list(indices: Sequence[int], labels: Optional[Sequence[Any]] = None) -> str:
    return ", ".join(str(labels[i] if labels is not None else i) for i in sorted(indices))


def _read_pixels(ds, info: RasterInfo, flat: np.ndarray, pixels: int) -> Tuple[np.ndarray, np.ndarray, int]:
    """Valid flags of the pixels ``flat`` (sorted unique) and the float64 sum and count of their valid
    embeddings; reads each raster block that holds any of them once."""
    valid_out = np.zeros(flat.size, dtype=bool)
    total = np.zeros(info.band_count, dtype=np.float64)
    count = 0

    def add(idx, data, valid, lr, lc):
        nonlocal count
        v = valid[lr, lc]
        valid_out[idx] = v
        if v.any():
            total[:] += data[:, lr[v], lc[v]].sum(axis=1, dtype=np.float64)
            count += int(v.sum())

    read_sparse(ds, info, flat, pixels, add)
    return valid_out, total, count


def _dot_cols(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Column-wise dot products of two [C, m] arrays, accumulated in float64 without float64 copies."""
    return np.einsum("ij,ij->j", a, b, dtype=np.float64)


def similarity_map(src: str, dst: str, reference_vector: Any, progress: ProgressFn = None,
                   is_canceled: CancelFn = None, block_pixels: Optional[int] = None) -> Dict[str, Any]:
    """Cosine similarity of every pixel's embedding to ``reference_vector`` (e.g. from
    :func:`reference_embedding`): float32 -1..1, nodata :data:`FLOAT_NODATA`. Returns the recorded
    config plus ``output``."""
    ds, info = _open_embedding(src)
    dst = _check_dst(dst, src)
    ref = np.asarray(reference_vector, dtype=np.float64).ravel()
    if ref.size != info.band_count:
        raise ThorInputError(f"the reference vector has {ref.size} values but {src} has {info.band_count} bands: "
                             f"take the reference from the same embedding raster (or one of the same model)")
    if not np.all(np.isfinite(ref)) or not np.any(ref):
        raise ThorInputError("the reference vector must be finite and not all zero")
    ref_norm = float(np.linalg.norm(ref))
    ref_unit = ref / ref_norm
    pixels = _block_pixels_arg(block_pixels, info.band_count)
    run = _Run(progress, is_canceled, (1.0,))
    config = {
        "operation": "similarity_map",
        "source": os.path.abspath(os.fspath(src)),
        "parameters": {"reference_vector": _sig_list(ref), "reference_norm": _sig(ref_norm)},
        "format": {"dtype": "float32", "nodata": FLOAT_NODATA, "bands": ["cosine_similarity"],
                   "range": [-1.0, 1.0]},
    }

    def fn(x: np.ndarray) -> np.ndarray:
        dot = np.einsum("i,ij->j", ref_unit, x, dtype=np.float64)
        norm = np.sqrt(_dot_cols(x, x))
        with np.errstate(divide="ignore", invalid="ignore"):
            sim = np.clip(dot / norm, -1.0, 1.0)
        return np.where(norm > 0, sim, FLOAT_NODATA)[None]

    run.check()
    with _writer(dst, info, 1, "float32", FLOAT_NODATA, ["cosine_similarity"], config) as w:
        n_valid = _apply(ds, info, pixels, run, 0, w, fn, 1, np.float32, FLOAT_NODATA)
    run.done()
    return dict(config, output=w.path, valid_pixels=int(n_valid))


# --------------------------------------------------------------------------------------------
# k-means
# --------------------------------------------------------------------------------------------


def _sq_norms(sample: np.ndarray) -> np.ndarray:
    out = np.empty(sample.shape[0], dtype=np.float64)
    for sl in _row_chunks(sample.shape[0], sample.shape[1]):
        x = sample[sl].astype(np.float64)
        out[sl] = np.einsum("ij,ij->i", x, x)
    return out


def _sq_dists(sample: np.ndarray, xn: np.ndarray, points: np.ndarray, sl: slice) -> np.ndarray:
    """Squared distances [m, p] of the sample rows ``sl`` to ``points`` [p, C]; the products in float32
    (good enough to seed k-means, and no float64 copy of the sample per candidate)."""
    pn = np.einsum("ij,ij->i", points, points)
    prod = sample[sl] @ points.astype(np.float32).T
    return np.maximum(xn[sl, None] - 2.0 * prod + pn[None, :], 0.0)


def _nearest(sample: np.ndarray, xn: np.ndarray, centres: np.ndarray, sums: Optional[np.ndarray] = None,
             counts: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Labels and squared distances of the sample's rows to their nearest centre; accumulates
    per-centre sums and counts when given."""
    k = centres.shape[0]
    cn = np.einsum("ij,ij->i", centres, centres)
    labels = np.empty(sample.shape[0], dtype=np.int64)
    d2 = np.empty(sample.shape[0], dtype=np.float64)
    ks = np.arange(k)[:, None]
    for sl in _row_chunks(sample.shape[0], sample.shape[1]):
        x = sample[sl].astype(np.float64)
        d = cn[None, :] - 2.0 * (x @ centres.T)
        lab = np.argmin(d, axis=1)
        labels[sl] = lab
        d2[sl] = np.maximum(d[np.arange(lab.size), lab] + xn[sl], 0.0)
        if sums is not None:
            onehot = (lab[None, :] == ks).astype(np.float64)
            sums += onehot @ x
            counts += onehot.sum(axis=1)
    return labels, d2


def _kmeans_pp(sample: np.ndarray, xn: np.ndarray, k: int, rng: np.random.Generator,
               n_trials: Optional[int] = None) -> np.ndarray:
    """Greedy k-means++: each new centre is the best (lowest total squared distance) of ``n_trials``
    candidates drawn with probability proportional to D^2. Plain k-means++ (one candidate) often puts
    two centres in one cluster of high-dimensional embeddings, where the noise alone gives every pixel
    a large D^2, and Lloyd iterations cannot undo that."""
    s, c = sample.shape
    trials = max(1, int(n_trials if n_trials is not None else _pp_trials(k)))
    centres = np.empty((k, c), dtype=np.float64)
    centres[0] = sample[int(rng.integers(s))]
    d2 = np.empty(s, dtype=np.float64)
    for sl in _row_chunks(s, c):
        d2[sl] = _sq_dists(sample, xn, centres[:1], sl)[:, 0]
    for j in range(1, k):
        cum = np.cumsum(d2)
        total = cum[-1]
        draws = rng.random(trials)
        if total > 0:
            cand = np.minimum(np.searchsorted(cum, draws * total, side="right"), s - 1)
        else:  # every remaining pixel coincides with a centre
            cand = np.minimum((draws * s).astype(np.int64), s - 1)
        points = sample[cand].astype(np.float64)
        best_d2 = np.empty((s, trials), dtype=np.float64)
        for sl in _row_chunks(s, c):
            best_d2[sl] = np.minimum(d2[sl, None], _sq_dists(sample, xn, points, sl))
        best = int(np.argmin(best_d2.sum(axis=0)))
        centres[j] = points[best]
        d2 = best_d2[:, best].copy()
    return centres


def _pp_trials(k: int) -> int:
    """Candidates per greedy k-means++ step: 2 + 2 ln k, rounded down (6 for k = 8): with 2 + ln k (the
    usual choice), 768-d clusters with realistic noise were still merged in one seed out of three."""
    return 2 + 2 * int(math.log(k))


def _kmeans_fit(sample: np.ndarray, k: int, seed: int, max_iter: int, tol: float,
                run: _Run, stage: int) -> Dict[str, Any]:
    s, c = sample.shape
    xn = _sq_norms(sample)
    mean = np.zeros(c, dtype=np.float64)
    for sl in _row_chunks(s, c):
        mean += sample[sl].sum(axis=0, dtype=np.float64)
    mean /= s
    mean_var = max(0.0, float(xn.sum() / s - mean @ mean) / c)
    tol_abs = tol * mean_var
    rng = np.random.default_rng(seed)
    centres = _kmeans_pp(sample, xn, k, rng)
    iterations = 0
    converged = False
    for it in range(max_iter):
        run.check()
        sums = np.zeros((k, c), dtype=np.float64)
        counts = np.zeros(k, dtype=np.float64)
        _, d2 = _nearest(sample, xn, centres, sums, counts)
        new = np.empty_like(centres)
        filled = counts > 0
        new[filled] = sums[filled] / counts[filled, None]
        if not filled.all():
            # An empty cluster restarts at the sample pixels farthest from their centres.
            far = np.argsort(-d2, kind="stable")[: int((~filled).sum())]
            new[~filled] = sample[far]
        shift = float(((new - centres) ** 2).sum())
        centres = new
        iterations = it + 1
        run.report(stage, iterations / max_iter)
        if shift <= tol_abs:
            converged = True
            break
    labels, d2 = _nearest(sample, xn, centres)
    counts = np.bincount(labels, minlength=k)
    order = np.argsort(-counts, kind="stable")  # class 1 = the largest cluster of the sample
    return {"centres": centres[order], "inertia": float(d2.sum()), "iterations": iterations,
            "converged": converged, "sample_counts": counts[order]}


def _class_palette(k: int):
    g = gdal()
    ct = g.ColorTable()
    ct.SetColorEntry(0, (0, 0, 0, 0))
    for i in range(1, k + 1):
        h = ((i - 1) * 0.618033988749895) % 1.0
        sat, val = (0.75, 0.95) if i % 2 else (0.55, 0.75)
        r, gg, b = colorsys.hsv_to_rgb(h, sat, val)
        ct.SetColorEntry(i, (int(r * 255), int(gg * 255), int(b * 255), 255))
    return ct


def kmeans_classes(src: str, dst: str, k: int, seed: int = 0, sample_size: int = 50000, max_iter: int = 100,
                   tol: float = 1e-4, progress: ProgressFn = None, is_canceled: CancelFn = None,
                   block_pixels: Optional[int] = None) -> Dict[str, Any]:
    """Unsupervised classes: k-means (k-means++ start from ``seed``, at most ``max_iter`` Lloyd
    iterations, stopping when the squared centre shift is at most ``tol`` times the sample's mean
    per-band variance) on a sample of at most ``sample_size`` valid pixels, then every pixel gets the
    class of its nearest centre. Classes 1..k ordered by decreasing sample share, 0 = nodata; uint8 up
    to k = 254, uint16 above, with a colour table. Returns the recorded config plus ``output``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ThorConfigError(f"k (number of classes) must be an integer, got {k!r}")
    k = int(k)
    if k < 2:
        raise ThorConfigError(f"k (number of classes) must be at least 2, got {k}")
    if k > MAX_CLASSES:
        raise ThorConfigError(f"k (number of classes) must be at most {MAX_CLASSES}, got {k}")
    seed = _seed_arg(seed)
    sample_size = _int_arg("sample_size", sample_size, 2)
    max_iter = _int_arg("max_iter", max_iter, 1)
    try:
        tol = float(tol)
    except (TypeError, ValueError):
        raise ThorConfigError(f"tol must be a number >= 0, got {tol!r}") from None
    if not (tol >= 0 and math.isfinite(tol)):
        raise ThorConfigError(f"tol must be a number >= 0, got {tol!r}")
    if k > sample_size:
        raise ThorConfigError(f"k={k} classes need at least k sampled pixels, but sample_size is {sample_size}: "
                              f"raise sample_size or lower k")
    ds, info = _open_embedding(src)
    dst = _check_dst(dst, src)
    if k > info.width * info.height:
        raise ThorConfigError(f"k={k} classes exceed the {info.width * info.height} pixels of {src}: lower k")
    pixels = _block_pixels_arg(block_pixels, info.band_count)
    run = _Run(progress, is_canceled, (1.0, 0.3, 1.0))

    index, sample, n_valid = _sample_pixels(ds, info, sample_size, seed, pixels, run, 0)
    if k > len(index):
        raise ThorConfigError(f"k={k} classes exceed the {n_valid} valid pixels of {src}: lower k")
    fit = _kmeans_fit(sample, k, seed, max_iter, tol, run, 1)
    del sample
    centres = fit["centres"]
    cn = np.einsum("ij,ij->i", centres, centres)
    dtype = "uint8" if k <= 254 else "uint16"
    config = {
        "operation": "kmeans_classes",
        "source": os.path.abspath(os.fspath(src)),
        "parameters": {"k": k, "seed": seed, "sample_size": sample_size, "max_iter": max_iter, "tol": tol},
        "fit": {
            "method": "kmeans++ then Lloyd",
            "centres": int(k),
            "inertia": _sig(fit["inertia"]),
            "iterations": int(fit["iterations"]),
            "converged": bool(fit["converged"]),
            "sample_pixels": int(len(index)),
            "valid_pixels": int(n_valid),
            "sample_class_counts": [int(v) for v in fit["sample_counts"]],
        },
        "format": {"dtype": dtype, "nodata": CLASS_NODATA, "bands": ["class"], "classes": [1, k]},
    }

    def fn(x: np.ndarray) -> np.ndarray:
        return (np.argmin(cn[:, None] - 2.0 * (centres @ x.astype(np.float64)), axis=0) + 1)[None]

    run.check()
    with _writer(dst, info, 1, dtype, CLASS_NODATA, ["class"], config) as w:
        # the palette before any pixel: GeoTIFF's photometric tag cannot change once writing has begun
        # (GDAL 3.10 refuses it with a TIFFSetField error; 3.6 let it pass)
        w.ds.GetRasterBand(1).SetRasterColorTable(_class_palette(k))
        _apply(ds, info, pixels, run, 2, w, fn, 1, np.dtype(dtype), CLASS_NODATA)
    run.done()
    return dict(config, output=w.path)


# --------------------------------------------------------------------------------------------
# Change
# --------------------------------------------------------------------------------------------


def _grid_differences(a: RasterInfo, b: RasterInfo) -> List[str]:
    diffs = []
    same_crs = True
    if bool(a.crs_wkt) != bool(b.crs_wkt):
        same_crs = False
    elif a.crs_wkt and b.crs_wkt and a.crs_wkt != b.crs_wkt:
        sa, sb = osr().SpatialReference(), osr().SpatialReference()
        sa.SetFromUserInput(a.crs_wkt)
        sb.SetFromUserInput(b.crs_wkt)
        same_crs = bool(sa.IsSame(sb))
    if not same_crs:
        diffs.append(f"CRS differs: A is {_crs_label(a.crs_wkt)}, B is {_crs_label(b.crs_wkt)}")
    if (a.width, a.height) != (b.width, b.height):
        diffs.append(f"size differs: A is {a.width}x{a.height} pixels, B is {b.width}x{b.height}")
    ga, gb = a.geotransform, b.geotransform
    tol = 1e-6 * max(abs(ga[1]), abs(ga[5]), abs(ga[2]), abs(ga[4]), 1e-12)
    if abs(ga[1] - gb[1]) > tol or abs(ga[5] - gb[5]) > tol:
        diffs.append(f"pixel size differs: A is {ga[1]:g} x {ga[5]:g}, B is {gb[1]:g} x {gb[5]:g}")
    if abs(ga[2] - gb[2]) > tol or abs(ga[4] - gb[4]) > tol:
        diffs.append(f"geotransform rotation differs: A has ({ga[2]:g}, {ga[4]:g}), B has ({gb[2]:g}, {gb[4]:g})")
    if abs(ga[0] - gb[0]) > tol or abs(ga[3] - gb[3]) > tol:
        diffs.append(f"origin/extent differs: A's top-left corner is ({ga[0]:.6f}, {ga[3]:.6f}), "
                     f"B's is ({gb[0]:.6f}, {gb[3]:.6f})")
    if a.band_count != b.band_count:
        diffs.append(f"band count differs: A has {a.band_count}, B has {b.band_count}")
    return diffs


def change_map(src_a: str, src_b: str, dst: str, progress: ProgressFn = None, is_canceled: CancelFn = None,
               block_pixels: Optional[int] = None) -> Dict[str, Any]:
    """Cosine distance (1 - cos, float32 0..2, nodata :data:`FLOAT_NODATA`) between two embedding
    rasters on the same grid (same CRS, geotransform, size and band count); a pixel invalid in either
    input is nodata. Returns the recorded config plus ``output``."""
    ds_a, a = _open_embedding(src_a, "first (A)")
    ds_b, b = _open_embedding(src_b, "second (B)")
    dst = _check_dst(dst, src_a, src_b)
    diffs = _grid_differences(a, b)
    if diffs:
        raise ThorInputError(f"{src_a} (A) and {src_b} (B) are not on the same grid: " + "; ".join(diffs)
                             + ". Compute both embeddings over the same area with the same settings, or "
                               "warp one onto the other's grid")
    pixels = _block_pixels_arg(block_pixels, a.band_count)  # per input: halving it doubles tile decodes
    run = _Run(progress, is_canceled, (1.0,))
    config = {
        "operation": "change_map",
        "source": [os.path.abspath(os.fspath(src_a)), os.path.abspath(os.fspath(src_b))],
        "parameters": {"metric": "cosine_distance"},
        "format": {"dtype": "float32", "nodata": FLOAT_NODATA, "bands": ["cosine_distance"], "range": [0.0, 2.0]},
    }
    bands_a = _bands(ds_a)
    bands_b = _bands(ds_b)
    nd_a, nd_b = _nodata32(a), _nodata32(b)
    windows = plan_windows(a.width, a.height, tuple(bands_a[0].GetBlockSize()), pixels)
    total = a.width * a.height
    done = 0
    n_valid = 0
    run.check()
    with _writer(dst, a, 1, "float32", FLOAT_NODATA, ["cosine_distance"], config) as w:
        for xoff, yoff, ww, hh in windows:
            xa, va = _read_window(ds_a, bands_a, nd_a, xoff, yoff, ww, hh)
            xb, vb = _read_window(ds_b, bands_b, nd_b, xoff, yoff, ww, hh)
            out = np.full(ww * hh, FLOAT_NODATA, dtype=np.float32)
            both = va & vb
            pos = np.flatnonzero(both.ravel())
            dense = pos.size == both.size
            xa, xb = xa.reshape(a.band_count, -1), xb.reshape(a.band_count, -1)
            for sl in _col_chunks(pos.size, a.band_count):
                cols = pos[sl]
                pa, pb = (xa[:, sl], xb[:, sl]) if dense else (xa[:, cols], xb[:, cols])
                dot = _dot_cols(pa, pb)
                den = np.sqrt(_dot_cols(pa, pa) * _dot_cols(pb, pb))
                with np.errstate(divide="ignore", invalid="ignore"):
                    dist = np.clip(1.0 - dot / den, 0.0, 2.0)
                out[cols] = np.where(den > 0, dist, FLOAT_NODATA)
                del pa, pb
            w.write(out.reshape(1, hh, ww), xoff, yoff)
            n_valid += pos.size
            del xa, xb, va, vb, both, out
            done += ww * hh
            run.report(0, done / total)
            run.check()
    run.done()
    return dict(config, output=w.path, valid_pixels=int(n_valid))
