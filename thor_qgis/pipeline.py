"""Streaming runs: tiles of imagery in, a georeferenced token-grid GeoTIFF or pooled vectors out.

The imagery source is any iterator of ``(tile, [10, S, S] array)`` or ``(tile, array, valid_fraction)``
(a local raster, or Earth Engine fetches running ahead in threads). Tiles go through the model in
batches and each tile's ``n x n`` grid is written into its window of the output: neither the mosaic of
imagery nor the output is ever held in memory whole.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from . import gdal_io
from .errors import ThorCanceled
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
               log: Optional[Callable[[str], None]] = None) -> GridResult:
    """Embed every tile of ``layout`` and write the token grids to the GeoTIFF ``path``.

    A pixel whose bands all equal ``fill_value`` has no data. Tiles with no valid pixel are not embedded,
    and every output cell (token) whose footprint holds no valid pixel is nodata (``GRID_NODATA``), so
    the padding past the imagery's edges never passes for an embedding.
    On an error or a cancel, no file is left at ``path``.
    """
    is_canceled = is_canceled or _never
    progress = progress or (lambda _f: None)
    log = log or (lambda _m: None)
    channels = embedder.grid_channels(group_merge)
    n = embedder.grid_side()
    if n != layout.grid_side:
        raise ValueError(f"layout grid side {layout.grid_side} != model grid side {n}")
    width, height = layout.output_size()
    record: Dict[str, Any] = dict(metadata or {})
    record.setdefault("engine", {}).update(embedder.metadata)
    record["grid"] = dict(embedder.grid_info(group_merge), tiles_x=layout.tiles_x, tiles_y=layout.tiles_y,
                          tile_size_m=layout.tile_size_m, pixel_size_m=layout.output_pixel_size(),
                          context_margin_tokens=layout.margin, tile_step_m=layout.step_m,
                          area=list(layout.area), origin=[layout.origin_x, layout.origin_y])
    batch_size = max(1, int(getattr(embedder, "batch_size", 4)))
    embedded = 0
    done = 0
    total = layout.n_tiles
    items = {
        "THOR_MODEL": embedder.metadata.get("model_key", ""),
        "THOR_WEIGHTS": json.dumps(embedder.metadata.get("weights", {}), sort_keys=True),
        "THOR_GROUP_MERGE": group_merge,
    }
    with gdal_io.GeoTiffWriter(path, width, height, channels, layout.output_geotransform(), _wkt(layout.crs),
                               nodata=GRID_NODATA, band_names=gdal_io.list_band_names(channels),
                               strip_rows=layout.core) as out:
        pending: List[Tuple[Tile, np.ndarray, np.ndarray]] = []
        # One row of tiles is assembled in memory and written as whole strips, each exactly once: a strip
        # written in pieces could be evicted from GDAL's cache half-done, recompressed and written again
        # (the file grows). Memory holds one row of the output, however large the area.
        row_buf = np.full((channels, layout.core, width), GRID_NODATA, dtype=np.float32)
        row = None

        def flush() -> None:
            nonlocal embedded
            if not pending:
                return
            if is_canceled():
                raise ThorCanceled("canceled")
            grids = embedder.grid(np.stack([a for _, a, _ in pending]), group_merge=group_merge)
            for (tile, _, cells), g in zip(pending, grids):
                g[:, ~cells] = GRID_NODATA
                xoff, _, w, _ = layout.output_window(tile)
                row_buf[:, :, xoff:xoff + w] = layout.written(g)
            embedded += len(pending)
            pending.clear()

        def write_row() -> None:
            flush()
            if row is not None:
                out.write(row_buf, 0, row * layout.core)
                out.flush()
                row_buf.fill(GRID_NODATA)

        for tile, arr, valid in _items(source):
            if is_canceled():
                raise ThorCanceled("canceled")
            if tile.row != row:
                write_row()
                row = tile.row
            pixels = valid_pixels(arr, fill_value)
            if valid is None:
                valid = float(pixels.mean())
            if valid > 0:
                pending.append((tile, arr, cells_with_data(pixels, n)))
            done += 1
            if len(pending) >= batch_size:
                flush()
            progress(done / total)
        write_row()
        record["grid"]["tiles_embedded"] = embedded
        record["grid"]["tiles_without_data"] = total - embedded
        out.set_metadata({gdal_io.CONFIG_KEY: record, **items})
        if total - embedded:
            log(f"{total - embedded} of {total} tile(s) have no valid pixel: left as nodata.")
    progress(1.0)
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

