"""QGIS 4 (Qt 6, PyQt6) readiness, checked statically: every shipped, test and script module is parsed and
searched for spellings that only Qt 5 / QGIS 3 accept.

No Qt 6 build of QGIS can be installed on the test machines, so this is the check that keeps regressions
out: it fails on
- unscoped enum members of Qt and QGIS classes (``Qt.AlignHCenter``, ``QgsWkbTypes.PointGeometry``,
  ``QgsProcessingParameterNumber.Double``; write ``Qt.AlignmentFlag.AlignHCenter``, or take the value
  from ``processing_provider/compat.py`` where QGIS 3.22 lacks the scoped form),
- ``QVariant`` field types (``QVariant.String``; ``compat.FIELD_STRING``),
- ``exec_()``, ``QRegExp``, direct ``PyQt5`` imports and bare ``import sip``,
- ``pyqtSignal`` created anywhere but as a class attribute (PyQt6 only binds signals declared in a class body).
Old spellings are allowed inside ``if Qgis.QGIS_VERSION_INT ...`` branches, which is how compat.py keeps
QGIS 3.22 working.
"""
import ast
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Qt classes whose enum members must be reached through their enum type under PyQt6.
QT_CLASSES = {
    "Qt", "QImage", "QPainter", "QFont", "QColor", "QMessageBox", "QSizePolicy", "QDialogButtonBox",
    "QAbstractItemView", "QHeaderView", "QFrame", "QLineEdit", "QIODevice", "QEvent", "QKeySequence",
    "QPalette", "QFileDialog", "QComboBox", "QLocale", "QTextOption", "QStyle", "QToolButton", "QAction",
}
# Names in Qgs*/Qgis classes that are constants or classes, not enum members.
NOT_ENUM_MEMBERS = {
    "Qgis.QGIS_VERSION", "Qgis.QGIS_VERSION_INT", "Qgis.QGIS_RELEASE_NAME", "Qgis.QGIS_DEV_VERSION",
}
# The known QGIS 3 spellings and what to write instead (the checker also catches ones not listed here).
HINTS = {
    "QgsProcessingParameterNumber.Integer": "compat.NUMBER_INTEGER",
    "QgsProcessingParameterNumber.Double": "compat.NUMBER_DOUBLE",
    "QgsProcessingParameterDefinition.FlagAdvanced": "compat.PARAMETER_ADVANCED",
    "QgsProcessingParameterFile.File": "compat.FILE_BEHAVIOR_FILE",
    "QgsProcessingParameterDateTime.Date": "compat.DATETIME_DATE",
    "QgsProcessing.TypeVectorPoint": "compat.SOURCE_VECTOR_POINT",
    "QgsProcessing.TypeVectorLine": "compat.SOURCE_VECTOR_LINE",
    "QgsProcessing.TypeVectorPolygon": "compat.SOURCE_VECTOR_POLYGON",
    "QgsRasterBandStats.Min": "compat.STAT_MIN",
    "QgsRasterBandStats.Max": "compat.STAT_MAX",
    "QgsWkbTypes.PointGeometry": "compat.GEOMETRY_POINT",
    "QgsCoordinateReferenceSystem.WKT_PREFERRED_GDAL": "compat.WKT_PREFERRED_GDAL",
    "QgsFeatureSink.FastInsert": "QgsFeatureSink.Flag.FastInsert",
    "QgsContrastEnhancement.StretchToMinimumMaximum":
        "QgsContrastEnhancement.ContrastEnhancementAlgorithm.StretchToMinimumMaximum",
    "Qt.DirectConnection": "Qt.ConnectionType.DirectConnection",
    "Qt.AlignHCenter": "Qt.AlignmentFlag.AlignHCenter",
    "Qgis.Critical": "Qgis.MessageLevel.Critical",
    "Qgis.Warning": "Qgis.MessageLevel.Warning",
    "Qgis.Info": "Qgis.MessageLevel.Info",
    "Qgis.Success": "Qgis.MessageLevel.Success",
}


def _is_version_guard(test: ast.AST) -> bool:
    return any((isinstance(n, ast.Attribute) and n.attr == "QGIS_VERSION_INT")
               or (isinstance(n, ast.Name) and n.id == "QGIS_VERSION_INT") for n in ast.walk(test))


def _qualname(node: ast.Attribute):
    if isinstance(node.value, ast.Name):
        return node.value.id, node.attr
    return None, None


