"""Sharper similarity search and automatic k for k-means.

:func:`similarity_search` compares every cell of an embedding raster with reference cells (those under
reference features, :mod:`.labels`) by cosine similarity, in one streamed pass:

* ``reference="mean"``: to the mean of the reference cells (what :func:`.analysis.similarity_map` does);
* ``reference="medoid"``: to the reference cell most similar to all the others (robust to an outlier
  among the references: a mean drifts towards it, the medoid does not);
* ``reference="max"``: to every reference cell separately, keeping the highest similarity (finds places
  like *any* of the references, e.g. several kinds of one class).

Optionally it writes a 0/1 mask of the cells at or above a similarity ``threshold`` (uint8, 255 =
nodata), and returns the ``top_k`` most similar cells (row, column, centre, similarity), the reference
cells themselves excluded.

:func:`choose_k` picks k for k-means by the mean silhouette (cosine-free, Euclidean as k-means) of a
seeded sample, fitting k-means for each k of a range.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .analysis import (FLOAT_NODATA, CancelFn, ProgressFn, _block_pixels_arg, _check_dst, _kmeans_fit,
                       _open_embedding, _Run, _sample_pixels, _writer, iter_blocks)
from .errors import ThorConfigError, ThorInputError
from .labels import cell_centres, cells_under_features

REFERENCES = ("mean", "medoid", "max")
MASK_NODATA = 255
__all__ = ["similarity_search", "choose_k", "REFERENCES"]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    n[n == 0] = 1.0
    return x / n


def reference_vectors(vectors: np.ndarray, reference: str) -> np.ndarray:
    """[r, C] unit vectors to compare with: one (mean, medoid) or every reference cell (max)."""
    u = _unit(vectors)
    if reference == "mean":
        return _unit(vectors.astype(np.float64).mean(axis=0))[None]
    if reference == "medoid":
        total = np.zeros(u.shape[0])
        for s in range(0, u.shape[0], 1024):
            total[s:s + 1024] = (u[s:s + 1024] @ u.T).sum(axis=1)
        return u[int(np.argmax(total))][None]
    if reference == "max":
        return u
    raise ThorConfigError(f"unknown reference {reference!r}: choose one of {', '.join(REFERENCES)}")


def similarity_search(src: str, dst: str, geometries_wkt: Sequence[str], reference: str = "mean",
                      threshold: Optional[float] = None, dst_mask: Optional[str] = None, top_k: int = 0,
                      all_touched: bool = True, feature_names: Optional[Sequence[Any]] = None,
                      progress: ProgressFn = None, is_canceled: CancelFn = None,
                      block_pixels: Optional[int] = None) -> Dict[str, Any]:
    """Cosine similarity of every cell to the references (module doc); float32 -1..1, nodata
    :data:`~.analysis.FLOAT_NODATA`. Returns the recorded config plus ``output``, ``mask`` and ``top``
    (a list of dicts, most similar first)."""
    if reference not in REFERENCES:
        raise ThorConfigError(f"unknown reference {reference!r}: choose one of {', '.join(REFERENCES)}")
    if dst_mask and threshold is None:
        raise ThorConfigError("a mask needs a similarity threshold (between -1 and 1)")
    if threshold is not None:
        threshold = float(threshold)
        if not -1.0 <= threshold <= 1.0:
            raise ThorConfigError(f"the similarity threshold must lie between -1 and 1, got {threshold:g}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise ThorConfigError(f"top_k must be an integer >= 0, got {top_k!r}")
    ds, info = _open_embedding(src)
    _check_dst(dst, src)
    if dst_mask:
        _check_dst(dst_mask, src)
        if os.path.realpath(dst_mask) == os.path.realpath(dst):
            raise ThorConfigError("the mask and the similarity map need different files")
    run = _Run(progress, is_canceled, (0.2, 1.0))
    cells = cells_under_features(src, geometries_wkt, all_touched, labels=feature_names, block_pixels=block_pixels,
                                 progress=lambda f: run.report(0, f), is_canceled=is_canceled,
                                 what="reference features")
    refs = reference_vectors(cells.vectors, reference).astype(np.float32)
    ref_flat = cells.flat
    pixels = _block_pixels_arg(block_pixels, info.band_count)
    chunk = max(64, min(16 * 1024 * 1024 // (8 * info.band_count), 4_000_000 // max(1, refs.shape[0])))
    config = {
        "operation": "similarity_search",
        "source": os.path.abspath(os.fspath(src)),
        "parameters": {"reference": reference, "threshold": threshold, "top_k": int(top_k),
                       "all_touched": bool(all_touched)},
        "references": {"features": len(geometries_wkt), "cells": int(cells.flat.size),
                       "vectors_compared": int(refs.shape[0])},
        "format": {"dtype": "float32", "nodata": FLOAT_NODATA, "bands": ["cosine_similarity"], "range": [-1.0, 1.0]},
    }
    mask_config = dict(config, format={"dtype": "uint8", "nodata": MASK_NODATA, "bands": ["similar"],
                                       "values": {"1": f"similarity >= {threshold}", "0": "below"}})
    best_sim = np.zeros(0, dtype=np.float64)
    best_idx = np.zeros(0, dtype=np.int64)
    total = info.width * info.height
    done = 0
    import contextlib

    with contextlib.ExitStack() as stack:
        w = stack.enter_context(_writer(dst, info, 1, "float32", FLOAT_NODATA, ["cosine_similarity"], config))
        wm = stack.enter_context(_writer(dst_mask, info, 1, "uint8", MASK_NODATA, ["similar"], mask_config)) \
            if dst_mask else None
        run.check()
        for blk in iter_blocks(ds, pixels):
            m = blk.width * blk.height
            out = np.full(m, FLOAT_NODATA, dtype=np.float32)
            pos = np.flatnonzero(blk.valid.ravel())
            if pos.size:
                x = blk.data.reshape(info.band_count, -1)
                for s in range(0, pos.size, chunk):
                    cols = pos[s:s + chunk]
                    xs = x[:, cols].T
                    norm = np.sqrt(np.einsum("ij,ij->i", xs, xs, dtype=np.float64))
                    sim = (xs @ refs.T).max(axis=1).astype(np.float64)
                    with np.errstate(divide="ignore", invalid="ignore"):
                        sim = np.clip(sim / norm, -1.0, 1.0)
                    sim = np.where(norm > 0, sim, FLOAT_NODATA)
                    out[cols] = sim
                    if top_k:
                        flat = (blk.yoff + cols // blk.width) * info.width + blk.xoff + cols % blk.width
                        ok = (norm > 0) & ~np.isin(flat, ref_flat)
                        best_sim = np.concatenate([best_sim, sim[ok]])
                        best_idx = np.concatenate([best_idx, flat[ok]])
                        if best_sim.size > 4 * top_k:
                            keep = np.argpartition(-best_sim, top_k - 1)[:top_k]
                            best_sim, best_idx = best_sim[keep], best_idx[keep]
                    run.check()
                del x
            w.write(out.reshape(1, blk.height, blk.width), blk.xoff, blk.yoff)
            if wm is not None:
                mask = np.where(out == FLOAT_NODATA, MASK_NODATA, (out >= threshold).astype(np.uint8))
                wm.write(mask.reshape(1, blk.height, blk.width).astype(np.uint8), blk.xoff, blk.yoff)
            done += m
            del blk, out
            run.report(1, done / total)
            run.check()
    top: List[Dict[str, Any]] = []
    if top_k and best_sim.size:
        order = np.lexsort((best_idx, -best_sim))[:top_k]  # most similar first; ties by position
        flat = best_idx[order]
        xy = cell_centres(info, flat)
        for rank, (f, s, (x, y)) in enumerate(zip(flat.tolist(), best_sim[order].tolist(), xy.tolist()), start=1):
            top.append({"rank": rank, "row": f // info.width, "col": f % info.width, "x": x, "y": y,
                        "similarity": float(s)})
    run.done()
    return dict(config, output=os.fspath(dst), mask=dst_mask or None, top=top)


def _silhouette(x: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Mean silhouette (Euclidean) of the rows of ``x`` [n, C] (float64, n a few thousand at most)."""
    sq = np.einsum("ij,ij->i", x, x)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0))
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    sums = np.zeros((x.shape[0], k))
    for c in range(k):
        sums[:, c] = d[:, labels == c].sum(axis=1)
    own = labels
    a_cnt = counts[own] - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(a_cnt > 0, sums[np.arange(x.shape[0]), own] / a_cnt, 0.0)
        mean_other = sums / counts[None, :]
    mean_other[np.arange(x.shape[0]), own] = np.inf
    mean_other[:, counts == 0] = np.inf
    b = mean_other.min(axis=1)
    s = np.where(a_cnt > 0, (b - a) / np.maximum(np.maximum(a, b), 1e-300), 0.0)
    return float(s.mean())


