"""FLAME pickle loading: our restricted unpickler (pure-Python, dtype states checked) against the stock
C unpickler, on an official-structure pickle of the official size (5023 vertices, 300 + 100 blendshapes,
chumpy and scipy CSC objects as the release has them; generated, the real file is not available here).

    .venv/bin/python bench/bench_flame_load.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from factories.flame import make_flame_arrays, write_flame_pickle  # noqa: E402

from backend.flame import load_flame  # noqa: E402
from backend.flame.restricted_pickle import NUMPY_ALLOWED, restricted_loads  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    arrays = make_flame_arrays(5023, 9976, n_shape=300, n_expr=100)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_flame_pickle(Path(tmp) / "flame.pkl", arrays)
        data = path.read_bytes()
        restricted = min(timeit.repeat(lambda: restricted_loads(data), number=1, repeat=args.repeats))
        full = min(timeit.repeat(lambda: load_flame(path), number=1, repeat=args.repeats))
    # the stock unpickler only on plain numpy content we made ourselves (it would run anything)
    plain = pickle.dumps({k: v for k, v in arrays.items()}, protocol=2)
    stock = min(timeit.repeat(lambda: pickle.loads(plain), number=1, repeat=args.repeats))
    ours_plain = min(timeit.repeat(lambda: restricted_loads(plain, NUMPY_ALLOWED), number=1, repeat=args.repeats))
    print(f"official-structure pickle {len(data) / 1e6:.1f} MB: restricted unpickling {restricted * 1e3:.1f} ms, "
          f"load_flame (unpickle + checks) {full * 1e3:.1f} ms")
    print(f"plain numpy pickle {len(plain) / 1e6:.1f} MB: stock pickle.loads {stock * 1e3:.1f} ms, "
          f"restricted {ours_plain * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
