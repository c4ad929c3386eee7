"""The plugin loads the way QGIS, the modeler and qgis_process load it."""
import configparser
import json

from qgis.core import Qgis, QgsApplication

from tests.conftest import PLUGIN_NAME, ROOT, run_qgis_process

EXPECTED_ALGORITHMS = {"grid_from_raster", "pooled_from_raster", "ee_composite", "ee_grid", "ee_pooled",
                       "embedding_to_rgb", "similarity_map", "kmeans_clusters", "change_map",
                       "classify", "regress", "apply_model", "extract_samples", "similarity_search", "trajectory_map"}


def _metadata():
    cp = configparser.ConfigParser(interpolation=None)
    assert cp.read(ROOT / "metadata.txt", encoding="utf-8")
    return cp["general"]


def _version_tuple(text):
    return tuple(int(p) for p in text.split("-")[0].split(".")[:3])


def test_provider_and_algorithms_registered(plugin):
    provider = QgsApplication.processingRegistry().providerById("thor")
    assert provider is not None
    names = {a.name() for a in provider.algorithms()}
    assert names == EXPECTED_ALGORITHMS
    for alg in provider.algorithms():
        assert alg.id() == f"thor:{alg.name()}"
        assert alg.name() == alg.name().lower()
        assert alg.displayName() and alg.group() and alg.groupId() == alg.groupId().lower()
        assert alg.shortHelpString()
        assert type(alg.createInstance()) is type(alg)


def test_provider_reports_plugin_version(plugin):
    provider = QgsApplication.processingRegistry().providerById("thor")
    assert provider.versionInfo() == _metadata()["version"]


def test_metadata_complete_and_qgis_version_in_range():
    md = _metadata()
    for key in ("name", "description", "about", "version", "author", "email", "tracker", "repository",
                "homepage", "tags", "hasProcessingProvider", "qgisMinimumVersion", "qgisMaximumVersion",
                "experimental", "icon", "changelog"):
        assert md.get(key, "").strip(), key
    assert md["hasProcessingProvider"] == "yes"
    assert md["qgisMinimumVersion"] == "3.22" and md["qgisMaximumVersion"] == "4.99"
    assert (ROOT / md["icon"]).is_file()
    running = _version_tuple(Qgis.QGIS_VERSION)
    assert _version_tuple(md["qgisMinimumVersion"]) <= running <= _version_tuple(md["qgisMaximumVersion"]) + (99,)


def test_unload_removes_provider(qgis_app, qgis_processing, plugin):
    import importlib

    registry = QgsApplication.processingRegistry()
    second = importlib.import_module(PLUGIN_NAME).classFactory(None)
    # the session's instance holds the id; unload it, load a fresh one, unload that, then restore
    plugin.unload()
    assert registry.providerById("thor") is None
    second.initProcessing()
    assert registry.providerById("thor") is not None
    second.unload()
    assert registry.providerById("thor") is None
    plugin.initProcessing()
    assert registry.providerById("thor") is not None


def test_qgis_process_lists_the_provider():
    r = run_qgis_process("list")
    assert r.returncode == 0, r.stderr
    assert "THOR embeddings" in r.stdout
    for name in EXPECTED_ALGORITHMS:
        assert f"thor:{name}" in r.stdout


def test_without_torch_algorithms_stay_listed_and_say_what_to_install(sample_raster, tmp_path):
    """QGIS's Python without the venv has no torch: the plugin still loads, and a run explains."""
    r = run_qgis_process("list", use_venv=False)
    assert r.returncode == 0, r.stderr
    assert "thor:grid_from_raster" in r.stdout
    r = run_qgis_process("help", "thor:grid_from_raster", use_venv=False)
    assert "torch" in r.stdout
    r = run_qgis_process("--json", "run", "thor:grid_from_raster", "--", f"INPUT={sample_raster}",
                         f"OUTPUT={tmp_path}/never.tif", use_venv=False)
    assert r.returncode != 0
    assert not (tmp_path / "never.tif").exists()
    assert "needs the Python package(s) torch" in (r.stderr + r.stdout)


def test_qgis_process_help_is_json(plugin):
    r = run_qgis_process("--json", "help", "thor:grid_from_raster")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    params = doc["parameters"]
    for key in ("INPUT", "BAND_MAP", "EXTENT", "DN_OFFSET", "MODEL_KEY", "PRETRAINED", "CHECKPOINT",
                "IMAGE_SIZE", "PATCH_SIZE", "NORMALIZATION", "GROUP_MERGE", "OUTPUT"):
        assert key in params, key
    assert params["MODEL_KEY"]["default_value"] == "thor_v1_base"


def test_missing_dependency_in_process_reaches_the_user(plugin, sample_raster, tmp_path, monkeypatch):
    """canExecute says what to install, and a run that goes ahead anyway fails with that message."""
    import processing
    import pytest
    from qgis.core import QgsProcessingException

    import thor_embeddings.processing_provider.base as base

    monkeypatch.setattr(base, "missing_modules", lambda names: tuple(n for n in names if n in ("torch", "ee")))
    registry = QgsApplication.processingRegistry()
    ok, msg = registry.algorithmById("thor:ee_grid").canExecute()
    assert not ok and "torch" in msg and "earthengine-api" in msg
    ok, _ = registry.algorithmById("thor:embedding_to_rgb").canExecute()
    assert ok  # numpy and GDAL only
    with pytest.raises(QgsProcessingException, match=r"needs the Python package\(s\) torch"):
        processing.run("thor:grid_from_raster", {"INPUT": str(sample_raster), "OUTPUT": str(tmp_path / "x.tif")})
    assert not (tmp_path / "x.tif").exists()
