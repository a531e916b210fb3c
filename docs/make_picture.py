"""Regenerate the README pictures from the real LAM avatar in ../shared/fixtures/real/.

* ``docs/splat_parity.png``: the real LAM web ZIP imported into headless Blender (from the
  built extension zip) and rendered with Cycles through the splat node path (left), beside
  the backend's CPU renderer from the same camera (right), 512 x 512 each.
* ``docs/arkit_expression.png``: the same with ARKit shape keys set (jawOpen 0.6,
  eyeBlinkLeft 1), the backend's image made with the same blendshape sum.

The PSNR between the two halves of each picture is printed (the README caption quotes it).

    python3 -m backend.devenv build && .venv/bin/python docs/make_picture.py [LAM.zip]
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

from factories.lam_zips import real_zips  # noqa: E402

from backend.core.formats.lam_zip import read_lam_zip  # noqa: E402
from backend.render import PinholeCamera, render_gaussians  # noqa: E402

SIZE = 512
SAMPLES = 4  # emissive, transparent splats at pixel centres: samples add no information, only time
EXPRESSION = {"jawOpen": 0.6, "eyeBlinkLeft": 1.0}


def _over_white(rgb_premultiplied: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.clip(rgb_premultiplied + (1.0 - alpha[..., None]), 0.0, 1.0)


def _srgb8(linear: np.ndarray) -> np.ndarray:
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055)
    return (np.clip(srgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)) / 255.0**2
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def render_pair(ext_zip: Path, lam_zip: Path, keys: dict[str, float], out: Path) -> float:
    """Cycles (splat node path) | backend renderer, side by side on white; returns the PSNR."""
    avatar, _ = read_lam_zip(lam_zip)
    with tempfile.TemporaryDirectory() as tmp:
        exr = Path(tmp) / "cycles.exr"
        job = ROOT / "tests" / "blender" / "eevee_render_job.py"
        res = subprocess.run(
            [sys.executable, str(job), "--zip", str(ext_zip), "--avatar", str(lam_zip), "--out", str(exr),
             "--engine", "CYCLES", "--size", str(SIZE), "--samples", str(SAMPLES), "--centre",
             "--keys", ",".join(f"{k}={v}" for k, v in keys.items())],
            capture_output=True, text=True,
        )
        if res.returncode:
            raise SystemExit(f"the Blender render failed:\n{res.stderr[-3000:]}")
        info = json.loads(res.stdout.strip().splitlines()[-1])
        import bpy  # after the job: reading the EXR needs Blender's image loader
        from eevee_render_job import read_exr

        cycles = read_exr(bpy, str(exr))
    cam = info["camera"]
    camera = PinholeCamera(cam["width"], cam["height"], cam["fx"], cam["fy"], cam["cx"], cam["cy"],
                           np.array(cam["world_to_camera"]))
    xyz = avatar.xyz.astype(np.float64)
    for name, value in keys.items():
        xyz = xyz + value * avatar.arkit_dirs[:, :, avatar.arkit_names.index(name)]
    ref = render_gaussians(xyz.astype(np.float32), avatar.rotation, avatar.scale, avatar.opacity, avatar.rgb, camera,
                           background=None)
    left = _srgb8(_over_white(cycles[..., :3], cycles[..., 3]))
    right = _srgb8(_over_white(ref.rgb, ref.alpha))
    gap = np.full((SIZE, 8, 3), 255, np.uint8)
    Image.fromarray(np.concatenate([left, gap, right], axis=1)).save(out, optimize=True)
    return psnr(left, right)


def main(argv: list[str]) -> int:
    zips = sorted((ROOT / "dist").glob("lam_head-*.zip"))
    if not zips:
        print("no extension zip: run `python3 -m backend.devenv build` first", file=sys.stderr)
        return 1
    lam_zip = Path(argv[0]) if argv else real_zips()[0]
    for keys, name in (({}, "splat_parity.png"), (EXPRESSION, "arkit_expression.png")):
        value = render_pair(zips[-1], lam_zip, keys, ROOT / "docs" / name)
        print(f"docs/{name}: {lam_zip.name} {keys or 'neutral'}, Cycles vs backend PSNR {value:.2f} dB at {SIZE} px")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
