"""Benchmark the full-size LAM-20K network on CPU with random weights (prints figures; no asserts).

    .venv/bin/python bench/bench_network.py [--points 20018] [--modes fp32,fast] [--keep] [--cache-dir DIR]

Writes a seeded random LAM-20K checkpoint (~2.2 GB fp32, official layout) once, tensor by tensor, into
the cache dir (deleted afterwards unless --keep), then runs each precision mode in its own subprocess
so that peak RSS (resource.getrusage ru_maxrss) is per mode: load, then one forward on N points.
Prints per-stage forward times (encoder = DINOv2 + fusion, transformer, heads), peak RSS, the max
centre (xyz) error of each mode against fp32 in millimetres, and the attention kernel bf16 modes ran (the
per-machine choice of attention_choice.py; a first run on a machine calibrates before the timed forward).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _inputs(n_points: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth 504x504 image and N points on a head-sized ellipsoid (metres)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:504, 0:504] / 504.0
    image = np.stack([0.5 + 0.4 * np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in range(3)], axis=-1)
    d = rng.normal(size=(n_points, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    points = d * np.array([0.08, 0.11, 0.1]) + rng.normal(scale=0.002, size=d.shape)
    return image.astype(np.float32), points.astype(np.float32)


def _worker(weights: str, mode: str, n_points: int, out_npy: str) -> None:
    """Child process: load, one forward, print one JSON line."""
    import torch

    from backend.network import load_lam, predict

    t0 = time.perf_counter()
    model, report = load_lam(weights, device="cpu")
    load_s = time.perf_counter() - t0
    rss_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    image, points = _inputs(n_points)
    marks: dict[str, float] = {}

    def capture(name: str, _t: torch.Tensor) -> None:
        if name in ("encoder_tokens", "transformer_out"):
            marks[name] = time.perf_counter()

    attention, linears, calibration_s = "sdpa (fp32)", "fp32", 0.0
    if mode in ("fast", "bf16"):  # the per-machine choices: measured once (cached), kept out of the forward
        from backend.network import attention_choice, linear_choice

        tc = time.perf_counter()
        attention_choice.ensure_choice(n_points)
        linear_choice.ensure_choice(n_points)
        calibration_s = time.perf_counter() - tc
        attention, linears = attention_choice.current_kernel(), linear_choice.current()
    t1 = time.perf_counter()
    pred = predict(model, image, points, precision=mode, capture=capture)
    t2 = time.perf_counter()
    np.save(out_npy, pred.xyz)
    print(json.dumps({
        "mode": mode,
        "threads": torch.get_num_threads(),
        "load_s": load_s,
        "encoder_s": marks["encoder_tokens"] - t1,
        "transformer_s": marks["transformer_out"] - marks["encoder_tokens"],
        "heads_s": t2 - marks["transformer_out"],
        "forward_s": t2 - t1,
        "rss_after_load_gb": rss_load,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "n_parameters": report.n_parameters,
        "attention": attention,
        "linears": linears,
        "calibration_s": calibration_s,
    }), flush=True)


def _write_checkpoint(dest: Path, tiny: bool) -> float:
    from backend.network.config import lam20k_config, tiny_config
    from backend.network.random_checkpoint import write_random_checkpoint

    t = time.perf_counter()
    write_random_checkpoint(dest, tiny_config() if tiny else lam20k_config(), seed=0)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=20018)
    ap.add_argument("--modes", default="fp32,fast", help="comma list of fp32, fast, bf16, fp16 (fp32 first)")
    ap.add_argument("--cache-dir", type=Path, default=None, help="where the random checkpoint goes")
    ap.add_argument("--tiny", action="store_true", help="smoke-test the script with the tiny config")
    ap.add_argument("--keep", action="store_true", help="keep the random checkpoint for the next run")
    ap.add_argument("--worker", nargs=4, metavar=("WEIGHTS", "MODE", "N", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args.worker[0], args.worker[1], int(args.worker[2]), args.worker[3])
        return 0

    name = "lam_bench_tiny_random" if args.tiny else "lam_bench_lam20k_random"
    cache = args.cache_dir or Path(tempfile.gettempdir()) / name
    weights = cache / "weights"
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    if (weights / "model.safetensors").is_file() and (weights / "config.json").is_file():
        print(f"reusing random LAM-20K checkpoint in {weights}")
    else:
        print(f"writing random {'tiny' if args.tiny else 'LAM-20K'} checkpoint to {weights} ...", flush=True)
        print(f"  written in {_write_checkpoint(weights, args.tiny):.1f} s, "
              f"{(weights / 'model.safetensors').stat().st_size / 1e9:.2f} GB")
    results = {}
    try:
        for mode in args.modes.split(","):
            out = cache / f"xyz_{mode}.npy"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(weights), mode, str(args.points), str(out)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode:
                print(f"{mode}: FAILED\n{proc.stderr[-2000:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results[mode] = (r, np.load(out))
            print(f"{mode:>5}: forward {r['forward_s']:.1f} s (encoder {r['encoder_s']:.1f}, transformer "
                  f"{r['transformer_s']:.1f}, heads {r['heads_s']:.2f}); load {r['load_s']:.1f} s; peak RSS "
                  f"{r['peak_rss_gb']:.2f} GB (after load {r['rss_after_load_gb']:.2f}); {r['threads']} threads; "
                  f"{args.points} points; attention {r['attention']}, linears {r['linears']}"
                  + (f" (calibrated first: {r['calibration_s']:.1f} s)" if r["calibration_s"] > 0.5 else ""), flush=True)
        if "fp32" in results:
            ref = results["fp32"][1]
            for mode, (_, xyz) in results.items():
                if mode != "fp32":
                    err = np.abs(xyz - ref)
                    print(f"{mode:>5} vs fp32: max centre error {1000 * err.max():.3f} mm, "
                          f"mean {1000 * err.mean():.4f} mm")
    finally:
        if not args.keep:
            shutil.rmtree(cache, ignore_errors=True)
            print(f"deleted {cache} (use --keep to reuse it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
