"""Small supervised learners on embedding vectors, in numpy, and their safe model files.

* ``knn``: k nearest neighbours by cosine similarity. Classes: the share of the k neighbours' votes
  (the confidence of the chosen class is its vote share); values: the mean of the neighbours' values.
* ``logistic``: multinomial logistic regression on standardised bands, L2-regularised, fitted by
  accelerated gradient descent (FISTA with a fixed step from the Lipschitz bound of the loss).
* ``ridge``: ridge regression on standardised bands, solved in closed form (in the dual when there
  are fewer samples than bands).
* ``random_forest``: scikit-learn's random forest where scikit-learn can be imported (optional). The
  fitted trees are exported to plain arrays, so applying a saved forest needs numpy only.

Every learner turns into a dict of numpy arrays plus a JSON-able dict (:meth:`arrays`, :meth:`params`),
which :func:`save_model` writes as one ``.npz`` file holding the arrays and a JSON document; no pickle
is ever written or read (``allow_pickle=False``).
"""
from __future__ import annotations

import json
import os
import platform
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .errors import ThorConfigError, ThorInputError

MODEL_FORMAT = "thor-embedding-model"
MODEL_FORMAT_VERSION = 1

CLASSIFIERS = ("knn", "logistic", "random_forest")
REGRESSORS = ("knn", "ridge", "random_forest")


def sklearn_available() -> bool:
    try:
        import sklearn  # noqa: F401  (only whether it imports)
    except ImportError:
        return False
    return True


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)).astype(np.float32)
    norm[norm == 0] = 1.0
    return x / norm[:, None]


def _standardise_fit(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0, dtype=np.float64)
    std = x.std(axis=0, dtype=np.float64)
    std[~(std > 1e-12)] = 1.0
    return mean, std


# --------------------------------------------------------------------------------------------
# Learners
# --------------------------------------------------------------------------------------------


class Learner:
    kind = ""
    task = ""  # "classification" | "regression"

    def params(self) -> Dict[str, Any]:
        return {}

    def arrays(self) -> Dict[str, np.ndarray]:
        return {}


class KnnClassifier(Learner):
    kind, task = "knn", "classification"

    def __init__(self, k: int = 5, n_classes: int = 0):
        self.k = int(k)
        self.n_classes = int(n_classes)
        self.train: Optional[np.ndarray] = None
        self.labels: Optional[np.ndarray] = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> "KnnClassifier":
        self.train = _unit_rows(x)
        self.labels = np.asarray(y, dtype=np.int64)
        return self

    def _neighbours(self, x: np.ndarray) -> np.ndarray:
        k = min(self.k, self.train.shape[0])
        sims = _unit_rows(x) @ self.train.T  # [m, n]
        if k < sims.shape[1]:
            idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        else:
            idx = np.broadcast_to(np.arange(sims.shape[1]), sims.shape)
        return idx, np.take_along_axis(sims, idx, axis=1)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        idx, sims = self._neighbours(x)
        votes = self.labels[idx]  # [m, k]
        proba = np.zeros((x.shape[0], self.n_classes), dtype=np.float64)
        for j in range(votes.shape[1]):
            proba[np.arange(x.shape[0]), votes[:, j]] += 1.0
        # ties between classes go to the class of the most similar neighbours: a tiny bonus
        bonus = np.zeros_like(proba)
        for j in range(votes.shape[1]):
            bonus[np.arange(x.shape[0]), votes[:, j]] += sims[:, j]
        proba /= votes.shape[1]
        return proba + 1e-9 * bonus

    def params(self):
        return {"k": self.k, "n_classes": self.n_classes, "metric": "cosine"}

    def arrays(self):
        return {"train_unit": self.train, "train_labels": self.labels}

    @classmethod
    def load(cls, params, arrays):
        m = cls(params["k"], params["n_classes"])
        m.train, m.labels = arrays["train_unit"].astype(np.float32), arrays["train_labels"].astype(np.int64)
        return m


