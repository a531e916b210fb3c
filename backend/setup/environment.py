"""Create and fill the backend's own Python environment. Standard library only.

Used by the developer command (``python3 -m backend.devenv``) and by the
add-on's "Install backend" button, so both install the same thing the same
way: torch pinned first (so nothing pulls a CUDA build on CPU machines), then
the backend requirements, then mediapipe without its unneeded dependencies.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

BACKEND_DIR = Path(__file__).resolve().parents[1]  # backend/ (this file is backend/setup/environment.py)
TORCH_REQUIREMENT = "torch==2.13.0"
# mediapipe 0.10.21 is the last release whose wheel carries its face models;
# its declared dependencies (jax, matplotlib, opencv-contrib, sounddevice, ...)
# are not needed for the legacy solutions we use, so it is installed with
# --no-deps and what it really imports is listed in requirements.txt.
MEDIAPIPE_REQUIREMENT = "mediapipe==0.10.21"
REQUIREMENTS_FILE = BACKEND_DIR / "requirements.txt"
STAMP_NAME = ".lam-head-env-stamp"

Log = Callable[[str], None]


class EnvironmentError_(RuntimeError):
    """Setting up the backend environment failed; the message says which step."""


def venv_python(venv: Path) -> Path:
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def _run(cmd: Sequence[str], log: Log, what: str) -> None:
    log(f"$ {' '.join(str(c) for c in cmd)}")
    proc = subprocess.Popen(
        [str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        if "is ignored: it is neither a file nor a directory" in line:
            continue  # noise from pip mirrors configured on some machines
        log(line)
        tail = (tail + [line])[-20:]
    if proc.wait() != 0:
        raise EnvironmentError_(f"{what} failed (exit {proc.returncode}):\n" + "\n".join(tail))


def ensure_venv(venv: Path, base_python: str = sys.executable, log: Log = print) -> Path:
    """Create ``venv`` unless a working one is already there; return its python."""
    py = venv_python(venv)
    if py.exists():
        ok = subprocess.run([str(py), "-c", "import sys"], capture_output=True).returncode == 0
        if ok:
            return py
        log(f"{venv} is broken; recreating it")
    _run([base_python, "-m", "venv", "--clear", str(venv)], log, "creating the virtual environment")
    _run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip", "setuptools", "wheel"], log, "upgrading pip")
    return py


def _stamp(parts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def install(
    venv: Path,
    pip_args: Sequence[str],
    *,
    base_python: str = sys.executable,
    with_torch: bool = True,
    with_mediapipe: bool = True,
    stamp_inputs: Sequence[Path] = (),
    log: Log = print,
) -> Path:
    """Install torch (pinned), ``pip_args`` (e.g. ``-r requirements.txt``), then
    mediapipe into ``venv``. Skipped when the stamp of what was asked for and the
    contents of ``stamp_inputs`` match the last successful install."""
    py = ensure_venv(venv, base_python, log)
    key = _stamp(
        [TORCH_REQUIREMENT if with_torch else "", MEDIAPIPE_REQUIREMENT if with_mediapipe else "", *pip_args]
        + [p.read_text() for p in stamp_inputs]
    )
    stamp = venv / STAMP_NAME
    if stamp.exists() and stamp.read_text() == key:
        log(f"{venv}: up to date")
        return py
    stamp.unlink(missing_ok=True)
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check"]
    if with_torch:
        _run([*pip, TORCH_REQUIREMENT], log, f"installing {TORCH_REQUIREMENT}")
    if pip_args:
        _run([*pip, *pip_args], log, "installing the requirements")
    if with_mediapipe:
        _run([*pip, "--no-deps", MEDIAPIPE_REQUIREMENT], log, f"installing {MEDIAPIPE_REQUIREMENT}")
    stamp.write_text(key)
    return py


def install_backend(venv: Path, base_python: str = sys.executable, log: Log = print) -> Path:
    """The runtime backend environment (what the add-on's Install button makes)."""
    return install(
        venv, ["-r", str(REQUIREMENTS_FILE)], base_python=base_python,
        stamp_inputs=[REQUIREMENTS_FILE], log=log,
    )
