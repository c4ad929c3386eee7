"""The plugin side of the dependency folder: where it is for this QGIS profile, putting it on sys.path, the
installer task, removal, and the QGIS facts of the diagnostics report.

The work itself (plan, pip, import check, atomic switch, report) is in ``thor_qgis.deps`` and
``thor_qgis.diagnostics``, which never import qgis.
"""
import os
import sys
import threading
from typing import Callable, Dict, Optional

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsTask

from .thor_qgis import deps

LOG_TAG = "THOR embeddings"


def log(message: str, level=Qgis.MessageLevel.Info) -> None:
    """To the THOR embeddings tab of the message log (thread-safe)."""
    QgsMessageLog.logMessage(message, LOG_TAG, level)


def profile_dir() -> str:
    return QgsApplication.qgisSettingsDirPath()


def target_dir() -> str:
    """``$THOR_DEPS_DIR``, else the folder in the provider's settings, else
    ``<this profile>/python/thor_deps/py3.X``."""
    import os

    env = os.environ
    if not env.get(deps.ENV_DIR, "").strip():
        try:
            from .processing_provider import settings

            chosen = str(settings.value(settings.DEPS_DIR, "") or "").strip()
        except Exception:  # a broken profile must not stop the plugin from loading
            chosen = ""
        if chosen:
            env = dict(env, **{deps.ENV_DIR: chosen})
    return deps.deps_dir(profile_dir(), env)


def activate() -> Optional[str]:
    """Put the folder on sys.path, if something is installed there (at plugin start: GUI and qgis_process)."""
    target = target_dir()
    try:
        return deps.activate(target, log=lambda m: log(m, Qgis.MessageLevel.Warning))
    except Exception as e:  # a damaged folder must not stop the plugin from loading
        log(f"THOR dependencies folder {target} not used: {type(e).__name__}: {e}", Qgis.MessageLevel.Warning)
        return None


def qgis_facts() -> Dict[str, str]:
    """What only QGIS knows, for the diagnostics report."""
    from qgis.PyQt.QtCore import PYQT_VERSION_STR, QT_VERSION_STR

    from .processing_provider.ee_params import configured_api_url, default_project
    from .processing_provider.provider import plugin_version

    return {"qgis_version": f"{Qgis.QGIS_VERSION} ({Qgis.QGIS_RELEASE_NAME})" if hasattr(Qgis, "QGIS_RELEASE_NAME")
            else Qgis.QGIS_VERSION,
            "qt_version": QT_VERSION_STR, "pyqt_version": PYQT_VERSION_STR, "profile_dir": profile_dir(),
            "ee_project": default_project(), "ee_api_url": configured_api_url() or "",
            "plugin_version": plugin_version()}


def imported_elsewhere(target: str) -> list:
    """Required modules already imported from outside ``target`` (they stay in use until QGIS restarts)."""
    out = []
    root = os.path.abspath(target) + os.sep
    for mod, dist, _min, _pin in deps.PACKAGES:
        m = sys.modules.get(mod)
        f = getattr(m, "__file__", None) if m is not None else None
        if f and not os.path.abspath(f).startswith(root):
            out.append(dist)
    return out


class InstallTask(QgsTask):
    """pip into a staging folder, import check, atomic switch: in the background, with progress and cancel.

    ``on_done(task)`` runs on the main thread when the task ends, whatever the outcome (see ``outcome``:
    'installed', 'canceled' or 'failed', with ``error`` and ``result``)."""

    def __init__(self, plan: deps.Plan, on_done: Optional[Callable[["InstallTask"], None]] = None):
        super().__init__("Installing THOR dependencies (torch, earthengine-api, huggingface_hub)",
                         QgsTask.Flag.CanCancel)
        self.plan = plan
        self.on_done = on_done
        self.result: Optional[deps.Result] = None
        self.error = ""
        self.outcome = ""
        self.thread_ident: Optional[int] = None
        self.lines = []

    def _log(self, line: str) -> None:
        self.lines.append(line)
        log(line)

    def run(self):  # worker thread
        self.thread_ident = threading.get_ident()
        try:
            self.result = deps.install(self.plan, log=self._log, progress=lambda f: self.setProgress(100.0 * f),
                                       is_canceled=self.isCanceled)
            return True
        except deps.DepsCanceled:
            self.outcome = "canceled"
            return False
        except deps.DepsError as e:
            self.error = str(e)
            return False
        except Exception as e:  # anything else still ends the task cleanly, with the reason logged
            self.error = f"{type(e).__name__}: {e}"
            return False

    def finished(self, ok):  # main thread
        if ok:
            self.outcome = "installed"
            deps.deactivate(self.plan.target)
            deps.activate(self.plan.target)
            r = self.result
            log(f"THOR dependencies installed in {r.seconds:.0f} s ({r.bytes / 1e6:.0f} MB) into {r.site}: "
                + ", ".join(f"{k} {v}" for k, v in r.versions.items()), Qgis.MessageLevel.Success)
        else:
            if not self.outcome:
                self.outcome = "canceled" if self.isCanceled() else "failed"
            if self.outcome == "canceled":
                log("Installing THOR dependencies was canceled: nothing changed.", Qgis.MessageLevel.Warning)
            else:
                log("Installing THOR dependencies failed: " + (self.error or "see the log above"),
                    Qgis.MessageLevel.Critical)
        if self.on_done is not None:
            self.on_done(self)
