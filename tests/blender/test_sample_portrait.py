"""First run in Blender: the sample portrait shipped with the extension fills the Photo field and a
Create on it needs no file of the user's (real backend subprocess, tiny random model)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import bpy
import pytest
from harness import BACKEND_PYTHON

ROOT = Path(__file__).resolve().parents[2]

_MAKE_ASSETS = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
from pathlib import Path
from factories.checkpoint import make_tiny_weights_dir
from factories.flame import write_synthetic_flame
out = Path({out!r})
make_tiny_weights_dir(out, name="weights")
write_synthetic_flame(out / "flame.pkl")
"""


def test_sample_portrait_ships_in_the_extension_and_fills_the_photo_field(lam):
    sample = lam.ops_create.sample_portrait()
    assert sample is not None and Path(sample).is_file()
    assert Path(lam.__file__).resolve().parents[1] in Path(sample).resolve().parents, "the installed copy, not the repo's"
    scene = bpy.context.scene
    assert scene.lam_head.image == ""
    assert bpy.ops.lam_head.use_sample_portrait() == {"FINISHED"}
    assert scene.lam_head.image == sample


@pytest.mark.skipif(not Path(BACKEND_PYTHON).is_file(), reason=f"no backend python at {BACKEND_PYTHON}")
def test_first_create_on_the_sample_portrait(lam, tmp_path, monkeypatch):
    out = tmp_path / "assets"
    code = _MAKE_ASSETS.format(root=str(ROOT), tests=str(ROOT / "tests"), out=str(out))
    subprocess.run([BACKEND_PYTHON, "-c", code], check=True, capture_output=True, timeout=120)
    monkeypatch.setenv("LAM_HEAD_HOME", str(tmp_path / "lam_home"))
    prefs = lam.preferences.prefs()
    prefs.backend_python = BACKEND_PYTHON
    prefs.weights_dir = str(out / "weights")
    prefs.flame_file = str(out / "flame.pkl")
    try:
        assert bpy.ops.lam_head.use_sample_portrait() == {"FINISHED"}
        assert bpy.ops.lam_head.create_from_image(filepath=bpy.context.scene.lam_head.image) == {"FINISHED"}
        job = lam.ops_create.current_job()
        assert job.state == "DONE", job.error
        obj = bpy.context.active_object
        assert lam.controls.find_avatar(obj) is not None and obj.name == "sample_portrait"
    finally:
        lam.preferences.MANAGER.stop()
        lam.ops_create.JOB["job"] = None
