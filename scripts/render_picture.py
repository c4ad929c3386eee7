"""Render the README's picture with QGIS's own map renderer, offscreen.

Runs the bundled sample (real Sentinel-2 L1C imagery, sample/README.md) through thor:grid_from_raster and
thor:embedding_to_rgb (Processing, in this process), then renders the sample's true-colour view and the
embedding RGB side by side to a PNG, with the imagery's attribution under them.

    .venv/bin/python scripts/render_picture.py [--out docs/sample_embedding_rgb.png]
        [--checkpoint PATH] [--model thor_v1_tiny] [--patch-size 8] [--seams blend] [--margin 3]

Without --checkpoint it uses random weights and the caption says so.
"""
import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "sample", "s2_l1c_eastern_shore_576.tif")
ATTRIBUTION = "Contains modified Copernicus Sentinel data 2016 (Level-1C, top of atmosphere)"


def render_layer(layer, path, size_px=420):
    """Render one layer with QgsMapRendererCustomPainterJob to a PNG; returns the QImage."""
    from qgis.core import QgsMapRendererCustomPainterJob, QgsMapSettings
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor, QImage, QPainter

    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setExtent(layer.extent())
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


def percentile_ranges(path, bands=(3, 2, 1), low=1.0, high=99.0):
    """{band: (low, high)} percentiles of the whole raster (a fixed stretch, the same on every run)."""
    import numpy as np
    from osgeo import gdal

    ds = gdal.Open(path)
    out = {}
    for b in bands:
        a = ds.GetRasterBand(b).ReadAsArray().astype("float64")
        out[b] = tuple(float(v) for v in np.percentile(a, [low, high]))
    return out


def style_true_colour(layer, ranges):
    """B4 B3 B2 as red, green, blue, each stretched over its own range (TOA imagery is hazy and blue)."""
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


def make_picture(out_png, checkpoint=None, model="thor_v1_tiny", patch_size=8, work=None, margin=3, seams="blend",
                 source=SAMPLE):
    """Run sample → grid → embedding RGB inside this QGIS process and render the picture."""
    import processing
    from qgis.core import QgsRasterLayer

    work = work or tempfile.mkdtemp(prefix="thor_picture_")
    src = source
    grid = os.path.join(work, "grid.tif")
    params = {"INPUT": src, "MODEL_KEY": model, "PATCH_SIZE": patch_size, "SEAMS": seams, "CONTEXT_MARGIN": margin,
              "OUTPUT": grid}
    if checkpoint:
        params["CHECKPOINT"] = checkpoint
    else:
        params["PRETRAINED"] = False
    processing.run("thor:grid_from_raster", params)
    rgb = os.path.join(work, "rgb.tif")
    processing.run("thor:embedding_to_rgb", {"INPUT": grid, "OUTPUT": rgb})
    s2 = QgsRasterLayer(src, "sample")
    style_true_colour(s2, percentile_ranges(src))
    emb = QgsRasterLayer(rgb, "embedding rgb")
    images = [render_layer(s2, None), render_layer(emb, None)]
    weights = "local checkpoint" if checkpoint else "RANDOM weights"
    side_by_side(images, ["Sentinel-2 L1C, Eastern Shore of Virginia (B4 B3 B2)",
                          f"THOR {model.split('_')[-1]} p={patch_size}, {seams}"
                          f"{f' m={margin}' if seams != 'none' else ''} → RGB ({weights})"], out_png,
                 footer=ATTRIBUTION)
    return out_png, images


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "sample_embedding_rgb.png"))
    ap.add_argument("--checkpoint")
    ap.add_argument("--model", default="thor_v1_tiny")
    ap.add_argument("--patch-size", type=int, default=8)
    ap.add_argument("--seams", default="blend", choices=("blend", "crop", "none"), help="how tile edges are written")
    ap.add_argument("--margin", type=int, default=3, help="margin of overlapping tiles (tokens)")
    args = ap.parse_args()
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
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    path, _ = make_picture(args.out, args.checkpoint, args.model, args.patch_size, margin=args.margin,
                           seams=args.seams)
    print(path)
    plugin.unload()
    app.exitQgis()


if __name__ == "__main__":
    main()
