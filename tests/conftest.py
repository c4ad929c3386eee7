"""Shared test set-up: the plugin loaded the way QGIS loads it, and the tests' own model and reference.

Engine tests import ``thor_qgis`` from the repository root (a bare Python would do the same). Plugin
tests import the plugin as the package QGIS sees, ``thor_embeddings``, through a plugin folder under
.build/ that links to this checkout.

Nothing is read from outside the repository. The model is thor_v1_tiny with seeded weights
(:mod:`tests.seeded`): the first test that needs it writes it, once per session, to a temporary folder
as a hub-format checkpoint (``FIXTURE_CKPT``), a ``state_dict``-wrapped one and a bare-key one; the input
of the reference (``FIXTURE_INPUT``) is written beside them. ``FIXTURE_OUTPUTS`` is the official stack's
output for that model and input, committed in ``tests/data/``.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import seeded

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_NAME = "thor_embeddings"
PLUGIN_DIR = ROOT / ".build" / "plugins"
TEST_DATA = ROOT / "tests" / "data"
_SEEDED_DIR = seeded.session_folder()
FIXTURE_CKPT = _SEEDED_DIR / "thor_v1_tiny_seed0_hubformat.pt"
FIXTURE_CKPT_WRAPPED = _SEEDED_DIR / "thor_v1_tiny_seed0_state_dict.pt"
FIXTURE_CKPT_BARE = _SEEDED_DIR / "thor_v1_tiny_seed0_bare.pt"
FIXTURE_INPUT = _SEEDED_DIR / "s2_raw_seed0_2x10x288x288.npy"
FIXTURE_OUTPUTS = TEST_DATA / "thor_v1_tiny_seed0_p16_outputs.npz"
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
    """Write the seeded checkpoints and the reference input (once per session; checked by sha256)."""
    with seeded.WRITE_LOCK:
        if FIXTURE_INPUT.exists():
            return
        import numpy as np

        paths = seeded.write_checkpoints(_SEEDED_DIR)
        assert (paths["hub"], paths["wrapped"], paths["bare"]) == (FIXTURE_CKPT, FIXTURE_CKPT_WRAPPED,
                                                                   FIXTURE_CKPT_BARE)
        part = FIXTURE_INPUT.with_suffix(".part.npy")
        np.save(str(part), seeded.seeded_input())
        part.replace(FIXTURE_INPUT)


@pytest.fixture(scope="session", autouse=True)
def _seeded_fixtures():
    """Every session has them (a few seconds): tests may name FIXTURE_CKPT without asking first."""
    need_fixtures()


@pytest.fixture(scope="session")
def fixture_ckpt():
    need_fixtures()
    return FIXTURE_CKPT


@pytest.fixture(scope="session", autouse=True)
def _free_gdal_objects_before_qgis_exits(qgis_app):
    """GDAL/OSR objects still alive when QGIS exits are freed during interpreter shutdown, after QGIS has
    torn PROJ down: with QGIS 3.40 / PROJ 9.6 that segfaults (exit 139) once every test has passed. Those
    left are in reference cycles (a traceback kept by pytest.raises holds the frames, and so the datasets
    and spatial references of the code that raised): collect them while QGIS is still up. This fixture
    depends on qgis_app, so its teardown runs before pytest-qgis calls exitQgis()."""
    yield
    import gc

    sys.last_type = sys.last_value = sys.last_traceback = None
    for _ in range(3):
        if not gc.collect():
            break


@pytest.fixture(scope="session")
def fixture_ckpt_wrapped():
    need_fixtures()
    return FIXTURE_CKPT_WRAPPED


@pytest.fixture(scope="session")
def fixture_ckpt_bare():
    need_fixtures()
    return FIXTURE_CKPT_BARE


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


def _without_system_packages(names) -> str:
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="thor-hide-"))
    (folder / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{n!r}] = None\n" for n in names), encoding="utf-8")
    return str(folder)


def run_qgis_process(*args, env_extra=None, timeout=600, use_venv=True, hide_system=("torch",)):
    env = dict(os.environ)
    env.pop("QT_QPA_PLATFORM", None)
    if not use_venv:
        # QGIS's Python alone, as a user who installed nothing has it. Where the system has torch itself
        # (Debian 13's python3-torch, which scripts/setup.sh installs there), it is hidden from that
        # process: a sitecustomize on PYTHONPATH marks it as absent (sys.modules["torch"] = None makes
        # both `import torch` and importlib.util.find_spec("torch") say so).
        env["THOR_NO_VENV"] = "1"
        # (hide_system=() keeps them: a run that brings its own packages, e.g. through $THOR_DEPS_DIR, which
        # goes in front of the system's anyway)
        if hide_system:
            env["PYTHONPATH"] = _without_system_packages(tuple(hide_system))
        else:
            env.pop("PYTHONPATH", None)
    env.update(env_extra or {})
    return subprocess.run([str(QGIS_PROCESS), *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="session")
def sample_raster(tmp_path_factory):
    """The bundled synthetic Sentinel-2 scene (576 x 576 px, 10 m, EPSG:32632) as a GeoTIFF."""
    from thor_qgis import sample

    return Path(sample.write_sample(str(tmp_path_factory.mktemp("sample") / "sample_s2.tif")))
