#!/usr/bin/env python3
"""Encoder speed and fidelity in each precision, measured side by side in one process.

    .venv/bin/python scripts/bench_precision.py                        # tiny, small, base at batch 8 on the CPU
    .venv/bin/python scripts/bench_precision.py --models thor_v1_base --batch 8 --runs 5 --threads 1
    .venv/bin/python scripts/bench_precision.py --device cuda --models thor_v1_base thor_v1_large --batch 32

Prints, for each model and precision: the median time per tile (wall clock, and on the CPU also the
process's CPU time, which a loaded machine disturbs far less), the ratio to float32 (per run, float32
and the reduced precision run back to back, then the median of the ratios), the model's GFLOP/s and the
fraction of the machine's matrix-product rate it reaches, and the fidelity of each reduced precision
against float32 on the same input: per-token cosine similarity (min, mean), cosine of the mean-pooled
vectors (min) and the largest absolute difference. Before the models it measures the machine's
float32 and reduced-precision matmul rates (square products, interleaved).

Input: the bundled synthetic Sentinel-2 scene (not real imagery), cut into 288 px tiles and flipped to
fill the batch, normalised as the plugin does. Weights: random (the reference's initialisation), or a
checkpoint with --checkpoint. Nothing is asserted.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from thor_qgis import accel, sample  # noqa: E402
from thor_qgis.encoder import ThorEncoder, s2_layout  # noqa: E402
from thor_qgis.preprocess import prepare_input  # noqa: E402
from thor_qgis.specs import MODEL_VARIANTS  # noqa: E402


def model_flops(key: str, layout) -> float:
    """Multiply-adds x 2 per tile: patch embedding, and per block qkv, attention, projection and MLP."""
    v = MODEL_VARIANTS[key]
    d, n = v.embed_dim, layout.num_tokens
    patch = sum(len(g.bands) * g.tokens * g.patch_size ** 2 * d for g in layout.groups) * 2
    linear = n * (3 * d * d + d * d + 2 * 4 * d * d) * 2
    attention = 2 * n * n * d * 2
    return patch + v.depth * (linear + attention)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def timed(fn, device: str):
    sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return out, time.perf_counter() - w0, time.process_time() - c0


def matmul_rates(device: str, dtypes, size: int, runs: int):
    """GFLOP/s of [size x size] @ [size x size] per dtype, interleaved, median of ``runs``."""
    g = torch.Generator().manual_seed(0)
    a32 = torch.randn(size, size, generator=g)
    b32 = torch.randn(size, size, generator=g)
    mats = {dt: (a32.to(device=device, dtype=dt), b32.to(device=device, dtype=dt)) for dt in dtypes}
    flops = 2.0 * size ** 3
    walls = {dt: [] for dt in dtypes}
    cpus = {dt: [] for dt in dtypes}
    from thor_qgis.encoder import full_fp32_precision

    with full_fp32_precision():
        for dt, (a, b) in mats.items():  # warm-up
            a @ b
        for _ in range(runs):
            for dt, (a, b) in mats.items():
                _, w, c = timed(lambda: a @ b, device)
                walls[dt].append(w)
                cpus[dt].append(c)
    return ({dt: flops / statistics.median(v) / 1e9 for dt, v in walls.items()},
            {dt: flops / statistics.median(v) / 1e9 for dt, v in cpus.items()})


def scene_batch(batch: int, image_size: int) -> np.ndarray:
    s = sample.scene()
    t = sample.SIZE // 2
    tiles = [s[:, r:r + t, c:c + t] for r in (0, t) for c in (0, t)]
    tiles += [x[:, ::-1, :] for x in tiles] + [x[:, :, ::-1] for x in tiles]
    while len(tiles) < batch:
        tiles += [x.transpose(0, 2, 1) for x in tiles]
    raw = np.stack([np.ascontiguousarray(x) for x in tiles[:batch]]).astype(np.float32)
    return prepare_input(raw, "thor_stats", image_size)


def fidelity(out: torch.Tensor, ref: torch.Tensor):
    out, ref = out.double(), ref.double()
    tok = F.cosine_similarity(out, ref, dim=-1)
    pooled = F.cosine_similarity(out.mean(1), ref.mean(1), dim=-1)
    return float(tok.min()), float(tok.mean()), float(pooled.min()), float((out - ref).abs().max())


def build(key: str, checkpoint: str, device: str) -> ThorEncoder:
    enc = ThorEncoder(key)
    if checkpoint:
        from thor_qgis.weights import load_state_into, read_checkpoint

        load_state_into(enc, read_checkpoint(checkpoint), key, checkpoint)
    else:
        enc.init_random(0)
    return enc.to(device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["thor_v1_tiny", "thor_v1_small", "thor_v1_base"],
                    choices=list(MODEL_VARIANTS))
    ap.add_argument("--precisions", nargs="+", default=None, choices=["bfloat16", "float16"],
                    help="reduced precisions to compare with float32 (default: bfloat16 on a CPU, both on a GPU)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=288)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--matmul-size", type=int, default=2048)
    ap.add_argument("--checkpoint", default="", help="a THOR checkpoint for the model (one model only)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = accel.resolve_device(args.device)
    gpu = accel.device_kind(device) != "cpu"
    precisions = args.precisions or (["bfloat16", "float16"] if gpu else ["bfloat16"])
    if not gpu and "float16" in precisions:
        ap.error("float16 is for GPUs only (the plugin refuses it on a CPU)")
    if args.checkpoint and len(args.models) != 1:
        ap.error("--checkpoint goes with exactly one model")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    native = accel.cpu_bf16_native()
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"CPU bf16: {native[1]}, {os.cpu_count()} logical CPUs, load average {load[0]:.1f} at start")
    if not gpu:
        print(f"reduced-precision linear path: {accel.onednn_packed_linear_ok()[1]}")
    dts = [torch.float32] + [accel.DTYPES[p] for p in precisions]
    mm_wall, mm_cpu = matmul_rates(device, dts, args.matmul_size, max(3, args.runs))
    rate_of = mm_cpu if not gpu else mm_wall
    line = ", ".join(f"{str(dt).replace('torch.', '')} {mm_wall[dt]:.0f}"
                     + ("" if gpu else f" (CPU time: {mm_cpu[dt]:.0f})") for dt in dts)
    print(f"matmul {args.matmul_size}^3 GFLOP/s: {line}")
    layout = s2_layout(args.image_size, 16)
    x = torch.from_numpy(scene_batch(args.batch, args.image_size))
    clock = "CPU time" if not gpu else "wall"
    print(f"batch {args.batch}, image {args.image_size}, {layout.num_tokens} tokens/tile; {args.runs} interleaved "
          f"runs; ratios are medians of per-run ratios; 'frac' is the model's GFLOP/s over the same precision's "
          f"matmul rate ({clock})")
    header = (f"{'model':<14}{'precision':<10}{'ms/tile wall':>13}{'ms/tile cpu':>12}{'x fp32 wall':>12}"
              f"{'x fp32 cpu':>11}{'GFLOP/s':>9}{'frac':>6}  {'tok cos min':>11}{'tok cos mean':>13}"
              f"{'pool cos min':>13}{'max abs':>9}")
    print(header)
    xd = x.to(device)
    for key in args.models:
        enc = build(key, args.checkpoint, device)
        flops = model_flops(key, layout)
        names = ["float32"] + precisions
        runs = {p: lambda p=p: enc(xd, layout, precision=p) for p in names}
        outs = {p: runs[p]().float().cpu() for p in names}  # warm-up: caches, cast weights, kernels
        wall = {p: [] for p in names}
        cpu = {p: [] for p in names}
        for _ in range(args.runs):
            for p in names:
                _, w, c = timed(runs[p], device)
                wall[p].append(w / args.batch)
                cpu[p].append(c / args.batch)
        for p in names:
            mw, mc = statistics.median(wall[p]), statistics.median(cpu[p])
            rw = statistics.median(a / b for a, b in zip(wall["float32"], wall[p]))
            rc = statistics.median(a / b for a, b in zip(cpu["float32"], cpu[p]))
            t = mw if gpu else mc
            gflops = flops / t / 1e9
            frac = gflops / rate_of[accel.DTYPES[p]]
            fid = ("" if p == "float32" else
                   "  {:>11.6f}{:>13.6f}{:>13.7f}{:>9.3g}".format(*fidelity(outs[p], outs["float32"])))
            print(f"{key:<14}{p:<10}{mw * 1e3:>13.1f}{mc * 1e3:>12.1f}{rw:>12.2f}{rc:>11.2f}{gflops:>9.1f}"
                  f"{frac:>6.0%}{fid}", flush=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"load average {load[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
