"""THOR Embeddings: a QGIS plugin that runs the THOR foundation model through Processing.

QGIS (and qgis_process, with ``iface=None``) calls :func:`classFactory`. Nothing heavy is imported here:
no torch, no Earth Engine client, no network. The plugin's dependency folder (``$THOR_DEPS_DIR``, else
``<profile>/python/thor_deps/py3.X``), when something is installed there, goes on sys.path first, so that
the algorithms find torch, earthengine-api and huggingface_hub in the GUI and under qgis_process alike.
"""


def classFactory(iface):  # noqa: N802 (QGIS's name)
    from . import dependencies

    dependencies.activate()
    from .thor_plugin import ThorPlugin

    return ThorPlugin(iface)
