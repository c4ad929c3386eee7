"""What the README picture scripts share: QGIS started offscreen with this plugin's provider, a THOR grid
made in this process, and layers drawn by QGIS's own map renderer and laid side by side in a PNG."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_qgis():
    """QGIS without a display, Processing and this plugin's provider: (app, plugin); end with stop_qgis."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, "/usr/share/qgis/python/plugins")
    sys.path.insert(0, os.path.join(ROOT, ".build", "plugins"))
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    from processing.core.Processing import Processing

    Processing.initialize()
    import thor_embeddings

    plugin = thor_embeddings.classFactory(None)
    plugin.initProcessing()
    return app, plugin


def stop_qgis(app, plugin):
    plugin.unload()
    app.exitQgis()


def run_grid(source, grid, checkpoint=None, **params):
    """thor:grid_from_raster from ``source`` to ``grid`` with ``params``: with the weights in ``checkpoint``,
    or random weights without one."""
    import processing

    params = {"INPUT": source, **params, "OUTPUT": grid}
    if checkpoint:
        params["CHECKPOINT"] = checkpoint
    else:
        params["PRETRAINED"] = False
    processing.run("thor:grid_from_raster", params)
    return grid


def render_layers(layers, path=None, size_px=420):
    """Render ``layers`` (the first on top) over the extent and CRS of the last one with
    QgsMapRendererCustomPainterJob, on white; saved as a PNG when ``path`` is given. Returns the QImage."""
    from qgis.core import QgsMapRendererCustomPainterJob, QgsMapSettings
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor, QImage, QPainter

    base = layers[-1]
    settings = QgsMapSettings()
    settings.setLayers(list(layers))
    settings.setDestinationCrs(base.crs())
    settings.setExtent(base.extent())
    settings.setOutputSize(QSize(size_px, size_px))
    settings.setBackgroundColor(QColor(255, 255, 255))
    image = QImage(QSize(size_px, size_px), QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(QColor(255, 255, 255))
    painter = QPainter(image)
    job = QgsMapRendererCustomPainterJob(settings, painter)
    job.start()
    job.waitForFinished()
    painter.end()
    if path:
        image.save(path, "PNG")
    return image


def side_by_side(images, captions, path, footer=None):
    """``images`` in a row with a caption under each (and ``footer`` under all), saved as a PNG."""
    from qgis.PyQt.QtCore import QRect, Qt
    from qgis.PyQt.QtGui import QColor, QFont, QImage, QPainter

    pad, caption_h, footer_h = 10, 28, (22 if footer else 0)
    w = sum(i.width() for i in images) + pad * (len(images) + 1)
    h = max(i.height() for i in images) + 2 * pad + caption_h + footer_h
    out = QImage(w, h, QImage.Format.Format_ARGB32)
    out.fill(QColor(255, 255, 255))
    p = QPainter(out)
    p.setFont(QFont("Sans", 11))
    x = pad
    for img, cap in zip(images, captions):
        p.drawImage(x, pad, img)
        p.setPen(QColor(30, 30, 30))
        p.drawText(QRect(x, pad + img.height() + 4, img.width(), caption_h - 4), Qt.AlignmentFlag.AlignHCenter, cap)
        x += img.width() + pad
    if footer:
        p.setFont(QFont("Sans", 9))
        p.setPen(QColor(90, 90, 90))
        p.drawText(QRect(pad, h - pad - footer_h, w - 2 * pad, footer_h), Qt.AlignmentFlag.AlignHCenter, footer)
    p.end()
    out.save(path, "PNG")
    return out


def style_true_colour(layer, ranges):
    """B4 B3 B2 as red, green, blue, each stretched over its own range ({band: (low, high)})."""
    from qgis.core import QgsContrastEnhancement, QgsMultiBandColorRenderer

    r = QgsMultiBandColorRenderer(layer.dataProvider(), 3, 2, 1)
    for setter, band in ((r.setRedContrastEnhancement, 3), (r.setGreenContrastEnhancement, 2),
                         (r.setBlueContrastEnhancement, 1)):
        ce = QgsContrastEnhancement(layer.dataProvider().dataType(band))
        ce.setContrastEnhancementAlgorithm(QgsContrastEnhancement.ContrastEnhancementAlgorithm.StretchToMinimumMaximum)
        ce.setMinimumValue(ranges[band][0])
        ce.setMaximumValue(ranges[band][1])
        setter(ce)
    layer.setRenderer(r)
