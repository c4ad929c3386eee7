"""Renderers for the layers the algorithms load on completion.

Post-processors run on the main thread once the layer is loaded; Processing keeps only a pointer to
them, so the instances live in this module for the session.
"""
from qgis.core import (
    QgsContrastEnhancement,
    QgsMultiBandColorRenderer,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterBandStats,
    QgsRasterLayer,
)


def _stretch(layer, band: int) -> QgsContrastEnhancement:
    provider = layer.dataProvider()
    ce = QgsContrastEnhancement(provider.dataType(band))
    ce.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
    lo, hi = provider.cumulativeCut(band, 0.02, 0.98, layer.extent(), 250000)
    if not hi > lo:
        stats = provider.bandStatistics(band, QgsRasterBandStats.Min | QgsRasterBandStats.Max)
        lo, hi = stats.minimumValue, stats.maximumValue
    ce.setMinimumValue(lo)
    ce.setMaximumValue(hi)
    return ce


def style_rgb_stretch(layer, bands=(1, 2, 3)) -> None:
    """Three bands as red, green, blue, each stretched between its 2nd and 98th percentiles."""
    if not isinstance(layer, QgsRasterLayer) or layer.bandCount() < 3:
        return
    renderer = QgsMultiBandColorRenderer(layer.dataProvider(), *bands)
    renderer.setRedContrastEnhancement(_stretch(layer, bands[0]))
    renderer.setGreenContrastEnhancement(_stretch(layer, bands[1]))
    renderer.setBlueContrastEnhancement(_stretch(layer, bands[2]))
    layer.setRenderer(renderer)
    layer.triggerRepaint()


class _Styler(QgsProcessingLayerPostProcessorInterface):
    def __init__(self, fn):
        super().__init__()
        self._fn = fn

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        self._fn(layer)


GRID_STYLER = _Styler(style_rgb_stretch)


def attach(context, path: str, styler: QgsProcessingLayerPostProcessorInterface, name: str = "") -> None:
    """Style (and name) the output at ``path`` if Processing will load it on completion."""
    if context.willLoadLayerOnCompletion(path):
        details = context.layerToLoadOnCompletionDetails(path)
        if name:
            details.name = name
        details.setPostProcessor(styler)
