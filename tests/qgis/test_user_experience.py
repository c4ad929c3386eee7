"""What a new user sees: outputs that load cleanly, honest styling, tags, help links, settings, messages."""
import json
import sys
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


@pytest.mark.parametrize("output", ["TEMPORARY_OUTPUT", "pooled.gpkg"])
def test_pooled_output_registers_only_the_real_layer(plugin, sample_raster, tmp_path, output):
    """A temporary pooled output used to register a second, phantom "memory:" layer that Processing then
    reported as "not correctly generated" (every toolbox run ended in red)."""
    pts = _points_layer([(500000 + 1440, 5000000 - 1440), (500000 + 4000, 5000000 - 4000)])
    if output != "TEMPORARY_OUTPUT":
        output = str(tmp_path / output)
    ok, results, context = _run_task("thor:pooled_from_raster", {
        "FEATURES": pts, "INPUT": str(sample_raster), **RANDOM_TINY, "OUTPUT": output})
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


def _thor_algorithms():
    return [a for a in QgsApplication.processingRegistry().algorithms() if a.provider().id() == "thor"]


def _readme_anchors():
    from thor_embeddings.processing_provider.base import readme_anchor

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        return {readme_anchor(line.lstrip("#")) for line in f if line.startswith("#")}


def test_readme_anchor_follows_the_web_rule():
    from thor_embeddings.processing_provider.base import readme_anchor

    assert readme_anchor("thor:grid_from_raster") == "thorgrid_from_raster"
    assert readme_anchor("Looking at embeddings") == "looking-at-embeddings"


def test_every_algorithm_has_a_help_url_to_its_own_readme_section(plugin):
    anchors = _readme_anchors()
    algs = _thor_algorithms()
    assert len(algs) >= 9
    for alg in algs:
        url = alg.helpUrl()
        assert url.startswith("https://") and "/README.md#" in url, (alg.id(), url)
        assert url.split("#", 1)[1] in anchors, f"{alg.id()}: README has no section for {url}"


@pytest.mark.parametrize("query", ["sentinel", "embedding", "foundation model"])
def test_toolbox_search_finds_every_algorithm(plugin, query):
    """The toolbox filter matches names and tags (case-insensitively): each query must find every algorithm."""
    for alg in _thor_algorithms():
        words = [alg.displayName().lower(), *[t.lower() for t in alg.tags()]]
        assert any(query in w for w in words), f"{alg.id()} not found by '{query}'"


def test_toolbox_groups_sort_in_workflow_order(plugin):
    by_group = {}
    for alg in _thor_algorithms():
        by_group.setdefault(alg.group(), set()).add(alg.name())
    order = sorted(by_group, key=str.lower)  # how the toolbox sorts groups
    first = {name: i for i, g in enumerate(order) for name in by_group[g]}
    assert first["ee_composite"] < first["grid_from_raster"] < first["ee_grid"] < first["embedding_to_rgb"] \
        < first["classify"]
    assert first["grid_from_raster"] == first["pooled_from_raster"]


def test_raster_output_gets_sidecar_record_and_one_line_summary(plugin, sample_raster, tmp_path):
    import processing
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    logged = []

    class Feedback(QgsProcessingFeedback):
        def pushInfo(self, info):  # noqa: N802
            logged.append(info)
            super().pushInfo(info)

    out = str(tmp_path / "grid.tif")
    processing.run("thor:grid_from_raster", {"INPUT": str(sample_raster), **RANDOM_TINY, "OUTPUT": out},
                   context=QgsProcessingContext(), feedback=Feedback())
    sidecar = tmp_path / "grid.thor.json"
    assert sidecar.is_file()
    record = json.loads(sidecar.read_text())
    from osgeo import gdal

    assert record["model"] == json.loads(gdal.Open(out).GetMetadataItem("THOR_CONFIG"))["model"]
    assert record["model"]["model_key"] == "thor_v1_tiny"
    summary = [line for line in logged if line.startswith("THOR ") and line.endswith(out)]
    assert len(summary) == 1 and "RANDOM weights" in summary[0] and "thor_v1_tiny" in summary[0], logged[-5:]


