"""Regression of an embedding raster from features with a numeric value (biomass, tree cover, ...).

:func:`regress` samples the valid cells under the features (each cell takes its feature's value),
validates the regressor by grouped k-fold (R², RMSE, MAE, bias), fits it on every labelled cell and
streams the raster through it: a float32 raster of predicted values, nodata
:data:`~.analysis.FLOAT_NODATA`, plus an optional report and model file. Regressors: kNN (cosine, mean
of the k neighbours' values), ridge regression, and random forest where scikit-learn is available.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .analysis import FLOAT_NODATA, CancelFn, ProgressFn, _index_list, _Run
from .errors import ThorInputError
from .labels import check_finite_number, raster_fingerprint
from .learners import REGRESSORS, library_versions, make_regressor, regression_metrics, save_model
from .supervised import (LogFn, check_fit_args, cross_validate, fit_config, limit_samples, predict_to_rasters,
                         training_cells, write_report)

__all__ = ["regress", "numeric_values"]


def numeric_values(values: Sequence[Any], feature_names: Optional[Sequence[Any]] = None,
                   field: str = "") -> List[Optional[float]]:
    """Feature values as floats; NULL -> None (left out). Text that is not a number, or NaN/infinite
    values, raise an error naming the features."""
    out: List[Optional[float]] = []
    bad: List[int] = []
    for i, v in enumerate(values):
        if v is None or (isinstance(v, str) and not v.strip()):
            out.append(None)
            continue
        if isinstance(v, str):
            t = v.strip()
            if t.count(",") == 1 and "." not in t:  # a decimal comma
                t = t.replace(",", ".")
            try:
                num = float(t)
            except ValueError:
                bad.append(i)
                out.append(None)
                continue
            v = num
        f = check_finite_number(v)
        if f is None:
            bad.append(i)
        out.append(f)
    if bad:
        shown = _index_list(bad[:10], feature_names)
        examples = ", ".join(repr(values[i]) for i in bad[:3])
        raise ThorInputError(
            f"the value field{' ' + field if field else ''} holds values that are not finite numbers "
            f"(features {shown}{' …' if len(bad) > 10 else ''}: {examples}): regression needs a numeric field")
    return out


def regress(src: str, dst: str, geometries_wkt: Sequence[str], values_in: Sequence[Any], method: str = "knn",
            k: int = 5, folds: int = 5, seed: int = 0, all_touched: bool = True, report_path: Optional[str] = None,
            model_path: Optional[str] = None, max_samples: int = 20000,
            feature_names: Optional[Sequence[Any]] = None, value_field: str = "",
            progress: ProgressFn = None, is_canceled: CancelFn = None, log: LogFn = None,
            block_pixels: Optional[int] = None) -> Dict[str, Any]:
    """Predict a numeric value for every valid cell of ``src`` from labelled features (module doc)."""
    k, folds, seed, max_samples = check_fit_args(
        method, REGRESSORS, "regressor", k, folds, seed, max_samples, geometries_wkt, values_in, "value", src,
        (dst,), report_path, model_path)
    values = numeric_values(values_in, feature_names, value_field)
    fitted_on = raster_fingerprint(src)
    run = _Run(progress, is_canceled, (0.3, 0.4, 1.0))
    train = training_cells(src, geometries_wkt, values, feature_names, all_touched, block_pixels,
                           lambda f: run.report(0, f), is_canceled, log, max_cells=4 * max_samples, seed=seed)
    keep = limit_samples(train, None, max_samples, seed, log)
    if keep.size < len(train.target):
        train = train._replace(x=train.x[keep], target=[train.target[i] for i in keep.tolist()],
                               group=train.group[keep], flat=train.flat[keep])
    y = np.asarray(train.target, dtype=np.float64)
    if y.size < 2:
        raise ThorInputError(f"regression needs at least 2 labelled cells; the features cover {y.size}")
    if np.ptp(y) == 0:
        raise ThorInputError(f"every labelled cell has the same value ({y[0]:g}): nothing to learn")
    kk = min(k, len(y))

    def fit(idx):
        return make_regressor(method, k=min(kk, idx.size), seed=seed).fit(train.x[idx], y[idx])

    def fit_predict(tr, te):
        return fit(tr).predict(train.x[te])

    oof, used_folds, why = cross_validate(fit_predict, train.x, y, train.group, folds, seed, False, is_canceled)
    metrics = regression_metrics(y, oof) if oof is not None else None
    run.report(1, 0.5)
    learner = fit(np.arange(len(y)))
    run.report(1, 1.0)
    params = {"method": method, "k": kk if method == "knn" else None, "folds": folds, "seed": seed,
              "all_touched": bool(all_touched), "value_field": value_field, "max_samples": max_samples}
    validation = ({"folds": int(used_folds), "grouped_by": "feature",
                   **{k_: round(v, 6) if isinstance(v, float) else v for k_, v in metrics.items()}}
                  if metrics is not None else {"folds": 0, "note": why})
    target = {"min": float(y.min()), "max": float(y.max()), "mean": float(y.mean()), "std": float(y.std())}
    config = fit_config("regress", src, params, {"target": target}, train, validation, learner,
                        {"dtype": "float32", "nodata": FLOAT_NODATA, "bands": ["value"]})

    def predict(x):
        return (learner.predict(x).astype(np.float32),)

    n_valid = predict_to_rasters(src, [(dst, "float32", FLOAT_NODATA, ["value"], config)], predict, len(y), run, 2,
                                 block_pixels)
    text = write_report(report_path, "Regression accuracy",
                        regression_report_sections(src, params, target, train.report, metrics, used_folds, why))
    if log is not None:
        log(text)
    if model_path:
        save_model(model_path, learner, {"operation": "regress", "fitted_on": fitted_on, "target": target,
                                         "parameters": params, "validation": validation, "training": train.report})
    run.done()
    return dict(config, output=os.fspath(dst), report=report_path or None, model=model_path or None,
                report_text=text, valid_pixels=int(n_valid), libraries=library_versions())


def regression_report_sections(src, params, target, training, metrics, used_folds, why):
    sections: List[Tuple[str, Any]] = [
        ("Input", f"Embedding raster: {os.path.basename(os.fspath(src))}\n"
                  f"Regressor: {params['method']}"
                  + (f" (k = {params['k']}, cosine similarity)" if params["method"] == "knn" else "")
                  + f"\nTraining cells: {training['training_cells']}"),
        ("Target values", (["min", "max", "mean", "std"], [[target["min"], target["max"], target["mean"],
                                                             target["std"]]])),
    ]
    if metrics is None:
        sections.append(("Validation", f"No k-fold validation: {why}."))
    else:
        sections.append(("Validation", f"{used_folds}-fold cross-validation; all cells of one feature stay in "
                                       f"one fold.\nR²: {metrics['r2']:.3f}\nRMSE: {metrics['rmse']:.4g}\n"
                                       f"MAE: {metrics['mae']:.4g}\nBias (predicted − label): {metrics['bias']:.4g}\n"
                                       f"Validated cells: {metrics['samples']}"))
    left = {k: v for k, v in training.items() if k not in ("training_cells", "features_given", "features_used") and v}
    if left:
        sections.append(("Left out", "\n".join(f"{k.replace('_', ' ')}: {v}" for k, v in left.items())))
    return sections
