"""Rig evaluation speed: ms per frame for FLAME-sized avatars (numpy and torch).

N = 5023 (FLAME), 20018 (one subdivision, LAM-20K), 79936 (two subdivisions); batch 1 and 16;
positions only, and positions + per-point polar rotations. A synthetic FLAME model of the
official size (300 + 100 blendshapes) is built first; no real FLAME files are needed.

    .venv/bin/python bench/bench_rig.py [--repeats 3] [--sizes 5023 20018 79936]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from factories.flame import make_flame_model  # noqa: E402

from backend.core import rig  # noqa: E402
from backend.flame import build_rig  # noqa: E402


def _pose(b: int, e: int, seed: int = 0) -> rig.FlamePose:
    rng = np.random.default_rng(seed)
    p = rig.FlamePose.zeros(b, e)
    for key in ("rotation", "neck", "jaw", "eye_l", "eye_r", "translation"):
        setattr(p, key, rng.normal(scale=0.2, size=(b, 3)).astype(np.float32))
    p.expr = rng.normal(size=(b, e)).astype(np.float32)
    return p


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[5023, 20018, 79936])
    args = ap.parse_args()

    try:
        import torch

        from backend.render import rig_torch

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    except ImportError:
        torch = None
        devices = []

    model = make_flame_model(5023, 9976, n_shape=300, n_expr=100)
    levels = {5023: 0, 20018: 1, 79936: 2}
    print(f"{'N':>6} {'backend':>10} {'batch':>5} {'positions ms/frame':>19} {'+rotations ms/frame':>20}")
    for n in args.sizes:
        r = build_rig(model, np.full(300, 0.1, np.float32), levels=levels[n])
        assert r.n_points == n, (r.n_points, n)
        for b in (1, 16):
            pose = _pose(b, 100)
            pos = _time(lambda: rig.evaluate(r, pose), args.repeats) / b * 1e3  # noqa: B023
            rot = _time(lambda: rig.evaluate(r, pose, with_rotations=True), args.repeats) / b * 1e3  # noqa: B023
            print(f"{n:>6} {'numpy':>10} {b:>5} {pos:>19.2f} {rot:>20.2f}", flush=True)
            for dev in devices:
                trig = rig_torch.TorchRig.from_avatar(r, device=dev)
                tpose = rig_torch.TorchPose.from_numpy(pose, device=dev)
                sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

                def run(rot: bool, trig=trig, tpose=tpose, sync=sync) -> None:
                    rig_torch.evaluate(trig, tpose, with_rotations=rot)
                    sync()

                with torch.no_grad():
                    pos = _time(lambda: run(False), args.repeats) / b * 1e3  # noqa: B023
                    rot = _time(lambda: run(True), args.repeats) / b * 1e3  # noqa: B023
                print(f"{n:>6} {'torch-' + dev:>10} {b:>5} {pos:>19.2f} {rot:>20.2f}", flush=True)


if __name__ == "__main__":
    main()