class _Recorder(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.infos, self.errors = [], []

    def pushInfo(self, info):  # noqa: N802
        self.infos.append(info)
        super().pushInfo(info)

    def reportError(self, error, fatalError=False):  # noqa: N802
        self.errors.append(error)
        super().reportError(error, fatalError)


def test_random_weights_warning_is_said_once(plugin, sample_raster, tmp_path):
    import processing

    feedback = _Recorder()
    processing.run("thor:grid_from_raster", {"INPUT": str(sample_raster), **RANDOM_TINY,
                                             "OUTPUT": str(tmp_path / "g.tif")},
                   context=QgsProcessingContext(), feedback=feedback)
    said = [m for m in feedback.infos + feedback.errors if "RANDOM weights (" in m]
    assert len(said) == 1 and said[0] in feedback.errors, said
    assert any(m.endswith("weights: random (testing only).") for m in feedback.infos)


def test_settings_page_round_trip(plugin, tmp_path):
    """The provider's settings are on Processing's options page, and what is set there is what the
    algorithms use: project and device defaults, the imagery cache folder."""
    from processing.core.ProcessingConfig import ProcessingConfig

    from thor_embeddings.processing_provider import ee_params, settings

    names = [settings.EE_PROJECT, settings.EE_API_URL, settings.CACHE_DIR, settings.CACHE_MAX_MB, settings.DEVICE,
             settings.DEPS_DIR]
    for name in names:
        assert name in ProcessingConfig.settings, name
        assert ProcessingConfig.settings[name].group == "THOR embeddings"
    saved = {n: ProcessingConfig.getSetting(n) for n in names}
    env_saved = {k: os.environ.pop(k, None) for k in ("EE_PROJECT", "GOOGLE_CLOUD_PROJECT", "THOR_CACHE_DIR")}
    try:
        ProcessingConfig.setSettingValue(settings.EE_PROJECT, "my-ee-project")
        (tmp_path / "cache").mkdir()
        ProcessingConfig.setSettingValue(settings.CACHE_DIR, str(tmp_path / "cache"))
        ProcessingConfig.setSettingValue(settings.DEVICE, settings.DEVICE_CHOICES.index("cpu"))
        alg = QgsApplication.processingRegistry().createAlgorithmById("thor:ee_grid")
        assert alg.parameterDefinition("PROJECT").defaultValue() == "my-ee-project"
        assert alg.parameterDefinition("DEVICE").defaultValue() == "cpu"
        assert ee_params.cache_dir() == str(tmp_path / "cache")
        cfg = ee_params.EEConfig(project=None, api_url=None, service_account_key=None, use_cache=True,
                                 cache_dir=ee_params.cache_dir())
        assert cfg.cache == str(tmp_path / "cache")
        assert ee_params.EEConfig(None, None, None, use_cache=False, cache_dir="x").cache is False
        os.environ["THOR_CACHE_DIR"] = str(tmp_path / "from_env")
        assert ee_params.cache_dir() == str(tmp_path / "from_env")  # the environment wins
    finally:
        for n, v in saved.items():
            if n == settings.DEVICE:
                v = settings.DEVICE_CHOICES.index(v) if v in settings.DEVICE_CHOICES else 0
            ProcessingConfig.setSettingValue(n, v)
        for k, v in env_saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_cache_trim_removes_least_recently_used_files_first(tmp_path):
    from thor_embeddings.thor_qgis.disk_cache import folder_size, trim

    for i in range(5):
        p = tmp_path / f"{i:02d}" / f"k{i}.npy"
        p.parent.mkdir()
        p.write_bytes(b"x" * 1000)
        os.utime(p, (1_000_000 + i, 1_000_000 + i))
    (tmp_path / "keep.txt").write_bytes(b"y" * 5000)  # not a cache entry: never touched
    removed, freed = trim(str(tmp_path), 2500)
    assert (removed, freed) == (3, 3000)
    assert sorted(p.name for p in tmp_path.rglob("*.npy")) == ["k3.npy", "k4.npy"]
    assert (tmp_path / "keep.txt").exists()
    assert folder_size(str(tmp_path)) == (7000, 3)
    assert trim(str(tmp_path), 0) == (0, 0)


@pytest.fixture(scope="module")
def tiny_grid(plugin, sample_raster, tmp_path_factory):
    import processing

    out = str(tmp_path_factory.mktemp("grid") / "grid.tif")
    processing.run("thor:grid_from_raster", {"INPUT": str(sample_raster), **RANDOM_TINY, "OUTPUT": out})
    return out


def test_a_thor_grid_picked_as_imagery_is_named_for_what_it_is(tiny_grid, tmp_path):
    import processing
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException) as err:
        processing.run("thor:grid_from_raster", {"INPUT": tiny_grid, **RANDOM_TINY,
                                                 "OUTPUT": str(tmp_path / "g2.tif")})
    assert "looks like a THOR embedding grid" in str(err.value) and "not Sentinel-2" in str(err.value)
    rgb = str(tmp_path / "rgb.tif")
    processing.run("thor:embedding_to_rgb", {"INPUT": tiny_grid, "OUTPUT": rgb})
    with pytest.raises(QgsProcessingException) as err:
        processing.run("thor:grid_from_raster", {"INPUT": rgb, **RANDOM_TINY, "OUTPUT": str(tmp_path / "g3.tif")})
    assert "the RGB picture of an embedding" in str(err.value)
    assert not (tmp_path / "g2.tif").exists() and not (tmp_path / "g3.tif").exists()


