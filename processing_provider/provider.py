"""The ``thor`` Processing provider."""
import configparser
import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import algorithm_classes

PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def plugin_version() -> str:
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(os.path.join(PLUGIN_DIR, "metadata.txt"), encoding="utf-8")
    return cp.get("general", "version", fallback="")


def icon_path() -> str:
    return os.path.join(PLUGIN_DIR, "resources", "icon.svg")


class ThorProvider(QgsProcessingProvider):
    def id(self):
        return "thor"

    def name(self):
        return "THOR embeddings"

    def longName(self):  # noqa: N802
        return f"THOR embeddings {self.versionInfo()}"

    def versionInfo(self):  # noqa: N802
        return plugin_version()

    def icon(self):
        return QIcon(icon_path())

    def svgIconPath(self):  # noqa: N802
        return icon_path()

    def supportedOutputRasterLayerExtensions(self):  # noqa: N802
        return ["tif"]  # the algorithms write GeoTIFF (tiled or striped, compressed, with metadata)

    def defaultRasterFileExtension(self):  # noqa: N802
        return "tif"

    def loadAlgorithms(self):  # noqa: N802
        for cls in algorithm_classes():
            self.addAlgorithm(cls())
