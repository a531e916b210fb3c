"""LAM web ZIP read and write times (numpy writer, no FBX SDK) on a real ZIP.

    .venv/bin/python bench/bench_lam_zip.py [LAM.zip] [--repeat 5]

Reads the ZIP (``read_lam_zip``: avatar + template), writes it back unchanged (template bytes
kept) and written for an avatar in another frame (new POSITION, skin.glb rebuilt, new
vertex_order.json), and reads the written ZIP; prints the median of each and the sizes.
Default ZIP: the first real one in ../shared/fixtures/real/.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
from factories.lam_zips import real_zips  # noqa: E402

from backend.core.formats.lam_zip import read_lam_zip, write_lam_zip  # noqa: E402


def median_s(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zip", nargs="?", help="a LAM web ZIP (default: the first real fixture)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    source = Path(args.zip) if args.zip else next(iter(real_zips()), None)
    if source is None:
        print("no LAM ZIP given and none in ../shared/fixtures/real/", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(shutil.copyfile(source, Path(tmp) / source.name))
        avatar, template = read_lam_zip(src)
        moved = replace(avatar, xyz=avatar.xyz - np.float32([0, 1.669, 0.043]),
                        template=avatar.template - np.float32([0, 1.669, 0.043]), meta={})
        out_same, out_moved = Path(tmp) / "same.zip", Path(tmp) / "moved.zip"
        t_read = median_s(lambda: read_lam_zip(src), args.repeat)
        t_same = median_s(lambda: write_lam_zip(out_same, avatar, template), args.repeat)
        t_moved = median_s(lambda: write_lam_zip(out_moved, moved, template), args.repeat)
        t_read_back = median_s(lambda: read_lam_zip(out_moved), args.repeat)
        mb = lambda p: p.stat().st_size / 1e6  # noqa: E731
        print(f"{source.name}: {avatar.n_points} Gaussians, {mb(src):.2f} MB; median of {args.repeat}")
        print(f"read (avatar + template)               {t_read * 1000:8.1f} ms")
        print(f"write, unchanged mesh                  {t_same * 1000:8.1f} ms  ({mb(out_same):.2f} MB)")
        print(f"write, new mesh (skin.glb rebuilt)     {t_moved * 1000:8.1f} ms  ({mb(out_moved):.2f} MB)")
        print(f"read of the written ZIP                {t_read_back * 1000:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