class KnnRegressor(KnnClassifier):
    kind, task = "knn", "regression"

    def fit(self, x, y):
        self.train = _unit_rows(x)
        self.values = np.asarray(y, dtype=np.float64)
        return self

    def predict(self, x):
        idx, _ = self._neighbours(x)
        return self.values[idx].mean(axis=1)

    def params(self):
        return {"k": self.k, "metric": "cosine"}

    def arrays(self):
        return {"train_unit": self.train, "train_values": self.values}

    @classmethod
    def load(cls, params, arrays):
        m = cls(params["k"])
        m.train, m.values = arrays["train_unit"].astype(np.float32), arrays["train_values"].astype(np.float64)
        return m


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class LogisticClassifier(Learner):
    kind, task = "logistic", "classification"

    def __init__(self, l2: float = 1e-2, max_iter: int = 500, n_classes: int = 0, tol: float = 1e-6):
        self.l2 = float(l2)
        self.max_iter = int(max_iter)
        self.n_classes = int(n_classes)
        self.tol = float(tol)
        self.iterations = 0

    def fit(self, x, y):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.int64)
        self.mean, self.std = _standardise_fit(x)
        xs = (x - self.mean) / self.std
        n, c = xs.shape
        k = self.n_classes
        onehot = np.zeros((n, k))
        onehot[np.arange(n), y] = 1.0
        xb = np.hstack([xs, np.ones((n, 1))])  # bias column (regularised with the rest: harmless here)
        # Lipschitz constant of the gradient of the mean softmax loss: <= 0.5 * sigma_max(xb)^2 / n
        sigma = np.linalg.norm(xb, 2) if min(n, c + 1) <= 2000 else np.sqrt(np.einsum("ij,ij->", xb, xb))
        lip = 0.5 * sigma ** 2 / n + self.l2
        step = 1.0 / lip
        w = np.zeros((c + 1, k))
        z, t = w.copy(), 1.0
        for it in range(self.max_iter):
            p = _softmax(xb @ z)
            grad = xb.T @ (p - onehot) / n + self.l2 * z
            w_new = z - step * grad
            t_new = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
            z = w_new + ((t - 1.0) / t_new) * (w_new - w)
            moved = float(np.abs(w_new - w).max())
            w, t = w_new, t_new
            self.iterations = it + 1
            if moved < self.tol:
                break
        self.w = w
        return self

    def predict_proba(self, x):
        xs = (np.asarray(x, dtype=np.float64) - self.mean) / self.std
        return _softmax(xs @ self.w[:-1] + self.w[-1])

    def params(self):
        return {"l2": self.l2, "max_iter": self.max_iter, "n_classes": self.n_classes,
                "iterations": self.iterations, "standardised": True}

    def arrays(self):
        return {"mean": self.mean, "std": self.std, "weights": self.w}

    @classmethod
    def load(cls, params, arrays):
        m = cls(params["l2"], params["max_iter"], params["n_classes"])
        m.mean, m.std, m.w = arrays["mean"], arrays["std"], arrays["weights"]
        return m


class RidgeRegressor(Learner):
    kind, task = "ridge", "regression"

    def __init__(self, l2: float = 1.0):
        self.l2 = float(l2)

    def fit(self, x, y):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        self.mean, self.std = _standardise_fit(x)
        xs = (x - self.mean) / self.std
        self.intercept = float(y.mean())
        yc = y - self.intercept
        n, c = xs.shape
        lam = self.l2 * n
        if n < c:
            alpha = np.linalg.solve(xs @ xs.T + lam * np.eye(n), yc)
            self.coef = xs.T @ alpha
        else:
            self.coef = np.linalg.solve(xs.T @ xs + lam * np.eye(c), xs.T @ yc)
        return self

    def predict(self, x):
        xs = (np.asarray(x, dtype=np.float64) - self.mean) / self.std
        return xs @ self.coef + self.intercept

    def params(self):
        return {"l2": self.l2, "standardised": True}

    def arrays(self):
        return {"mean": self.mean, "std": self.std, "coef": self.coef, "intercept": np.array([self.intercept])}

    @classmethod
    def load(cls, params, arrays):
        m = cls(params["l2"])
        m.mean, m.std, m.coef = arrays["mean"], arrays["std"], arrays["coef"]
        m.intercept = float(arrays["intercept"][0])
        return m


