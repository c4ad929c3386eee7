"""The plugin zip holds exactly the shipped files, and QGIS loads the plugin from it."""
import os
import subprocess
import zipfile

from tests.conftest import PLUGIN_NAME, ROOT

import importlib.util

_spec = importlib.util.spec_from_file_location("thor_package", ROOT / "scripts" / "package.py")
package = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(package)


def test_zip_ships_plugin_files_only(tmp_path):
    path = package.build_zip(str(tmp_path))
    names = zipfile.ZipFile(path).namelist()
    assert all(n.startswith(PLUGIN_NAME + "/") for n in names)
    rel = {n[len(PLUGIN_NAME) + 1:] for n in names}
    for must in ("__init__.py", "thor_plugin.py", "metadata.txt", "LICENSE", "resources/icon.svg",
                 "processing_provider/provider.py", "thor_qgis/encoder.py", "thor_qgis/embedder.py"):
        assert must in rel, must
    assert not any(r.startswith(("tests/", "scripts/", ".ci/", ".venv/", ".build/", "out/", "sample/")) for r in rel)
    assert not any(r.endswith((".npz", ".npy", ".pt")) for r in rel)  # no test data, no weights
    assert not any("__pycache__" in r or r.endswith(".pyc") for r in rel)
    # every Python module of the plugin's packages ships
    for pkg in ("thor_qgis", "processing_provider"):
        for f in os.listdir(ROOT / pkg):
            if f.endswith(".py"):
                assert f"{pkg}/{f}" in rel, f


def test_shipped_code_never_reads_the_shared_folder(tmp_path):
    path = package.build_zip(str(tmp_path))
    z = zipfile.ZipFile(path)
    for n in z.namelist():
        if n.endswith(".py"):
            text = z.read(n).decode("utf-8")
            assert "shared/thor" not in text and "THOR_SHARED_DIR" not in text, n


def test_qgis_process_loads_the_plugin_from_the_zip(tmp_path):
    path = package.build_zip(str(tmp_path / "zip"))
    plugins = tmp_path / "plugins"
    zipfile.ZipFile(path).extractall(plugins)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_PLUGINPATH=str(plugins),
               QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"), XDG_RUNTIME_DIR=str(tmp_path))
    env.pop("PYTHONPATH", None)
    r = subprocess.run(["/usr/bin/qgis_process.bin", "plugins", "enable", PLUGIN_NAME], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["/usr/bin/qgis_process.bin", "list"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "thor:grid_from_raster" in r.stdout
