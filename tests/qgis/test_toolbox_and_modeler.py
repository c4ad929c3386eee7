"""The toolbox path (a QgsProcessingAlgRunnerTask in the task manager) and the graphical modeler."""
import os
import threading
import time

import numpy as np
from qgis.core import (
    QgsApplication,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingParameterRasterLayer,
    QgsProject,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import Qt

from tests.conftest import FIXTURE_CKPT, need_fixtures
from tests.helpers import write_raster


def _wait(task, timeout=300):
    t0 = time.time()
    while task.status() not in (task.Complete, task.Terminated):
        QgsApplication.processEvents()
        time.sleep(0.01)
        assert time.time() - t0 < timeout, "task did not finish"
    for _ in range(20):  # let the finished/executed signals be delivered
        QgsApplication.processEvents()


def _run_as_toolbox(params, cancel_after_progress=None):
    """Run thor:grid_from_raster as the toolbox does; returns (ok, results, thread ids, progress, context)."""
    from processing.gui.Postprocessing import handleAlgorithmResults

    alg = QgsApplication.processingRegistry().createAlgorithmById("thor:grid_from_raster")
    project = QgsProject.instance()
    context = QgsProcessingContext()
    context.setProject(project)
    feedback = QgsProcessingFeedback()
    # as the algorithm dialog does with "Open output file after running algorithm" checked
    params = dict(params, OUTPUT=QgsProcessingOutputLayerDefinition(params["OUTPUT"], project))
    threads, progress, done = set(), [], {}

    def on_progress(p):
        threads.add(threading.get_ident())
        progress.append(p)
        if cancel_after_progress is not None and p >= cancel_after_progress and not feedback.isCanceled():
            feedback.cancel()

    feedback.progressChanged.connect(on_progress, Qt.DirectConnection)
    task = QgsProcessingAlgRunnerTask(alg, params, context, feedback)

    def executed(ok, results):
        done["ok"], done["results"] = ok, results
        if ok:
            handleAlgorithmResults(alg, context, feedback, showResults=False, parameters=params)

    task.executed.connect(executed)
    QgsApplication.taskManager().addTask(task)
    _wait(task)
    return done.get("ok"), done.get("results"), threads, progress


def test_runs_in_task_manager_off_main_thread_and_loads_output(plugin, sample_raster, tmp_path):
    need_fixtures()
    out = str(tmp_path / "task_grid.tif")
    params = {"INPUT": str(sample_raster), "MODEL_KEY": "thor_v1_tiny", "CHECKPOINT": str(FIXTURE_CKPT),
              "BATCH_SIZE": 1, "OUTPUT": out}
    ok, results, threads, progress = _run_as_toolbox(params)
    assert ok and results["OUTPUT"] == out
    assert threads and threading.get_ident() not in threads, "processAlgorithm ran on the main thread"
    assert len(progress) >= 4 and max(progress) == 100
    layers = [lyr for lyr in QgsProject.instance().mapLayers().values()
              if isinstance(lyr, QgsRasterLayer) and os.path.abspath(lyr.source()) == out]
    assert len(layers) == 1
    layer = layers[0]
    assert layer.isValid() and layer.bandCount() == 192 and layer.crs().authid() == "EPSG:32632"
    assert layer.renderer().type() == "multibandcolor"
    QgsProject.instance().removeMapLayer(layer.id())


def test_cancel_stops_within_a_batch_and_registers_nothing(plugin, tmp_path):
    need_fixtures()
    # 4 x 4 tiles, one tile per batch: cancel at the first progress report
    data = np.random.default_rng(3).uniform(100, 3000, (10, 4 * 288, 4 * 288)).astype(np.float32)
    src = write_raster(tmp_path / "big.tif", data, (400000.0, 10.0, 0.0, 5000000.0, 0.0, -10.0))
    out = str(tmp_path / "canceled.tif")
    before = set(QgsProject.instance().mapLayers())
    params = {"INPUT": src, "MODEL_KEY": "thor_v1_tiny", "CHECKPOINT": str(FIXTURE_CKPT), "BATCH_SIZE": 1,
              "OUTPUT": out}
    ok, _, _, progress = _run_as_toolbox(params, cancel_after_progress=1.0)
    assert not ok
    # the model step reports per tile: 16 tiles; canceled after at most one more batch
    model_step = [p for p in progress if p > 50]
    assert max(model_step, default=0) <= 50 + 50 * 2 / 16 + 1e-6
    assert not os.path.exists(out)
    assert [f for f in os.listdir(tmp_path) if "canceled" in f] == []
    assert set(QgsProject.instance().mapLayers()) == before


def child(alg_id, child_id, sources):
    """A model child with every parameter set, as the modeler dialog does: given sources, else defaults."""
    c = QgsProcessingModelChildAlgorithm(alg_id)
    c.setChildId(child_id)
    for d in c.algorithm().parameterDefinitions():
        if d.isDestination():
            continue
        if d.name() in sources:
            src = sources[d.name()]
        else:
            src = QgsProcessingModelChildParameterSource.fromStaticValue(d.defaultValue())
        c.addParameterSources(d.name(), [src])
    return c


def test_model_chains_grid_into_native_algorithm(plugin, sample_raster, tmp_path):
    need_fixtures()
    import processing

    model = QgsProcessingModelAlgorithm("thor chain", "tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("s2", "Sentinel-2"),
                            QgsProcessingModelParameter("s2"))
    static = QgsProcessingModelChildParameterSource.fromStaticValue
    grid = child("thor:grid_from_raster", "grid", {
        "INPUT": QgsProcessingModelChildParameterSource.fromModelParameter("s2"),
        "MODEL_KEY": static("thor_v1_tiny"), "CHECKPOINT": static(str(FIXTURE_CKPT))})
    model.addChildAlgorithm(grid)
    stats = child("native:rasterlayerstatistics", "stats", {
        "INPUT": QgsProcessingModelChildParameterSource.fromChildOutput("grid", "OUTPUT"), "BAND": static(1)})
    out = QgsProcessingModelOutput("stats_html", "statistics")
    out.setChildOutputName("OUTPUT_HTML_FILE")
    stats.setModelOutputs({"stats_html": out})
    model.addChildAlgorithm(stats)
    ok, msg = model.validate() if hasattr(model, "validate") else (True, "")
    assert ok, msg
    html = str(tmp_path / "stats.html")
    res = processing.run(model, {"s2": str(sample_raster), "stats:stats_html": html})
    assert os.path.exists(html)
    assert "stats:stats_html" in res or "stats_html" in str(res)
    text = open(html, encoding="utf-8").read()
    assert "Mean" in text or "mean" in text
