"""Preferences: backend auto-detection, status via hello/doctor, offline refusal, background tasks."""

from __future__ import annotations

import sys
from pathlib import Path

import bpy
import pytest
from harness import BACKEND_PYTHON


def _fake_python(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return path


def test_backend_python_autodetect_order(lam, tmp_path, monkeypatch):
    job = lam.backend_job
    env_py = _fake_python(tmp_path / "env" / "python")
    user = tmp_path / "user"
    venv_py = _fake_python(lam.core.environment.venv_python(user / job.BACKEND_VENV_NAME))
    monkeypatch.setenv(job.ENV_PYTHON, str(env_py))
    assert job.find_backend_python("", user) == (str(env_py), job.ENV_PYTHON)
    monkeypatch.delenv(job.ENV_PYTHON)
    assert job.find_backend_python("", user) == (str(venv_py), "installed backend")
    explicit = _fake_python(tmp_path / "mine" / "python")
    assert job.find_backend_python(str(explicit), user) == (str(explicit), "preferences")
    py, why = job.find_backend_python(str(tmp_path / "missing"), user)
    assert py is None and "does not exist" in why, "an explicit choice is never silently replaced"


def test_nothing_found_says_what_to_do(lam, tmp_path, monkeypatch):
    job = lam.backend_job
    monkeypatch.delenv(job.ENV_PYTHON, raising=False)
    monkeypatch.setattr(job, "backend_root", lambda: tmp_path)  # no developer .venv beside the add-on
    py, why = job.find_backend_python("", tmp_path / "user")
    assert py is None and "Install Backend" in why


@pytest.mark.skipif(not Path(BACKEND_PYTHON).is_file(), reason=f"no backend python at {BACKEND_PYTHON}")
def test_check_backend_reports_torch_device_and_assets(lam, tmp_path, monkeypatch):
    monkeypatch.setenv("LAM_HEAD_HOME", str(tmp_path / "home"))
    lam.preferences.prefs().backend_python = BACKEND_PYTHON
    try:
        assert bpy.ops.lam_head.check_backend() == {"FINISHED"}
        status = lam.preferences.STATUS
        assert status["protocol"] == 1 and status["torch"] and status["device"] == "cpu"
        names = {a["name"]: a["present"] for a in status["doctor"]["assets"]}
        assert names["weights"] is False, "an empty asset folder reports the weights missing"
    finally:
        lam.preferences.MANAGER.stop()


@pytest.mark.skipif(bpy.app.online_access, reason="this Blender allows online access; the refusal needs it disallowed")
@pytest.mark.parametrize("op", ["install_backend", "download_assets"])
def test_downloads_refused_without_online_access(lam, op):
    with pytest.raises(RuntimeError, match="Online access is disabled"):
        getattr(bpy.ops.lam_head, op)()
    assert not lam.preferences.TASKS, "nothing was started"


def test_background_task_streams_output_and_reports_failure(lam):
    bt = lam.background_task
    ok = bt.BackgroundTask("ok", lambda log: bt.run_command([sys.executable, "-c", "print('one'); print('a\\rtwo')"], log)).start()
    assert ok.join(30) == bt.DONE and list(ok.lines) == ["one", "a", "two"]
    bad = bt.BackgroundTask("bad", lambda log: bt.run_command([sys.executable, "-c", "print('why'); raise SystemExit(3)"], log))
    assert bad.start().join(30) == bt.FAILED and "exit 3" in bad.error and "why" in bad.error
