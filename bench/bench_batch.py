"""Photos per minute: N x ``lam-head create`` vs ``lam-head batch`` vs ``lam-head batch --ray`` (local).

    .venv/bin/python bench/bench_batch.py [--n 6] [--full] [--modes create,batch,batch-seq,ray] [--no-fit]
                                          [--precision fp32] [--workdir DIR --keep]

Every mode is a fresh process (or N of them for create), timed from start to exit, so start-up,
imports, network loads and Ray's own start are all counted. ``batch-seq`` is ``batch --prefetch 0``
(no overlap of preparation and network). The photos are N variants of the bundled astronaut portrait
(mirrored, shifted, rescaled). Default: the tiny random checkpoint; ``--full``: random weights of the
LAM-20K size (2.2 GB, written once into the work folder) and a FLAME-2023-size synthetic model
(20018 query points). A synthetic landmark embedding is installed so the FLAME fit really runs
(``--no-fit``: no embedding, average head shape). Prints the load average before and after each mode.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def make_inputs(work: Path, n: int, full: bool, fit: bool) -> tuple[Path, Path, Path, Path | None]:
    import numpy as np
    from factories.checkpoint import make_tiny_weights_dir
    from factories.flame import make_flame_arrays, write_flame_pickle
    from factories.images import astronaut
    from PIL import Image

    if full:
        from backend.network import lam20k_config, write_random_checkpoint

        weights = work / "lam20k_random"
        if not (weights / "model.safetensors").is_file():
            write_random_checkpoint(weights, lam20k_config(), seed=0)
        arrays = make_flame_arrays(5023, 9976, 300, 100, seed=0)
    else:
        weights = make_tiny_weights_dir(work)
        arrays = make_flame_arrays(800, None, 300, 100, seed=0)
    flame = work / "flame.pkl"
    if not flame.is_file():
        write_flame_pickle(flame, arrays)
    emb = None
    if fit:
        rng = np.random.default_rng(1)
        emb = work / "landmark_embedding_synthetic.npz"
        np.savez(emb, full_lmk_faces_idx=rng.choice(arrays["f"].shape[0], 68, replace=False)[None].astype(np.int64),
                 full_lmk_bary_coords=rng.dirichlet([2.0, 2.0, 2.0], size=68)[None])
    photos = work / "photos"
    shutil.rmtree(photos, ignore_errors=True)
    photos.mkdir()
    base = Image.fromarray(astronaut())
    for i in range(n):
        img = base.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else base
        s = 1.0 + 0.05 * (i // 2)
        img = img.resize((int(512 * s), int(512 * s)), Image.Resampling.BICUBIC).crop((0, 0, 512, 512))
        img.save(photos / f"portrait_{i:03d}.jpg", quality=92)
    return weights, flame, photos, emb


def timed(cmd: list[str], env: dict) -> tuple[float, int, str]:
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    return time.perf_counter() - t, r.returncode, r.stderr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=6, help="photos (default 6)")
    ap.add_argument("--full", action="store_true", help="full-size random LAM-20K weights (~2 min per photo on 2 cores)")
    ap.add_argument("--modes", default="create,batch,batch-seq,ray")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--no-fit", action="store_true", help="no landmark embedding: skip the FLAME fit")
    ap.add_argument("--workdir")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="lam-bench-batch-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        weights, flame, photos, emb = make_inputs(work, args.n, args.full, not args.no_fit)
        env = {**os.environ, "LAM_HEAD_HOME": str(work / "home"), "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
        if emb is not None:
            subprocess.run([sys.executable, "-m", "backend", "setup", "--landmark-embedding", str(emb)], cwd=REPO,
                           env=env, check=True, capture_output=True)
        common = ["--weights", str(weights), "--flame", str(flame), "--precision", args.precision, "--quiet"]
        files = sorted(photos.iterdir())
        print(f"{args.n} photos, {'full-size LAM-20K random' if args.full else 'tiny random'} weights, "
              f"fit {'on' if emb else 'off'}, precision {args.precision}, {os.cpu_count()} CPUs")
        print(f"{'mode':<11}{'seconds':>9}{'photos/min':>12}   load average before -> after")
        results = {}
        for mode in args.modes.split(","):
            out = work / f"out_{mode}"
            shutil.rmtree(out, ignore_errors=True)
            before = os.getloadavg()
            if mode == "create":
                t0 = time.perf_counter()
                for f in files:
                    _, rc, err = timed([sys.executable, "-m", "backend", "create", str(f), "-o",
                                        str(out / f"{f.stem}.npz"), *common], env)
                    if rc:
                        print(err[-2000:], file=sys.stderr)
                        return 1
                secs = time.perf_counter() - t0
            else:
                extra = {"batch": [], "batch-seq": ["--prefetch", "0"], "ray": ["--ray"]}[mode]
                secs, rc, err = timed([sys.executable, "-m", "backend", "batch", str(photos), "-o", str(out),
                                       *common, *extra], env)
                if rc:
                    print(err[-3000:], file=sys.stderr)
                    return 1
                counts = json.loads((out / "summary.json").read_text())["counts"]
                assert counts["created"] == args.n, counts
            after = os.getloadavg()
            results[mode] = secs
            print(f"{mode:<11}{secs:9.1f}{args.n / secs * 60:12.2f}   {before[0]:.2f} -> {after[0]:.2f}", flush=True)
        if "create" in results:
            for mode, secs in results.items():
                if mode != "create":
                    print(f"{mode}: {results['create'] / secs:.2f}x the throughput of N x create")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
