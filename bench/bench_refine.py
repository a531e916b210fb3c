"""Few-photo refinement speed: seconds per iteration at 512 x 512, 20018 Gaussians, 4 photos.

    .venv/bin/python bench/bench_refine.py [--size 512] [--points 20018] [--views 4] [--iterations 5]
                                           [--renderer cpu|gsplat|auto] [--converge 60]

A synthetic avatar renders its own "photos" (4 poses and cameras), a perturbed copy is refined
on them (``backend/create/refine.py``); prints the time per iteration (after one warm-up
iteration that compiles the numba kernels) and the loss before/after. ``--converge K`` also runs K
iterations and prints when the loss first came within 5 % of its total drop over those K (iteration
and seconds): "to convergence". ``--renderer gsplat`` runs the refinement on CUDA through gsplat.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
from factories.avatar import make_avatar  # noqa: E402

from backend.core.rig import FlamePose  # noqa: E402
from backend.create.refine import RefineSettings, View, refine_avatar  # noqa: E402
from backend.render import default_head_camera, render_avatar  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--points", type=int, default=20018)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--renderer", default="cpu", choices=("cpu", "gsplat", "auto"))
    ap.add_argument("--converge", type=int, default=0, help="iterations of the convergence run (0: skip)")
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} CPU threads, load average {load:.1f} at start")
    truth = make_avatar(n_points=args.points, n_expr=10, seed=3)
    rng = np.random.default_rng(0)
    views = []
    for k, az in enumerate(np.linspace(-40, 40, args.views)):
        pose = FlamePose.zeros(1, 10)
        pose.expr[:] = rng.normal(size=(1, 10))
        cam = default_head_camera(truth.xyz, args.size, azimuth_deg=float(az), elevation_deg=5.0)
        out = render_avatar(truth, pose, cam, backend="cpu")
        views.append(View(out.rgb, out.alpha, pose, cam, f"view{k}"))
    start = dataclasses.replace(truth, rgb=np.clip(truth.rgb * 0.8 + 0.1, 0, 1).astype(np.float32),
                                xyz=(truth.xyz + rng.normal(scale=0.002, size=truth.xyz.shape)).astype(np.float32))
    settings = RefineSettings(iterations=1, seed=0, renderer=args.renderer)
    refine_avatar(start, views, settings)  # warm-up: numba compile / CUDA context, page-in
    t = time.perf_counter()
    res = refine_avatar(start, views, dataclasses.replace(settings, iterations=args.iterations))
    per = (time.perf_counter() - t) / args.iterations
    r = res.stats
    print(f"refinement ({r['renderer']}) {args.size} x {args.size}, {args.points} Gaussians, {args.views} photos: "
          f"{per:.3f} s per iteration (loss {r['loss_before']:.4f} -> {r['loss_after']:.4f} in {args.iterations} "
          f"iterations); 3 minutes = {int(180 / per)} iterations")
    if args.converge > 0:
        stamps: list[float] = []
        t = time.perf_counter()
        res = refine_avatar(start, views, dataclasses.replace(settings, iterations=args.converge),
                            progress=lambda *_: stamps.append(time.perf_counter() - t))
        hist, r = res.stats["loss_history"], res.stats
        target = r["loss_after"] + 0.05 * (r["loss_before"] - r["loss_after"])
        it = next((i for i, v in enumerate(hist) if v <= target), len(hist) - 1)
        print(f"to convergence (loss within 5 % of its drop over {args.converge} iterations): iteration {it + 1}, "
              f"{stamps[it]:.1f} s; loss {r['loss_before']:.4f} -> {r['loss_after']:.4f}, whole run {stamps[-1]:.1f} s")


if __name__ == "__main__":
    main()
