"""Renderers for the layers the algorithms load on completion.

Post-processors run on the main thread once the layer is loaded. Each output gets a post-processor
object of its own: the Processing context takes it over and deletes it with the context, so one object
must never serve two outputs or two runs. The algorithm also keeps a Python reference to it until then.
"""
from qgis.core import (
    QgsContrastEnhancement,
    QgsMultiBandColorRenderer,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
)

from .compat import STAT_MAX, STAT_MIN


def _stretch(layer, band: int) -> QgsContrastEnhancement:
    provider = layer.dataProvider()
    ce = QgsContrastEnhancement(provider.dataType(band))
    ce.setContrastEnhancementAlgorithm(QgsContrastEnhancement.ContrastEnhancementAlgorithm.StretchToMinimumMaximum)
    lo, hi = provider.cumulativeCut(band, 0.02, 0.98, layer.extent(), 250000)
    if not hi > lo:
        stats = provider.bandStatistics(band, STAT_MIN | STAT_MAX)
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


def attach(alg, context, path: str, style_fn, name: str = "") -> None:
    """Style (and name) the output at ``path`` with ``style_fn(layer)`` if Processing will load it on
    completion. Call from ``postProcessAlgorithm`` (main thread)."""
    if context.willLoadLayerOnCompletion(path):
        details = context.layerToLoadOnCompletionDetails(path)
        if name:
            details.name = name
        styler = _Styler(style_fn)
        if not hasattr(alg, "_thor_stylers"):
            alg._thor_stylers = []
        alg._thor_stylers.append(styler)
        details.setPostProcessor(styler)


def style_true_colour(layer) -> None:
    """A Sentinel-2 B2..B12 stack as true colour: B4, B3, B2 (bands 3, 2, 1), stretched."""
    style_rgb_stretch(layer, bands=(3, 2, 1))


def style_rgb_bytes(layer) -> None:
    """A 3-band byte raster (1..255, 0 = nodata) shown as it is."""
    if not isinstance(layer, QgsRasterLayer) or layer.bandCount() < 3:
        return
    renderer = QgsMultiBandColorRenderer(layer.dataProvider(), 1, 2, 3)
    for setter in (renderer.setRedContrastEnhancement, renderer.setGreenContrastEnhancement,
                   renderer.setBlueContrastEnhancement):
        ce = QgsContrastEnhancement(layer.dataProvider().dataType(1))
        ce.setContrastEnhancementAlgorithm(QgsContrastEnhancement.ContrastEnhancementAlgorithm.StretchToMinimumMaximum)
        ce.setMinimumValue(1)
        ce.setMaximumValue(255)
        setter(ce)
    layer.setRenderer(renderer)
    layer.triggerRepaint()


def _pseudocolor(layer, lo: float, hi: float, ramp_name: str, invert: bool = False) -> None:
    from qgis.core import QgsColorRampShader, QgsRasterShader, QgsSingleBandPseudoColorRenderer, QgsStyle

    ramp = QgsStyle.defaultStyle().colorRamp(ramp_name)
    if ramp is None:
        return
    if invert:
        ramp.invert()
    shader_fn = QgsColorRampShader(lo, hi, ramp)
    shader_fn.classifyColorRamp(9, -1)
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(shader_fn)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(lo)
    renderer.setClassificationMax(hi)
    layer.setRenderer(renderer)
    layer.triggerRepaint()


def data_stretch(layer, band: int = 1, lower: float = 0.02, upper: float = 0.98):
    """(lo, hi, minimum, maximum): the band's ``lower``..``upper`` percentiles, and its true range."""
    provider = layer.dataProvider()
    stats = provider.bandStatistics(band, STAT_MIN | STAT_MAX)
    mn, mx = float(stats.minimumValue), float(stats.maximumValue)
    lo, hi = provider.cumulativeCut(band, lower, upper, layer.extent(), 250000)
    lo, hi = float(lo), float(hi)
    if not hi > lo:  # (almost) constant, or too few pixels for percentiles
        lo, hi = mn, mx
    if not hi > lo:
        lo, hi = lo - 1e-6, hi + 1e-6
    return lo, hi, mn, mx


def _label_ends(layer, mn: float, mx: float, digits: int = 4) -> None:
    """Make the legend honest about a percentile stretch: the end classes say where the data really end."""
    shader_fn = layer.renderer().shader().rasterShaderFunction()
    items = shader_fn.colorRampItemList()
    if len(items) >= 2:
        items[0].label = f"\u2264 {items[0].value:.{digits}f} (min {mn:.{digits}f})"
        items[-1].label = f"\u2265 {items[-1].value:.{digits}f} (max {mx:.{digits}f})"
        shader_fn.setColorRampItemList(items)


