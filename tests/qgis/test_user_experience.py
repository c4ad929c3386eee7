"""What a new user sees: outputs that load cleanly, honest styling, tags, help links, settings, messages."""
import json
import os
import time

import numpy as np
import pytest
from qgis.core import (
    QgsApplication,
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingUtils,
    QgsProject,
    QgsVectorLayer,
)

RANDOM_TINY = {"MODEL_KEY": "thor_v1_tiny", "PRETRAINED": False, "BATCH_SIZE": 4}


def _points_layer(xy, epsg=32632):
    layer = QgsVectorLayer(f"Point?crs=EPSG:{epsg}&field=name:string", "points", "memory")
    feats = []
    for i, (x, y) in enumerate(xy):
        f = QgsFeature(layer.fields())
        f.setAttributes([f"p{i}"])
        f.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(x, y)))
        feats.append(f)
    layer.dataProvider().addFeatures(feats)
    return layer


def _run_task(alg_id, params):
    """Run as the toolbox does (QgsProcessingAlgRunnerTask, output to be loaded into the project)."""
    alg = QgsApplication.processingRegistry().createAlgorithmById(alg_id)
    project = QgsProject.instance()
    context = QgsProcessingContext()
    context.setProject(project)
    feedback = QgsProcessingFeedback()
    params = dict(params, OUTPUT=QgsProcessingOutputLayerDefinition(params["OUTPUT"], project))
    task = QgsProcessingAlgRunnerTask(alg, params, context, feedback)
    done = {}
    task.executed.connect(lambda ok, results: done.update(ok=ok, results=results))
    QgsApplication.taskManager().addTask(task)
    t0 = time.time()
    while task.status() not in (task.Complete, task.Terminated):
        QgsApplication.processEvents()
        time.sleep(0.02)
        assert time.time() - t0 < 300, "task did not finish"
    QgsApplication.processEvents()
    return done.get("ok"), done.get("results"), context


def test_pooled_to_temporary_output_registers_only_the_real_layer(plugin, sample_raster):
    """A temporary pooled output used to register a second, phantom "memory:" layer that Processing then
    reported as "not correctly generated" (every toolbox run ended in red)."""
    pts = _points_layer([(500000 + 1440, 5000000 - 1440), (500000 + 4000, 5000000 - 4000)])
    ok, results, context = _run_task("thor:pooled_from_raster", {
        "FEATURES": pts, "INPUT": str(sample_raster), **RANDOM_TINY, "OUTPUT": "TEMPORARY_OUTPUT"})
    assert ok, "run failed"
    to_load = context.layersToLoadOnCompletion()
    assert len(to_load) == 1, f"layers to load: {list(to_load)}"
    # exactly what handleAlgorithmResults does for each entry: every one must resolve to a layer
    for key in to_load:
        layer = QgsProcessingUtils.mapLayerFromString(key, context)
        assert layer is not None and layer.isValid(), f"{key} would be reported as not correctly generated"
        assert layer.featureCount() == 2


def test_similarity_ramp_stretches_to_the_data_and_legend_shows_true_range(plugin, tmp_path):
    """Similarities of 0.996..1.0 on a fixed −1..1 ramp were one flat colour."""
    from qgis.core import QgsRasterLayer

    from tests.helpers import write_raster
    from thor_embeddings.processing_provider.styling import style_similarity

    rng = np.random.default_rng(0)
    values = (0.996 + 0.004 * rng.random((40, 40))).astype("float32")
    path = write_raster(tmp_path / "sim.tif", values, (500000, 160, 0, 5000000, 0, -160), nodata=-9999)
    layer = QgsRasterLayer(path, "sim")
    style_similarity(layer)
    renderer = layer.renderer()
    assert renderer.type() == "singlebandpseudocolor"
    lo, hi = renderer.classificationMin(), renderer.classificationMax()
    assert 0.996 <= lo < hi <= 1.0, (lo, hi)
    # distinct pixels get distinct colours: the picture is not one flat colour
    colours = {renderer.shader().shade(float(v))[1:4] for v in np.quantile(values, [0.05, 0.5, 0.95])}
    assert len(colours) == 3
    items = renderer.shader().rasterShaderFunction().colorRampItemList()
    assert f"min {values.min():.4f}" in items[0].label and f"max {values.max():.4f}" in items[-1].label
