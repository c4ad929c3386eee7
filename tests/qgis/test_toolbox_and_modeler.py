"""The toolbox path (a QgsProcessingAlgRunnerTask in the task manager) and the graphical modeler."""
import contextlib
import inspect
import json
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
from tests.helpers import model_output_parameter, write_raster


def _wait(task, timeout=300):
    t0 = time.time()
    while task.status() not in (task.Complete, task.Terminated):
        QgsApplication.processEvents()
        time.sleep(0.01)
        assert time.time() - t0 < timeout, "task did not finish"
    for _ in range(20):  # let the finished/executed signals be delivered
        QgsApplication.processEvents()


@contextlib.contextmanager
def _stub_iface_with_a_layer_tree_view():
    """QGIS 3.44's result loading hands ``iface.layerTreeView()`` to C++ (QgsProcessingGuiUtils.addResultLayers);
    the test iface answers unknown methods with a MagicMock, which that refuses. A real view over the project's
    layer tree, as in the QGIS window, for the length of one run (deleted before QGIS can shut down)."""
    from processing.gui import Postprocessing
    from qgis.core import QgsLayerTreeModel
    from qgis.gui import QgsLayerTreeView
    from qgis.PyQt import sip

    stub = getattr(Postprocessing, "iface", None)  # QGIS 3.22 does not use it
    if stub is None:
        yield
        return
    view = QgsLayerTreeView()
    view.setModel(QgsLayerTreeModel(QgsProject.instance().layerTreeRoot(), view))
    stub.layerTreeView = lambda: view
    try:
        yield
    finally:
        del stub.layerTreeView
        sip.delete(view)


def _run_as_toolbox(params, cancel_after_progress=None, alg_id="thor:grid_from_raster"):
    """Run an algorithm as the toolbox does; returns (ok, results, thread ids, progress)."""
    from processing.gui.Postprocessing import handleAlgorithmResults

    alg = QgsApplication.processingRegistry().createAlgorithmById(alg_id)
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

    feedback.progressChanged.connect(on_progress, Qt.ConnectionType.DirectConnection)
    task = QgsProcessingAlgRunnerTask(alg, params, context, feedback)

    def executed(ok, results):
        done["ok"], done["results"] = ok, results
        if ok:
            # QGIS 3.22 takes showResults (False: no results viewer); 3.40 dropped the argument
            takes = inspect.signature(handleAlgorithmResults).parameters
            extra = {"showResults": False} if "showResults" in takes else {}
            handleAlgorithmResults(alg, context, feedback, parameters=params, **extra)

    task.executed.connect(executed)
    with _stub_iface_with_a_layer_tree_view():
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
    name = model_output_parameter(model, "stats", "stats_html")
    res = processing.run(model, {"s2": str(sample_raster), name: html})
    assert os.path.exists(html)
    assert res[name] == html
    text = open(html, encoding="utf-8").read()
    assert "Mean" in text or "mean" in text


STYLED_RUNS = r"""
import json, sys
sys.path.insert(0, sys.argv[1]); sys.path.append("/usr/share/qgis/python/plugins")
from qgis.core import (QgsApplication, QgsProject, QgsProcessingModelAlgorithm, QgsProcessingModelChildAlgorithm,
                       QgsProcessingModelChildParameterSource as Src, QgsProcessingModelOutput,
                       QgsProcessingModelParameter, QgsProcessingParameterRasterLayer)
app = QgsApplication([], False); app.initQgis()
from processing.core.Processing import Processing; Processing.initialize()
import processing, thor_embeddings
plugin = thor_embeddings.classFactory(None); plugin.initProcessing()
grid, work = sys.argv[2], sys.argv[3]
seen = []
for i in range(2):  # the second run must be styled too
    out = f"{work}/classes_{i}.tif"
    processing.runAndLoadResults("thor:kmeans_clusters", {"INPUT": grid, "K": 3, "OUTPUT": out})
    seen += [l.renderer().type() for l in QgsProject.instance().mapLayers().values() if l.source() == out]
model = QgsProcessingModelAlgorithm("two", "t")
model.addModelParameter(QgsProcessingParameterRasterLayer("emb", "e"), QgsProcessingModelParameter("emb"))
for cid, k in (("c3", 3), ("c4", 4)):
    c = QgsProcessingModelChildAlgorithm("thor:kmeans_clusters"); c.setChildId(cid)
    for d in c.algorithm().parameterDefinitions():
        if not d.isDestination():
            c.addParameterSources(d.name(), [Src.fromStaticValue(d.defaultValue())])
    c.addParameterSources("INPUT", [Src.fromModelParameter("emb")]); c.addParameterSources("K", [Src.fromStaticValue(k)])
    o = QgsProcessingModelOutput("out_" + cid, cid); o.setChildOutputName("OUTPUT"); c.setModelOutputs({"out_" + cid: o})
    model.addChildAlgorithm(c)
outs = [f"{work}/m3.tif", f"{work}/m4.tif"]
# QGIS 3.40 names the model's outputs "out_c3", 3.22 "c3:out_c3": found through their metadata
names = {(d.metadata().get("_modelChildId"), d.metadata().get("_modelChildOutputName")): d.name()
         for d in model.destinationParameterDefinitions()}
dest = lambda cid: names.get((cid, "out_" + cid), f"{cid}:out_{cid}")
processing.runAndLoadResults(model, {"emb": grid, dest("c3"): outs[0], dest("c4"): outs[1]})
seen += [l.renderer().type() for l in QgsProject.instance().mapLayers().values() if l.source() in outs]
print(json.dumps(seen))
"""


def test_outputs_are_styled_on_every_run_and_in_models_with_two_outputs(plugin, sample_raster, tmp_path):
    """Each loaded output gets its own post-processor: a shared one is deleted with the first run's
    context, so the second run loads unstyled, and a model with two styled outputs crashes QGIS. Run in a
    fresh QGIS process, as a user's session would be."""
    need_fixtures()
    import subprocess
    import sys

    import processing

    from tests.conftest import PLUGIN_DIR

    grid = str(tmp_path / "grid.tif")
    processing.run("thor:grid_from_raster", {"INPUT": str(sample_raster), "MODEL_KEY": "thor_v1_tiny",
                                             "CHECKPOINT": str(FIXTURE_CKPT), "OUTPUT": grid})
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    r = subprocess.run([sys.executable, "-c", STYLED_RUNS, str(PLUGIN_DIR), grid, str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "has been deleted" not in r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == ["paletted"] * 4
