"""Classification, regression and saved models on a synthetic embedding raster with planted classes
(known truth everywhere): accuracy from 20 labelled points per class, k-fold estimates against the
held-out pixels, model files, and bad inputs."""
import json
import zipfile

import numpy as np
import pytest
from osgeo import gdal

from tests.engine.planted import GT, pixel_points, planted
from tests.helpers import write_raster
from thor_qgis import apply_model, classify, learners, regress
from thor_qgis.errors import ThorConfigError, ThorInputError


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("planted")
    src, truth, value = planted(d / "emb.tif", noise=1.2)
    wkts, labels, (rows, cols) = pixel_points(truth, 20)
    held = np.ones_like(truth, bool)
    held[rows, cols] = False
    return dict(src=src, truth=truth, value=value, wkts=wkts, labels=labels, rows=rows, cols=cols, held=held, dir=d)


def _read(path):
    ds = gdal.Open(str(path))
    return ds.ReadAsArray(), ds


@pytest.mark.parametrize("method", ["knn", "logistic"])
def test_planted_classes_from_20_points_per_class(scene, tmp_path, method):
    out, conf, rep = tmp_path / "c.tif", tmp_path / "conf.tif", tmp_path / "report.md"
    rec = classify.classify(scene["src"], str(out), scene["wkts"], scene["labels"], dst_confidence=str(conf),
                            method=method, report_path=str(rep), folds=5)
    arr, ds = _read(out)
    held = scene["held"]
    accuracy = float((arr[held] == scene["truth"][held]).mean())
    cv = rec["validation"]["overall_accuracy"]
    assert accuracy >= 0.95, accuracy
    assert abs(cv - accuracy) <= 0.05, (cv, accuracy)
    assert rec["validation"]["folds"] == 5
    # outputs: same grid, class values as labelled, confidence in 0..1 and higher where right
    assert ds.GetGeoTransform() == GT and arr.dtype == np.uint8
    assert set(np.unique(arr)) == {1, 2, 3, 4}
    assert ds.GetRasterBand(1).GetRasterColorTable() is not None
    cfg = json.loads(ds.GetMetadataItem("THOR_CONFIG"))
    assert cfg["operation"] == "classify" and [c["value"] for c in cfg["classes"]] == [1, 2, 3, 4]
    c, _ = _read(conf)
    assert c.min() >= 0 and c.max() <= 1
    right = arr == scene["truth"]
    assert c[right].mean() > c[~right].mean()
    text = rep.read_text()
    assert "Overall accuracy: " in text and "Confusion matrix" in text and "precision" in text
    assert f"{cv:.3f}" in text


