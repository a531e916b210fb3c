"""Regenerate docs/splat_parity.png (the README picture).

A synthetic avatar is imported into headless Blender from the built extension zip and
rendered with Cycles through the splat node path; the backend's CPU renderer renders it
from the same camera; the two are placed side by side on white.

    .venv/bin/python docs/make_picture.py   # after: python3 -m backend.devenv build
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "blender")]

from factories.avatar import make_avatar  # noqa: E402

from backend.core.formats.avatar_file import save_avatar  # noqa: E402
from backend.render import PinholeCamera, render_gaussians  # noqa: E402

SIZE = 320


def _over_white(rgb_premultiplied: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.clip(rgb_premultiplied + (1.0 - alpha[..., None]), 0.0, 1.0)


def _srgb8(linear: np.ndarray) -> np.ndarray:
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055)
    return (np.clip(srgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def main() -> int:
    zips = sorted((ROOT / "dist").glob("lam_head-*.zip"))
    if not zips:
        print("no extension zip: run `python3 -m backend.devenv build` first", file=sys.stderr)
        return 1
    avatar = make_avatar(n_points=4000, seed=7)
    # Smooth, shaded skin-like colours (the factory's are random) so the picture reads as a head.
    d = avatar.template - avatar.template.mean(axis=0)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    shade = 0.55 + 0.45 * np.clip(d @ np.array([0.3, 0.5, 0.8]), 0, 1)
    eyes = np.minimum(*(np.linalg.norm(avatar.template - avatar.joints[j], axis=1) for j in (3, 4))) < 0.02
    rgb = np.array([0.80, 0.55, 0.42]) * shade[:, None]
    rgb[eyes] = [0.08, 0.06, 0.05]
    avatar.rgb = rgb.astype(np.float32)
    avatar.opacity[:] = 0.9
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_avatar(tmp / "avatar.npz", avatar)
        exr = tmp / "cycles.exr"
        job = ROOT / "tests" / "blender" / "eevee_render_job.py"
        out = subprocess.run(
            [sys.executable, str(job), "--zip", str(zips[-1]), "--avatar", str(tmp / "avatar.npz"), "--out", str(exr),
             "--engine", "CYCLES", "--size", str(SIZE), "--samples", "32"],
            capture_output=True, text=True, check=True,
        )
        info = json.loads(out.stdout.strip().splitlines()[-1])
        import bpy  # after the job: reading the EXR needs Blender's image loader
        from eevee_render_job import read_exr

        cycles = read_exr(bpy, str(exr))
    cam = info["camera"]
    camera = PinholeCamera(cam["width"], cam["height"], cam["fx"], cam["fy"], cam["cx"], cam["cy"],
                           np.array(cam["world_to_camera"]))
    ref = render_gaussians(avatar.xyz, avatar.rotation, avatar.scale, avatar.opacity, avatar.rgb, camera, background=None)
    left = _srgb8(_over_white(cycles[..., :3], cycles[..., 3]))
    right = _srgb8(_over_white(ref.rgb, ref.alpha))
    gap = np.full((SIZE, 8, 3), 255, np.uint8)
    Image.fromarray(np.concatenate([left, gap, right], axis=1)).save(ROOT / "docs" / "splat_parity.png", optimize=True)
    print(f"wrote {ROOT / 'docs' / 'splat_parity.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
