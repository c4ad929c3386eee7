"""In-process vs a Dask cluster (local:N) for a grid run, and the scaling model for N machines.

Runs the same grid (the bundled sample, or a raster you give; blended tiles by default) in this process and
on ``local:N`` (N worker processes of one thread), checks that the two GeoTIFFs are byte-identical, and
prints, measured in this one run:

- wall time of each, split into set-up (model load; cluster start + model load on the workers) and tiles;
  the ratio in-process / cluster (above 1: the cluster is faster);
- tiles/s per worker (tiles over the time workers spent reading and embedding) and the Dask overhead
  (cluster wall time for the tiles over what N workers' busy time would allow);
- the writer's throughput: tiles/s the single writer of this process sustains (blending, compression,
  writing) with grids already computed: the ceiling of any cluster;
- the scaling model: tiles/s for N machines = min(N x workers per machine x tiles/s per worker, writer).

    .venv/bin/python scripts/bench_dask.py [--raster PATH] [--model thor_v1_tiny] [--workers 2]
        [--weights random|checkpoint --checkpoint PATH] [--seams blend] [--writer-tiles 400]
"""
import argparse
import hashlib
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from thor_qgis import distributed, pipeline, sample  # noqa: E402
from thor_qgis.embedder import Embedder  # noqa: E402
from thor_qgis.raster_source import RasterSource  # noqa: E402
from thor_qgis.specs import ModelSpec  # noqa: E402
from thor_qgis.tiling import global_layout  # noqa: E402

REAL_SAMPLE = os.path.join(ROOT, "sample", "s2_l1c_eastern_shore_576.tif")


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def writer_throughput(model_info, group_merge, tiles, work_dir, seams):
    """Tiles/s of the writer alone: a layout of about ``tiles`` tiles fed with ready grids."""
    side = max(1, int(round(tiles ** 0.5)))
    n = model_info.grid_side()
    g = 2880.0
    lay = global_layout((0.0, 0.0, side * g * 0.67, side * g * 0.67), "EPSG:32632", 10.0, 288, n, seams=seams)
    c = model_info.grid_channels(group_merge)
    rng = np.random.default_rng(0)
    grid = rng.standard_normal((c, n, n)).astype(np.float32)
    cells = np.ones((n, n), bool)

    def grids():
        for t in lay.tiles():
            yield t, grid, cells

    t0 = time.perf_counter()
    pipeline.write_embedded_grid(lay, grids(), model_info, group_merge, os.path.join(work_dir, "writer.tif"))
    return lay.n_tiles, lay.n_tiles / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raster", default=None)
    ap.add_argument("--model", default="thor_v1_tiny")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seams", default="blend")
    ap.add_argument("--writer-tiles", type=int, default=400)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="thor-bench-dask-")
    path = args.raster or (REAL_SAMPLE if os.path.exists(REAL_SAMPLE) else
                           sample.write_sample(os.path.join(work, "sample.tif")))
    model = ModelSpec(model_key=args.model, weights=args.weights, checkpoint=args.checkpoint)
    src = RasterSource(path)
    layout = src.layout(src.area(), model.image_size, model.grid_side(), seams=args.seams)
    cores = os.cpu_count()
    print(f"# {os.path.basename(path)}: {layout.n_tiles} tiles ({args.seams}), {args.model} ({args.weights} "
          f"weights), batch {model.batch_size}; this machine: {cores} CPU core(s)\n")

    t0 = time.perf_counter()
    emb = Embedder(model)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    a = pipeline.write_grid(layout, src.tiles(layout), emb, "mean", os.path.join(work, "a.tif"))
    t_in = time.perf_counter() - t0

    stats = distributed.RunStats()
    timing = {}
    job = distributed.GridWork(layout=layout, model=model, imagery=distributed.RasterImagery(path))
    t0 = time.perf_counter()
    with distributed.connect(f"local:{args.workers}") as client:
        timing["start"] = time.perf_counter() - t0
        run = distributed.ClusterGrid(client)
        run.stats = stats
        t1 = time.perf_counter()
        ready = run.prepare(job)
        # every worker loads its model before the clock for tiles starts (prepare loads it on one)
        client.run(distributed.describe_model, model, 10.0, ("mean",))
        timing["prepare"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        b = run.write_grid(job, ready.model, os.path.join(work, "b.tif"))
        timing["tiles"] = time.perf_counter() - t1
    t_cluster = time.perf_counter() - t0
    same = sha(a.path) == sha(b.path)

    per_worker = stats.tiles / stats.worker_seconds if stats.worker_seconds else float("nan")
    in_rate = layout.n_tiles / t_in
    n_tiles, w_rate = writer_throughput(ready.model, "mean", args.writer_tiles, work, args.seams)
    print("| run | set-up (s) | tiles (s) | total (s) | tiles/s |")
    print("|---|---|---|---|---|")
    print(f"| in-process | {t_load:.1f} (model) | {t_in:.1f} | {t_load + t_in:.1f} | {in_rate:.2f} |")
    print(f"| local:{args.workers} | {timing['start']:.1f} (cluster) + {timing['prepare']:.1f} (checks, models) | "
          f"{timing['tiles']:.1f} | {t_cluster:.1f} | {layout.n_tiles / timing['tiles']:.2f} |")
    print(f"\nSame GeoTIFF, byte for byte: {'yes' if same else 'NO'}")
    print(f"Tiles: in-process / local:{args.workers} = {timing['tiles'] / t_in:.2f}x the time "
          f"({t_in / timing['tiles']:.2f}x the speed); with set-up: {(t_load + t_in) / t_cluster:.2f}x the speed.")
    busy = stats.worker_seconds / timing["tiles"]
    print(f"Per worker: {per_worker:.2f} tiles/s (reading + embedding, {stats.worker_seconds:.1f} s of work over "
          f"{stats.tasks} tasks); the workers were busy {busy:.2f} of {args.workers} worker-seconds per second.")
    print(f"Writer alone: {w_rate:.1f} tiles/s ({n_tiles} tiles of {ready.model.grid_channels('mean')} channels, "
          f"{args.seams}): the ceiling of a cluster, {w_rate / per_worker:.0f} workers' worth.")
    print("\nScaling model: tiles/s = min(N machines x workers per machine x tiles/s per worker, writer)")
    print("| machines (4 workers each) | tiles/s | limited by |")
    print("|---|---|---|")
    for n in (1, 2, 4, 8, 16, 32, 64):
        comp = n * 4 * per_worker
        print(f"| {n} | {min(comp, w_rate):.1f} | {'workers' if comp < w_rate else 'the writer'} |")


if __name__ == "__main__":
    main()
