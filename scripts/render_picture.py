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

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
from qgis_pictures import (ROOT, render_layers, run_grid, side_by_side, start_qgis, stop_qgis,  # noqa: E402
                           style_true_colour)

SAMPLE = os.path.join(ROOT, "sample", "s2_l1c_eastern_shore_576.tif")
ATTRIBUTION = "Contains modified Copernicus Sentinel data 2016 (Level-1C, top of atmosphere)"


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


def make_picture(out_png, checkpoint=None, model="thor_v1_tiny", patch_size=8, work=None, margin=3, seams="blend",
                 source=SAMPLE):
    """Run sample → grid → embedding RGB inside this QGIS process and render the picture."""
    import processing
    from qgis.core import QgsRasterLayer

    work = work or tempfile.mkdtemp(prefix="thor_picture_")
    src = source
    grid = run_grid(src, os.path.join(work, "grid.tif"), checkpoint, MODEL_KEY=model, PATCH_SIZE=patch_size,
                    SEAMS=seams, CONTEXT_MARGIN=margin)
    rgb = os.path.join(work, "rgb.tif")
    processing.run("thor:embedding_to_rgb", {"INPUT": grid, "OUTPUT": rgb})
    s2 = QgsRasterLayer(src, "sample")
    style_true_colour(s2, percentile_ranges(src))
    emb = QgsRasterLayer(rgb, "embedding rgb")
    images = [render_layers([s2]), render_layers([emb])]
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
    app, plugin = start_qgis()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    path, _ = make_picture(args.out, args.checkpoint, args.model, args.patch_size, margin=args.margin,
                           seams=args.seams)
    print(path)
    stop_qgis(app, plugin)


if __name__ == "__main__":
    main()
