"""How visible are tile edges in a THOR grid, for each way of writing tiles (none / crop / blend)?

For the bundled synthetic sample (or a raster you give), writes the grid of each seam mode over the same
area (on the global tile grid) and prints a Markdown table with, for each:

- tiles, and their cost relative to ``none``; time to write the grid;
- the mean cosine distance between neighbouring cells (horizontal and vertical pairs) across the lines
  between neighbouring tiles' cores (the hard edges of none and crop; the middle of the ramp, where the
  weights change fastest, for blend) and elsewhere, and the ratio (1: edges are invisible);
- a measure independent of where the edges are: the mean neighbour distance per position modulo the
  tile step, largest over the median (1: nothing repeats with the tiles, wherever it sits).

    .venv/bin/python scripts/bench_seams.py [--raster PATH] [--checkpoint PATH] [--model thor_v1_tiny]
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from thor_qgis import gdal_io, pipeline, sample  # noqa: E402
from thor_qgis.embedder import Embedder  # noqa: E402
from thor_qgis.raster_source import RasterSource  # noqa: E402
from thor_qgis.specs import ModelSpec  # noqa: E402

MODES = (("none", 0), ("crop", 3), ("blend", 3), ("crop", 2), ("blend", 2), ("blend", 4))


def _cos_dist(a, b):
    """1 - cosine similarity of [C, ...] vectors along axis 0."""
    cos = (a * b).sum(0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0) + 1e-12)
    return 1.0 - cos


def seam_figures(grid, layout):
    """(across, inside, ratio, periodic ratio) for a [C, H, W] grid written with ``layout``."""
    k = layout.core
    dh = _cos_dist(grid[:, :, :-1], grid[:, :, 1:])  # [H, W-1]: between columns j and j + 1
    dv = _cos_dist(grid[:, :-1, :], grid[:, 1:, :])  # [H-1, W]
    col = layout.out_col0 + np.arange(dh.shape[1]) + 1  # the global token line each pair straddles
    row = layout.out_row0 + np.arange(dv.shape[0]) + 1
    ch, rv = col % k == 0, row % k == 0  # pairs straddling a line between tile cores
    across = np.concatenate([dh[:, ch].ravel(), dv[rv, :].ravel()])
    inside = np.concatenate([dh[:, ~ch].ravel(), dv[~rv, :].ravel()])
    per_phase = []
    for p in range(k):
        vals = np.concatenate([dh[:, col % k == p].ravel(), dv[row % k == p, :].ravel()])
        if vals.size:
            per_phase.append(vals.mean())
    return across.mean(), inside.mean(), across.mean() / inside.mean(), max(per_phase) / np.median(per_phase)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raster")
    ap.add_argument("--checkpoint")
    ap.add_argument("--model", default="thor_v1_tiny")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="thor_seams_")
    raster = args.raster or sample.write_sample(os.path.join(work, "sample.tif"))
    weights = dict(weights="checkpoint", checkpoint=args.checkpoint) if args.checkpoint else dict(weights="random")
    emb = Embedder(ModelSpec(model_key=args.model, **weights))
    src = RasterSource(raster)
    what = "the bundled synthetic sample" if not args.raster else os.path.basename(raster)
    print(f"{args.model}, weights {emb.metadata['weights'].get('source')}, {what}")
    rows, base_tiles = [], None
    for seams, margin in MODES:
        layout = src.layout(src.area(), emb.model.image_size, emb.grid_side(), margin=margin, seams=seams)
        t = time.perf_counter()
        res = pipeline.write_grid(layout, src.tiles(layout), emb, "mean", os.path.join(work, f"{seams}{margin}.tif"))
        dt = time.perf_counter() - t
        grid = gdal_io.open_raster(res.path).ReadAsArray().astype(np.float64)
        across, inside, ratio, periodic = seam_figures(grid, layout)
        base_tiles = base_tiles or layout.n_tiles
        large = (layout.grid_side / layout.core) ** 2
        rows.append((f"{seams}" + (f" m={margin}" if margin else ""), layout.n_tiles, layout.n_tiles / base_tiles,
                     large, dt, across, inside, ratio, periodic))
    print(f"output {res.width} x {res.height} pixels of {layout.output_pixel_size():g} m\n")
    print("| mode | tiles | cost vs none | cost on large areas | time (s) | across edges | inside | ratio "
          "| periodic max/median |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, n, cost, large, dt, across, inside, ratio, periodic in rows:
        print(f"| {name} | {n} | {cost:.2f} × | {large:.2f} × | {dt:.1f} | {across:.4f} | {inside:.4f} | "
              f"{ratio:.2f} | {periodic:.2f} |")


if __name__ == "__main__":
    main()
