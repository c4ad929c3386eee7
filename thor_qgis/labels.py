"""Embedding cells under labelled features: the training data of classification, regression and
sample export.

A feature selects raster cells as in :func:`.analysis.reference_embedding`: a point the cell containing
it, a line or polygon the cells GDAL rasterises (every cell it touches with ``all_touched``, else the
cells whose centre it covers). Cells are read block by block (each raster block holding a selected cell
is decoded once), so memory holds the selected vectors and one block, whatever the raster's size.

Features that lie wholly outside the raster, or cover only nodata cells, are left out and reported
(``outside``, ``nodata``); if no feature is left, a :class:`~.errors.ThorInputError` says why.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from .analysis import (_Run, _block_pixels_arg, _crs_label, _feature_pixels, _index_list, _ogr, _open_embedding,
                       CancelFn, ProgressFn)
from .errors import ThorInputError
from .gdal_io import RasterInfo, gdal
from .window_read import read_sparse

__all__ = ["FeatureCells", "cells_under_features", "raster_fingerprint", "cell_centres"]


class FeatureCells(NamedTuple):
    """The valid cells under a list of features.

    ``vectors`` [n, C] float32 holds each distinct cell once; ``pairs_cell`` / ``pairs_feature`` list
    which feature covers which cell (a cell under two features appears in two pairs)."""
    info: RasterInfo
    flat: np.ndarray  # [n] int64 flat pixel index (row * width + col), sorted
    vectors: np.ndarray  # [n, C] float32
    pairs_cell: np.ndarray  # [p] index into flat/vectors
    pairs_feature: np.ndarray  # [p] index into the feature list
    outside: List[int]  # features wholly outside the raster (or covering no cell centre)
    nodata: List[int]  # features whose cells are all nodata
    invalid: List[int]  # features without a usable geometry


def cell_centres(info: RasterInfo, flat: np.ndarray) -> np.ndarray:
    """[n, 2] map coordinates (x, y) of the centres of cells ``flat``."""
    gt = info.geotransform
    rows, cols = flat // info.width, flat % info.width
    x = gt[0] + (cols + 0.5) * gt[1] + (rows + 0.5) * gt[2]
    y = gt[3] + (cols + 0.5) * gt[4] + (rows + 0.5) * gt[5]
    return np.stack([x, y], axis=1)


def raster_fingerprint(src: str) -> Dict[str, Any]:
    """What a fitted model must match in a raster it is applied to: band count and names, and the
    embedding model, weights and group merge that THOR grids record (absent for other rasters)."""
    ds, info = _open_embedding(src)
    names = [ds.GetRasterBand(i + 1).GetDescription() for i in range(info.band_count)]
    md = ds.GetMetadata() or {}
    return {
        "band_count": int(info.band_count),
        "band_names": names if any(names) else [],
        "embedding_model": md.get("THOR_MODEL", ""),
        "weights": md.get("THOR_WEIGHTS", ""),
        "group_merge": md.get("THOR_GROUP_MERGE", ""),
        "pixel_size": [float(info.geotransform[1]), float(info.geotransform[5])],
        "crs": _crs_label(info.crs_wkt),
        "source": os.path.abspath(os.fspath(src)),
    }


def cells_under_features(src: str, geometries_wkt: Sequence[str], all_touched: bool = True,
                         labels: Optional[Sequence[Any]] = None, block_pixels: Optional[int] = None,
                         progress: ProgressFn = None, is_canceled: CancelFn = None,
                         what: str = "labelled features", max_cells: Optional[int] = None,
                         seed: int = 0) -> FeatureCells:
    """The valid embedding cells under ``geometries_wkt`` (WKT in the raster's CRS). Errors name the
    features by ``labels`` when given. Raises when no feature is given or none covers a valid cell.

    ``max_cells`` bounds the cells read (and so the memory): when the features cover more, each
    feature keeps at most q of its cells (a seeded random choice), q the largest count that keeps the
    total within the bound, so small features stay whole and only large polygons are thinned."""
    ds, info = _open_embedding(src)
    if isinstance(geometries_wkt, str):
        geometries_wkt = [geometries_wkt]
    if len(geometries_wkt) == 0:
        raise ThorInputError(f"no {what} were given: the layer (or selection) has no feature with a geometry")
    pixels = _block_pixels_arg(block_pixels, info.band_count)
    ogr = _ogr()
    inv_gt = gdal().InvGeoTransform(info.geotransform)
    if inv_gt is None:
        raise ThorInputError(f"{src} has a degenerate geotransform {info.geotransform}: it cannot be georeferenced")
    run = _Run(progress, is_canceled, (0.2, 1.0))
    per_feature: List[np.ndarray] = []
    invalid, outside = [], []
    n = len(geometries_wkt)
    for i, wkt in enumerate(geometries_wkt):
        try:
            geom = ogr.CreateGeometryFromWkt(str(wkt))
        except RuntimeError:
            geom = None
        if geom is None or geom.IsEmpty():
            invalid.append(i)
            per_feature.append(np.zeros(0, dtype=np.int64))
            continue
        idx = _feature_pixels(geom, info, inv_gt, bool(all_touched))
        if idx.size == 0:
            outside.append(i)
        per_feature.append(idx)
        if i % 64 == 63:
            run.report(0, (i + 1) / n)
            run.check()
    if max_cells is not None:
        per_feature = _thin(per_feature, int(max_cells), seed)
    if len(invalid) == n:
        raise ThorInputError(f"none of the {what} has a valid, non-empty geometry")
    if len(invalid) + len(outside) == n:
        xmin, ymin, xmax, ymax = info.bounds
        raise ThorInputError(
            f"all {what} lie outside the embedding raster (or cover no cell centre): features must overlap the "
            f"raster (extent {xmin:g}, {ymin:g} to {xmax:g}, {ymax:g} in {_crs_label(info.crs_wkt)})"
            + ("" if all_touched else "; polygons smaller than a cell need 'every cell they touch'"))
    owner = np.concatenate([np.full(a.size, i, dtype=np.int64) for i, a in enumerate(per_feature)])
    union, inverse = np.unique(np.concatenate(per_feature), return_inverse=True)
    vectors, valid = read_cells(ds, info, union, pixels, run, 1)
    keep_pair = valid[inverse]
    has_valid = np.zeros(n, dtype=bool)
    has_valid[owner[keep_pair]] = True
    nodata = [i for i in range(n) if per_feature[i].size and not has_valid[i]]
    if not keep_pair.any():
        raise ThorInputError(
            f"the {what} cover only nodata cells of the embedding raster (features {_index_list(nodata, labels)}): "
            f"label places where the raster has embeddings")
    new_index = np.cumsum(valid) - 1
    run.done()
    return FeatureCells(info=info, flat=union[valid], vectors=vectors[valid],
                        pairs_cell=new_index[inverse[keep_pair]], pairs_feature=owner[keep_pair],
                        outside=outside, nodata=nodata, invalid=invalid)


def per_feature_quota(sizes: Sequence[int], max_cells: int) -> int:
    """The largest q (at least 1) with sum(min(size, q)) <= ``max_cells``."""
    s = np.sort(np.asarray(sizes, dtype=np.int64))
    if s.size == 0 or s.sum() <= max_cells:
        return int(s.max(initial=0))
    cum = np.concatenate([[0], np.cumsum(s)])
    for i in range(s.size):
        q = (max_cells - cum[i]) // (s.size - i)
        if q < s[i]:
            return max(1, int(q))
    return int(s[-1])


def _thin(per_feature: List[np.ndarray], max_cells: int, seed: int) -> List[np.ndarray]:
    q = per_feature_quota([a.size for a in per_feature], max_cells)
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(a, q, replace=False)) if a.size > q else a for a in per_feature]


def read_cells(ds, info: RasterInfo, flat: np.ndarray, pixels: int, run: Optional[_Run] = None,
               stage: int = 0):
    """Embedding vectors [n, C] float32 and valid flags [n] of the cells ``flat`` (sorted, unique);
    reads each window of the raster that holds any of them once, in bounded pieces."""
    out = np.zeros((flat.size, info.band_count), dtype=np.float32)
    valid_out = np.zeros(flat.size, dtype=bool)

    def put(idx, data, valid, lr, lc):
        valid_out[idx] = valid[lr, lc]
        out[idx] = data[:, lr, lc].T

    def block_done(done, total):
        run.report(stage, done / total)
        run.check()

    read_sparse(ds, info, flat, pixels, put, block_done if run is not None else None)
    # a valid cell whose vector is all zero has no direction for cosine measures: treat it as nodata
    valid_out &= np.any(out != 0, axis=1)
    return out, valid_out


def check_finite_number(value: Any) -> Optional[float]:
    """``value`` as a finite float, or None when it is not a number (text, NULL, NaN)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    return None
