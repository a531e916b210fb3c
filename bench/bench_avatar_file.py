"""Avatar file size and load time for a LAM-20K-sized avatar (20018 points, E = 100).

The rig comes from a synthetic FLAME model of the official size (5023 vertices, 300 + 100
blendshapes) subdivided once; the Gaussians are random but valid.

    .venv/bin/python bench/bench_avatar_file.py [--repeats 5] [--levels 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from factories.flame import make_flame_model  # noqa: E402

from backend.core.formats.avatar_file import load_avatar, save_avatar  # noqa: E402
from backend.core.formats.npz_arrays import read_npz  # noqa: E402
from backend.create.assemble import assemble_avatar  # noqa: E402
from backend.flame import build_rig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--levels", type=int, default=1, help="subdivision levels (1: 20018 points, 2: 79936)")
    args = ap.parse_args()

    model = make_flame_model(5023, 9976, n_shape=300, n_expr=100)
    rig = build_rig(model, np.full(300, 0.1, np.float32), levels=args.levels)
    n = rig.n_points
    rng = np.random.default_rng(0)
    q = rng.normal(size=(n, 4))
    avatar = assemble_avatar(
        rig,
        xyz=rig.template + rng.uniform(-0.01, 0.01, size=(n, 3)),
        rgb=rng.uniform(size=(n, 3)),
        opacity=rng.uniform(size=n),
        scale=rng.uniform(0.001, 0.01, size=(n, 3)),
        rotation=q / np.linalg.norm(q, axis=1, keepdims=True),
        meta={"model": "bench"},
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "avatar.npz"
        save_s = min(_timed(lambda: save_avatar(path, avatar)) for _ in range(args.repeats))
        load_s = min(_timed(lambda: load_avatar(path)) for _ in range(args.repeats))
        checked_s = min(_timed(lambda: read_npz(path)) for _ in range(args.repeats))
        plain_s = min(_timed(lambda: _np_load(path)) for _ in range(args.repeats))
        size_mb = path.stat().st_size / 1e6
    print(f"points {n}, expression components {avatar.n_expr}, faces {avatar.faces.shape[0]}")
    print(f"file size       {size_mb:8.1f} MB")
    print(f"save (validate) {save_s * 1e3:8.1f} ms")
    print(f"load (validate) {load_s * 1e3:8.1f} ms")
    print(f"  of which reading the arrays: {checked_s * 1e3:.1f} ms checked (npz_arrays), {plain_s * 1e3:.1f} ms np.load")


def _np_load(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