def test_analysis_of_a_picture_or_of_imagery_warns(tiny_grid, sample_raster, tmp_path):
    import processing

    rgb = str(tmp_path / "rgb.tif")
    processing.run("thor:embedding_to_rgb", {"INPUT": tiny_grid, "OUTPUT": rgb})
    for source, expected in ((rgb, "the RGB picture of an embedding"), (str(sample_raster), "Sentinel-2 imagery"),
                             (tiny_grid, None)):
        feedback = _Recorder()
        processing.run("thor:kmeans_clusters", {"INPUT": source, "K": 2, "OUTPUT": str(tmp_path / "k.tif")},
                       context=QgsProcessingContext(), feedback=feedback)
        warnings = [e for e in feedback.errors if "not an embedding raster" in e]
        if expected is None:
            assert warnings == []
        else:
            assert len(warnings) == 1 and expected in warnings[0], feedback.errors


def test_loaded_outputs_get_names_that_tell_them_apart(plugin, sample_raster, tmp_path):
    names = {}
    for merge in ("mean", "concat"):
        out = str(tmp_path / f"grid_{merge}.tif")
        ok, _, context = _run_task("thor:grid_from_raster", {
            "INPUT": str(sample_raster), **RANDOM_TINY, "GROUP_MERGE": merge, "OUTPUT": out})
        assert ok
        names[merge] = context.layerToLoadOnCompletionDetails(out).name
    assert names["mean"] != names["concat"]
    assert all("thor_v1_tiny" in n and "random weights" in n for n in names.values()), names
    assert "concat" in names["concat"]
    rgb = str(tmp_path / "rgb.tif")
    ok, _, context = _run_task("thor:embedding_to_rgb", {"INPUT": str(tmp_path / "grid_mean.tif"), "OUTPUT": rgb})
    assert ok and context.layerToLoadOnCompletionDetails(rgb).name == "RGB of grid_mean"


def test_dialog_labels_are_short_and_the_terse_ones_have_help(plugin):
    """Long labels forced a horizontal scrollbar at the dialog's default size; the detail is in the help."""
    for alg in _thor_algorithms():
        for d in alg.parameterDefinitions():
            assert len(d.description()) <= 40, f"{alg.id()} {d.name()}: '{d.description()}'"
            if d.name() in ("NORMALIZATION", "DEVICE", "BATCH_SIZE", "POOLING", "BAND_MAP", "CHECKPOINT",
                            "BUFFER", "SERVICE_ACCOUNT_KEY"):
                assert len(d.help()) > 40, f"{alg.id()} {d.name()} has no help"


def test_packages_folder_setting_is_where_the_plugin_looks(plugin, tmp_path, monkeypatch):
    from qgis.core import QgsSettings

    from thor_embeddings import dependencies
    from thor_embeddings.processing_provider import settings

    monkeypatch.delenv("THOR_DEPS_DIR", raising=False)
    key = settings.PREFIX + settings.DEPS_DIR
    before = QgsSettings().value(key, None)
    try:
        QgsSettings().setValue(key, str(tmp_path / "deps"))
        assert dependencies.target_dir() == str(tmp_path / "deps")
        monkeypatch.setenv("THOR_DEPS_DIR", str(tmp_path / "env"))
        assert dependencies.target_dir() == str(tmp_path / "env")  # the environment wins
        QgsSettings().remove(key)
        monkeypatch.delenv("THOR_DEPS_DIR")
        assert dependencies.target_dir().endswith(os.path.join("python", "thor_deps",
                                                               f"py{sys.version_info[0]}.{sys.version_info[1]}"))
    finally:
        if before is None:
            QgsSettings().remove(key)
        else:
            QgsSettings().setValue(key, before)


