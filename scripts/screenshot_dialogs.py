"""Screenshots of every THOR algorithm's dialog, as QGIS shows them, for the documentation.

Opens each algorithm's Processing dialog (the one the toolbox opens) in an offscreen QGIS, at the dialog's
default size, expands the Advanced parameters, and saves a PNG per algorithm under docs/dialogs/ (the
parameters panel, which is what a user scrolls through), plus the provider's settings page.

    QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/screenshot_dialogs.py [--out docs/dialogs]

Needs QGIS's Python (the .venv made by scripts/setup.sh) and pytest-qgis (for a stand-in of the QGIS main
window interface, which the dialogs' extent widgets ask for).
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _app():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import QgsApplication
    from qgis.gui import QgsMapCanvas
    from qgis.PyQt.QtWidgets import QMainWindow

    app = QgsApplication([], True)
    app.initQgis()
    sys.path.insert(0, "/usr/share/qgis/python/plugins")
    from processing.core.Processing import Processing

    Processing.initialize()
    window = QMainWindow()
    canvas = QgsMapCanvas(window)
    window.setCentralWidget(canvas)
    return app, window


def _load_plugin():
    build = os.path.join(ROOT, ".build", "plugins")
    if build not in sys.path:
        sys.path.insert(0, build)
    import importlib

    plugin = importlib.import_module("thor_embeddings").classFactory(None)
    plugin.initProcessing()
    return plugin


def _expand_advanced(dialog):
    """Show the Advanced Parameters: a collapsible group box (seen by Python as a plain QGroupBox), opened
    with its own collapse button."""
    from qgis.PyQt.QtWidgets import QGroupBox, QToolButton

    for box in dialog.findChildren(QGroupBox):
        if "advanced" in box.title().lower():
            for button in box.findChildren(QToolButton):
                if button.parent() is box:
                    button.click()
                    break


def grab_parameters(dialog, path):
    """The dialog at its default size, and its whole parameter list (as if scrolled through), side by side."""
    from qgis.PyQt.QtWidgets import QScrollArea

    from qgis.core import QgsApplication

    dialog.show()
    for _ in range(5):
        QgsApplication.processEvents()
    window = dialog.grab()  # what the user sees first
    areas = [a for a in dialog.findChildren(QScrollArea) if a.widget() is not None and a.isVisible()]
    # a horizontal scrollbar at the default size means a label or widget is too wide for the dialog
    hbar = any(a.horizontalScrollBar().isVisible() for a in areas)
    _expand_advanced(dialog)
    for _ in range(5):
        QgsApplication.processEvents()
    inner = max(areas, key=lambda a: a.widget().sizeHint().height()).widget() if areas else None
    if inner is None:
        window.save(path, "PNG")
        return window.width(), window.height(), hbar
    inner.resize(inner.sizeHint())
    full = inner.grab()
    from qgis.PyQt.QtGui import QColor, QPainter, QPixmap

    out = QPixmap(window.width() + full.width() + 30, max(window.height(), full.height()) + 20)
    out.fill(QColor("#e8e8e8"))
    painter = QPainter(out)
    painter.drawPixmap(10, 10, window)
    painter.drawPixmap(window.width() + 20, 10, full)
    painter.end()
    out.save(path, "PNG")
    return window.width(), window.height(), hbar


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "dialogs"))
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    app, window = _app()
    plugin = _load_plugin()
    from processing.gui.AlgorithmDialog import AlgorithmDialog
    from qgis.core import QgsApplication

    algs = [a for a in QgsApplication.processingRegistry().algorithms() if a.provider().id() == "thor"]
    for alg in sorted(algs, key=lambda a: (a.group(), a.name())):
        dialog = AlgorithmDialog(alg.create(), parent=window)
        path = os.path.join(args.out, f"{alg.name()}.png")
        w, h, hbar = grab_parameters(dialog, path)
        sys.stdout.write(f"{alg.id():28s} {w}x{h} {'HORIZONTAL SCROLLBAR ' if hbar else ''}-> "
                         f"{os.path.relpath(path, ROOT)}\n")
        dialog.close()
        dialog.deleteLater()
    plugin.unload()
    return 0


if __name__ == "__main__":
    sys.exit(main())
