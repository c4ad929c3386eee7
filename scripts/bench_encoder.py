#!/usr/bin/env python3
"""Forward-pass timing of the builtin THOR encoder (random weights; nothing is asserted).

    .venv/bin/python scripts/bench_encoder.py                      # tiny and base, batch 1 and 8
    .venv/bin/python scripts/bench_encoder.py --models thor_v1_small --batches 4 --runs 3 --device cuda

Prints, per model and batch size, the median (and min/max) wall time of one forward pass over
the batch, and the median per tile. Input: normalised random data at the image size; the
preprocessing and output steps are not included.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from thor_qgis.encoder import ThorEncoder, s2_layout  # noqa: E402
from thor_qgis.specs import MODEL_VARIANTS  # noqa: E402


def bench(model_key: str, batch: int, runs: int, image_size: int, patch_size: int, device: str):
    enc = ThorEncoder(model_key).init_random(0).to(device)
    layout = s2_layout(image_size, patch_size)
    x = torch.randn(batch, 10, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
    enc(x, layout)  # warm-up (allocations, ALiBi and kernel caches)
    times = []
    for _ in range(runs):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        enc(x, layout)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    del enc
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["thor_v1_tiny", "thor_v1_base"], choices=list(MODEL_VARIANTS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=288)
    ap.add_argument("--patch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    layout = s2_layout(args.image_size, args.patch_size)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
          f"image {args.image_size}, patch {args.patch_size}, {layout.num_tokens} tokens, {args.runs} runs")
    if hasattr(os, "getloadavg"):
        print("load average before: %.2f %.2f %.2f" % os.getloadavg())
    print(f"{'model':<15} {'batch':>5} {'median s/batch':>15} {'min':>8} {'max':>8} {'median s/tile':>14}")
    for key in args.models:
        for b in args.batches:
            t = bench(key, b, args.runs, args.image_size, args.patch_size, args.device)
            med = statistics.median(t)
            print(f"{key:<15} {b:>5} {med:>15.3f} {min(t):>8.3f} {max(t):>8.3f} {med / b:>14.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
