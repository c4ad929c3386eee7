"""THOR Embeddings: a QGIS plugin that runs the THOR foundation model through Processing.

QGIS (and qgis_process, with ``iface=None``) calls :func:`classFactory`. Nothing heavy is imported here:
no torch, no Earth Engine client, no network.
"""


def classFactory(iface):  # noqa: N802 (QGIS's name)
    from .thor_plugin import ThorPlugin

    return ThorPlugin(iface)