def choose_k(src: str, k_min: int = 2, k_max: int = 10, seed: int = 0, sample_size: int = 20000,
             silhouette_size: int = 2000, max_iter: int = 100, progress: ProgressFn = None,
             is_canceled: CancelFn = None, block_pixels: Optional[int] = None) -> Dict[str, Any]:
    """The k in ``k_min..k_max`` whose k-means (fitted on a sample of at most ``sample_size`` valid
    cells) has the highest mean silhouette on a seeded subsample of ``silhouette_size`` of them.
    Returns {"k": best, "scores": {k: silhouette}, ...}."""
    for name, v, lo in (("k_min", k_min, 2), ("k_max", k_max, 2), ("sample_size", sample_size, 10),
                        ("silhouette_size", silhouette_size, 10)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ThorConfigError(f"{name} must be an integer >= {lo}, got {v!r}")
    if k_max < k_min:
        raise ThorConfigError(f"the range of k is empty: k_min={k_min} > k_max={k_max}")
    if k_max - k_min > 30:
        raise ThorConfigError("try at most 31 values of k at once (k_max - k_min <= 30)")
    ds, info = _open_embedding(src)
    pixels = _block_pixels_arg(block_pixels, info.band_count)
    ks = list(range(int(k_min), int(k_max) + 1))
    run = _Run(progress, is_canceled, [1.0] + [0.3] * len(ks))
    _, sample, n_valid = _sample_pixels(ds, info, int(sample_size), int(seed), pixels, run, 0)
    if sample.shape[0] <= k_max:
        raise ThorInputError(f"{src} has only {sample.shape[0]} valid cells: too few for k up to {k_max}")
    rng = np.random.default_rng(seed)
    sub = rng.choice(sample.shape[0], min(int(silhouette_size), sample.shape[0]), replace=False)
    xs = sample[sub].astype(np.float64)
    scores: Dict[int, float] = {}
    for i, k in enumerate(ks):
        fit = _kmeans_fit(sample, k, int(seed), int(max_iter), 1e-4, run, i + 1)
        c = fit["centres"]
        lab = np.argmin((c * c).sum(axis=1)[None, :] - 2.0 * xs @ c.T, axis=1)
        scores[k] = _silhouette(xs, lab, k)
        run.report(i + 1, 1.0)
    best = max(ks, key=lambda k: (scores[k], -k))
    run.done()
    return {"k": int(best), "scores": {int(k): round(v, 6) for k, v in scores.items()},
            "sample_pixels": int(sample.shape[0]), "silhouette_pixels": int(xs.shape[0]), "valid_pixels": int(n_valid)}


def record_choice(path: str, choice: Dict[str, Any]) -> None:
    """Add the automatic-k choice (:func:`choose_k`) to the THOR_CONFIG record of a k-means output."""
    import json

    from .gdal_io import CONFIG_KEY, gdal

    ds = gdal().Open(os.fspath(path), gdal().GA_Update)
    record = json.loads(ds.GetMetadataItem(CONFIG_KEY) or "{}")
    record["automatic_k"] = {"method": "highest mean silhouette (Euclidean) on a sample",
                             **{k: v for k, v in choice.items() if k != "scores"},
                             "scores": {str(k): v for k, v in choice["scores"].items()}}
    ds.SetMetadataItem(CONFIG_KEY, json.dumps(record, sort_keys=True))
    ds = None
