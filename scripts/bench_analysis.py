"""Time and peak memory of the embedding-raster analyses on a large synthetic embedding raster.

Writes a WIDTH x HEIGHT x BANDS float32 embedding raster (default 1000 x 1000 x 768, about 3 GB) and a
second one that differs only inside a square (for the change map) under --dir, as tiled (256 x 256),
band-interleaved, *uncompressed* BigTIFFs (--compress: DEFLATE + PREDICTOR=3, the layout the plugin
writes its own embeddings in) written in tile windows by the plugin's GeoTiffWriter; then
runs each analysis in its own Python process and reports wall time and that process's peak resident
memory: VmHWM from /proc/self/status, which counts numpy buffers and GDAL's block cache (tracemalloc
sees neither). getrusage's ru_maxrss is not used: on Linux a child keeps the high-water mark of the
process it was forked from across exec, so it would report the parent's peak. A process that only
imports numpy and GDAL is measured the same way, as the baseline.
The rasters are deleted at the end unless --keep. Times are with the rasters in the page cache (they
were just written), so they measure computation and GDAL decoding rather than the disk.

    .venv/bin/python scripts/bench_analysis.py [--size 1000] [--bands 768] [--dir /tmp] [--block-mib 64]
        [--compress] [--ops rgb,similarity,kmeans,change] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TILE = 256
BENCH_OPTIONS = ("TILED=YES", f"BLOCKXSIZE={TILE}", f"BLOCKYSIZE={TILE}", "BIGTIFF=YES", "INTERLEAVE=BAND")
COMPRESSED_OPTIONS = BENCH_OPTIONS + ("COMPRESS=DEFLATE", "PREDICTOR=3")
CHANGE_BOX = (600, 100, 200, 150)  # xoff, yoff, width, height of the planted change
REF_BOX = (100, 100, 3, 3)  # pixels under the reference polygon
N_CLUSTERS = 8
GT = (500000.0, 160.0, 0.0, 4650000.0, 0.0, -160.0)


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    return float("nan")


def _rss_mib() -> float:
    return _status_mib("VmRSS")


def _peak_mib() -> float:
    return _status_mib("VmHWM")


def generate(path: str, size: int, bands: int, changed: bool, compress: bool = False) -> None:
    """Clustered embeddings: N_CLUSTERS centres in a coarse spatial pattern + noise; ``changed`` puts
    another cluster in CHANGE_BOX. Written one 256 x 256 tile window at a time, deterministic per tile."""
    import numpy as np

    from thor_qgis.gdal_io import GeoTiffWriter, crs_to_wkt, list_band_names

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(N_CLUSTERS, bands)).astype(np.float32)
    with GeoTiffWriter(path, size, size, bands, GT, crs_to_wkt("EPSG:32633"), band_names=list_band_names(bands),
                       options=COMPRESSED_OPTIONS if compress else BENCH_OPTIONS) as w:
        for yoff in range(0, size, TILE):
            for xoff in range(0, size, TILE):
                h, wd = min(TILE, size - yoff), min(TILE, size - xoff)
                yy, xx = np.mgrid[yoff:yoff + h, xoff:xoff + wd]
                labels = ((yy // 97) * 3 + (xx // 131) * 5) % N_CLUSTERS
                if changed:
                    cx, cy, cw, ch = CHANGE_BOX
                    box = (xx >= cx) & (xx < cx + cw) & (yy >= cy) & (yy < cy + ch)
                    labels = np.where(box, (labels + 1) % N_CLUSTERS, labels)
                trng = np.random.default_rng([1, yoff, xoff])
                block = trng.standard_normal(size=(bands, h, wd), dtype=np.float32)
                block *= 0.5
                for k in range(N_CLUSTERS):
                    sel = labels == k
                    block[:, sel] += centres[k][:, None]
                w.write(block, xoff, yoff)
                del block


def worker(op: str, src: str, src_b: str, out_dir: str, block_mib: float) -> dict:
    import numpy as np  # noqa: F401  (the baseline counts the imports)
    from osgeo import gdal  # noqa: F401

    from thor_qgis import analysis

    if block_mib:
        analysis.DEFAULT_BLOCK_BYTES = int(block_mib * 1024 * 1024)
    base = _rss_mib()
    t0 = time.perf_counter()
    dst = os.path.join(out_dir, f"{op}.tif")
    extra = {}
    if op == "rgb":
        res = analysis.embedding_to_rgb(src, dst)
        extra = {"explained_variance_ratio": res["fit"]["explained_variance_ratio"]}
    elif op == "similarity":
        x0, y0, w, h = REF_BOX  # a polygon inset 1 m inside those pixels
        ax, bx = GT[0] + x0 * GT[1] + 1, GT[0] + (x0 + w) * GT[1] - 1
        ay, by = GT[3] + y0 * GT[5] - 1, GT[3] + (y0 + h) * GT[5] + 1
        poly = f"POLYGON (({ax} {ay}, {bx} {ay}, {bx} {by}, {ax} {by}, {ax} {ay}))"
        t_ref = time.perf_counter()
        vec, n = analysis.reference_embedding(src, [poly])
        extra = {"reference_pixels": n, "reference_s": round(time.perf_counter() - t_ref, 2)}
        res = analysis.similarity_map(src, dst, vec)
    elif op == "kmeans":
        res = analysis.kmeans_classes(src, dst, N_CLUSTERS)
        extra = {"iterations": res["fit"]["iterations"], "inertia": res["fit"]["inertia"]}
    elif op == "change":
        res = analysis.change_map(src, src_b, dst)
    else:
        raise SystemExit(f"unknown op {op}")
    elapsed = time.perf_counter() - t0
    return {"op": op, "seconds": round(elapsed, 2), "peak_rss_mib": round(_peak_mib(), 1),
            "baseline_rss_mib": round(base, 1), "output_mib": round(os.path.getsize(res["output"]) / 2 ** 20, 2),
            **extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--bands", type=int, default=768)
    ap.add_argument("--dir", default="/tmp")
    ap.add_argument("--block-mib", type=float, default=0.0, help="override analysis.DEFAULT_BLOCK_BYTES")
    ap.add_argument("--ops", default="rgb,similarity,kmeans,change")
    ap.add_argument("--compress", action="store_true", help="DEFLATE + PREDICTOR=3 instead of uncompressed")
    ap.add_argument("--keep", action="store_true", help="keep the generated rasters (and reuse them)")
    ap.add_argument("--worker", nargs=4, metavar=("OP", "SRC", "SRC_B", "OUT_DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--generate", nargs=5, metavar=("PATH", "SIZE", "BANDS", "CHANGED", "COMPRESS"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, block_mib=args.block_mib)))
        return
    if args.generate:
        path, size, bands, changed, compress = args.generate
        generate(path, int(size), int(bands), changed == "1", compress == "1")
        return
    if args.probe:
        import numpy  # noqa: F401
        from osgeo import gdal  # noqa: F401

        from thor_qgis import analysis  # noqa: F401

        print(round(_peak_mib(), 1))
        return

    work = os.path.join(args.dir, f"thor_bench_{args.size}x{args.bands}{'_deflate' if args.compress else ''}")
    os.makedirs(work, exist_ok=True)
    src, src_b = os.path.join(work, "a.tif"), os.path.join(work, "b.tif")
    out_dir = tempfile.mkdtemp(prefix="out_", dir=work)
    try:
        for path, changed in ((src, False), (src_b, True)):
            if not os.path.exists(path):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, os.path.abspath(__file__), "--generate", path, str(args.size),
                                str(args.bands), "1" if changed else "0", "1" if args.compress else "0"],
                               check=True, cwd=ROOT)
                print(f"generated {path}: {os.path.getsize(path) / 2 ** 30:.2f} GiB in "
                      f"{time.perf_counter() - t0:.1f} s", flush=True)
        probe = subprocess.run([sys.executable, os.path.abspath(__file__), "--probe"], capture_output=True,
                               text=True, check=True, cwd=ROOT)
        print(f"a process importing numpy + GDAL + thor_qgis.analysis only: peak RSS {probe.stdout.strip()} MiB")
        rows = []
        for op in args.ops.split(","):
            cmd = [sys.executable, os.path.abspath(__file__), "--block-mib", str(args.block_mib),
                   "--worker", op, src, src_b, out_dir]
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if r.returncode != 0:
                print(r.stdout, r.stderr, file=sys.stderr)
                raise SystemExit(f"{op} failed")
            row = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
        print(f"\n{'operation':<12}{'time (s)':>10}{'peak RSS (MiB)':>16}")
        for row in rows:
            print(f"{row['op']:<12}{row['seconds']:>10}{row['peak_rss_mib']:>16}")
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
