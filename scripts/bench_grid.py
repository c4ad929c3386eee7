"""Wall time and peak memory of thor:grid_from_raster through headless qgis_process.

Runs the bundled sample (576 x 576 px, 4 tiles) and a 16x larger area (2304 x 2304 px, 64 tiles), with
thor_v1_tiny and thor_v1_base (random weights: the time does not depend on them), each in its own
qgis_process, and prints wall time, peak resident memory of that process, and the ratios.

    .venv/bin/python scripts/bench_grid.py [--models thor_v1_tiny,thor_v1_base] [--batch 4]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from thor_qgis import sample  # noqa: E402

CHILD = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - t
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": r.returncode, "wall_s": wall, "peak_mb": peak_kb / 1024, "err": r.stderr[-2000:]}))
"""


def measure(cmd):
    out = subprocess.run([sys.executable, "-c", CHILD, *cmd], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout)
    if res["rc"] != 0:
        raise SystemExit(f"run failed: {' '.join(cmd)}\n{res['err']}")
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="thor_v1_tiny,thor_v1_base")
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="thor_bench_")
    rasters = {
        "sample 576x576 px (4 tiles)": sample.write_sample(os.path.join(work, "sample.tif")),
        "16x area 2304x2304 px (64 tiles)": sample.write_sample(os.path.join(work, "sample16.tif"), size=2304),
    }
    rows = []
    for model in args.models.split(","):
        for label, path in rasters.items():
            out = os.path.join(work, f"grid_{model}_{os.path.basename(path)}")
            cmd = [os.path.join(ROOT, "scripts", "qgis_process"), "--json", "run", "thor:grid_from_raster", "--",
                   f"INPUT={path}", f"MODEL_KEY={model}", "PRETRAINED=false", f"BATCH_SIZE={args.batch}",
                   f"OUTPUT={out}"]
            res = measure(cmd)
            rows.append((model, label, res["wall_s"], res["peak_mb"]))
            print(f"{model:14s} {label:34s} wall {res['wall_s']:7.1f} s   peak RSS {res['peak_mb']:7.0f} MB",
                  flush=True)
    print("\nratios (16x area / sample), same run:")
    for model in args.models.split(","):
        a, b = [r for r in rows if r[0] == model]
        print(f"{model:14s} time x{b[2] / a[2]:.1f}   peak memory x{b[3] / a[3]:.2f}")


if __name__ == "__main__":
    main()
