"""Create from Photos (several photos of one person) against a REAL backend subprocess: the tiny random LAM
model, a synthetic FLAME, the astronaut and a mirrored, shifted copy as the second view. The avatar is imported
and its meta records the run; a bad photo among the views, a wrong count and a cancel leave the scene and the
disk unchanged."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import bpy
import numpy as np
import pytest
from harness import BACKEND_PYTHON

from backend.core.formats.avatar_file import load_avatar

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not Path(BACKEND_PYTHON).is_file(), reason=f"no backend python at {BACKEND_PYTHON}")

_MAKE_ASSETS = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
from pathlib import Path
import numpy as np
from PIL import Image
from factories.checkpoint import make_tiny_weights_dir
from factories.flame import write_synthetic_flame
from factories.images import astronaut
out = Path({out!r})
make_tiny_weights_dir(out, name="weights")
write_synthetic_flame(out / "flame.pkl")
a = astronaut()
Image.fromarray(a).save(out / "front.jpg", quality=92)
other = np.full_like(a, 255)
other[:, 20:] = a[:, ::-1][:, :-20]
Image.fromarray(other).save(out / "flipped.jpg", quality=92)
Image.new("RGB", (256, 256), (255, 255, 255)).save(out / "blank.png")
"""


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """Made by the backend's python (the Blender test env has no scikit-image)."""
    out = tmp_path_factory.mktemp("views_assets")
    code = _MAKE_ASSETS.format(root=str(ROOT), tests=str(ROOT / "tests"), out=str(out))
    subprocess.run([BACKEND_PYTHON, "-c", code], check=True, capture_output=True, timeout=120)
    return out


@pytest.fixture
def create_env(lam, assets, tmp_path, monkeypatch):
    monkeypatch.setenv("LAM_HEAD_HOME", str(tmp_path / "lam_home"))
    prefs = lam.preferences.prefs()
    prefs.backend_python = BACKEND_PYTHON
    prefs.weights_dir = str(assets / "weights")
    prefs.flame_file = str(assets / "flame.pkl")
    yield lam
    lam.preferences.MANAGER.stop()
    lam.ops_create.JOB["job"] = None


def _ids() -> dict[str, set[str]]:
    names = ("objects", "meshes", "armatures", "collections", "materials", "node_groups", "images", "actions", "texts")
    return {n: {i.name for i in getattr(bpy.data, n)} for n in names}


def _avatar_files(lam) -> set[Path]:
    folder = lam.ops_create.output_path("x").parent
    return set(folder.glob("*"))


def _files(*names: str) -> list[dict]:
    return [{"name": n} for n in names]


def test_create_from_photos_imports_one_refined_avatar(create_env, assets):
    lam = create_env
    reports = []
    result = bpy.ops.lam_head.create_from_photos(directory=str(assets), files=_files("front.jpg", "flipped.jpg"),
                                                refine_iterations=2, seed=5)
    assert result == {"FINISHED"}
    job = lam.ops_create.current_job()
    assert job.state == "DONE" and job.views and Path(job.avatar_path).is_file()
    avatar = load_avatar(job.avatar_path)
    views = avatar.meta["views"]
    assert [p["name"] for p in views["photos"]] == ["front.jpg", "flipped.jpg"]
    assert avatar.meta["refinement"]["iterations"] == 2 and avatar.meta["refinement"]["seed"] == 5
    assert job.result["network_photo"] == views["network_photo"] and job.result["network_reason"]
    assert job.result["refinement"]["iterations"] == 2
    obj = bpy.context.active_object
    assert lam.controls.find_avatar(obj) is not None and obj.name == "front", "named after the first photo"
    co = np.empty(len(obj.data.vertices) * 3, dtype=np.float32)
    obj.data.vertices.foreach_get("co", co)
    np.testing.assert_array_equal(co.reshape(-1, 3), avatar.xyz)
    # what the modal operator reports when the job ends
    lam.ops_create.finish_job(bpy.context, job, lambda kind, text: reports.append(text))
    assert "from 2 photos" in reports[-1] and "2 refinement iterations" in reports[-1]


def test_modal_steps_report_views_progress(create_env, assets):
    lam = create_env
    job = lam.ops_create.start_job(bpy.context, "", views=[str(assets / "front.jpg"), str(assets / "flipped.jpg")],
                                   refine_iterations=3)
    seen = []
    while not job.finished:
        job.step(0.05)
        seen.append((job.fraction, job.stage, job.message))
    assert job.state == "DONE", job.error
    fractions = [f for f, _, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    stages = [s for _, s, _ in seen]
    assert {"prepare", "network", "refine"} <= set(stages)
    assert any(s == "refine" and "loss" in m for _, s, m in seen), "per-iteration loss reaches the panel"


def test_a_bad_photo_among_the_views_is_refused_by_name(create_env, assets):
    before, files = _ids(), _avatar_files(create_env)
    with pytest.raises(RuntimeError, match="blank.png"):
        bpy.ops.lam_head.create_from_photos(directory=str(assets), files=_files("front.jpg", "blank.png"))
    assert _ids() == before and _avatar_files(create_env) == files


@pytest.mark.parametrize("names, needle", [(("front.jpg",), "2 to 4 photos"),
                                           (("front.jpg", "front.jpg"), "twice"),
                                           (("front.jpg", "missing.jpg"), "not found")])
def test_wrong_choices_are_clear_errors(create_env, assets, names, needle):
    before = _ids()
    with pytest.raises(RuntimeError, match=needle):
        bpy.ops.lam_head.create_from_photos(directory=str(assets), files=_files(*names))
    assert _ids() == before
    assert create_env.preferences.MANAGER.client is None, "refused before the backend is even started"


def test_cancel_during_refinement_leaves_scene_and_disk_unchanged(create_env, assets):
    lam = create_env
    before, files = _ids(), _avatar_files(lam)
    job = lam.ops_create.start_job(bpy.context, "", views=[str(assets / "front.jpg"), str(assets / "flipped.jpg")],
                                   refine_iterations=500)
    deadline = time.monotonic() + 180
    while job.stage != "refine" and not job.finished:
        assert time.monotonic() < deadline, job.message
        job.step(0.05)
    assert not job.finished, job.error
    job.cancel()
    while not job.finished:
        job.step(0.05)
    assert job.state == "CANCELLED"
    assert lam.ops_create.finish_job(bpy.context, job, lambda kind, text: None) == {"CANCELLED"}
    assert _ids() == before and not Path(job.output).exists() and _avatar_files(lam) == files
    assert lam.preferences.MANAGER.client.alive, "cancelling does not stop the backend"
