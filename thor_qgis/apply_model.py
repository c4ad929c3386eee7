"""Apply a saved classification or regression model (:func:`.learners.save_model`) to an embedding
raster, after checking that the raster is of the kind the model was fitted on (band count and names,
embedding model, weights and group merge): a model fitted on other embeddings gives meaningless
maps, so a mismatch is refused with the differences spelled out."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

import numpy as np

from .analysis import CLASS_NODATA, FLOAT_NODATA, CancelFn, ProgressFn, _Run
from .classify import classes_raster_extras
from .errors import ThorConfigError
from .learners import load_model
from .supervised import check_model_fits, check_outputs, predict_to_rasters

__all__ = ["apply_model", "model_summary"]


def model_summary(model_path: str) -> Dict[str, Any]:
    """The model file's JSON document (what it was fitted on, classes, validation)."""
    return load_model(model_path)[1]


def apply_model(src: str, model_path: str, dst: str, dst_confidence: Optional[str] = None,
                progress: ProgressFn = None, is_canceled: CancelFn = None,
                block_pixels: Optional[int] = None) -> Dict[str, Any]:
    """Write the model's prediction for every valid cell of ``src``: classes (and confidence) for a
    classifier, values for a regressor, in the same formats as :func:`.classify.classify` and
    :func:`.regress.regress`."""
    check_outputs(src, dst, dst_confidence, model_path)
    learner, doc = load_model(model_path)
    now = check_model_fits(doc, src, model_path)
    run = _Run(progress, is_canceled, (1.0,))
    base = {"operation": "apply_model", "source": os.path.abspath(os.fspath(src)),
            "model": {"path": os.path.abspath(model_path), "learner": doc.get("learner"), "task": doc.get("task"),
                      "fitted_on": doc.get("fitted_on"), "validation": doc.get("validation"),
                      "libraries": doc.get("libraries")}}
    if doc["task"] == "classification":
        classes = doc["classes"]
        codes = np.array([c["value"] for c in classes], dtype=np.int64)
        top = int(codes.max())
        dtype = "uint8" if top <= 255 else "uint16"
        config = dict(base, classes=classes, format={"dtype": dtype, "nodata": CLASS_NODATA, "bands": ["class"]})
        outputs = [(dst, dtype, CLASS_NODATA, ["class"], config)]
        if dst_confidence:
            outputs.append((dst_confidence, "float32", FLOAT_NODATA, ["confidence"],
                            dict(config, format={"dtype": "float32", "nodata": FLOAT_NODATA,
                                                 "bands": ["confidence"], "range": [0.0, 1.0]})))

        def predict(x):
            proba = learner.predict_proba(x)
            best = np.argmax(proba, axis=1)
            return codes[best], np.clip(proba[np.arange(best.size), best], 0.0, 1.0).astype(np.float32)

        n_train = int(getattr(learner, "train", np.zeros((1, 1))).shape[0])
        n_valid = predict_to_rasters(src, outputs, predict, n_train, run, 0, block_pixels,
                                     on_open=lambda w: classes_raster_extras(w[0].ds, classes))
    elif doc["task"] == "regression":
        if dst_confidence:
            raise ThorConfigError("a regression model has no confidence output: leave it empty")
        config = dict(base, target=doc.get("target"),
                      format={"dtype": "float32", "nodata": FLOAT_NODATA, "bands": ["value"]})

        def predict(x):
            return (learner.predict(x).astype(np.float32),)

        n_train = int(getattr(learner, "train", np.zeros((1, 1))).shape[0])
        n_valid = predict_to_rasters(src, [(dst, "float32", FLOAT_NODATA, ["value"], config)], predict, n_train,
                                     run, 0, block_pixels)
    else:
        raise ThorConfigError(f"{model_path}: unknown model task {doc['task']!r}")
    run.done()
    return dict(config, output=os.fspath(dst), confidence=dst_confidence or None, valid_pixels=int(n_valid),
                raster=now)
