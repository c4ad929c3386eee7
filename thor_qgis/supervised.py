"""What classification and regression share: training cells from labelled features, grouped k-fold
validation, streamed prediction onto the embedding grid, the accuracy report and the model's
"fitted on" record (checked before a saved model is applied to another raster).

Training samples are cells, not features: every valid embedding cell under a feature is one sample
with the feature's label. A cell under features with different labels is left out (counted as a
conflict); a cell under several features with one label counts once. k-fold validation keeps all the
cells of one feature in one fold (cells of a polygon are near copies of each other: splitting them
between training and test folds would overstate accuracy), and for classes deals each class's
features out over the folds in turn (stratified).
"""
from __future__ import annotations

import html
import math
import os
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .analysis import (FLOAT_NODATA, CancelFn, ProgressFn, _check_dst, _Run, _block_pixels_arg, _index_list,
                       _open_embedding, _writer, iter_blocks)
from .errors import ThorConfigError, ThorInputError
from .labels import cells_under_features, raster_fingerprint
from .learners import fold_assignment

LogFn = Optional[Callable[[str], None]]
PREDICT_CELLS = 4_000_000  # pixels x training samples per prediction chunk (kNN similarity matrix)


class Training(NamedTuple):
    x: np.ndarray  # [n, C] float32
    target: List[Any]  # per sample: the feature's label value
    group: np.ndarray  # [n] feature index of each sample (for grouped folds)
    flat: np.ndarray  # [n] cell index
    report: Dict[str, Any]  # counts of what was left out and why


def training_cells(src: str, geometries_wkt: Sequence[str], values: Sequence[Any], labels: Optional[Sequence[Any]],
                   all_touched: bool, block_pixels: Optional[int], run_progress: ProgressFn, is_canceled: CancelFn,
                   log: LogFn, max_cells: Optional[int] = None, seed: int = 0) -> Training:
    """One sample per valid cell under the features, labelled with the feature's value (already
    checked by the caller: None marks a feature without a label, which is left out)."""
    if len(values) == 0:
        raise ThorInputError("no labelled features were given: the layer (or selection) has no feature with a "
                             "geometry")
    keep = [i for i, v in enumerate(values) if v is not None]
    if not keep:
        raise ThorInputError("no labels: every feature's label field is empty (NULL)")
    wkts = [geometries_wkt[i] for i in keep]
    names = [labels[i] if labels is not None else i for i in keep]
    cells = cells_under_features(src, wkts, all_touched, labels=names, block_pixels=block_pixels,
                                 progress=run_progress, is_canceled=is_canceled, max_cells=max_cells, seed=seed)
    kept_values = [values[i] for i in keep]
    pair_value = [kept_values[f] for f in cells.pairs_feature]
    # per cell: its label if every feature over it agrees, else a conflict
    first_feature = np.full(cells.flat.size, -1, dtype=np.int64)
    cell_value: List[Any] = [None] * cells.flat.size
    conflict = np.zeros(cells.flat.size, dtype=bool)
    for c, f, v in zip(cells.pairs_cell.tolist(), cells.pairs_feature.tolist(), pair_value):
        if first_feature[c] < 0:
            first_feature[c] = f
            cell_value[c] = v
        elif cell_value[c] != v:
            conflict[c] = True
    ok = np.flatnonzero(~conflict)
    report = {
        "features_given": len(values),
        "features_without_label": len(values) - len(keep),
        "features_outside_raster": len(cells.outside),
        "features_on_nodata": len(cells.nodata),
        "features_invalid_geometry": len(cells.invalid),
        "cells_with_conflicting_labels": int(conflict.sum()),
        "training_cells": int(ok.size),
    }
    if log is not None:
        if report["features_without_label"]:
            log(f"{report['features_without_label']} feature(s) have no label value (NULL) and were left out.")
        if cells.outside:
            log(f"{len(cells.outside)} feature(s) lie outside the embedding raster and were left out: "
                f"{_index_list(cells.outside[:20], names)}{' …' if len(cells.outside) > 20 else ''}.")
        if cells.nodata:
            log(f"{len(cells.nodata)} feature(s) cover only nodata cells and were left out: "
                f"{_index_list(cells.nodata[:20], names)}{' …' if len(cells.nodata) > 20 else ''}.")
        if conflict.any():
            log(f"{int(conflict.sum())} cell(s) lie under features with different labels and were left out.")
    if ok.size == 0:
        raise ThorInputError("no training cell is left: every labelled cell lies under features with different labels")
    report["features_used"] = int(np.unique(first_feature[ok]).size)
    return Training(x=cells.vectors[ok], target=[cell_value[i] for i in ok.tolist()], group=first_feature[ok],
                    flat=cells.flat[ok], report=report)