class Forest(Learner):
    """A random forest from scikit-learn, kept as flat node arrays of all trees (numpy to apply)."""

    kind = "random_forest"

    def __init__(self, task: str, n_trees: int = 100, seed: int = 0, n_classes: int = 0):
        self.task = task
        self.n_trees = int(n_trees)
        self.seed = int(seed)
        self.n_classes = int(n_classes)

    def fit(self, x, y):
        if not sklearn_available():
            raise ThorConfigError(
                "the random forest needs scikit-learn, which QGIS's Python cannot import: install it "
                "(pip install scikit-learn) or choose k-nearest neighbours or logistic/ridge regression")
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        cls = RandomForestClassifier if self.task == "classification" else RandomForestRegressor
        est = cls(n_estimators=self.n_trees, random_state=self.seed, n_jobs=1)
        est.fit(np.asarray(x, dtype=np.float32), np.asarray(y))
        self._export(est)
        import sklearn

        self.sklearn_version = sklearn.__version__
        return self

    def _export(self, est) -> None:
        left, right, feat, thr, value, roots = [], [], [], [], [], []
        offset = 0
        for tree in est.estimators_:
            t = tree.tree_
            n = t.node_count
            leaf = t.children_left == -1
            left.append(np.where(leaf, -1, t.children_left + offset))
            right.append(np.where(leaf, -1, t.children_right + offset))
            feat.append(np.where(leaf, 0, t.feature))
            thr.append(t.threshold)
            v = t.value[:, 0, :]
            if self.task == "classification":
                v = v / np.maximum(v.sum(axis=1, keepdims=True), 1e-300)  # class shares in each leaf
                full = np.zeros((n, self.n_classes))
                full[:, tree.classes_.astype(np.int64)] = v
                v = full
            value.append(v)
            roots.append(offset)
            offset += n
        self.left = np.concatenate(left).astype(np.int64)
        self.right = np.concatenate(right).astype(np.int64)
        self.feature = np.concatenate(feat).astype(np.int64)
        self.threshold = np.concatenate(thr).astype(np.float64)
        self.value = np.concatenate(value).astype(np.float64)
        self.roots = np.array(roots, dtype=np.int64)

    def _leaf_values(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        m = x.shape[0]
        rows = np.arange(m)
        total = np.zeros((m, self.value.shape[1]))
        for root in self.roots:
            node = np.full(m, root, dtype=np.int64)
            while True:
                inner = self.left[node] >= 0
                if not inner.any():
                    break
                go_left = x[rows, self.feature[node]] <= self.threshold[node]
                node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)
            total += self.value[node]
        return total / len(self.roots)

    def predict_proba(self, x):
        return self._leaf_values(x)

    def predict(self, x):
        return self._leaf_values(x)[:, 0]

    def params(self):
        return {"n_trees": self.n_trees, "seed": self.seed, "n_classes": self.n_classes, "task": self.task,
                "fitted_with": f"scikit-learn {getattr(self, 'sklearn_version', '?')}"}

    def arrays(self):
        return {"left": self.left, "right": self.right, "feature": self.feature, "threshold": self.threshold,
                "value": self.value, "roots": self.roots}

    @classmethod
    def load(cls, params, arrays):
        m = cls(params["task"], params["n_trees"], params["seed"], params["n_classes"])
        for key in ("left", "right", "feature", "roots"):
            setattr(m, key, arrays[key].astype(np.int64))
        m.threshold, m.value = arrays["threshold"].astype(np.float64), arrays["value"].astype(np.float64)
        return m


def make_classifier(kind: str, n_classes: int, k: int = 5, seed: int = 0) -> Learner:
    if kind == "knn":
        return KnnClassifier(k=k, n_classes=n_classes)
    if kind == "logistic":
        return LogisticClassifier(n_classes=n_classes)
    if kind == "random_forest":
        return Forest("classification", seed=seed, n_classes=n_classes)
    raise ThorConfigError(f"unknown classifier {kind!r}: choose one of {', '.join(CLASSIFIERS)}")


def make_regressor(kind: str, k: int = 5, seed: int = 0) -> Learner:
    if kind == "knn":
        return KnnRegressor(k=k)
    if kind == "ridge":
        return RidgeRegressor()
    if kind == "random_forest":
        return Forest("regression", seed=seed)
    raise ThorConfigError(f"unknown regressor {kind!r}: choose one of {', '.join(REGRESSORS)}")


_LOADERS = {("knn", "classification"): KnnClassifier, ("knn", "regression"): KnnRegressor,
            ("logistic", "classification"): LogisticClassifier, ("ridge", "regression"): RidgeRegressor}


# --------------------------------------------------------------------------------------------
# Model files
# --------------------------------------------------------------------------------------------


def library_versions() -> Dict[str, str]:
    out = {"numpy": np.__version__, "python": platform.python_version()}
    try:
        from osgeo import gdal

        out["gdal"] = gdal.__version__
    except ImportError:
        pass
    if sklearn_available():
        import sklearn

        out["scikit-learn"] = sklearn.__version__
    return out


