"""The plugin shell: registers the ``thor`` Processing provider, and removes it on unload."""
from qgis.core import QgsApplication


class ThorPlugin:
    def __init__(self, iface=None):
        self.iface = iface  # None under qgis_process
        self.provider = None

    def initProcessing(self):  # noqa: N802 (QGIS's name)
        if self.provider is not None:
            return
        from .processing_provider.provider import ThorProvider

        self.provider = ThorProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
