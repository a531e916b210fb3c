"""Seconds per preprocessing stage on the astronaut portrait: decode, detect, landmarks, crop, matte, compose, fit.

    .venv/bin/python bench/bench_preprocess.py [--image PHOTO] [--flame FLAME.pkl --embedding EMB.npy] [--repeat 3]

Without --flame/--embedding the fit runs on a FLAME-sized synthetic model (5023-ish vertices, 300 shape +
100 expression components, random landmark embedding): the timing is representative (the fit touches only
the landmark triangles and the joint regressor), its accuracy is not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", type=Path, default=None, help="photo (default: skimage's astronaut, as JPEG)")
    ap.add_argument("--flame", type=Path, default=None)
    ap.add_argument("--embedding", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import numpy as np

    t0 = time.perf_counter()
    from backend.fit import fit_flame, load_landmark_embedding
    from backend.preprocess import load_image, prepare_portrait
    import_s = time.perf_counter() - t0

    tmp = tempfile.TemporaryDirectory()
    image = args.image
    if image is None:
        from factories.images import astronaut
        from PIL import Image

        image = Path(tmp.name) / "astronaut.jpg"
        Image.fromarray(astronaut()).save(image, quality=95)

    if args.flame is not None and args.embedding is not None:
        from backend.flame import load_flame

        flame = load_flame(args.flame)
        emb = load_landmark_embedding(args.embedding)
        flame_note = f"FLAME {args.flame.name} + {args.embedding.name}"
    else:
        from factories.flame import make_flame_model

        from backend.fit.embedding import embedding_from_dict

        flame = make_flame_model(n_vertices=5023, n_shape=300, n_expr=100)
        rng = np.random.default_rng(0)
        cent = flame.v_template[flame.faces].mean(1)
        front = np.nonzero(cent[:, 2] > np.quantile(cent[:, 2], 0.8))[0]
        emb = embedding_from_dict({"full_lmk_faces_idx": rng.choice(front, 68, replace=False),
                                   "full_lmk_bary_coords": rng.dirichlet([3, 3, 3], 68)}, "synthetic")
        flame_note = f"synthetic FLAME-sized model ({flame.n_vertices} vertices, 300+100 components)"

    rows: list[dict[str, float]] = []
    for i in range(args.repeat):
        t = time.perf_counter()
        rgb = load_image(image)
        decode = time.perf_counter() - t
        p = prepare_portrait(rgb)
        t = time.perf_counter()
        fit = fit_flame(flame, p.landmarks68, p.image_size, embedding=emb)
        fit_s = time.perf_counter() - t
        row = {"decode": decode, **p.timings, "fit": fit_s}
        row["total"] = sum(row.values())
        rows.append(row)
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()) + f"  (fit rms {fit.rms_px:.2f} px)")

    print(f"\nimage: {image.name} {rgb.shape[1]}x{rgb.shape[0]}; fit: {flame_note}; imports {import_s:.2f} s")
    print("| stage | first run (s) | median of runs (s) |")
    print("|---|---|---|")
    for k in rows[0]:
        print(f"| {k} | {rows[0][k]:.3f} | {statistics.median(r[k] for r in rows):.3f} |")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
