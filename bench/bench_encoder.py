"""Benchmark the full-size LAM encoder stage (DINOv2 ViT-L/14 + registers, then the fusion head) on CPU.

    .venv/bin/python bench/bench_encoder.py [--modes fp32,fast] [--repeat 1] [--old-impl FILE] [--keep]

Writes a seeded random encoder-only checkpoint (``encoder.*`` keys of LAM-20K in the official layout, ~1.3 GB
fp32) into a temp dir once, memory-maps it like checkpoint.load_lam does, and times one 504x504 forward per
mode after a warm-up (prints the minimum of --repeat runs, wall time and process CPU time: on a shared
host the CPU time is the steadier figure). ``--old-impl FILE`` also times another
implementation of ``DinoVisionTransformer`` (e.g. the previous pure-torch one:
``git show <rev>:backend/network/dinov2.py > /tmp/old_dinov2.py``), alternating with the current one, and
prints the max difference of their encoder tokens per mode, and each mode's difference from fp32.
No asserts; figures only.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _write_encoder_checkpoint(path: Path) -> None:
    from backend.network.config import lam20k_config, parse_config
    from backend.network.layout import state_dict_layout
    from backend.network.random_checkpoint import _random_tensor
    from backend.network.safetensors_io import write_safetensors_streaming

    cfg = parse_config(lam20k_config())
    entries = [(e.name, e.shape, np.float32) for e in state_dict_layout(cfg) if e.name.startswith("encoder.")]
    rng = np.random.default_rng(0)
    write_safetensors_streaming(path, entries, lambda name, shape, _dtype: _random_tensor(rng, name, shape))


def _load_impl(file: Path):
    """Import a dinov2.py variant as a module of backend.network (so that its relative imports resolve)."""
    name = "backend.network._bench_" + file.stem
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _build(dinov2_module, weights: Path):
    """Meta-built encoder (backbone + fusion head) with the memory-mapped checkpoint tensors assigned."""
    import torch
    from safetensors import safe_open
    from torch import nn

    from backend.network.config import lam20k_config, parse_config
    from backend.network.fusion import FusionHead

    cfg = parse_config(lam20k_config())
    with torch.device("meta"):
        enc = nn.Module()
        enc.model = dinov2_module.DinoVisionTransformer(cfg.dino)
        enc.fusion_head = FusionHead(cfg.dino.embed_dim, len(cfg.dino.intermediate_layer_idx), cfg.encoder_feat_dim)
    with safe_open(str(weights), framework="pt", device="cpu") as f:
        state = {k.removeprefix("encoder."): f.get_tensor(k) for k in f.keys()}
    enc.load_state_dict(state, strict=True, assign=True)
    return enc.eval().requires_grad_(False), cfg


def _forward(enc, cfg, image, mode: str):
    import torch

    amp = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "fast" else contextlib.nullcontext()
    g = image.shape[2] // cfg.dino.patch_size
    with torch.inference_mode(), amp:
        t, cpu = time.perf_counter(), time.process_time()
        tokens = enc.fusion_head(enc.model(image), g, g)
        return (time.perf_counter() - t, time.process_time() - cpu), tokens.float()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="fp32,fast", help="comma list of fp32, fast")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per mode and implementation (min is shown)")
    ap.add_argument("--old-impl", type=Path, default=None, help="another dinov2.py to compare against")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the random checkpoint for the next run")
    args = ap.parse_args()

    import torch

    import backend.network.dinov2 as current

    cache = args.cache_dir or Path(tempfile.gettempdir()) / "lam_bench_encoder_random"
    weights = cache / "encoder.safetensors"
    print(f"host: {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    if not weights.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        _write_encoder_checkpoint(weights)
        print(f"wrote {weights} ({weights.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s")
    try:
        impls = {"transformers": current}
        if args.old_impl:
            impls["old"] = _load_impl(args.old_impl)
        built = {name: _build(mod, weights) for name, mod in impls.items()}
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        print(f"built {', '.join(built)}; peak RSS so far {rss:.2f} GB (weights are mapped, paged in on use)")
        x = torch.linspace(0, 1, 3 * 504 * 504).reshape(1, 3, 504, 504)
        per_mode: dict[str, dict[str, torch.Tensor]] = {}
        for mode in args.modes.split(","):
            times: dict[str, list[tuple[float, float]]] = {name: [] for name in built}
            outs = {}
            for enc, cfg in built.values():  # warm-up: page the weights in, first-call allocations
                _forward(enc, cfg, x, mode)
            for _ in range(args.repeat):
                for name, (enc, cfg) in built.items():
                    dt, outs[name] = _forward(enc, cfg, x, mode)
                    times[name].append(dt)
            line = ", ".join(f"{name} {min(w for w, _ in ts):.2f} s wall / {min(c for _, c in ts):.2f} s CPU"
                             for name, ts in times.items())
            print(f"{mode:>5}: encoder stage {line} (load average {os.getloadavg()[0]:.1f})", flush=True)
            if "old" in outs:
                diff = (outs["old"] - outs["transformers"]).abs()
                print(f"{mode:>5}: |old - transformers| encoder tokens max {diff.max():.3g}, mean {diff.mean():.3g}")
            per_mode[mode] = outs
        if "fp32" in per_mode:
            for mode, outs in per_mode.items():
                for name, tokens in outs.items():
                    if mode != "fp32":
                        diff = (tokens - per_mode["fp32"][name]).abs()
                        print(f"{mode:>5} vs fp32, {name}: encoder tokens max {diff.max():.3g}, mean {diff.mean():.3g}")
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f} GB")
    finally:
        if not args.keep:
            shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