def save_model(path: str, learner: Learner, meta: Dict[str, Any]) -> str:
    """Write ``learner`` and ``meta`` (JSON-able) to ``path`` (.npz): arrays plus one JSON document."""
    path = os.fspath(path)
    if not path.lower().endswith(".npz"):
        raise ThorConfigError(f"model files are .npz files: give a name ending in .npz, not {os.path.basename(path)}")
    doc = dict(meta, format=MODEL_FORMAT, format_version=MODEL_FORMAT_VERSION, learner=learner.kind,
               task=learner.task, learner_params=learner.params(), libraries=library_versions())
    arrays = {f"a_{k}": np.asarray(v) for k, v in learner.arrays().items()}
    for k, v in arrays.items():
        if v.dtype == object:
            raise ThorConfigError(f"model array {k} is not numeric")
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = path + ".partial.npz"
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, meta_json=np.frombuffer(json.dumps(doc, sort_keys=True).encode("utf-8"),
                                                        dtype=np.uint8), **arrays)
    os.replace(tmp, path)
    return path


def load_model(path: str) -> Tuple[Learner, Dict[str, Any]]:
    """Read a model written by :func:`save_model` (never unpickles anything)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ThorInputError(f"model file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            doc = json.loads(bytes(z["meta_json"]).decode("utf-8"))
            arrays = {k[2:]: z[k] for k in z.files if k.startswith("a_")}
    except (OSError, ValueError, KeyError) as e:
        raise ThorInputError(f"{path} is not a model file written by this plugin ({e})") from None
    if doc.get("format") != MODEL_FORMAT:
        raise ThorInputError(f"{path} is not a model file written by this plugin")
    if int(doc.get("format_version", 0)) > MODEL_FORMAT_VERSION:
        raise ThorInputError(f"{path} was written by a newer version of the plugin (model format "
                             f"{doc.get('format_version')}): update the plugin")
    kind, task = doc["learner"], doc["task"]
    params = doc["learner_params"]
    if kind == "random_forest":
        learner = Forest.load(params, arrays)
    else:
        learner = _LOADERS[(kind, task)].load(params, arrays)
    return learner, doc


def fold_assignment(groups: np.ndarray, strata: Optional[np.ndarray], n_folds: int, seed: int) -> np.ndarray:
    """Fold 0..n_folds-1 of every sample: each group (e.g. the feature a cell lies under) falls in one
    fold; with ``strata`` (classes) the groups of each class are dealt out in turn over the folds, so
    every fold holds about the same share of every class (stratified k-fold)."""
    rng = np.random.default_rng(seed)
    groups = np.asarray(groups)
    uniq, inv = np.unique(groups, return_inverse=True)
    fold_of_group = np.empty(uniq.size, dtype=np.int64)
    if strata is None:
        perm = rng.permutation(uniq.size)
        fold_of_group[perm] = np.arange(uniq.size) % n_folds
    else:
        stratum_of_group = np.zeros(uniq.size, dtype=np.int64)
        stratum_of_group[inv] = np.asarray(strata)
        start = 0
        for s in np.unique(stratum_of_group):
            members = np.flatnonzero(stratum_of_group == s)
            members = members[rng.permutation(members.size)]
            fold_of_group[members] = (start + np.arange(members.size)) % n_folds
            start += members.size  # the next class continues where this one stopped
    return fold_of_group[inv]


def min_groups_per_class(groups: np.ndarray, y: np.ndarray) -> int:
    return int(min(np.unique(groups[y == c]).size for c in np.unique(y)))


def folds_possible(n_folds: int, smallest: int) -> int:
    return int(min(n_folds, smallest))


def class_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> Dict[str, Any]:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    total = cm.sum()
    oa = float(np.trace(cm) / total) if total else float("nan")
    expected = float((cm.sum(axis=0) * cm.sum(axis=1)).sum() / total ** 2) if total else float("nan")
    kappa = (oa - expected) / (1 - expected) if total and expected < 1 else float("nan")
    per: List[Dict[str, float]] = []
    for c in range(n_classes):
        tp = cm[c, c]
        pred, true = cm[:, c].sum(), cm[c, :].sum()
        prec = tp / pred if pred else float("nan")
        rec = tp / true if true else float("nan")
        f1 = 2 * prec * rec / (prec + rec) if pred and true and (prec + rec) > 0 else (0.0 if pred or true else float("nan"))
        per.append({"precision": float(prec), "recall": float(rec), "f1": float(f1), "support": int(true)})
    return {"overall_accuracy": oa, "kappa": float(kappa), "confusion": cm.tolist(), "per_class": per,
            "samples": int(total)}


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> Dict[str, float]:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    resid = y_true - y_pred
    ss_res = float((resid ** 2).sum())
    ss_tot = float(((y_true - y_true.mean()) ** 2).sum())
    return {"r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
            "rmse": float(np.sqrt(np.mean(resid ** 2))), "mae": float(np.mean(np.abs(resid))),
            "bias": float(np.mean(y_pred - y_true)), "samples": int(y_true.size)}
