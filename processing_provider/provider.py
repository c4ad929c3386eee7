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

    def load(self):
        """Also show the provider's settings page, and keep the imagery cache within its size."""
        from .settings import SettingsPage

        self._settings_page = SettingsPage()
        self._settings_page.register()
        trim_imagery_cache()
        self.refreshAlgorithms()
        return True

    def unload(self):
        page = getattr(self, "_settings_page", None)
        if page is not None:
            page.unregister()
            self._settings_page = None

    def loadAlgorithms(self):  # noqa: N802
        for cls in algorithm_classes():
            self.addAlgorithm(cls())


def trim_imagery_cache() -> None:
    """Remove the oldest Earth Engine tiles past the cache size setting (never fails loading)."""
    try:
        from . import settings
        from .ee_params import cache_dir
        from ..thor_qgis.disk_cache import trim
        from ..thor_qgis.ee_fetch import default_cache_dir

        max_mb = settings.number(settings.CACHE_MAX_MB, 2048)
        trim(cache_dir() or default_cache_dir(), int(max_mb * 2**20))
    except Exception:  # a cache that cannot be trimmed must not keep the algorithms away
        pass
