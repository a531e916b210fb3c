"""3DGS PLY read/write times (backend/core/formats/ply.py) for 20K and 100K Gaussians.

Best of ``--repeats`` runs each: ``write_3dgs_ply`` (encode + write), ``read_3dgs_ply`` (read +
decode), the raw column paths the exporters use (``write_vertex_array``: one splat frame) and the
LAM ZIP path (``columns_to_bytes`` / ``read_ply_columns`` on in-memory bytes of an offset.ply).

    .venv/bin/python bench/bench_ply.py [--repeats 7] [--rows 20000 100000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from backend.core.formats import ply  # noqa: E402


def _gaussians(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return dict(
        xyz=rng.normal(scale=0.1, size=(n, 3)).astype(np.float32),
        rgb=rng.uniform(0, 1, size=(n, 3)).astype(np.float32),
        opacity=rng.uniform(0.01, 0.99, size=n).astype(np.float32),
        scale=rng.uniform(1e-4, 1e-2, size=(n, 3)).astype(np.float32),
        rotation=q.astype(np.float32),
    )


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rows", type=int, nargs="+", default=[20000, 100000])
    args = ap.parse_args()
    print(f"PLY I/O, best of {args.repeats} (ms)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in args.rows:
            g = _gaussians(n)
            path = tmp / f"g{n}.ply"
            ply.write_3dgs_ply(path, **g)
            frame = ply.columns_to_vertex_array(ply.encode_3dgs(**g))
            offset = ply.columns_to_bytes(ply.encode_offset(g["xyz"] * 0.01, g["rgb"], g["opacity"], g["scale"], g["rotation"]))
            rows = {
                "write_3dgs_ply": _best(lambda g=g, p=path: ply.write_3dgs_ply(p, **g), args.repeats),
                "read_3dgs_ply": _best(lambda p=path: ply.read_3dgs_ply(p), args.repeats),
                "write_vertex_array (frame)": _best(lambda f=frame, p=tmp / "f.ply": ply.write_vertex_array(p, f), args.repeats),
                "read_ply_columns (file)": _best(lambda p=path: ply.read_ply_columns(p), args.repeats),
                "columns_to_bytes (offset)": _best(
                    lambda g=g: ply.columns_to_bytes(ply.encode_offset(g["xyz"] * 0.01, g["rgb"], g["opacity"], g["scale"],
                                                                       g["rotation"])), args.repeats),
                "read_ply_columns (bytes)": _best(lambda b=offset: ply.read_ply_columns(b, "offset.ply"), args.repeats),
            }
            print(f"{n} rows, {path.stat().st_size / 1e6:.1f} MB file:")
            for k, v in rows.items():
                print(f"  {k:<28} {v:8.2f}")


if __name__ == "__main__":
    main()