def test_planted_values_regression(scene, tmp_path):
    vals = [float(scene["value"][r, c]) for r, c in zip(scene["rows"], scene["cols"])]
    out = tmp_path / "v.tif"
    rec = regress.regress(scene["src"], str(out), scene["wkts"], vals, method="ridge",
                          report_path=str(tmp_path / "r.html"))
    arr, ds = _read(out)
    held = scene["held"]
    truth = scene["value"][held]
    pred = arr[held].astype(np.float64)
    r2 = 1 - ((truth - pred) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    rmse = float(np.sqrt(((truth - pred) ** 2).mean()))
    assert r2 >= 0.85
    assert abs(rec["validation"]["r2"] - r2) <= 0.05 and abs(rec["validation"]["rmse"] - rmse) <= 0.05
    html = (tmp_path / "r.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "R²" in html
    rec = regress.regress(scene["src"], str(tmp_path / "k.tif"), scene["wkts"], vals, method="knn", k=3)
    assert rec["validation"]["r2"] > 0.5


def test_saved_model_applies_identically_and_refuses_other_rasters(scene, tmp_path):
    out, model = tmp_path / "c.tif", tmp_path / "m.npz"
    classify.classify(scene["src"], str(out), scene["wkts"], ["water" if v == 1 else f"class {v}" for v in
                                                              scene["labels"]],
                      method="logistic", model_path=str(model), folds=0)
    # the file is an npz of plain arrays and one JSON document: nothing pickled
    with zipfile.ZipFile(model) as z:
        assert all(n.endswith(".npy") for n in z.namelist())
    with np.load(model, allow_pickle=False) as z:
        doc = json.loads(bytes(z["meta_json"]).decode())
    assert doc["fitted_on"]["band_count"] == 48 and doc["libraries"]["numpy"] == np.__version__
    assert [c["name"] for c in doc["classes"]] == ["class 2", "class 3", "class 4", "water"]
    again, conf = tmp_path / "again.tif", tmp_path / "conf.tif"
    apply_model.apply_model(scene["src"], str(model), str(again), dst_confidence=str(conf))
    a, _ = _read(out)
    b, ds = _read(again)
    assert np.array_equal(a, b)
    assert json.loads(ds.GetMetadataItem("THOR_CONFIG"))["classes"][3]["name"] == "water"
    assert ds.GetRasterBand(1).GetRasterColorTable() is not None
    # another band count
    other = write_raster(tmp_path / "other.tif", np.ones((32, 8, 8), np.float32), GT, epsg=32633)
    with pytest.raises(ThorInputError, match="band count: fitted on 48, this raster has 32"):
        apply_model.apply_model(other, str(model), str(tmp_path / "x.tif"))
    # same band count, another embedding model recorded
    arr, _ = _read(scene["src"])
    grid = write_raster(tmp_path / "grid.tif", arr[:, :16, :16], GT, epsg=32633)
    ds = gdal.Open(grid, gdal.GA_Update)
    ds.SetMetadataItem("THOR_MODEL", "thor_v1_base")
    ds = None
    with pytest.raises(ThorInputError, match="embedding model: fitted on none recorded, this raster has thor_v1_base"):
        apply_model.apply_model(grid, str(model), str(tmp_path / "x.tif"))
    assert not (tmp_path / "x.tif").exists()
    # not a model file
    (tmp_path / "fake.npz").write_bytes(b"not a zip")
    with pytest.raises(ThorInputError, match="not a model file"):
        apply_model.apply_model(scene["src"], str(tmp_path / "fake.npz"), str(tmp_path / "x.tif"))


def test_regression_model_round_trip(scene, tmp_path):
    vals = [float(scene["value"][r, c]) for r, c in zip(scene["rows"], scene["cols"])]
    for method in ("ridge", "knn"):
        out, model = tmp_path / f"{method}.tif", tmp_path / f"{method}.npz"
        regress.regress(scene["src"], str(out), scene["wkts"], vals, method=method, model_path=str(model), folds=0)
        again = tmp_path / f"{method}_again.tif"
        apply_model.apply_model(scene["src"], str(model), str(again))
        assert np.array_equal(_read(out)[0], _read(again)[0])


def test_polygons_conflicts_and_outside_features_are_reported(scene, tmp_path):
    x0, y0 = GT[0], GT[3]
    square = lambda a, b, s: (f"POLYGON (({x0 + a} {y0 - b}, {x0 + a + s} {y0 - b}, {x0 + a + s} {y0 - b - s}, "
                              f"{x0 + a} {y0 - b - s}, {x0 + a} {y0 - b}))")
    wkts = scene["wkts"] + [square(5, 5, 40), square(25, 25, 40), "POINT (0 0)"]
    labels = scene["labels"] + [1, 2, 3]
    logs = []
    rec = classify.classify(scene["src"], str(tmp_path / "c.tif"), wkts, labels, log=logs.append, folds=3)
    t = rec["training"]
    assert t["features_outside_raster"] == 1 and t["cells_with_conflicting_labels"] > 0
    assert any("outside the embedding raster" in m for m in logs)
    assert any("different labels" in m for m in logs)


def test_bad_inputs_give_clear_errors(scene, tmp_path):
    src, out = scene["src"], str(tmp_path / "c.tif")
    with pytest.raises(ThorInputError, match="no labelled features"):
        classify.classify(src, out, [], [])
    with pytest.raises(ThorInputError, match="no labels"):
        classify.classify(src, out, scene["wkts"][:3], [None, "", None])
    with pytest.raises(ThorInputError, match="only one class"):
        classify.classify(src, out, scene["wkts"][:5], [7] * 5)
    with pytest.raises(ThorInputError, match="all labelled features lie outside"):
        classify.classify(src, out, ["POINT (0 0)", "POINT (1 1)"], [1, 2])
    with pytest.raises(ThorInputError, match="not finite numbers.*'tall'"):
        regress.regress(src, out, scene["wkts"][:3], ["1.5", "tall", 2.0], feature_names=["a", "b", "c"])
    with pytest.raises(ThorInputError, match="same value"):
        regress.regress(src, out, scene["wkts"][:3], [2.0, "2", 2])
    with pytest.raises(ThorConfigError, match=r"\.html"):
        classify.classify(src, out, scene["wkts"], scene["labels"], report_path=str(tmp_path / "r.pdf"))
    with pytest.raises(ThorConfigError, match="overwrite its input"):
        classify.classify(src, src, scene["wkts"], scene["labels"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fit, kind, target", [(classify.classify, "classifier", "label"),
                                               (regress.regress, "regressor", "value")])
def test_fit_argument_checks_name_the_fit(scene, tmp_path, fit, kind, target):
    src, out, wkts = scene["src"], str(tmp_path / "o.tif"), scene["wkts"][:2]
    with pytest.raises(ThorConfigError, match=f"unknown {kind} 'svm'"):
        fit(src, out, wkts, [1, 2], method="svm")
    with pytest.raises(ThorConfigError, match=r"k \(neighbours\) must be an integer >= 1"):
        fit(src, out, wkts, [1, 2], k=0)
    with pytest.raises(ThorConfigError, match="max_samples must be an integer >= 10"):
        fit(src, out, wkts, [1, 2], max_samples=5)
    with pytest.raises(ThorConfigError, match=f"one {target} per feature"):
        fit(src, out, wkts, [1])
    with pytest.raises(ThorConfigError, match="two outputs are written"):
        fit(src, out, wkts, [1, 2], report_path=out)
    with pytest.raises(ThorConfigError, match="model files are .npz files"):
        fit(src, out, wkts, [1, 2], model_path=str(tmp_path / "m.pkl"))
    assert list(tmp_path.iterdir()) == []


def test_few_features_per_class_skip_kfold_honestly(scene, tmp_path):
    rec = classify.classify(scene["src"], str(tmp_path / "c.tif"), scene["wkts"][:1] + scene["wkts"][20:22],
                            [1, 2, 2], report_path=str(tmp_path / "r.md"))
    assert rec["validation"]["folds"] == 0
    assert "at least 2 labelled features in every class" in (tmp_path / "r.md").read_text()


def test_decimal_comma_and_numeric_text_values():
    assert regress.numeric_values(["1,5", " 2 ", 3, None, ""]) == [1.5, 2.0, 3.0, None, None]


@pytest.mark.skipif(not learners.sklearn_available(), reason="scikit-learn is not installed here")
def test_random_forest_exported_trees_match_scikit_learn(scene, tmp_path):
    from sklearn.ensemble import RandomForestClassifier

    out, model = tmp_path / "rf.tif", tmp_path / "rf.npz"
    rec = classify.classify(scene["src"], str(out), scene["wkts"], scene["labels"], method="random_forest",
                            model_path=str(model))
    arr, _ = _read(out)
    assert (arr[scene["held"]] == scene["truth"][scene["held"]]).mean() >= 0.9
    assert rec["learner"]["n_trees"] == 100
    # the forest as exported arrays (applied with numpy) predicts what scikit-learn's object predicts
    from sklearn.ensemble import RandomForestRegressor

    emb, _ = _read(scene["src"])
    xs = emb[:, scene["rows"], scene["cols"]].T.astype(np.float32)
    y = np.array(scene["labels"]) - 1
    x = np.random.default_rng(0).normal(size=(50, 48)).astype(np.float32)
    mine = learners.Forest("classification", n_trees=20, seed=3, n_classes=4).fit(xs, y)
    ref = RandomForestClassifier(n_estimators=20, random_state=3, n_jobs=1).fit(xs, y)
    assert np.allclose(mine.predict_proba(x), ref.predict_proba(x))
    learners.save_model(str(tmp_path / "f.npz"), mine, {})
    loaded, _ = learners.load_model(str(tmp_path / "f.npz"))
    assert np.array_equal(loaded.predict_proba(x), mine.predict_proba(x))
    v = emb[0, scene["rows"], scene["cols"]]
    mine = learners.Forest("regression", n_trees=10, seed=1).fit(xs, v)
    ref = RandomForestRegressor(n_estimators=10, random_state=1, n_jobs=1).fit(xs, v)
    assert np.allclose(mine.predict(x), ref.predict(x))


def test_sample_limit_and_cancel(scene, tmp_path):
    logs = []
    model = tmp_path / "m.npz"
    classify.classify(scene["src"], str(tmp_path / "c.tif"), scene["wkts"], scene["labels"], max_samples=30,
                      model_path=str(model), folds=0, log=logs.append)
    assert any("fitting on a random 30" in m for m in logs)
    learner, doc = learners.load_model(str(model))
    assert learner.train.shape == (30, 48) and set(learner.labels.tolist()) == {0, 1, 2, 3}
    assert doc["parameters"]["max_samples"] == 30
    calls = []

    def cancel_later():
        calls.append(1)
        return len(calls) > 3

    from thor_qgis.errors import ThorCanceled

    with pytest.raises(ThorCanceled):
        classify.classify(scene["src"], str(tmp_path / "x.tif"), scene["wkts"], scene["labels"],
                          dst_confidence=str(tmp_path / "xc.tif"), is_canceled=cancel_later, block_pixels=1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif", "m.npz"]