def check_source(source: str, filename: str = "<string>") -> List[str]:
    """The Qt5-only idioms in ``source``, one message each ('file:line: what; write instead')."""
    tree = ast.parse(source, filename)
    parents = {}
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            parents[child] = parent

    def guarded(node) -> bool:
        child, p = node, parents.get(node)
        while p is not None:
            if isinstance(p, (ast.If, ast.IfExp)) and child is not p.test and _is_version_guard(p.test):
                return True
            child, p = p, parents.get(p)
        return False

    problems = []

    def report(node, what, instead=""):
        problems.append(f"{filename}:{node.lineno}: {what}" + (f"; write {instead}" if instead else ""))

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            cls, member = _qualname(node)
            parent = parents.get(node)
            if cls is None or not member[:1].isupper():
                continue
            if isinstance(parent, ast.Attribute) and parent.value is node:
                continue  # Cls.EnumType.Member: scoped
            if isinstance(parent, ast.Call) and parent.func is node:
                continue  # a nested class or constructor: QgsPalettedRasterRenderer.Class(...)
            name = f"{cls}.{member}"
            if cls == "QVariant":
                if not guarded(node):
                    report(node, f"QVariant type {name} (QgsField takes QMetaType types from QGIS 3.38; "
                                 "Qt 6 has no QVariant.Type)", "compat.FIELD_* instead")
            elif cls in QT_CLASSES or cls == "Qgis" or cls.startswith("Qgs"):
                if name in NOT_ENUM_MEMBERS or guarded(node):
                    continue
                report(node, f"unscoped enum {name}", HINTS.get(name, "the scoped form (Class.EnumType.Member)"))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "exec_":
            report(node, "exec_() (gone in PyQt6)", "exec()")
        if isinstance(node, ast.Name) and node.id == "QRegExp":
            report(node, "QRegExp (gone in Qt 6)", "QRegularExpression")
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if mod.split(".")[0] == "PyQt5":
                report(node, f"import from {mod}", "qgis.PyQt")
            if any(a.name == "QRegExp" for a in node.names):
                report(node, "QRegExp (gone in Qt 6)", "QRegularExpression")
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "PyQt5":
                    report(node, f"import {alias.name}", "qgis.PyQt")
                if alias.name == "sip":
                    report(node, "import sip (PyQt6 has PyQt6.sip)", "from qgis.PyQt import sip")
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id == "pyqtSignal") or \
                    (isinstance(f, ast.Attribute) and f.attr == "pyqtSignal"):
                stmt = parents.get(node)
                in_class_body = isinstance(stmt, ast.Assign) and isinstance(parents.get(stmt), ast.ClassDef)
                if not in_class_body:
                    report(node, "pyqtSignal outside a class body (it is only bound as a class attribute)",
                           "a class attribute of a QObject subclass")
    return problems


def project_modules() -> List[Path]:
    """Every Python file of the checkout that ships, tests or scripts something (not venvs or build trees)."""
    files = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if any(part.startswith(".") or part in ("__pycache__", "build", "dist") for part in rel.parts[:-1]):
            continue
        files.append(path)
    return files


def test_the_project_has_no_qt5_only_idioms():
    files = project_modules()
    names = {p.relative_to(ROOT).as_posix() for p in files}
    # the sweep really covers the plugin, its tests and scripts
    assert {"thor_plugin.py", "processing_provider/params.py", "tests/qgis/test_plugin.py",
            "scripts/render_picture.py"} <= names
    problems = []
    for path in files:
        problems += check_source(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())
    assert not problems, "Qt5-only idioms (QGIS 4 would fail on them):\n" + "\n".join(problems)


@pytest.mark.parametrize("snippet, expected", [
    ("x = QgsProcessingParameterNumber.Double", "compat.NUMBER_DOUBLE"),
    ("f(QgsWkbTypes.PointGeometry)", "compat.GEOMETRY_POINT"),
    ("iface.messageBar().pushMessage('t', 'm', Qgis.Critical)", "Qgis.MessageLevel.Critical"),
    ("sig.connect(f, Qt.DirectConnection)", "Qt.ConnectionType.DirectConnection"),
    ("img = QImage(1, 1, QImage.Format_ARGB32)", "unscoped enum QImage.Format_ARGB32"),
    ("QgsField('a', QVariant.String)", "QVariant type QVariant.String"),
    ("dialog.exec_()", "exec_()"),
    ("from qgis.PyQt.QtCore import QRegExp", "QRegExp"),
    ("r = QRegExp('a')", "QRegExp"),
    ("from PyQt5.QtCore import Qt", "import from PyQt5.QtCore"),
    ("import sip", "import sip"),
    ("def f():\n    s = pyqtSignal(int)", "pyqtSignal outside a class body"),
    ("s = pyqtSignal()", "pyqtSignal outside a class body"),
    ("if Qgis.QGIS_VERSION_INT >= 34000:\n    a = 1\nelse:\n    a = 2\nb = QgsProcessing.TypeVectorPoint",
     "compat.SOURCE_VECTOR_POINT"),
])
def test_checker_flags_qt5_idioms(snippet, expected):
    problems = check_source(snippet)
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize("snippet", [
    "x = Qgis.ProcessingNumberParameterType.Double",
    "sig.connect(f, Qt.ConnectionType.DirectConnection)",
    "img = QImage(1, 1, QImage.Format.Format_ARGB32)",
    "c = QgsPalettedRasterRenderer.Class(1, color, 'a')",
    "v = Qgis.QGIS_VERSION_INT",
    "if Qgis.QGIS_VERSION_INT >= 33800:\n    t = QMetaType.Type.QString\nelse:\n    t = QVariant.String",
    "t = QgsProcessing.TypeVectorPoint if Qgis.QGIS_VERSION_INT < 34000 else Qgis.ProcessingSourceType.VectorPoint",
    "if isinstance(v, QVariant) and v.isNull():\n    pass",
    "spec.loader.exec_module(mod)",
    "from qgis.PyQt import sip",
    "class A(QObject):\n    changed = pyqtSignal(int)",
    "QgsProcessingModelChildParameterSource.fromStaticValue(1)",
])
def test_checker_accepts_qt6_spellings(snippet):
    assert check_source(snippet) == []
