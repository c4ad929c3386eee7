"""*Plugins ▸ THOR embeddings ▸ Install dependencies…*: what is missing, the build of torch, indexes and proxy,
the plan, and Install (which hands the work to a background task)."""
import platform

from qgis.core import QgsSettings
from qgis.PyQt.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFormLayout, QLabel, QLineEdit,
                                 QPlainTextEdit, QPushButton, QVBoxLayout)

from .thor_qgis import deps

SETTINGS = "thor/deps/"


class InstallDialog(QDialog):
    def __init__(self, target: str, python: str, parent=None):
        super().__init__(parent)
        self.target, self.python = target, python
        self.setWindowTitle("THOR embeddings: install dependencies")
        lay = QVBoxLayout(self)
        rows = deps.dependency_status()
        status = "<br>".join(f"{r['distribution']}: {r['version'] or 'not installed'}"
                             + ("" if r["state"] == "ok" else f" — <b>{r['state']}</b> (needs ≥ {r['minimum']})")
                             for r in rows)
        lay.addWidget(QLabel(
            "The plugin installs PyTorch, earthengine-api and huggingface_hub into a folder of its own, "
            "with QGIS's Python. QGIS's own packages (numpy, GDAL) are not touched.<br><br>" + status))
        form = QFormLayout()
        self.build = QComboBox()
        self.build.addItem("Automatic (CUDA if an NVIDIA driver is found, else CPU)", "auto")
        if platform.system() == "Darwin":
            self.build.addItem("Apple MPS / default macOS wheel", "mps")
        self.build.addItem("CPU only (smallest download)", "cpu")
        if platform.system() != "Darwin":
            for tag in sorted(deps.CUDA_DRIVERS, key=lambda t: int(t[2:]), reverse=True):
                self.build.addItem(f"CUDA {tag[2:-1]}.{tag[-1]}", tag)
        self.build.addItem("Keep the torch already installed (e.g. Debian's python3-torch)", "system")
        form.addRow("PyTorch build", self.build)
        self.index_url = QLineEdit()
        self.index_url.setPlaceholderText("PyTorch's index for the build (or 'none' for pip's own)")
        form.addRow("PyTorch index URL", self.index_url)
        self.extra_index = QLineEdit()
        self.extra_index.setPlaceholderText("optional: a company mirror of PyPI")
        form.addRow("Extra index URL", self.extra_index)
        self.proxy = QLineEdit()
        self.proxy.setPlaceholderText("optional: http://user:password@proxy:port")
        form.addRow("Proxy", self.proxy)
        self.cert = QLineEdit()
        self.cert.setPlaceholderText("optional: certificate bundle (.pem) of a company TLS proxy")
        form.addRow("Certificates", self.cert)
        self.dask = QCheckBox("Dask (run grids on a cluster: the Dask scheduler option)")
        form.addRow("Optional", self.dask)
        form.addRow("Folder", QLabel(target))
        lay.addLayout(form)
        self.plan_text = QPlainTextEdit()
        self.plan_text.setReadOnly(True)
        self.plan_text.setMinimumHeight(140)
        show = QPushButton("Show plan")
        show.clicked.connect(self.show_plan)
        lay.addWidget(show)
        lay.addWidget(self.plan_text)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.install_button = buttons.addButton("Install", QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
        self._load()

    def _load(self):
        s = QgsSettings()
        i = self.build.findData(s.value(SETTINGS + "torch", "auto"))
        self.build.setCurrentIndex(max(0, i))
        for w, key in ((self.index_url, "index_url"), (self.extra_index, "extra_index_url"),
                       (self.proxy, "proxy"), (self.cert, "cert")):
            w.setText(str(s.value(SETTINGS + key, "") or ""))
        self.dask.setChecked(str(s.value(SETTINGS + "dask", "false")).lower() == "true")

    def save(self):
        s = QgsSettings()
        s.setValue(SETTINGS + "torch", self.build.currentData())
        for w, key in ((self.index_url, "index_url"), (self.extra_index, "extra_index_url"),
                       (self.proxy, "proxy"), (self.cert, "cert")):
            s.setValue(SETTINGS + key, w.text().strip())
        s.setValue(SETTINGS + "dask", "true" if self.dask.isChecked() else "false")

    def plan(self) -> deps.Plan:
        extra = self.extra_index.text().strip()
        return deps.make_plan(self.target, torch=self.build.currentData(),
                              index_url=self.index_url.text().strip() or None,
                              extra_index_urls=[extra] if extra else [], proxy=self.proxy.text().strip() or None,
                              cert=self.cert.text().strip() or None, python=self.python,
                              extras=("dask",) if self.dask.isChecked() else (), defer=True)

    def show_plan(self):
        try:
            self.plan_text.setPlainText(self.plan().describe())
        except deps.DepsError as e:
            self.plan_text.setPlainText(f"Cannot install with these choices: {e}")
