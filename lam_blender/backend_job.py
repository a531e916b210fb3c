"""Backend process management for the add-on, without bpy (testable anywhere).

* :func:`find_backend_python` picks the backend interpreter: the preference,
  ``LAM_HEAD_BACKEND_PYTHON``, the venv "Install backend" makes in the
  extension's user directory, then a developer checkout's ``.venv``.
* :class:`BackendManager` keeps one backend subprocess per Blender session and
  restarts it when it died or the interpreter changed.
* :class:`CreateJob` is one photo (or several photos) -> avatar request,
  advanced by :meth:`step` (a modal operator's timer calls it; tests call it in
  a loop).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core import client as _client
from .core import environment

BackendClient, BackendDied, BackendError = _client.BackendClient, _client.BackendDied, _client.BackendError

ENV_PYTHON = "LAM_HEAD_BACKEND_PYTHON"
BACKEND_VENV_NAME = "backend-venv"
CANCEL_GRACE_S = 15.0  # a cancelled job that has not answered by then is stopped by killing the backend

RUNNING, DONE, FAILED, CANCELLED = "RUNNING", "DONE", "FAILED", "CANCELLED"


def backend_root() -> Path:
    """The directory that holds ``backend/`` (the extension's own folder)."""
    return Path(__file__).resolve().parent.parent


def find_backend_python(preference: str = "", user_dir: str | os.PathLike | None = None) -> tuple[str | None, str]:
    """(interpreter path or None, where it came from). Only existing files count."""
    if preference.strip():  # an explicit choice is used or reported, never silently replaced
        path = os.path.expanduser(preference.strip())
        if Path(path).is_file():
            return path, "preferences"
        return None, f"the backend Python set in the add-on preferences does not exist: {path}"
    candidates: list[tuple[str, str]] = []
    if os.environ.get(ENV_PYTHON):
        candidates.append((os.environ[ENV_PYTHON], ENV_PYTHON))
    if user_dir:
        candidates.append((str(environment.venv_python(Path(user_dir) / BACKEND_VENV_NAME)), "installed backend"))
    candidates.append((str(environment.venv_python(backend_root() / ".venv")), "developer .venv"))
    for path, source in candidates:
        if path and Path(path).is_file():
            return path, source
    return None, "no backend found: press Install Backend in the add-on preferences, or set its Python path"


class BackendManager:
    """One backend subprocess, started on demand and restarted when needed."""

    def __init__(self, root_dir: str | os.PathLike | None = None, env: Mapping[str, str] | None = None):
        self.root_dir = Path(root_dir) if root_dir else backend_root()
        self.env = dict(env) if env is not None else None
        self._client: BackendClient | None = None

    @property
    def client(self) -> BackendClient | None:
        return self._client

    def ensure(self, python: str) -> BackendClient:
        """A running client for ``python``; (re)starts the process if it is gone or another python is asked for."""
        c = self._client
        if c is not None and (not c.alive or c.python != str(python)):
            self.stop()
            c = None
        if c is None:
            c = BackendClient(python, self.root_dir, env=self.env).start()
            self._client = c
        return c

    def call(self, python: str, method: str, params: Mapping[str, Any] | None = None, timeout: float = 60.0) -> dict:
        return self.ensure(python).call(method, params or {}, timeout=timeout)

    def discard(self) -> None:
        """Forget a dead or stuck process (killed if still running)."""
        if self._client is not None:
            self._client.kill()
            self._client = None

    def stop(self) -> None:
        if self._client is not None:
            if self._client.alive:
                self._client.shutdown(timeout=5.0)
            else:
                self._client.kill()
            self._client = None


@dataclass
class CreateJob:
    """A photo -> avatar request running in the backend. States: RUNNING, DONE, FAILED, CANCELLED.

    With ``views`` (2-4 photos of one person) it is a ``create_views`` request and ``image`` is the
    photo the result is named after (the first); otherwise a ``create`` request for ``image``.
    """

    manager: BackendManager
    python: str
    image: str
    output: str
    params: dict = field(default_factory=dict)  # device, precision, weights, flame (+ refine_* for views)
    on_progress: Callable[[CreateJob], None] | None = None
    views: list[str] | None = None

    state: str = RUNNING
    stage: str = "starting"
    fraction: float = 0.0
    message: str = "Starting the backend"
    error: str = ""
    error_code: str = ""
    warnings: list[str] = field(default_factory=list)
    result: dict | None = None
    _rid: int | None = None
    _cancel_at: float | None = None

    def start(self) -> CreateJob:
        try:
            client = self.manager.ensure(self.python)
            if self.views:
                request = {"images": [str(v) for v in self.views], "output": str(self.output), **self.params}
                self._rid = client.send("create_views", request)
            else:
                self._rid = client.send("create", {"image": str(self.image), "output": str(self.output), **self.params})
        except BackendError as exc:
            self._fail(exc)
        return self

    @property
    def finished(self) -> bool:
        return self.state != RUNNING

    @property
    def avatar_path(self) -> str | None:
        return None if self.result is None else self.result.get("avatar")

    def cancel(self) -> None:
        """Ask the backend to stop this job; it ends as CANCELLED (killed if it does not answer in time)."""
        if self.finished or self._cancel_at is not None:
            return
        self._cancel_at = time.monotonic()
        self.message = "Cancelling"
        client = self.manager.client
        try:
            if client is not None and self._rid is not None:
                client.cancel(self._rid)
        except BackendError:
            self._end(CANCELLED)
            self.manager.discard()

    def step(self, timeout: float = 0.0) -> str:
        """Handle what the backend said since the last step; returns the state."""
        if self.finished:
            return self.state
        client = self.manager.client
        if client is None:
            self._fail(BackendDied("the backend is not running"))
            return self.state
        try:
            messages = client.poll(timeout)
        except BackendDied as exc:
            self.manager.discard()
            if self._cancel_at is not None:
                self._end(CANCELLED)
            else:
                self._fail(exc)
            return self.state
        for msg in messages:
            if msg.get("id") != self._rid:
                continue
            event = msg.get("event")
            if event == "progress":
                self.stage = str(msg.get("stage", self.stage))
                self.fraction = float(msg.get("fraction", self.fraction))
                self.message = str(msg.get("message") or self.stage)
                if self.on_progress is not None:
                    self.on_progress(self)
            elif event == "warning":
                self.warnings.append(str(msg.get("message", "")))
            elif "result" in msg:
                self.result = dict(msg["result"])
                self.warnings.extend(w for w in self.result.get("warnings", []) if w not in self.warnings)
                self.fraction = 1.0
                self._end(DONE)
            elif "error" in msg:
                err = msg["error"] if isinstance(msg["error"], dict) else {}
                code, text = str(err.get("code", "error")), str(err.get("message", "unknown error"))
                if code == "cancelled":
                    self._end(CANCELLED)
                else:
                    self._fail(BackendError(code, text))
        if not self.finished and self._cancel_at is not None and time.monotonic() - self._cancel_at > CANCEL_GRACE_S:
            self.manager.discard()
            self._end(CANCELLED)
        return self.state

    def run(self, poll_s: float = 0.1, timeout: float | None = None) -> str:
        """Block until the job ends (scripts, background mode)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            self.step(poll_s)
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                deadline = None
        return self.state

    def _end(self, state: str) -> None:
        self.state = state
        self.message = {DONE: "Done", CANCELLED: "Cancelled"}.get(state, self.message)

    def _fail(self, exc: BackendError) -> None:
        self.error_code = exc.code
        self.error = str(exc)
        if isinstance(exc, BackendDied):
            self.error = f"The backend stopped unexpectedly (it will be restarted on the next run): {exc}"
        self.message = self.error
        self._end(FAILED)
