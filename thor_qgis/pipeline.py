"""Streaming runs: tiles of imagery in, a georeferenced token-grid GeoTIFF or pooled vectors out.

The imagery source is any iterator of ``(tile, [10, S, S] array)`` or ``(tile, array, valid_fraction)``
(a local raster, or Earth Engine fetches running ahead in threads). Tiles go through the model in
batches and each tile's ``n x n`` grid is written where the layout puts it (one tile per cell, or the
weighted mean of overlapping tiles): neither the mosaic of imagery nor the output is ever held in memory
whole. The embedding (:func:`embed_tiles`) and the writing (:func:`write_embedded_grid`) are two stages, so
that the tiles can also be embedded elsewhere (:mod:`.distributed`) and written here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from . import gdal_io
from .errors import ThorCanceled
from .progress import TileProgress, cancel_inside_forward
from .tiling import Tile, TileLayout

GRID_NODATA = -9999.0


@dataclass
class GridResult:
    path: str
    width: int
    height: int
    band_count: int
    tiles: int
    tiles_embedded: int
    geotransform: Tuple[float, ...]
    crs_wkt: str
    metadata: Dict[str, Any] = field(default_factory=dict)


def _never() -> bool:
    return False


def _items(source: Iterable[tuple]) -> Iterator[Tuple[Tile, np.ndarray, Optional[float]]]:
    for item in source:
        if len(item) == 2:
            yield item[0], item[1], None
        else:
            yield item[0], item[1], item[2]


def write_grid(layout: TileLayout, source: Iterable[tuple], embedder, group_merge: str, path: str,
               metadata: Optional[Dict[str, Any]] = None, fill_value: float = 0.0,
               progress: Optional[Callable[[float], None]] = None,
               is_canceled: Optional[Callable[[], bool]] = None,
               log: Optional[Callable[[str], None]] = None,
               progress_text: Optional[Callable[[str], None]] = None) -> GridResult:
    """Embed every tile of ``layout`` and write the token grids to the GeoTIFF ``path``.

    Each output cell is written from the tiles that cover it as the layout says (one tile, its centre,
    or the weighted mean of overlapping tiles; see :mod:`.tiling`). A pixel whose bands all equal
    ``fill_value`` has no data. Tiles with no valid pixel are not embedded, and a cell (token) whose
    footprint holds no valid pixel is nodata (``GRID_NODATA``), so the padding past the imagery's edges
    never passes for an embedding. Progress counts tiles embedded and written (``progress_text`` gets
    "tile 37 of 64 · 12 s left"); a cancel is checked between tiles and inside the model's forward.
    On an error or a cancel, no file is left at ``path``.
    """
    grids = embed_tiles(source, embedder, group_merge, fill_value, is_canceled)
    return write_embedded_grid(layout, grids, embedder, group_merge, path, metadata=metadata,
                               progress=progress, is_canceled=is_canceled, log=log, progress_text=progress_text)


def tile_cells(arr: np.ndarray, valid: Optional[float], fill_value: float, n: int) -> Optional[np.ndarray]:
    """The [n, n] cells of a tile's token grid that hold data, or None when the tile has no valid pixel
    (see :func:`valid_pixels`; ``valid``: the source's valid fraction, if it knows it)."""
    pixels = valid_pixels(arr, fill_value)
    if valid is None:
        valid = float(pixels.mean())
    return cells_with_data(pixels, n) if valid > 0 else None


def embed_tiles(source: Iterable[tuple], embedder, group_merge: str, fill_value: float = 0.0,
                is_canceled: Optional[Callable[[], bool]] = None
                ) -> Iterator[Tuple[Tile, Optional[np.ndarray], Optional[np.ndarray]]]:
    """``(tile, [C, n, n] grid, [n, n] cells with data)`` for each tile of ``source``, in its order;
    ``(tile, None, None)`` for a tile with no valid pixel. Tiles with data go through the model in
    batches of its batch size (consecutive tiles with data); a cancel is checked between tiles and
    inside the model's forward."""
    is_canceled = is_canceled or _never
    n = embedder.grid_side()
    batch_size = max(1, int(getattr(embedder, "batch_size", 4)))
    pending: List[Tuple[Tile, Optional[np.ndarray], Optional[np.ndarray]]] = []  # in order, empty ones too
    count = 0  # tiles with data in pending

    def flush() -> List[Tuple[Tile, Optional[np.ndarray], Optional[np.ndarray]]]:
        nonlocal count
        todo = [(i, a) for i, (_, a, _) in enumerate(pending) if a is not None]
        out = [(t, None, None) for t, _, _ in pending]
        if todo:
            if is_canceled():
                raise ThorCanceled("canceled")
            with cancel_inside_forward(embedder, is_canceled):
                grids = embedder.grid(np.stack([a for _, a in todo]), group_merge=group_merge)
            for (i, _), g in zip(todo, grids):
                out[i] = (pending[i][0], g, pending[i][2])
        pending.clear()
        count = 0
        return out

    for tile, arr, valid in _items(source):
        if is_canceled():
            raise ThorCanceled("canceled")
        cells = tile_cells(arr, valid, fill_value, n)
        if cells is None:
            pending.append((tile, None, None))  # nothing to embed
        else:
            pending.append((tile, arr, cells))
            count += 1
        if count >= batch_size or (count == 0 and pending):
            yield from flush()
    yield from flush()


def write_embedded_grid(layout: TileLayout, grids: Iterable[Tuple[Tile, Optional[np.ndarray], Optional[np.ndarray]]],
                        model, group_merge: str, path: str, metadata: Optional[Dict[str, Any]] = None,
                        progress: Optional[Callable[[float], None]] = None,
                        is_canceled: Optional[Callable[[], bool]] = None,
                        log: Optional[Callable[[str], None]] = None,
                        progress_text: Optional[Callable[[str], None]] = None) -> GridResult:
    """Write the token grids of ``grids`` (what :func:`embed_tiles` yields, every tile of ``layout`` in
    layout order, from this process or from workers) to the GeoTIFF ``path``: the one writer of every
    grid run. ``model`` describes the grids (``grid_channels``, ``grid_side``, ``grid_info``,
    ``metadata``): an Embedder, or what workers reported of theirs. On an error or a cancel, no file is
    left at ``path``."""
    is_canceled = is_canceled or _never
    log = log or (lambda _m: None)
    channels = model.grid_channels(group_merge)
    n = model.grid_side()
    if n != layout.grid_side:
        raise ValueError(f"layout grid side {layout.grid_side} != model grid side {n}")
    width, height = layout.output_size()
    record: Dict[str, Any] = dict(metadata or {})
    record.setdefault("engine", {}).update(model.metadata)
    record["grid"] = dict(model.grid_info(group_merge), **layout.record())
    total = layout.n_tiles
    tracker = TileProgress(total, progress, progress_text)
    weights = layout.weights()
    k, e = layout.core, layout.blend_margin
    # the output row below which each layout row of tiles is complete
    row_ends = [min(height, (layout.row0 + r + 1) * k + e - layout.out_row0) for r in range(layout.tiles_y)]
    items = {
        "THOR_MODEL": model.metadata.get("model_key", ""),
        "THOR_WEIGHTS": json.dumps(model.metadata.get("weights", {}), sort_keys=True),
        "THOR_GROUP_MERGE": group_merge,
    }
    embedded = 0
    strip = max(1, min(k, height))
    with gdal_io.GeoTiffWriter(path, width, height, channels, layout.output_geotransform(), _wkt(layout.crs),
                               nodata=GRID_NODATA, band_names=gdal_io.list_band_names(channels),
                               strip_rows=strip) as out:
        rows = _RowAccumulator(out, channels, width, height, strip)
        seen = 0  # tiles done, in layout order

        def release() -> None:
            # rows of tiles all embedded: the output rows no later tile reaches are final
            complete = seen // layout.tiles_x if seen < total else layout.tiles_y
            if complete:
                rows.release(layout.rows_final_after(complete - 1))
            tracker.set_written(layout.tiles_x * sum(1 for end in row_ends if end <= rows.base))

        tracker.start()
        for tile, g, cells in grids:
            if is_canceled():
                raise ThorCanceled("canceled")
            if tile.index != seen:
                raise ValueError(f"tile {tile.index} came in place of tile {seen}")  # a driver bug
            seen += 1
            if g is not None:
                xoff, yoff, _, _ = layout.output_window(tile)
                rows.add(layout.written(g), weights * layout.written(cells), xoff, yoff)
                embedded += 1
            tracker.add_embedded(1)
            release()
        if seen != total:
            raise ValueError(f"the imagery source gave {seen} tile(s) for a layout of {total}")
        rows.finish()
        tracker.set_written(total)
        record["grid"]["tiles_embedded"] = embedded
        record["grid"]["tiles_without_data"] = total - embedded
        out.set_metadata({gdal_io.CONFIG_KEY: record, **items})
        if total - embedded:
            log(f"{total - embedded} of {total} tile(s) have no valid pixel: left as nodata.")
    tracker.finished()
    return GridResult(path=out.path, width=width, height=height, band_count=channels, tiles=total,
                      tiles_embedded=embedded, geotransform=layout.output_geotransform(),
                      crs_wkt=_wkt(layout.crs), metadata=record)


def valid_pixels(arr: np.ndarray, fill_value: float) -> np.ndarray:
    """[H, W] bool of a [C, H, W] array: pixels with data. A pixel is no-data where its bands all equal the
    fill value, or where any band is NaN or infinite (whatever the fill value, NaN included)."""
    finite = np.isfinite(arr).all(axis=0)
    if not np.isfinite(fill_value):
        return finite
    return finite & np.any(arr != fill_value, axis=0)


class _RowAccumulator:
    """Weighted sums of the output rows not yet written; rows are written as whole strips, each once.

    A strip written in pieces could be evicted from GDAL's cache half-done, recompressed and written
    again (the file grows); here each strip is complete when written. Memory holds the rows between the
    last strip written and the lowest row a tile has reached: about two rows of tiles at most."""

    def __init__(self, out, channels: int, width: int, height: int, strip: int):
        self.out, self.width, self.height, self.strip = out, width, height, strip
        self.base = 0  # first output row not written yet
        self.sum = np.zeros((channels, 0, width), np.float32)
        self.weight = np.zeros((0, width), np.float32)

    def _ensure(self, upto: int) -> None:
        have = self.base + self.weight.shape[0]
        if upto > have:
            extra = upto - have
            self.sum = np.concatenate([self.sum, np.zeros((self.sum.shape[0], extra, self.width), np.float32)],
                                      axis=1)
            self.weight = np.concatenate([self.weight, np.zeros((extra, self.width), np.float32)], axis=0)

    def add(self, grid: np.ndarray, weights: np.ndarray, xoff: int, yoff: int) -> None:
        """Add ``grid`` [C, h, w] with ``weights`` [h, w] at output position (xoff, yoff), cut to the raster."""
        _, h, w = grid.shape
        x0, y0 = max(0, xoff), max(0, yoff)
        x1, y1 = min(self.width, xoff + w), min(self.height, yoff + h)
        if x1 <= x0 or y1 <= y0:
            return
        if y0 < self.base:
            raise RuntimeError(f"output row {y0} was already written")  # a layout bug, never the user's
        self._ensure(y1)
        wt = weights[y0 - yoff:y1 - yoff, x0 - xoff:x1 - xoff]
        g = grid[:, y0 - yoff:y1 - yoff, x0 - xoff:x1 - xoff]
        self.sum[:, y0 - self.base:y1 - self.base, x0:x1] += np.where(wt > 0, g, 0.0) * wt
        self.weight[y0 - self.base:y1 - self.base, x0:x1] += wt

    def _write(self, count: int) -> None:
        self._ensure(self.base + count)
        w = self.weight[:count]
        block = np.where(w > 0, self.sum[:, :count] / np.where(w > 0, w, 1.0), GRID_NODATA).astype(np.float32)
        self.out.write(block, 0, self.base)
        self.out.flush()
        self.sum = self.sum[:, count:].copy()
        self.weight = self.weight[count:].copy()
        self.base += count

    def release(self, upto: int) -> None:
        """Rows above ``upto`` are final: write the whole strips among them."""
        while self.base + self.strip <= min(upto, self.height):
            self._write(self.strip)

    def finish(self) -> None:
        while self.base < self.height:
            self._write(min(self.strip, self.height - self.base))


def cells_with_data(pixels: np.ndarray, n: int) -> np.ndarray:
    """[n, n] bool: which cells of an n x n token grid over a [H, W] pixel-validity mask hold data."""
    h, w = pixels.shape
    if h % n == 0 and w % n == 0:
        return pixels.reshape(n, h // n, n, w // n).any(axis=(1, 3))
    rows = (np.arange(h) * n) // h
    cols = (np.arange(w) * n) // w
    cells = np.zeros((n, n), dtype=bool)
    np.logical_or.at(cells, (rows[:, None], cols[None, :]), pixels)
    return cells


def pooled_batches(items: Iterable[Tuple[Any, Optional[np.ndarray]]], embedder, pooling: str,
                   is_canceled: Optional[Callable[[], bool]] = None
                   ) -> Iterator[Tuple[Any, Optional[np.ndarray]]]:
    """For each ``(key, array or None)``: ``(key, pooled vector)``, or ``(key, None)`` for None input.

    Arrays go through the model in batches of the model's batch size; order is kept.
    """
    is_canceled = is_canceled or _never
    batch_size = max(1, int(getattr(embedder, "batch_size", 4)))
    pending: List[Tuple[Any, Optional[np.ndarray]]] = []

    def flush():
        # arrays of one shape go through the model together (squares of different sizes are resized
        # to the image size by the model's input step, one batch per shape)
        vectors: Dict[int, np.ndarray] = {}
        by_shape: Dict[tuple, List[int]] = {}
        for i, (_, a) in enumerate(pending):
            if a is not None:
                by_shape.setdefault(a.shape, []).append(i)
        for idx in by_shape.values():
            pooled = embedder.pooled(np.stack([pending[i][1] for i in idx]), pooling=pooling)
            vectors.update(zip(idx, pooled))
        out = [(k, vectors.get(i)) for i, (k, _) in enumerate(pending)]
        pending.clear()
        return out

    for key, arr in items:
        if is_canceled():
            raise ThorCanceled("canceled")
        pending.append((key, arr))
        if sum(a is not None for _, a in pending) >= batch_size:
            yield from flush()
    if pending:
        yield from flush()


def _wkt(crs: str) -> str:
    return crs if "[" in crs else gdal_io.crs_to_wkt(crs)

