"""Classification of an embedding raster from labelled features.

:func:`classify` takes features (WKT in the raster's CRS) with a class label each, samples the valid
embedding cells under them (:mod:`.labels`), validates the chosen classifier by grouped, stratified
k-fold (:mod:`.supervised`), fits it on every labelled cell and streams the whole raster through it,
writing

* a class raster: the class value of every valid cell (uint8 up to value 255, else uint16; 0 = nodata)
  with a colour table, class names in its THOR_CONFIG metadata;
* a confidence raster: the probability the classifier gives the chosen class (float32 0..1; for kNN
  the share of the k neighbours' votes), nodata :data:`~.analysis.FLOAT_NODATA`;
* optionally an accuracy report (Markdown or HTML) and the fitted model (:func:`.learners.save_model`).

Class values: integer labels from 1 to 65535 are kept as the raster's values; any other labels (text,
0, negative or fractional numbers) are numbered 1..K in sorted order. The mapping is recorded in the
outputs' THOR_CONFIG and in the model.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .analysis import FLOAT_NODATA, CLASS_NODATA, CancelFn, ProgressFn, _class_palette, _Run
from .errors import ThorInputError
from .labels import raster_fingerprint
from .learners import CLASSIFIERS, class_metrics, library_versions, make_classifier, save_model
from .supervised import (LogFn, check_fit_args, cross_validate, fit_config, limit_samples, predict_to_rasters,
                         training_cells, write_report)

__all__ = ["classify", "class_table", "classes_raster_extras"]


def _is_int_label(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, np.integer)):
        return True
    return isinstance(v, (float, np.floating)) and float(v).is_integer()


def class_table(values: Sequence[Any]) -> List[Tuple[int, str, Any]]:
    """(raster value, name, label) of each distinct label, in raster-value order."""
    distinct = sorted({v for v in values}, key=lambda v: (str(type(v)), v))
    if distinct and all(_is_int_label(v) for v in distinct) and all(1 <= int(v) <= 65535 for v in distinct):
        by_int: Dict[int, Any] = {}
        for v in distinct:
            by_int.setdefault(int(v), v)
        return [(i, str(i), by_int[i]) for i in sorted(by_int)]
    names = sorted({str(v) for v in distinct})
    return [(i + 1, n, n) for i, n in enumerate(names)]


def _label_key(v: Any, integer: bool) -> Any:
    return int(v) if integer else str(v)


def normalise_labels(values: Sequence[Any]) -> List[Any]:
    """Labels as read from a field: NULL / empty text -> None (left out), text stripped."""
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            out.append(None)
        elif isinstance(v, str):
            s = v.strip()
            out.append(s if s else None)
        else:
            out.append(v)
    return out


def classes_raster_extras(ds, classes: Sequence[Dict[str, Any]]) -> None:
    """A colour table on band 1 of an open class raster (class names are in its THOR_CONFIG)."""
    top = max(c["value"] for c in classes)
    if top <= 255:
        ds.GetRasterBand(1).SetRasterColorTable(_class_palette(top))


def classify(src: str, dst_classes: str, geometries_wkt: Sequence[str], labels_in: Sequence[Any],
             dst_confidence: Optional[str] = None, method: str = "knn", k: int = 5, folds: int = 5, seed: int = 0,
             all_touched: bool = True, report_path: Optional[str] = None, model_path: Optional[str] = None,
             max_samples: int = 20000, feature_names: Optional[Sequence[Any]] = None, label_field: str = "",
             progress: ProgressFn = None,
             is_canceled: CancelFn = None, log: LogFn = None, block_pixels: Optional[int] = None) -> Dict[str, Any]:
    """Classify ``src`` from features ``geometries_wkt`` labelled ``labels_in`` (see the module doc).
    Returns the recorded config plus ``output``, ``confidence``, ``report``, ``model`` paths and the
    report text (Markdown) as ``report_text``."""
    k, folds, seed, max_samples = check_fit_args(
        method, CLASSIFIERS, "classifier", k, folds, seed, max_samples, geometries_wkt, labels_in, "label", src,
        (dst_classes, dst_confidence), report_path, model_path)
    fitted_on = raster_fingerprint(src)
    run = _Run(progress, is_canceled, (0.3, 0.4, 1.0))
    labels = normalise_labels(labels_in)
    train = training_cells(src, geometries_wkt, labels, feature_names, all_touched, block_pixels,
                           lambda f: run.report(0, f), is_canceled, log, max_cells=4 * max_samples, seed=seed)
    table = class_table(train.target)
    integer = all(_is_int_label(v) and 1 <= int(v) <= 65535 for v in set(train.target))
    index_of = {_label_key(t[2], integer): i for i, t in enumerate(table)}
    y = np.array([index_of[_label_key(v, integer)] for v in train.target], dtype=np.int64)
    n_classes = len(table)
    if n_classes < 2:
        raise ThorInputError(
            f"only one class ({table[0][1]!r}) among the labelled cells{' of field ' + label_field if label_field else ''}:"
            f" a classifier needs at least two classes")
    keep = limit_samples(train, y, max_samples, seed, log)
    if keep.size < y.size:
        train = train._replace(x=train.x[keep], target=[train.target[i] for i in keep.tolist()],
                               group=train.group[keep], flat=train.flat[keep])
        y = y[keep]
    counts = np.bincount(y, minlength=n_classes)
    kk = min(k, len(y))

    def fit(idx):
        return make_classifier(method, n_classes, k=min(kk, idx.size), seed=seed).fit(train.x[idx], y[idx])

    def fit_predict(tr, te):
        return np.argmax(fit(tr).predict_proba(train.x[te]), axis=1)

    oof, used_folds, why = cross_validate(fit_predict, train.x, y, train.group, folds, seed, True, is_canceled)
    run.report(1, 0.5)
    metrics = class_metrics(y, oof, n_classes) if oof is not None else None
    learner = fit(np.arange(len(y)))
    run.report(1, 1.0)

    classes = [{"value": int(v), "name": n, "training_cells": int(counts[i]),
                "training_features": int(np.unique(train.group[y == i]).size)} for i, (v, n, _) in enumerate(table)]
    codes = np.array([c["value"] for c in classes], dtype=np.int64)
    top = int(codes.max())
    dtype = "uint8" if top <= 255 else "uint16"
    params = {"method": method, "k": kk if method == "knn" else None, "folds": folds, "seed": seed,
              "all_touched": bool(all_touched), "label_field": label_field, "max_samples": max_samples}
    validation = _validation_record(metrics, used_folds, why, classes)
    config = fit_config("classify", src, params, {"classes": classes}, train, validation, learner,
                        {"dtype": dtype, "nodata": CLASS_NODATA, "bands": ["class"]})
    conf_config = dict(config, format={"dtype": "float32", "nodata": FLOAT_NODATA, "bands": ["confidence"],
                                       "range": [0.0, 1.0]})
    outputs = [(dst_classes, dtype, CLASS_NODATA, ["class"], config)]
    if dst_confidence:
        outputs.append((dst_confidence, "float32", FLOAT_NODATA, ["confidence"], conf_config))

    def predict(x):
        proba = learner.predict_proba(x)
        best = np.argmax(proba, axis=1)
        conf = np.clip(proba[np.arange(best.size), best], 0.0, 1.0)
        return codes[best], conf.astype(np.float32)

    n_valid = predict_to_rasters(src, outputs, predict, len(y), run, 2, block_pixels,
                                 on_open=lambda writers: classes_raster_extras(writers[0].ds, classes))

    title = "Classification accuracy"
    text = write_report(report_path, title, classification_report_sections(
        src, params, classes, train.report, metrics, used_folds, why))
    if log is not None:
        log(text)
    if model_path:
        save_model(model_path, learner, {
            "operation": "classify", "fitted_on": fitted_on, "classes": classes, "parameters": params,
            "validation": validation, "training": train.report})
    run.done()
    return dict(config, output=os.fspath(dst_classes), confidence=dst_confidence or None,
                report=report_path or None, model=model_path or None, report_text=text, valid_pixels=int(n_valid),
                libraries=library_versions())


def _validation_record(metrics, used_folds, why, classes) -> Dict[str, Any]:
    if metrics is None:
        return {"folds": 0, "note": why}
    return {"folds": int(used_folds), "grouped_by": "feature", "stratified": True,
            "overall_accuracy": round(metrics["overall_accuracy"], 6), "kappa": round(metrics["kappa"], 6),
            "per_class": [dict(value=c["value"], **{k: (round(v, 6) if isinstance(v, float) else v)
                                                    for k, v in p.items()})
                          for c, p in zip(classes, metrics["per_class"])],
            "confusion": metrics["confusion"]}


def classification_report_sections(src, params, classes, training, metrics, used_folds, why):
    sections: List[Tuple[str, Any]] = []
    sections.append(("Input", f"Embedding raster: {os.path.basename(os.fspath(src))}\n"
                              f"Classifier: {params['method']}"
                              + (f" (k = {params['k']}, cosine similarity)" if params["method"] == "knn" else "")
                              + f"\nTraining cells: {training['training_cells']} from {training['features_used']} "
                                f"feature(s)"))
    sections.append(("Classes", (["value", "class", "training features", "training cells"],
                                 [[c["value"], c["name"], c["training_features"], c["training_cells"]]
                                  for c in classes])))
    if metrics is None:
        sections.append(("Validation", f"No k-fold validation: {why}."))
        return sections
    sections.append(("Validation", f"Stratified {used_folds}-fold cross-validation; all cells of one feature stay "
                                   f"in one fold. Each cell is predicted by a model fitted without its feature.\n"
                                   f"Overall accuracy: {metrics['overall_accuracy']:.3f}\n"
                                   f"Cohen's kappa: {metrics['kappa']:.3f}\n"
                                   f"Validated cells: {metrics['samples']}"))
    sections.append(("Per class", (["class", "precision", "recall", "F1", "cells"],
                                   [[c["name"], p["precision"], p["recall"], p["f1"], p["support"]]
                                    for c, p in zip(classes, metrics["per_class"])])))
    names = [c["name"] for c in classes]
    sections.append(("Confusion matrix (rows: label, columns: predicted)",
                     ([""] + names, [[n] + row for n, row in zip(names, metrics["confusion"])])))
    left = {k: v for k, v in training.items() if k not in ("training_cells", "features_given", "features_used") and v}
    if left:
        sections.append(("Left out", "\n".join(f"{k.replace('_', ' ')}: {v}" for k, v in left.items())))
    return sections