def style_similarity(layer) -> None:
    """Cosine similarity on a diverging ramp (high = like the reference), stretched to the data's 2nd..98th
    percentiles: similarities often all lie within 0.99..1, which a fixed −1..1 ramp shows as one colour.
    The legend's end classes give the data's true minimum and maximum."""
    if isinstance(layer, QgsRasterLayer):
        lo, hi, mn, mx = data_stretch(layer)
        _pseudocolor(layer, lo, hi, "RdYlBu", invert=True)
        _label_ends(layer, mn, mx)


def style_change(layer) -> None:
    """Cosine distance from 0 (no change) up to its 98th percentile, on a sequential ramp."""
    if isinstance(layer, QgsRasterLayer):
        _, hi = layer.dataProvider().cumulativeCut(1, 0.0, 0.98, layer.extent(), 250000)
        _pseudocolor(layer, 0.0, max(float(hi), 1e-6), "Magma")


def style_classes(layer) -> None:
    """Class raster 1..k, 0 = nodata, as paletted classes with distinct colours."""
    from qgis.core import QgsPalettedRasterRenderer, QgsRandomColorRamp
    from qgis.PyQt.QtGui import QColor

    if not isinstance(layer, QgsRasterLayer):
        return
    stats = layer.dataProvider().bandStatistics(1, STAT_MAX)
    k = int(stats.maximumValue)
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94")
    classes = []
    ramp = QgsRandomColorRamp()
    ramp.setTotalColorCount(max(1, k))
    for c in range(1, k + 1):
        color = QColor(palette[c - 1]) if c <= len(palette) else ramp.color(c / max(1, k))
        classes.append(QgsPalettedRasterRenderer.Class(c, color, f"class {c}"))
    layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, classes))
    layer.triggerRepaint()



def _config_of(layer) -> dict:
    try:
        from ..thor_qgis.gdal_io import read_metadata_config

        return read_metadata_config(layer.source())
    except Exception:  # not a file GDAL reads, or no THOR_CONFIG: style without names
        return {}


def style_labelled_classes(layer) -> None:
    """A class raster from thor:classify / thor:apply_model: paletted, one entry per class with its
    name (from the raster's THOR_CONFIG); without a record, like k-means classes."""
    from qgis.core import QgsPalettedRasterRenderer
    from qgis.PyQt.QtGui import QColor

    if not isinstance(layer, QgsRasterLayer):
        return
    classes = _config_of(layer).get("classes") or []
    if not classes:
        style_classes(layer)
        return
    ct = layer.dataProvider().colorTable(1) if hasattr(layer.dataProvider(), "colorTable") else []
    colours = {int(item.value): item.color for item in ct} if ct else {}
    entries = []
    for i, c in enumerate(classes):
        colour = colours.get(int(c["value"])) or QColor.fromHsvF(((i * 0.618033988749895) % 1.0), 0.7, 0.9)
        entries.append(QgsPalettedRasterRenderer.Class(int(c["value"]), colour, str(c["name"])))
    layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, entries))
    layer.triggerRepaint()


def style_confidence(layer) -> None:
    """Probability of the chosen class, 0..1, on a sequential ramp (bright = confident)."""
    if isinstance(layer, QgsRasterLayer):
        _pseudocolor(layer, 0.0, 1.0, "Viridis")


def style_values(layer) -> None:
    """Predicted values between their 2nd and 98th percentiles on a sequential ramp."""
    if isinstance(layer, QgsRasterLayer):
        lo, hi = layer.dataProvider().cumulativeCut(1, 0.02, 0.98, layer.extent(), 250000)
        if not hi > lo:
            stats = layer.dataProvider().bandStatistics(1, STAT_MIN | STAT_MAX)
            lo, hi = stats.minimumValue, stats.maximumValue
        _pseudocolor(layer, float(lo), float(hi) if hi > lo else float(lo) + 1.0, "Spectral")


def style_mask(layer) -> None:
    """A 0/1 mask: 1 drawn in one colour, 0 left transparent."""
    from qgis.core import QgsPalettedRasterRenderer
    from qgis.PyQt.QtGui import QColor

    if isinstance(layer, QgsRasterLayer):
        layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, [
            QgsPalettedRasterRenderer.Class(1, QColor("#e31a1c"), "similar")]))
        layer.triggerRepaint()
