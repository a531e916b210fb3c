"""Attention kernels for CPU fast mode on this machine: each one's rate on a full-size layer, and the calibrated choice.

    .venv/bin/python bench/bench_attention.py [--heads 4] [--repeats 1] [--save]

Times every kernel of ``backend/network/attention_choice.py`` (bf16 inputs, as under fast mode's autocast) on
one full-size LAM-20K joint-attention layer: 20018 point queries x 21314 keys, head size 64, 16 heads. To keep
the run short it times ``--heads`` of the 16 heads (all of the queries and keys) and scales the time by
16 / heads: heads are independent, so the per-head cost is the same. Each kernel's error is measured against
float32 SDPA on the first head. Then it runs the calibration that fast mode runs once per machine (the reduced
shape, a few seconds), prints its choice and its duration, and how the chosen kernel's full-layer time
compares with the fastest one measured here (issue 17's goal: <= 1.1 x). ``--save`` stores the calibration in
the asset cache as a first fast run would (default: the cache is left alone).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.network import attention_choice as ac  # noqa: E402
from backend.network.attention import run_kernel  # noqa: E402


def load_averages() -> str:
    """The 1, 5 and 15 minute load averages, for the figures' context."""
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except (OSError, AttributeError):
        return "n/a"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", type=int, default=4, help="heads timed out of the layer's 16 (time scaled to 16)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per kernel (best kept), interleaved")
    ap.add_argument("--kernels", default=",".join(ac.KERNEL_NAMES), help="comma list (default: all)")
    ap.add_argument("--no-calibration", action="store_true", help="skip the calibration run")
    ap.add_argument("--save", action="store_true", help="store the calibration in the asset cache")
    args = ap.parse_args()
    names = [ac.check_name(n, "--kernels") for n in args.kernels.split(",")]
    full_h, nq, nk, d = ac.FULL_LAYER
    h = max(1, min(args.heads, full_h))
    cpu, flags = ac.cpu_identity()
    print(f"CPU: {cpu} [{' '.join(flags)}]; {os.cpu_count()} CPUs; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"load average before: {load_averages()}")
    print(f"layer: {full_h} heads x {nq} queries x {nk} keys, d {d} (bf16); timing {h} heads, scaled x {full_h / h:g}")

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, n, d, generator=g).to(torch.bfloat16) for n in (nq, nk, nk))
    flops_full = 4.0 * full_h * nq * nk * d
    seconds = {n: math.inf for n in names}
    errors = {}
    with torch.inference_mode():
        ref = F.scaled_dot_product_attention(q[:, :1].float(), k[:, :1].float(), v[:, :1].float())
        for name in names:  # warm-up on a slice, and the error on the first head
            run_kernel(name, q[:, :1, :256], k[:, :1], v[:, :1])
            out = run_kernel(name, q[:, :1], k[:, :1], v[:, :1])
            errors[name] = float((out.float() - ref).abs().max() / ref.abs().max())
        del ref
        for _ in range(args.repeats):
            for name in names:
                t = time.perf_counter()
                run_kernel(name, q, k, v)
                seconds[name] = min(seconds[name], time.perf_counter() - t)
    layer = {n: s * full_h / h for n, s in seconds.items()}
    best = min(layer, key=layer.get)
    for name in names:
        print(f"  {name:16s} {layer[name]:6.2f} s per full layer  {flops_full / layer[name] / 1e9:6.1f} GFLOP/s  "
              f"error vs fp32 SDPA {errors[name]:.1e}" + ("  (fastest)" if name == best else ""))
    print(f"load average after the layers: {load_averages()}")

    if not args.no_calibration:
        record = ac.ensure_choice(force=True) if args.save else ac.calibrate()
        chosen = record["kernel"]
        predicted = ", ".join(f"{n} {r['layer_s']:.1f}" for n, r in record["kernels"].items() if r["layer_s"])
        print(f"calibration ({' x '.join(map(str, record['shape']))}): chose {chosen} in {record['calibration_s']:.1f} s "
              f"(its per-layer estimates, s: {predicted})" + (f"; saved to {ac.cache_path()}" if args.save else ""))
        if chosen in layer:
            print(f"chosen kernel on the full layer: {layer[chosen]:.2f} s = {layer[chosen] / layer[best]:.2f} x the "
                  f"fastest measured here ({best}, {layer[best]:.2f} s); goal <= 1.1")
        print(f"load average after calibration: {load_averages()}")
        cells = " / ".join(f"{n} {layer[n]:.1f}" for n in names)
        print(f"README row: | attention kernels, one full layer, {cpu} ({torch.get_num_threads()} threads) "
              f"(`bench_attention.py`) | {cells} s; chosen {chosen} (calibration {record['calibration_s']:.1f} s) | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
