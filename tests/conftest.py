"""Shared test set-up: the plugin loaded the way QGIS loads it, and the shared reference fixtures.

Engine tests import ``thor_qgis`` from the repository root (a bare Python would do the same). Plugin
tests import the plugin as the package QGIS sees, ``thor_embeddings``, through a plugin folder under
.build/ that links to this checkout.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_NAME = "thor_embeddings"
PLUGIN_DIR = ROOT / ".build" / "plugins"
SHARED = Path(os.environ.get("THOR_SHARED_DIR", ROOT.parent / "shared"))
FIXTURES = SHARED / "thor" / "fixtures"
FIXTURE_CKPT = FIXTURES / "thor_v1_tiny_fixture_hubformat.pt"
FIXTURE_INPUT = FIXTURES / "s2_raw_2x10x288x288.npy"
FIXTURE_OUTPUTS = FIXTURES / "thor_v1_tiny_fixture_outputs_p16.npz"
QGIS_PROCESS = ROOT / "scripts" / "qgis_process"


def _link_plugin() -> None:
    PLUGIN_DIR.mkdir(parents=True, exist_ok=True)
    link = PLUGIN_DIR / PLUGIN_NAME
    if not (link.is_symlink() and link.resolve() == ROOT):
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(ROOT)
    if str(PLUGIN_DIR) not in sys.path:
        sys.path.insert(0, str(PLUGIN_DIR))
    processing_plugins = "/usr/share/qgis/python/plugins"
    if processing_plugins not in sys.path:
        sys.path.append(processing_plugins)


_link_plugin()


def need_fixtures():
    if not FIXTURE_CKPT.exists():
        msg = f"reference fixtures not found in {FIXTURES} (set THOR_SHARED_DIR)"
        if os.environ.get("CI"):
            pytest.fail(msg)  # in CI the fixtures are there: their absence is a failure, not a skip
        pytest.skip(msg)


@pytest.fixture(scope="session")
def fixture_ckpt():
    need_fixtures()
    return FIXTURE_CKPT


@pytest.fixture(scope="session")
def plugin(qgis_app, qgis_processing):
    """The plugin loaded as QGIS does: import the package, classFactory(iface), initProcessing()."""
    import importlib

    package = importlib.import_module(PLUGIN_NAME)
    instance = package.classFactory(None)
    instance.initProcessing()
    yield instance
    instance.unload()


@pytest.fixture(scope="session")
def engine(plugin):
    """The engine as the plugin imports it (one copy of its caches and exception types)."""
    import importlib

    return importlib.import_module(PLUGIN_NAME + ".thor_qgis")


def run_qgis_process(*args, env_extra=None, timeout=600, use_venv=True):
    env = dict(os.environ)
    env.pop("QT_QPA_PLATFORM", None)
    if not use_venv:
        env["THOR_NO_VENV"] = "1"
    env.update(env_extra or {})
    return subprocess.run([str(QGIS_PROCESS), *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="session")
def sample_raster(tmp_path_factory):
    """The bundled synthetic Sentinel-2 scene (576 x 576 px, 10 m, EPSG:32632) as a GeoTIFF."""
    from thor_qgis import sample

    return Path(sample.write_sample(str(tmp_path_factory.mktemp("sample") / "sample_s2.tif")))
