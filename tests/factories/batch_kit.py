"""A folder of portraits for the batch tests (good and bad photos) and the avatars a fresh
``lam-head create`` process makes of the good ones, to compare ``lam-head batch`` against."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .checkpoint import make_tiny_weights_dir
from .flame import write_synthetic_flame
from .images import astronaut, no_face

REPO = Path(__file__).resolve().parents[2]
GOOD = ("astro", "mirror")
BAD = {"landscape": "no_face", "notes": "bad_input", "truncated": "bad_input"}


def write_photos(folder: Path) -> Path:
    """astro.jpg and mirror.jpg (faces); truncated.jpg, notes.jpg (text), landscape.jpg (no face)."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(astronaut()).save(folder / "astro.jpg", quality=92)
    Image.fromarray(np.ascontiguousarray(astronaut()[:, ::-1])).save(folder / "mirror.jpg", quality=92)
    data = (folder / "astro.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "notes.jpg").write_text("not a picture\n")
    Image.fromarray(no_face()).save(folder / "landscape.jpg", quality=92)
    return folder


def make_kit(root: Path) -> dict[str, Path]:
    """Tiny weights, synthetic FLAME, the photos, and ``home``: a LAM_HEAD_HOME with a (synthetic) landmark
    embedding installed, so the FLAME fit really runs (it changes torch's thread count while it runs)."""
    from backend.flame import load_flame

    flame = write_synthetic_flame(root / "flame2023.pkl")
    n_faces = load_flame(flame).faces.shape[0]
    rng = np.random.default_rng(1)
    emb = root / "landmark_embedding_with_eyes.npz"
    np.savez(emb, full_lmk_faces_idx=rng.choice(n_faces, 68, replace=False)[None].astype(np.int64),
             full_lmk_bary_coords=rng.dirichlet([2.0, 2.0, 2.0], size=68)[None])
    home = root / "home"
    env = {**os.environ, "LAM_HEAD_HOME": str(home), "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "backend", "setup", "--landmark-embedding", str(emb)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return {"weights": make_tiny_weights_dir(root), "flame": flame, "photos": write_photos(root / "photos"),
            "root": root, "home": home}


def fresh_create(kit: dict[str, Path], name: str, out_dir: Path, ply: bool = True) -> dict[str, Path]:
    """``lam-head create`` of photos/<name>.jpg in its own process -> {"avatar": npz, "ply": ply}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = {"avatar": out_dir / f"{name}.npz"}
    cmd = [sys.executable, "-m", "backend", "create", str(kit["photos"] / f"{name}.jpg"), "-o", str(out["avatar"]),
           "--weights", str(kit["weights"]), "--flame", str(kit["flame"]), "--quiet"]
    if ply:
        out["ply"] = out_dir / f"{name}.ply"
        cmd += ["--ply", str(out["ply"])]
    env = {**os.environ, "LAM_HEAD_HOME": str(kit["home"]), "PYTHONPATH": str(REPO)}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def avatar_differences(a: Path, b: Path) -> list[str]:
    """Keys whose arrays differ between two avatar files (meta compared without its ``created`` time)."""
    with np.load(a) as za, np.load(b) as zb:
        if set(za.files) != set(zb.files):
            return ["<keys>"]
        bad = [k for k in za.files if k != "meta" and not np.array_equal(za[k], zb[k])]
        ma, mb = json.loads(str(za["meta"])), json.loads(str(zb["meta"]))
    ma.pop("created", None)
    mb.pop("created", None)
    return bad + (["meta"] if ma != mb else [])