# what belongs together in the dialogs, in this order: the imagery and area, the sensor and dates, Earth
# Engine access, the model, the output
_DIALOG_GROUPS = [
    ("imagery", {"INPUT", "S2_PRODUCT", "FEATURES", "BAND_MAP", "DN_OFFSET", "EXTENT", "POINT", "BUFFER"}),
    ("sensor and time", {"START_DATE", "END_DATE", "COLLECTION", "CLOUDY_PCT", "COMPOSITE", "SCALE", "FILL_VALUE"}),
    ("Earth Engine access", {"PROJECT", "SERVICE_ACCOUNT_KEY", "FETCH_WORKERS", "REQUEST_DEADLINE", "USE_CACHE"}),
    ("model", {"MODEL_KEY", "PRETRAINED", "CHECKPOINT", "IMAGE_SIZE", "PATCH_SIZE", "NORMALIZATION", "DEVICE",
               "BACKEND", "BATCH_SIZE", "PRECISION", "DASK_SCHEDULER"}),
    ("output", {"GROUP_MERGE", "POOLING", "SEAMS", "CONTEXT_MARGIN", "DRY_RUN", "OUTPUT"}),
]


def _rank(name):
    for i, (_, names) in enumerate(_DIALOG_GROUPS):
        if name in names:
            return i
    return None


@pytest.mark.parametrize("alg_id", ["thor:grid_from_raster", "thor:pooled_from_raster", "thor:ee_composite",
                                    "thor:ee_grid", "thor:ee_pooled"])
def test_dialog_parameters_are_grouped(plugin, alg_id):
    from thor_embeddings.processing_provider.compat import PARAMETER_ADVANCED as advanced_flag

    alg = QgsApplication.processingRegistry().algorithmById(alg_id)
    lists = {True: [], False: []}
    for d in alg.parameterDefinitions():
        rank = _rank(d.name())
        assert rank is not None, f"{alg_id}: parameter {d.name()} belongs to no group of the dialog layout"
        lists[bool(d.flags() & advanced_flag)].append((rank, d.name()))
    for advanced, ranked in lists.items():
        assert [r for r, _ in ranked] == sorted(r for r, _ in ranked), \
            f"{alg_id} {'advanced' if advanced else 'main'} list out of group order: {[n for _, n in ranked]}"
    # a group's parameters are never split between the main list and Advanced where the sensor is concerned
    sensor = {name for advanced in lists for r, name in lists[advanced] if r == 1}
    if sensor:
        assert len({advanced for advanced in lists for r, _ in lists[advanced] if r == 1}) == 1, sensor


def test_default_margin_shrinks_to_fit_a_small_token_grid(plugin, sample_raster, tmp_path):
    """Changing only the image size must not fail on the default margin (3 tokens needs a 12 x 12 token grid
    for blending); a margin the user chose is still checked."""
    import processing
    from qgis.core import QgsProcessingException

    feedback = _Recorder()
    res = processing.run("thor:grid_from_raster", {"INPUT": str(sample_raster), **RANDOM_TINY, "IMAGE_SIZE": 96,
                                                   "OUTPUT": str(tmp_path / "g.tif")},
                         context=QgsProcessingContext(), feedback=feedback)
    assert res["BANDS"] == 192
    said = [m for m in feedback.infos if "instead of the default 3" in m]
    assert len(said) == 1 and "1 token(s)" in said[0] and "6 x 6" in said[0], said
    with pytest.raises(QgsProcessingException, match="margin must be 0 to 1"):
        processing.run("thor:grid_from_raster", {"INPUT": str(sample_raster), **RANDOM_TINY, "IMAGE_SIZE": 96,
                                                 "CONTEXT_MARGIN": 2, "OUTPUT": str(tmp_path / "g2.tif")})
