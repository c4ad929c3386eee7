"""Training samples for notebooks: the embedding vectors under features, one row per cell or one mean
per feature, with the features' attributes; written as CSV here (and as any vector format by the
Processing algorithm, GeoPackage by default).

Columns: the feature's attributes, then ``thor_fid`` (the feature's id), ``thor_row`` / ``thor_col``
(the cell; -1 for a feature mean), ``thor_x`` / ``thor_y`` (the cell centre, or the mean of the cell
centres, in the raster's CRS), ``thor_cells`` (cells averaged: 1 per cell), then one column per band,
named after the band (``thor_000`` ...) or ``band_001`` ... when the raster names none.
"""
from __future__ import annotations

import csv
import os
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from .analysis import CancelFn, ProgressFn
from .errors import ThorConfigError
from .labels import cell_centres, cells_under_features, raster_fingerprint

MODES = ("cells", "feature_mean")
__all__ = ["Samples", "extract_samples", "write_csv", "vector_column_names", "MODES"]


class Samples(NamedTuple):
    feature: np.ndarray  # [n] index into the feature list
    row: np.ndarray  # [n] int (-1 for means)
    col: np.ndarray  # [n]
    xy: np.ndarray  # [n, 2]
    cells: np.ndarray  # [n] cells averaged
    vectors: np.ndarray  # [n, C] float32
    columns: List[str]  # band column names
    report: Dict[str, Any]


def vector_column_names(band_names: Sequence[str], band_count: int) -> List[str]:
    names = [str(n).strip() for n in band_names]
    if len(names) == band_count and all(names) and len(set(names)) == band_count:
        return names
    return [f"band_{i + 1:03d}" for i in range(band_count)]


def extract_samples(src: str, geometries_wkt: Sequence[str], mode: str = "cells", all_touched: bool = True,
                    feature_names: Optional[Sequence[Any]] = None, progress: ProgressFn = None,
                    is_canceled: CancelFn = None, block_pixels: Optional[int] = None) -> Samples:
    """The samples under ``geometries_wkt`` (WKT in the raster's CRS); ``mode`` "cells" (one row per
    valid cell under each feature) or "feature_mean" (one row per feature with at least one valid cell)."""
    if mode not in MODES:
        raise ThorConfigError(f"unknown sample mode {mode!r}: choose one of {', '.join(MODES)}")
    fp = raster_fingerprint(src)
    cells = cells_under_features(src, geometries_wkt, all_touched, labels=feature_names, block_pixels=block_pixels,
                                 progress=progress, is_canceled=is_canceled, what="features")
    info = cells.info
    columns = vector_column_names(fp["band_names"], info.band_count)
    report = {"features_given": len(geometries_wkt), "features_outside_raster": len(cells.outside),
              "features_on_nodata": len(cells.nodata), "features_invalid_geometry": len(cells.invalid)}
    order = np.lexsort((cells.pairs_cell, cells.pairs_feature))  # by feature, then cell
    pc, pf = cells.pairs_cell[order], cells.pairs_feature[order]
    if mode == "cells":
        flat = cells.flat[pc]
        report["rows"] = int(pc.size)
        return Samples(feature=pf, row=flat // info.width, col=flat % info.width, xy=cell_centres(info, flat),
                       cells=np.ones(pc.size, dtype=np.int64), vectors=cells.vectors[pc], columns=columns,
                       report=report)
    feats, start, count = np.unique(pf, return_index=True, return_counts=True)
    sums = np.add.reduceat(cells.vectors[pc].astype(np.float64), start, axis=0)
    centres = np.add.reduceat(cell_centres(info, cells.flat[pc]), start, axis=0)
    report["rows"] = int(feats.size)
    return Samples(feature=feats, row=np.full(feats.size, -1), col=np.full(feats.size, -1),
                   xy=centres / count[:, None], cells=count, vectors=(sums / count[:, None]).astype(np.float32),
                   columns=columns, report=report)


def write_csv(path: str, samples: Samples, attribute_names: Sequence[str], attributes: Sequence[Sequence[Any]],
              feature_ids: Sequence[Any]) -> str:
    """Write ``samples`` as CSV (comma separated, header row, '.' decimals); ``attributes[i]`` are the
    attribute values of feature i."""
    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() != ".csv":
        raise ThorConfigError(f"the table is written as CSV: give a file name ending in .csv, not "
                              f"{os.path.basename(path)}")
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = path + ".partial"
    header = list(attribute_names) + ["thor_fid", "thor_row", "thor_col", "thor_x", "thor_y", "thor_cells"] + \
        list(samples.columns)
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for i in range(samples.feature.size):
                f = int(samples.feature[i])
                w.writerow([_cell(v) for v in attributes[f]] + [
                    feature_ids[f], int(samples.row[i]), int(samples.col[i]), repr(float(samples.xy[i, 0])),
                    repr(float(samples.xy[i, 1])), int(samples.cells[i])] + [repr(float(v)) for v in samples.vectors[i]])
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return v
