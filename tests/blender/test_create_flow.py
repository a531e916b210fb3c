"""Create from photo against a REAL backend subprocess (tiny random LAM model,
synthetic FLAME, a real portrait): result imported; cancel and a killed backend
leave the scene unchanged; the backend is restarted after dying."""

from __future__ import annotations

import os
import signal
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
from PIL import Image
from factories.checkpoint import make_tiny_weights_dir
from factories.flame import write_synthetic_flame
from factories.images import astronaut
out = Path({out!r})
make_tiny_weights_dir(out, name="weights")
write_synthetic_flame(out / "flame.pkl")
Image.fromarray(astronaut()).save(out / "face.png")
Image.new("RGB", (256, 256), (255, 255, 255)).save(out / "blank.png")
"""


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """Made by the backend's python (the Blender test env has no scikit-image)."""
    out = tmp_path_factory.mktemp("create_assets")
    code = _MAKE_ASSETS.format(root=str(ROOT), tests=str(ROOT / "tests"), out=str(out))
    subprocess.run([BACKEND_PYTHON, "-c", code], check=True, capture_output=True, timeout=120)
    return out


@pytest.fixture
def create_env(lam, assets, tmp_path, monkeypatch):
    """The add-on's preferences point at the backend python and the test assets."""
    monkeypatch.setenv("LAM_HEAD_HOME", str(tmp_path / "lam_home"))
    prefs = lam.preferences.prefs()
    prefs.backend_python = BACKEND_PYTHON
    prefs.weights_dir = str(assets / "weights")
    prefs.flame_file = str(assets / "flame.pkl")
    yield lam
    lam.preferences.MANAGER.stop()
    lam.ops_create.JOB["job"] = None


def _ids() -> dict[str, set[str]]:
    names = ("objects", "meshes", "armatures", "collections", "materials", "node_groups", "images", "actions")
    return {n: {i.name for i in getattr(bpy.data, n)} for n in names}


def _step_until(job, pred, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred(job):
        assert time.monotonic() < deadline, f"timed out in state {job.state} ({job.message})"
        job.step(0.05)


def test_create_operator_imports_the_backend_result(create_env, assets):
    lam = create_env
    assert bpy.ops.lam_head.create_from_image(filepath=str(assets / "face.png")) == {"FINISHED"}
    job = lam.ops_create.current_job()
    assert job.state == "DONE" and Path(job.avatar_path).is_file()
    avatar = load_avatar(job.avatar_path)
    obj = bpy.context.active_object
    assert lam.controls.find_avatar(obj) is not None and obj.name == "face", "named after the photo"
    co = np.empty(len(obj.data.vertices) * 3, dtype=np.float32)
    obj.data.vertices.foreach_get("co", co)
    np.testing.assert_array_equal(co.reshape(-1, 3), avatar.xyz)
    assert any("landmark embedding" in w for w in job.warnings), "the backend's warnings reach the user"


def test_relative_photo_path_resolves_against_blenders_working_directory(create_env, assets, monkeypatch):
    """The backend runs in its own working directory: the operator must send it an absolute path."""
    monkeypatch.chdir(assets)
    assert bpy.ops.lam_head.create_from_image(filepath="face.png") == {"FINISHED"}
    job = create_env.ops_create.current_job()
    assert job.state == "DONE" and Path(job.image).is_absolute()


def test_modal_steps_report_progress_then_import(create_env, assets):
    """What the modal operator's timer does: step the job, show progress, import when done."""
    lam = create_env
    job = lam.ops_create.start_job(bpy.context, str(assets / "face.png"))
    seen = []
    while not job.finished:
        job.step(0.05)
        seen.append((job.fraction, job.stage))
    assert job.state == "DONE", job.error
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"detect", "network"} <= {s for _, s in seen}
    reports = []
    assert lam.ops_create.finish_job(bpy.context, job, lambda kind, text: reports.append((kind, text))) == {"FINISHED"}
    assert bpy.context.active_object is not None and ("INFO" in next(iter(reports[-1][0])))


def test_cancel_leaves_scene_unchanged_and_backend_usable(create_env, assets):
    lam = create_env
    before = _ids()
    job = lam.ops_create.start_job(bpy.context, str(assets / "face.png"))
    _step_until(job, lambda j: j.stage in ("detect", "matte", "fit") or j.finished)
    assert not job.finished
    job.cancel()
    _step_until(job, lambda j: j.finished)
    assert job.state == "CANCELLED"
    reports = []
    assert lam.ops_create.finish_job(bpy.context, job, lambda kind, text: reports.append(text)) == {"CANCELLED"}
    assert _ids() == before
    assert not Path(job.output).exists(), "a cancelled job writes no avatar file"
    client = lam.preferences.MANAGER.client
    assert client is not None and client.alive, "cancelling a job does not stop the backend"


def test_backend_killed_mid_job_fails_cleanly_then_restarts(create_env, assets):
    lam = create_env
    before = _ids()
    job = lam.ops_create.start_job(bpy.context, str(assets / "face.png"))
    _step_until(job, lambda j: j.stage != "starting" or j.finished)
    first = lam.preferences.MANAGER.client
    os.kill(first._proc.pid, signal.SIGKILL)  # an outside crash, not our own shutdown
    _step_until(job, lambda j: j.finished, timeout=30)
    assert job.state == "FAILED" and "backend stopped" in job.error.lower()
    reports = []
    lam.ops_create.finish_job(bpy.context, job, lambda kind, text: reports.append((kind, text)))
    assert reports and "ERROR" in reports[0][0] and "backend stopped" in reports[0][1].lower()
    assert _ids() == before
    # The next run starts a fresh backend, which answers (cancelled early to keep the test short).
    again = lam.ops_create.start_job(bpy.context, str(assets / "face.png"))
    assert lam.preferences.MANAGER.client is not first and lam.preferences.MANAGER.client.alive
    _step_until(again, lambda j: j.fraction > 0 or j.finished)
    assert again.state == "RUNNING" and again.stage != "starting", "the restarted backend reports progress"
    again.cancel()
    _step_until(again, lambda j: j.finished)
    assert again.state == "CANCELLED"


def test_backend_error_is_shown_with_its_message(create_env, assets):
    """A photo without a face: the backend's own message reaches the user; nothing is imported."""
    before = _ids()
    with pytest.raises(RuntimeError, match="(?i)face"):
        bpy.ops.lam_head.create_from_image(filepath=str(assets / "blank.png"))
    assert _ids() == before


def test_missing_backend_python_is_a_clear_error(lam, assets, tmp_path):
    lam.preferences.prefs().backend_python = str(tmp_path / "no-such-python")
    with pytest.raises(RuntimeError, match="does not exist"):
        bpy.ops.lam_head.create_from_image(filepath=str(assets / "face.png"))
