"""The plugin side of the installer in a real QGIS application: menu, once-per-start offer, the install task in
the task manager (off the main thread, cancel), removal and the diagnostics copied to the clipboard.

pip installs a tiny wheel built here, so these stay fast; tests/qgis/test_deps_install.py installs torch."""
import base64
import hashlib
import importlib
import json
import os
import sys
import threading
import time
import zipfile

import pytest
from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QCoreApplication

from tests.conftest import PLUGIN_NAME

deps = importlib.import_module(PLUGIN_NAME + ".thor_qgis.deps")
thor_plugin = importlib.import_module(PLUGIN_NAME + ".thor_plugin")
dependencies = importlib.import_module(PLUGIN_NAME + ".dependencies")


def build_wheel(folder, version, body):
    """A pure-Python wheel of the package ``thortiny`` whose __init__.py is ``body``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"thortiny-{version}-py3-none-any.whl"
    files = {"thortiny/__init__.py": body + f"\n__version__ = {version!r}\n",
             f"thortiny-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: thortiny\nVersion: {version}\n",
             f"thortiny-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                    "Tag: py3-none-any\n"}
    record = []
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            data = text.encode()
            z.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(data)}")
        record.append(f"thortiny-{version}.dist-info/RECORD,,")
        z.writestr(f"thortiny-{version}.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def tiny_plan(target, wheels, version):
    return deps.Plan(target=str(target), python=sys.executable, build="cpu", build_reason="test",
                     requirements=[f"thortiny=={version}"], constraints=deps.protected_constraints(),
                     no_index=True, find_links=[str(wheels)], check_modules=["thortiny"])


def wait_for(cond, timeout=180):
    end = time.monotonic() + timeout
    while not cond():
        QCoreApplication.processEvents()
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.fixture
def gui_plugin(plugin, qgis_iface, monkeypatch, tmp_path):
    """The session's plugin instance, given the test iface, with the deps folder under tmp_path."""
    monkeypatch.setenv(deps.ENV_DIR, str(tmp_path / "deps"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    plugin.iface = qgis_iface
    yield plugin
    plugin.iface = None
    sys.modules.pop("thortiny", None)


def processes_with(text):
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        out.append(int(pid))
            except OSError:
                pass
    return out


def test_install_task_runs_off_the_main_thread_and_activates(gui_plugin, tmp_path):
    wheels = tmp_path / "wheels"
    build_wheel(wheels, "0.1", "")
    target = tmp_path / "deps"
    task = gui_plugin.start_install(tiny_plan(target, wheels, "0.1"))
    assert QgsApplication.taskManager().tasks()  # it is in the task manager
    wait_for(lambda: task.outcome)
    assert task.outcome == "installed", task.error + "\n".join(task.lines)
    assert task.thread_ident is not None and task.thread_ident != threading.main_thread().ident
    assert task.progress() == 100
    marker = json.loads((target / deps.MARKER).read_text())
    site = target / marker["active"]
    assert sys.path[0] == str(site)  # in use now, no restart
    import thortiny

    assert thortiny.__version__ == "0.1" and thortiny.__file__.startswith(str(site))
    assert any("Successfully installed thortiny-0.1" in ln for ln in task.lines)  # pip's output streamed
    assert not [p for p in target.iterdir() if p.name.startswith(".staging-")]
    assert QgsApplication.processingRegistry().providerById("thor") is not None  # provider reloaded
    assert gui_plugin.task is None


def test_cancel_leaves_the_installation_in_use_untouched(gui_plugin, tmp_path):
    wheels = tmp_path / "wheels"
    build_wheel(wheels, "0.1", "")
    target = tmp_path / "deps"
    first = gui_plugin.start_install(tiny_plan(target, wheels, "0.1"))
    wait_for(lambda: first.outcome)
    assert first.outcome == "installed"
    in_use = target / json.loads((target / deps.MARKER).read_text())["active"]
    before = sorted(p.name for p in target.iterdir())
    # version 0.2 takes two minutes to import: the cancel comes while the import check runs, i.e. when the
    # staging folder is fully written
    wheels2 = tmp_path / "wheels2"
    build_wheel(wheels2, "0.2", "import time\ntime.sleep(120)")
    t0 = time.monotonic()
    task = gui_plugin.start_install(tiny_plan(target, wheels2, "0.2"))
    wait_for(lambda: any("checking the new packages" in ln for ln in task.lines), timeout=120)
    staging = [p for p in target.iterdir() if p.name.startswith(".staging-")]
    assert len(staging) == 1 and (staging[0] / "thortiny" / "__init__.py").is_file()
    wait_for(lambda: processes_with(str(staging[0])), timeout=30)  # the import check is running
    task.cancel()
    wait_for(lambda: task.outcome)
    assert task.outcome == "canceled"
    assert time.monotonic() - t0 < 100  # the two-minute import was cut short
    assert not processes_with(str(staging[0]))  # the import-check process is gone
    assert sorted(p.name for p in target.iterdir()) == before  # no staging folder, no new installation
    assert target / json.loads((target / deps.MARKER).read_text())["active"] == in_use
    assert (in_use / "thortiny" / "__init__.py").read_text().strip().endswith("'0.1'")
    assert deps.active_site(str(target)) == str(in_use)


def test_broken_package_is_never_put_in_use(gui_plugin, tmp_path):
    wheels = tmp_path / "wheels"
    build_wheel(wheels, "0.3", "raise ImportError('broken build')")
    target = tmp_path / "deps"
    task = gui_plugin.start_install(tiny_plan(target, wheels, "0.3"))
    wait_for(lambda: task.outcome)
    assert task.outcome == "failed" and "thortiny does not import: ImportError: broken build" in task.error
    assert deps.active_site(str(target)) is None
    assert list(target.iterdir()) == []  # staging folder and constraints file removed


def test_menu_and_offer_once_per_start(plugin, qgis_iface, monkeypatch):
    menu = []
    monkeypatch.setattr(qgis_iface, "addPluginToMenu", lambda name, action: menu.append((name, action.text())),
                        raising=False)
    monkeypatch.setattr(qgis_iface, "removePluginMenu", lambda name, action: menu.remove((name, action.text())),
                        raising=False)
    monkeypatch.setattr(deps, "needs_install", lambda status=None: ["torch", "earthengine-api"])
    monkeypatch.setattr(thor_plugin.ThorPlugin, "_offered", False)
    bar = qgis_iface.messageBar()
    bar.clearWidgets()
    plugin.unload()  # the session's instance holds the provider id
    gui = thor_plugin.ThorPlugin(qgis_iface)
    try:
        gui.initGui()
        assert [t for _n, t in menu] == ["Install dependencies…", "Remove dependencies…", "Copy diagnostics"]
        assert {n for n, _t in menu} == {"&THOR embeddings"}
        item = bar.currentItem()
        assert item is not None and "torch, earthengine-api" in item.text()
        from qgis.PyQt.QtWidgets import QPushButton

        assert [b.text() for b in item.findChildren(QPushButton)] == ["Install dependencies…"]
        assert gui.offer_install() is None  # once per start
        gui.unload()
        assert menu == [] and bar.currentItem() is None
        gui2 = thor_plugin.ThorPlugin(qgis_iface)
        gui2.initGui()  # a plugin reload in the same QGIS session does not offer again
        assert bar.currentItem() is None
        gui2.unload()
    finally:
        plugin.initProcessing()
    assert QgsApplication.processingRegistry().providerById("thor") is not None


def test_remove_from_the_menu(gui_plugin, tmp_path):
    wheels = tmp_path / "wheels"
    build_wheel(wheels, "0.1", "")
    target = tmp_path / "deps"
    task = gui_plugin.start_install(tiny_plan(target, wheels, "0.1"))
    wait_for(lambda: task.outcome)
    site = deps.active_site(str(target))
    assert site in sys.path
    assert gui_plugin.remove_dependencies(confirm=False)
    assert not target.exists() and site not in sys.path


def test_plugin_start_puts_the_folder_on_sys_path(plugin, monkeypatch, tmp_path):
    """classFactory (what qgis_process calls too) activates $THOR_DEPS_DIR."""
    wheels = tmp_path / "wheels"
    build_wheel(wheels, "0.1", "")
    target = tmp_path / "deps"
    deps.install(tiny_plan(target, wheels, "0.1"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv(deps.ENV_DIR, str(target))
    importlib.import_module(PLUGIN_NAME).classFactory(None)
    assert sys.path[0] == deps.active_site(str(target))


def test_copy_diagnostics(gui_plugin):
    from qgis.core import Qgis
    from qgis.PyQt.QtWidgets import QApplication

    QApplication.clipboard().setText("")
    task = gui_plugin.copy_diagnostics()
    wait_for(lambda: gui_plugin.diagnostics_task is None, timeout=300)
    text = QApplication.clipboard().text()
    assert text.startswith("## THOR for QGIS diagnostics"), text[:200]
    assert f"| QGIS | {Qgis.QGIS_VERSION}" in text and "| Qt | 5." in text
    assert "| torch build | CPU |" in text  # the venv's torch, examined in this process or a separate one
    assert task.report["report"] == text


def test_install_dialog_builds_the_plan(qgis_app, tmp_path):
    install_dialog = importlib.import_module(PLUGIN_NAME + ".install_dialog")
    dlg = install_dialog.InstallDialog(str(tmp_path / "deps"), sys.executable)
    dlg.build.setCurrentIndex(dlg.build.findData("cpu"))
    dlg.index_url.setText("none")
    dlg.extra_index.setText("https://mirror.example/simple")
    dlg.proxy.setText("http://proxy.example:3128")
    plan = dlg.plan()
    assert plan.build == "cpu" and plan.torch_index is None and plan.python == sys.executable
    assert plan.extra_index_urls == ["https://mirror.example/simple"] and plan.proxy == "http://proxy.example:3128"
    dlg.show_plan()
    assert "torch build:     cpu (asked for)" in dlg.plan_text.toPlainText()
    assert [dlg.build.itemData(i) for i in range(dlg.build.count())][:2] == ["auto", "cpu"]
    assert "cu128" in [dlg.build.itemData(i) for i in range(dlg.build.count())]
    # keeping the torch there is (Debian 13's python3-torch): shown at once, checked only when installing
    dlg.build.setCurrentIndex(dlg.build.findData("system"))
    dlg.show_plan()
    text = dlg.plan_text.toPlainText()
    assert "torch build:     system (the torch already installed for this Python is kept)" in text
    assert "packages:        earthengine-api==1.7.50 huggingface_hub==2.4.0" in text


def test_automatic_build_is_found_in_the_task_not_the_dialog(gui_plugin, qgis_app, tmp_path, monkeypatch):
    """nvidia-smi and PyTorch's index may take many seconds to answer: the dialog never waits on them, the
    install task finds the build in its own thread (here: CUDA asked for, no driver, so it fails and says why)."""
    calls = []
    real = deps.nvidia_driver

    def spy(*a, **k):
        calls.append(threading.get_ident())
        return real(*a, **k)

    monkeypatch.setattr(deps, "nvidia_driver", spy)
    monkeypatch.setenv("PATH", "/nonexistent")  # no nvidia-smi
    install_dialog = importlib.import_module(PLUGIN_NAME + ".install_dialog")
    dlg = install_dialog.InstallDialog(str(tmp_path / "deps"), sys.executable)
    dlg.build.setCurrentIndex(dlg.build.findData("auto"))
    dlg.show_plan()
    assert "decided when installing" in dlg.plan_text.toPlainText()
    assert dlg.plan().deferred is not None and calls == []
    # as the dialog would make it, with the "cuda" choice of the command line
    plan = deps.make_plan(str(tmp_path / "deps"), torch="cuda", python=sys.executable, defer=True)
    task = gui_plugin.start_install(plan)
    wait_for(lambda: task.outcome)
    assert task.outcome == "failed" and "no NVIDIA driver found" in task.error
    assert calls and threading.main_thread().ident not in calls
    assert "finding the NVIDIA driver and the builds PyTorch's index has…" in task.lines
    assert not (tmp_path / "deps" / deps.MARKER).exists()


def test_missing_dependency_message_points_to_the_installer(plugin, monkeypatch):
    base = importlib.import_module(PLUGIN_NAME + ".processing_provider.base")
    monkeypatch.setattr(base, "missing_modules", lambda names: tuple(n for n in names if n == "torch"))
    ok, msg = QgsApplication.processingRegistry().algorithmById("thor:grid_from_raster").canExecute()
    assert not ok
    assert "needs the Python package(s) torch" in msg
    assert "Plugins ▸ THOR embeddings ▸ Install dependencies…" in msg
    assert "python3 -m thor_qgis.deps install" in msg


def test_unload_during_an_install_cancels_it(gui_plugin, tmp_path):
    wheels = tmp_path / "wheels"
    build_wheel(wheels, "0.2", "import time\ntime.sleep(120)")
    target = tmp_path / "deps"
    task = gui_plugin.start_install(tiny_plan(target, wheels, "0.2"))
    wait_for(lambda: any("checking the new packages" in ln for ln in task.lines), timeout=120)
    gui_plugin.unload()
    try:
        wait_for(lambda: task.outcome, timeout=60)
        assert task.outcome == "canceled" and deps.active_site(str(target)) is None
        assert QgsApplication.processingRegistry().providerById("thor") is None  # not re-registered
    finally:
        gui_plugin.initProcessing()