def limit_samples(train: Training, strata: Optional[np.ndarray], cap: int, seed: int, log: LogFn) -> np.ndarray:
    """Indices of at most ``cap`` training samples: all when there are fewer, else a seeded random
    subset that keeps each stratum's (class's) share and at least one sample of each."""
    n = train.x.shape[0]
    if n <= cap:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if strata is None:
        keep = np.sort(rng.choice(n, cap, replace=False))
    else:
        classes, sizes = np.unique(strata, return_counts=True)
        share = cap * sizes / n
        take = np.maximum(1, np.floor(share).astype(np.int64))
        for i in np.argsort(-(share - np.floor(share)), kind="stable"):  # largest remainders first
            if take.sum() >= cap:
                break
            take[i] += 1
        take = np.minimum(take, sizes)
        parts = [rng.choice(np.flatnonzero(strata == c), int(t), replace=False) for c, t in zip(classes, take)]
        keep = np.sort(np.concatenate(parts))
    if log is not None:
        log(f"{n} labelled cells: fitting on a random {keep.size} of them (the sample limit; the seed fixes "
            f"which).")
    return keep


def cross_validate(fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray,
                   group: np.ndarray, n_folds: int, seed: int, stratified: bool,
                   is_canceled: CancelFn = None) -> Tuple[Optional[np.ndarray], int, str]:
    """Out-of-fold predictions for every sample (or None with the reason when folds are not possible),
    and the number of folds used."""
    if n_folds < 2:
        return None, 0, "k-fold validation was switched off (folds < 2)"
    if stratified:
        smallest = int(min(np.unique(group[y == c]).size for c in np.unique(y)))
        folds = min(n_folds, smallest)
        if folds < 2:
            return None, 0, ("k-fold validation needs at least 2 labelled features in every class; the smallest "
                             "class has 1")
    else:
        folds = min(n_folds, int(np.unique(group).size))
        if folds < 2:
            return None, 0, "k-fold validation needs at least 2 labelled features"
    fold = fold_assignment(group, y if stratified else None, folds, seed)
    pred = None
    for f in range(folds):
        if is_canceled is not None and is_canceled():
            from .errors import ThorCanceled

            raise ThorCanceled("canceled by the user; no output was written")
        test = fold == f
        p = fit_predict(np.flatnonzero(~test), np.flatnonzero(test))
        if pred is None:
            pred = np.zeros(y.shape[0], dtype=p.dtype)
        pred[test] = p
    return pred, folds, ""


def predict_to_rasters(src: str, outputs: Sequence[Tuple[str, str, float, Sequence[str], Dict[str, Any]]],
                       predict: Callable[[np.ndarray], Sequence[np.ndarray]], n_train: int, run: _Run, stage: int,
                       block_pixels: Optional[int] = None,
                       on_open: Optional[Callable[[List[Any]], None]] = None) -> int:
    """Stream ``src`` and write one single-band GeoTIFF per entry of ``outputs`` (path, dtype, nodata,
    band names, THOR_CONFIG record); ``predict([m, C] float32)`` returns one [m] array per output.
    Every output is written in one pass; if anything fails, none is left behind."""
    import contextlib

    ds, info = _open_embedding(src)
    pixels = _block_pixels_arg(block_pixels, info.band_count)
    chunk = max(64, min(16 * 1024 * 1024 // (8 * info.band_count), PREDICT_CELLS // max(1, n_train)))
    total = info.width * info.height
    done = 0
    n_valid = 0
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(_writer(path, info, 1, dtype, nodata, names, config))
                   for path, dtype, nodata, names, config in outputs]
        if on_open is not None:
            on_open(writers)
        run.check()
        for blk in iter_blocks(ds, pixels):
            m = blk.width * blk.height
            outs = [np.full(m, nodata, dtype=np.dtype(dtype)) for _, dtype, nodata, _, _ in outputs]
            pos = np.flatnonzero(blk.valid.ravel())
            if pos.size:
                x = blk.data.reshape(info.band_count, -1)
                for s in range(0, pos.size, chunk):
                    cols = pos[s:s + chunk]
                    res = predict(np.ascontiguousarray(x[:, cols].T))
                    for o, r in zip(outs, res):
                        o[cols] = r
                    run.check()
                del x
            for w, o in zip(writers, outs):
                w.write(o.reshape(1, blk.height, blk.width), blk.xoff, blk.yoff)
            n_valid += pos.size
            done += m
            del blk, outs
            run.report(stage, done / total)
            run.check()
    return n_valid


def check_outputs(src: str, *paths: Optional[str]) -> None:
    seen = set()
    for p in paths:
        if not p:
            continue
        _check_dst(p, src)
        real = os.path.realpath(p)
        if real in seen:
            raise ThorConfigError(f"two outputs are written to {p}: give each output its own file")
        seen.add(real)


def check_fit_args(method: str, methods: Sequence[str], kind: str, k: Any, folds: Any, seed: Any, max_samples: Any,
                   geometries_wkt: Sequence[str], targets: Sequence[Any], target: str, src: str,
                   outputs: Sequence[Optional[str]], report_path: Optional[str],
                   model_path: Optional[str]) -> Tuple[int, int, int, int]:
    """The checks a fit (classify, regress) makes before reading anything, in this order: the ``kind`` of
    learner ``method`` is one of ``methods``, the numbers, one ``target`` (label, value) per feature, distinct
    writable outputs, the report's format and the model's .npz name. Returns k, folds, seed, max_samples."""
    if method not in methods:
        raise ThorConfigError(f"unknown {kind} {method!r}: choose one of {', '.join(methods)}")
    k = int_arg("k (neighbours)", k, 1)
    folds = int_arg("folds", folds, 0)
    seed = seed_arg(seed)
    max_samples = int_arg("max_samples", max_samples, 10)
    if len(geometries_wkt) != len(targets):
        raise ThorConfigError(f"one {target} per feature is needed")
    check_outputs(src, *outputs, report_path, model_path)
    report_format(report_path)
    if model_path and not str(model_path).lower().endswith(".npz"):
        raise ThorConfigError(f"model files are .npz files: give a name ending in .npz, not "
                              f"{os.path.basename(model_path)}")
    return k, folds, seed, max_samples


def fit_config(operation: str, src: str, params: Dict[str, Any], about: Dict[str, Any], train: Training,
               validation: Dict[str, Any], learner: Any, fmt: Dict[str, Any]) -> Dict[str, Any]:
    """The THOR_CONFIG record of a fit's output: ``about`` (the classes, the target) follows the parameters."""
    return {
        "operation": operation,
        "source": os.path.abspath(os.fspath(src)),
        "parameters": params,
        **about,
        "training": train.report,
        "validation": validation,
        "learner": learner.params(),
        "format": fmt,
    }


def report_format(path: Optional[str]) -> Optional[str]:
    if not path:
        return None
    ext = os.path.splitext(path)[1].lower()
    if ext in (".html", ".htm"):
        return "html"
    if ext in (".md", ".markdown", ".txt"):
        return "markdown"
    raise ThorConfigError(f"the report is written as HTML (.html) or Markdown (.md), not {os.path.basename(path)}")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.3f}"
    return str(v)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(v) for v in r) + " |")
    return "\n".join(lines)


