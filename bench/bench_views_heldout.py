"""Few photos vs one photo on a held-out view, from the CLI, on a subject we know completely (issue 15).

    .venv/bin/python bench/bench_views_heldout.py [--views front.jpg,left.jpg,right.jpg,low.jpg]
        [--iterations 100] [--refine-size 252] [--no-single-refine] [--keep DIR]

The subject is the real LAM ZIP avatar on a FLAME rig built on its own mesh; its photos are renders through
our rig with known head poses, real ARKit expressions and cameras; the landmark embedding is calibrated
on it (tests/factories/views_subject.py says how). Weights: the tiny random checkpoint in the official
layout, so the single-photo avatar is the network's random output placed on the fitted head: the numbers
measure the few-photo machinery (joint fit + refinement), not LAM's quality.

Runs, each as its own ``lam-head`` process:

* ``lam-head setup --landmark-embedding`` (a private asset folder);
* ``lam-head create front.jpg`` (one photo, today's path);
* ``lam-head create --views ...`` (the held-out photo is never given).

Then every avatar is posed with the held-out photo's known expression and pose, seen through its known
camera, and compared with it inside its true matte (PSNR). Also printed: the joint fit's recovery of
each photo's pose, expression and alignment against the truth (from the ``fit`` records in the avatar's
meta), a control that refines the single-photo avatar on its one photo only (same settings: how much of
the gain needs the other views), the stage timings and the load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import numpy as np  # noqa: E402
from factories import views_subject as vs  # noqa: E402

from backend.core.formats.avatar_file import load_avatar  # noqa: E402


def lam_head(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run ``python -m backend ARGS``; (wall seconds, stderr). Fails loudly."""
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "backend", *args], cwd=REPO, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"lam-head {' '.join(args[:2])} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return time.perf_counter() - t, p.stderr


def timings_line(stderr: str) -> str:
    m = re.findall(r"^timings: (.*)$", stderr, re.M)
    return m[-1] if m else "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", default="front.jpg,left.jpg,right.jpg,low.jpg", help="photos given to create --views")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--refine-size", type=int, default=252)
    ap.add_argument("--photo-size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-single-refine", action="store_true", help="skip the one-photo refinement control")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temp folder, deleted)")
    args = ap.parse_args()
    names = args.views.split(",")
    if vs.HELD_OUT in names:
        sys.exit(f"{vs.HELD_OUT} is the held-out photo; do not give it to create")
    if vs.subject_zip() is None:
        sys.exit(f"no real LAM ZIP in {vs.REAL_DIR}")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="views_heldout_"))
    load0 = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPU threads, load average {load0:.1f} at start")
    try:
        t = time.perf_counter()
        kit = vs.build_kit(root, args.photo_size)
        print(f"subject {vs.subject_zip().name}, {len(kit.photos)} photos {args.photo_size} px, embedding calibrated "
              f"(ray residual {kit.calibration['ray_residual_mm']:.2f} mm, reprojection "
              f"{kit.calibration['reprojection_px']:.2f} px of {args.photo_size}) in {time.perf_counter() - t:.1f} s")
        env = dict(os.environ, LAM_HEAD_HOME=str(root / "home"))
        lam_head(["setup", "--landmark-embedding", str(kit.embedding)], env)
        common = ["--weights", str(kit.weights), "--flame", str(kit.flame)]
        single, views = root / "single.npz", root / "views.npz"
        wall1, err1 = lam_head(["create", str(kit.photos["front.jpg"].path), "-o", str(single), *common], env)
        wall2, err2 = lam_head(["create", "--views", *[str(kit.photos[n].path) for n in names], "-o", str(views),
                                *common, "--refine-iterations", str(args.iterations), "--refine-size",
                                str(args.refine_size), "--seed", str(args.seed)], env)
        print(f"create front.jpg: {wall1:.1f} s wall; {timings_line(err1)}")
        print(f"create --views {' '.join(names)}: {wall2:.1f} s wall; {timings_line(err2)}")
        a_single, a_views = load_avatar(single), load_avatar(views)
        held = kit.photos[vs.HELD_OUT]
        rows = [("subject itself (ceiling: JPEG and matte edges)", vs.heldout_psnr(kit.subject.avatar, held)),
                ("single photo (create front.jpg)", vs.heldout_psnr(a_single, held))]
        if not args.no_single_refine:
            refined1, secs = vs.refine_on_one_photo(kit, single, "front.jpg", args.iterations, args.refine_size, args.seed)
            rows.append((f"single photo refined on itself ({secs:.0f} s)", vs.heldout_psnr(refined1, held)))
        rows.append((f"views ({len(names)} photos)", vs.heldout_psnr(a_views, held)))
        # what a perfect refinement could reach on the joint fit's head: the subject's own Gaussians moved onto it
        sub = kit.subject.avatar
        on_fit = dataclasses.replace(a_views, xyz=(a_views.template + sub.xyz - sub.template).astype(np.float32),
                                     rgb=sub.rgb, opacity=sub.opacity, scale=sub.scale, rotation=sub.rotation,
                                     opacity_logit=None)
        ceiling_fit = vs.heldout_psnr(on_fit, held)
        r = a_views.meta["refinement"]
        print(f"refinement: {r['iterations']} iterations at {r['size_px']} px in {r['seconds']:.1f} s, loss "
              f"{r['loss_before']:.4f} -> {r['loss_after']:.4f}")
        print(f"held-out photo {vs.HELD_OUT}: PSNR inside its matte, posed and seen as in the photo")
        for label, value in rows:
            print(f"  {label:<48} {value:6.2f} dB")
        print(f"  views - single: {rows[-1][1] - rows[1][1]:+.2f} dB")
        print(f"  (the subject's own Gaussians on the joint fit's head: {ceiling_fit:.2f} dB, the ceiling the fit's "
              "shape leaves)")
        print("joint fit vs truth (rotation: head vs the ray through the network input's centre, true turn in "
              "brackets; expression: expression + jaw displacement over the face, error and error / true size; "
              "alignment: face vertices in the 504 input):")
        for p in a_views.meta["views"]["photos"]:
            fit = vs.fit_of(p["fit"])
            fit.betas = a_views.shape_params
            e = vs.fit_errors(kit.subject.flame, fit, kit.photos[p["name"]], vs.network_crop(kit.photos[p["name"]].path))
            print(f"  {p['name']:<10} landmark RMS {p['fit_rms_px']:4.2f} px, rotation {e['rotation_deg']:4.2f} deg "
                  f"({e['turn_deg']:4.1f}), expression {e['expr_mm']:4.2f} mm ({e['expr_rel']:4.2f}), alignment "
                  f"{e['align_px']:4.2f} px")
        for label, av in (("joint fit (views)", a_views), ("single fit (front.jpg)", a_single)):
            d = kit.subject.flame["shapedirs"][:, :, :300] @ av.shape_params.astype(np.float64)
            face = d[vs.face_vertices(kit.subject.flame)]
            print(f"  shape, {label}: {1000 * np.sqrt((face ** 2).sum(1).mean()):.2f} mm RMS over the face, "
                  f"{1000 * np.sqrt((d ** 2).sum(1).mean()):.2f} mm over the head (the truth is the mean head)")
        print(f"network input: {a_views.meta['views']['network_reason']}")
        print(f"load average {os.getloadavg()[0]:.1f} at the end ({load0:.1f} at start)")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
