"""The plugin shell: registers the ``thor`` Processing provider (removed on unload) and, in the QGIS window,
the *Plugins ▸ THOR embeddings* menu (install / remove dependencies, copy diagnostics) plus, once per start,
an offer to install missing dependencies."""
from qgis.core import Qgis, QgsApplication, QgsTask

from . import dependencies
from .thor_qgis import deps

MENU = "&THOR embeddings"


class ThorPlugin:
    _offered = False  # the message-bar offer is made once per QGIS start, however often the plugin reloads

    def __init__(self, iface=None):
        self.iface = iface  # None under qgis_process
        self.provider = None
        self.actions = []
        self.task = None
        self.diagnostics_task = None
        self.offer_item = None

    # --- Processing ----------------------------------------------------------------------
    def initProcessing(self):  # noqa: N802 (QGIS's name)
        if self.provider is not None:
            return
        from .processing_provider.provider import ThorProvider

        self.provider = ThorProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def reload_provider(self):
        """Re-register the provider, so help texts and checks see newly installed packages."""
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        self.initProcessing()

    # --- GUI -----------------------------------------------------------------------------
    def initGui(self):  # noqa: N802
        self.initProcessing()
        if self.iface is None:
            return
        from qgis.PyQt.QtWidgets import QAction

        for text, slot in (("Install dependencies…", self.show_install_dialog),
                           ("Remove dependencies…", self.remove_dependencies),
                           ("Copy diagnostics", self.copy_diagnostics)):
            action = QAction(text, self.iface.mainWindow())
            action.triggered.connect(lambda _checked=False, s=slot: s())
            self.iface.addPluginToMenu(MENU, action)
            self.actions.append(action)
        self.offer_install()

    def unload(self):
        if self.task is not None:  # an install still running: stop it, and do not re-register afterwards
            self.task.on_done = None
            self.task.cancel()
            self.task = None
        if self.iface is not None:
            for action in self.actions:
                self.iface.removePluginMenu(MENU, action)
            self._close_offer()
        self.actions = []
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

    def _bar(self):
        return self.iface.messageBar() if self.iface is not None else None

    def _message(self, text, level=Qgis.MessageLevel.Info, duration=8):
        bar = self._bar()
        if bar is not None:
            bar.pushMessage("THOR embeddings", text, level=level, duration=duration)
        dependencies.log(text, level)

    def _close_offer(self):
        if self.offer_item is not None:
            try:
                self._bar().popWidget(self.offer_item)
            except (RuntimeError, TypeError):  # already closed by the user
                pass
            self.offer_item = None

    def offer_install(self, force=False):
        """A message-bar offer with an *Install dependencies…* button, when something is missing or too old."""
        if (ThorPlugin._offered and not force) or self.iface is None:
            return None
        missing = deps.needs_install()
        if not missing:
            return None
        ThorPlugin._offered = True
        from qgis.PyQt.QtWidgets import QPushButton

        bar = self._bar()
        item = bar.createMessage("THOR embeddings", f"needs {', '.join(missing)} (missing or too old) to compute "
                                                    "embeddings.")
        button = QPushButton("Install dependencies…", item)
        button.clicked.connect(lambda _checked=False: self.show_install_dialog())
        item.layout().addWidget(button)
        self.offer_item = bar.pushWidget(item, Qgis.MessageLevel.Warning, 0)
        return self.offer_item

    # --- actions -------------------------------------------------------------------------
    def show_install_dialog(self):
        from .install_dialog import InstallDialog

        if self.task is not None:
            self._message("Dependencies are already being installed (see the task manager).")
            return None
        try:
            python = deps.find_python()
        except deps.DepsError as e:
            self._message(str(e), Qgis.MessageLevel.Critical, 0)
            return None
        dlg = InstallDialog(dependencies.target_dir(), python, self.iface.mainWindow() if self.iface else None)
        if dlg.exec():
            dlg.save()
            try:
                plan = dlg.plan()
            except deps.DepsError as e:
                self._message(str(e), Qgis.MessageLevel.Critical, 0)
                return None
            return self.start_install(plan)
        return None

    def start_install(self, plan):
        """Start the background installer task for ``plan`` (returns the task)."""
        self._close_offer()
        dependencies.log("Installing THOR dependencies:\n" + plan.describe())
        self.task = dependencies.InstallTask(plan, on_done=self._install_done)
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def _install_done(self, task):
        self.task = None
        if task.outcome == "installed":
            self.reload_provider()
            stale = dependencies.imported_elsewhere(task.plan.target)
            if stale:
                self._message(f"Dependencies installed. Restart QGIS to use them: {', '.join(stale)} "
                              "was already loaded from elsewhere.", Qgis.MessageLevel.Warning, 0)
            else:
                self._message("Dependencies installed: the THOR algorithms are ready (no restart needed).",
                              Qgis.MessageLevel.Success)
        elif task.outcome == "canceled":
            self._message("Installing dependencies was canceled; nothing was changed.", Qgis.MessageLevel.Warning)
        else:
            self._message("Installing dependencies failed: " + (task.error or "see the THOR embeddings log") +
                          " (details in View ▸ Panels ▸ Log Messages ▸ THOR embeddings).",
                          Qgis.MessageLevel.Critical, 0)

    def remove_dependencies(self, confirm=True):
        target = dependencies.target_dir()
        if confirm:
            from qgis.PyQt.QtWidgets import QMessageBox

            answer = QMessageBox.question(
                self.iface.mainWindow() if self.iface else None, "THOR embeddings",
                f"Remove the plugin's dependency folder?\n{target}\n\nQGIS's own packages are not touched.")
            if answer != QMessageBox.StandardButton.Yes:
                return None
        ok, left = deps.remove(target)
        self.reload_provider()
        if ok:
            self._message(f"Removed {target}. Packages already loaded stay in use until QGIS restarts.")
        else:
            self._message(f"{target} is no longer used; some files are in use and will be removable after a "
                          f"restart: {', '.join(left)}", Qgis.MessageLevel.Warning, 0)
        return ok

    def copy_diagnostics(self):
        """Build the report in the background (torch is examined in a separate process), then copy it."""
        from .thor_qgis import diagnostics

        facts = dependencies.qgis_facts()
        target = dependencies.target_dir()
        holder = {}

        def work(_task):
            holder["report"] = diagnostics.build_report(facts, target)
            return True

        def done(exception, _result=None):
            self.diagnostics_task = None
            if exception is not None or "report" not in holder:
                self._message(f"Diagnostics failed: {exception}", Qgis.MessageLevel.Critical)
                return
            from qgis.PyQt.QtWidgets import QApplication

            QApplication.clipboard().setText(holder["report"])
            dependencies.log(holder["report"])
            self._message("Diagnostics copied to the clipboard (Markdown, ready for a bug report).",
                          Qgis.MessageLevel.Success)

        self.diagnostics_task = QgsTask.fromFunction("THOR embeddings diagnostics", work, on_finished=done)
        self.diagnostics_task.report = holder
        QgsApplication.taskManager().addTask(self.diagnostics_task)
        return self.diagnostics_task
