"""How visible are tile edges in a THOR grid, with and without a context margin?

For the bundled sample (or a raster you give), writes grids with context margins 0 and 3 and prints,
for each, the mean cosine distance between horizontally adjacent cells across a tile edge and within
tiles, their ratio (1 = edges are invisible), and the time taken.

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


def adjacent_distances(grid, edge_cols):
    """Mean cosine distance between cells (r, c) and (r, c + 1): across tile edges, and elsewhere."""
    a, b = grid[:, :, :-1], grid[:, :, 1:]
    cos = (a * b).sum(0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0) + 1e-12)
    dist = 1.0 - cos
    across = np.zeros(dist.shape[1], bool)
    across[[c - 1 for c in edge_cols if 0 < c <= dist.shape[1]]] = True
    return float(dist[:, across].mean()), float(dist[:, ~across].mean())


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
    print(f"{args.model}, weights {emb.metadata['weights'].get('source')}, raster {raster}")
    for margin in (0, 3):
        layout = src.layout(src.area(), 288, emb.grid_side(), margin=margin)
        t = time.perf_counter()
        res = pipeline.write_grid(layout, src.tiles(layout), emb, "mean", os.path.join(work, f"g{margin}.tif"))
        dt = time.perf_counter() - t
        grid = gdal_io.open_raster(res.path).ReadAsArray().astype(np.float64)
        edges = [c * layout.core for c in range(1, layout.tiles_x)]
        across, within = adjacent_distances(grid, edges)
        print(f"margin {margin}: {layout.n_tiles:3d} tiles, {dt:6.1f} s; cosine distance across tile edges "
              f"{across:.4f}, within tiles {within:.4f}, ratio {across / within:.2f}")


if __name__ == "__main__":
    main()