def write_report(path: Optional[str], title: str, sections: Sequence[Tuple[str, Any]]) -> str:
    """The report as Markdown (returned, for the log), written to ``path`` as Markdown or HTML.
    ``sections``: (heading, content) where content is text or a (header, rows) table."""
    md = [f"# {title}", ""]
    for heading, content in sections:
        md += [f"## {heading}", ""]
        md.append(markdown_table(*content) if isinstance(content, tuple) else str(content))
        md.append("")
    text = "\n".join(md)
    fmt = report_format(path)
    if fmt is None:
        return text
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    if fmt == "markdown":
        body = text
    else:
        parts = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">", f"<title>{html.escape(title)}</title>",
                 "<style>body{font-family:sans-serif;max-width:60em}table{border-collapse:collapse}"
                 "td,th{border:1px solid #999;padding:2px 8px;text-align:right}th{background:#eee}</style>",
                 "</head><body>", f"<h1>{html.escape(title)}</h1>"]
        for heading, content in sections:
            parts.append(f"<h2>{html.escape(heading)}</h2>")
            if isinstance(content, tuple):
                header, rows = content
                parts.append("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
                for r in rows:
                    parts.append("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>")
                parts.append("</table>")
            else:
                for para in str(content).split("\n"):
                    parts.append(f"<p>{html.escape(para)}</p>")
        parts.append("</body></html>")
        body = "\n".join(parts)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(body)
    return text


FINGERPRINT_KEYS = (("band_count", "band count"), ("embedding_model", "embedding model"),
                    ("group_merge", "group merge"), ("weights", "weights"), ("band_names", "band names"))


def fingerprint_differences(fitted: Dict[str, Any], now: Dict[str, Any]) -> List[str]:
    """How the raster ``now`` differs from the one the model was fitted on, in what matters."""
    diffs = []
    for key, label in FINGERPRINT_KEYS:
        a, b = fitted.get(key), now.get(key)
        if key == "band_names" and (not a or not b):
            continue
        if a != b:
            if key == "band_names":
                diffs.append("band names differ")
            elif key == "weights":
                diffs.append("the embedding weights differ")
            else:
                diffs.append(f"{label}: fitted on {a or 'none recorded'}, this raster has {b or 'none recorded'}")
    return diffs


def check_model_fits(model_doc: Dict[str, Any], src: str, model_path: str) -> Dict[str, Any]:
    now = raster_fingerprint(src)
    diffs = fingerprint_differences(model_doc.get("fitted_on", {}), now)
    if diffs:
        raise ThorInputError(
            f"the model {os.path.basename(model_path)} was fitted on another kind of embedding raster than "
            f"{os.path.basename(src)}: " + "; ".join(diffs) + ". A model only applies to rasters embedded with "
            "the same model, weights and settings: fit a new model on this raster, or embed this area with "
            "the settings the model was fitted on")
    return now


def seed_arg(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ThorConfigError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def int_arg(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ThorConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


__all__ = ["training_cells", "cross_validate", "predict_to_rasters", "write_report", "check_model_fits",
           "FLOAT_NODATA", "Training"]
