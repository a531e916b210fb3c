"""Every per-machine CPU choice on this machine: each option's rate, the calibrated choice, and a full-size check.

    .venv/bin/python bench/bench_cpu_choices.py [--only attention,linears,refine_threads] [--no-full] [--save]

For each choice of ``backend/setup/machine_choice.py`` (the bf16 attention kernel, bf16 or fp32 linears, the
refinement's numba/torch thread split) it runs the calibration that the product runs once per machine (the
reduced problem, a few seconds each) and prints every option's rate and error and the option chosen. Then, unless
``--no-full``, it times the options on the full-size work the calibration stands for and prints how the chosen
option compares with the fastest one there (issue 17's goal: <= 1.1 x):

* linears: one LAM-20K transformer block's point linears at 20018 rows (q, k, v, out; the feed-forward in
  chunks of 4096 rows, as transformer.py runs it), under bf16 autocast;
* refinement threads: one iteration of the real refinement on 4 views at 252 px, 20018 Gaussians;
* attention: see ``bench_attention.py`` (one full joint-attention layer per kernel); here only the calibration.

``--save`` stores the calibrations in the asset cache as a first run would (default: the cache is left alone).
Prints the load average before and after each part: the figures of a busy machine are slower and noisier.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_attention import load_averages  # noqa: E402 (a sibling script: python bench/...py puts bench/ on sys.path)

from backend.setup import machine_choice as mc  # noqa: E402


def _print_record(choice: mc.MachineChoice, record: dict, rate) -> None:
    results = record[choice.results_field]
    print(f"{choice.title}: chose {record[choice.field]} (calibration {record['calibration_s']:.1f} s, "
          f"load average after {load_averages()})")
    for name, r in results.items():
        mark = "*" if name == record[choice.field] else " "
        what = "excluded" if r.get("seconds") is None else rate(r)
        print(f"   {mark} {name:16s} {what}  error {r['error']:.1e}")


def full_linears(rows: int = 20018, repeats: int = 2) -> dict[str, float]:
    """Seconds of one transformer block's point linears at ``rows`` rows per option (best of ``repeats``)."""
    import torch

    from backend.network import linear_choice as lc
    from backend.network.linears import linears_as
    from backend.network.transformer import FeedForward

    g = torch.Generator().manual_seed(0)
    d = lc.WIDTH
    block = torch.nn.ModuleDict({n: torch.nn.Linear(d, d) for n in ("q", "k", "v", "out")})
    block["ff"] = FeedForward(d, lc.HIDDEN)
    block.requires_grad_(False)
    x = torch.randn(1, rows, d, generator=g)
    a = torch.randn(1, rows, d, generator=g).to(torch.bfloat16)

    def run() -> None:
        for n in ("q", "k", "v"):
            block[n](x)
        block["out"](a)
        block["ff"](x)  # FeedForward chunks its rows (FF_ROW_CHUNK) as in the network

    seconds = {}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for name in lc.OPTION_NAMES:
            with linears_as(block, name):
                run()  # warm-up
                best = math.inf
                for _ in range(repeats):
                    t = time.perf_counter()
                    run()
                    best = min(best, time.perf_counter() - t)
            seconds[name] = best
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [c.name for c in mc.all_choices()]
    ap.add_argument("--only", default=",".join(names), help=f"comma list of {', '.join(names)}")
    ap.add_argument("--no-full", action="store_true", help="skip the full-size checks")
    ap.add_argument("--save", action="store_true", help="store the calibrations in the asset cache")
    args = ap.parse_args()
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    import numba
    import torch

    cpu, flags = mc.cpu_identity()
    print(f"CPU: {cpu} [{' '.join(flags)}]; {os.cpu_count()} CPUs; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads, capability {torch.backends.cpu.get_cpu_capability()}); numba "
          f"{numba.__version__} ({numba.config.NUMBA_NUM_THREADS} threads, layer {numba.config.THREADING_LAYER})")
    print(f"load average before: {load_averages()}")
    rows = []
    for module_name, attr in mc.CHOICE_MODULES:
        module = importlib.import_module(module_name)
        choice = getattr(module, attr)
        if choice.name not in only:
            continue
        record = module.ensure_choice(force=True) if args.save else module.calibrate()
        chosen = record[choice.field]
        if choice.name == "attention":
            _print_record(choice, record, lambda r: f"{r['gflops']:6.1f} GFLOP/s  ~{r['layer_s']:5.1f} s per full layer")
            rows.append(f"attention: chose {chosen} ({record['calibration_s']:.1f} s); "
                        + " / ".join(f"{n} {r['layer_s']:.1f}" for n, r in record["kernels"].items() if r["layer_s"])
                        + " s per full layer (estimates)")
        elif choice.name == "linears":
            _print_record(choice, record, lambda r: f"{r['gflops']:6.1f} GFLOP/s  ~{r['forward_s']:5.1f} s per forward's "
                                                    "linears")
            text = (f"linears: chose {chosen} ({record['calibration_s']:.1f} s); "
                    + " / ".join(f"{n} {r['gflops']:.0f}" for n, r in record["options"].items() if r["gflops"])
                    + " GFLOP/s")
            if not args.no_full:
                full = full_linears()
                best = min(full, key=full.get)
                print("  full block, 20018 rows: " + ", ".join(f"{n} {s:.2f} s" for n, s in full.items())
                      + f"; chosen {chosen} = {full[chosen] / full[best]:.2f} x the fastest ({best}); goal <= 1.1"
                      + f"  (load average {load_averages()})")
                text += ("; full block " + " / ".join(f"{n} {s:.2f}" for n, s in full.items())
                         + f" s, chosen {full[chosen] / full[best]:.2f} x fastest")
            rows.append(text)
        else:
            _print_record(choice, record, lambda r: f"{r['seconds']:6.3f} s per iteration and view")
            text = (f"refine threads (R numba, T torch): chose {chosen} ({record['calibration_s']:.1f} s); "
                    + " / ".join(f"{n} {r['seconds']:.3f}" for n, r in record["options"].items() if r["seconds"])
                    + " s per iteration, 1 view")
            if not args.no_full:
                full_rec = module.calibrate(views=4, repeats=2)
                full = {n: r["seconds"] for n, r in full_rec["options"].items() if r["seconds"]}
                best = min(full, key=full.get)
                print("  full iteration, 4 views at 252 px: " + ", ".join(f"{n} {s:.2f} s" for n, s in full.items())
                      + (f"; chosen {chosen} = {full[chosen] / full[best]:.2f} x the fastest ({best}); goal <= 1.1"
                         if chosen in full else "") + f"  (load average {load_averages()})")
                if chosen in full:
                    text += ("; full iteration (4 views) " + " / ".join(f"{n} {s:.2f}" for n, s in full.items())
                             + f" s, chosen {full[chosen] / full[best]:.2f} x fastest")
            rows.append(text)
    print(f"load average after: {load_averages()}")
    print("summary:")
    for r in rows:
        print(f"  {r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
