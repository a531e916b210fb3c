"""Long set-up work (install the backend, download assets) off Blender's main thread. No bpy.

A task runs ``target(log)`` in a daemon thread; the UI polls ``state``,
``lines`` (the log tail) and ``error`` from a timer. :func:`run_command`
streams a subprocess' output into the log.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

IDLE, RUNNING, DONE, FAILED = "IDLE", "RUNNING", "DONE", "FAILED"
Log = Callable[[str], None]


class BackgroundTask:
    def __init__(self, title: str, target: Callable[[Log], object], tail: int = 12):
        self.title = title
        self._target = target
        self.lines: collections.deque[str] = collections.deque(maxlen=tail)
        self.state = IDLE
        self.error = ""
        self._thread: threading.Thread | None = None

    def log(self, line: str) -> None:
        self.lines.append(line.rstrip())

    def start(self) -> BackgroundTask:
        self.state = RUNNING
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"lam-head {self.title}")
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._target(self.log)
            self.state = DONE
        except Exception as exc:  # reported in the UI with the log tail
            self.error = str(exc) or type(exc).__name__
            self.state = FAILED

    def join(self, timeout: float | None = None) -> str:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state

    @property
    def running(self) -> bool:
        return self.state == RUNNING


def run_command(cmd: Sequence[str], log: Log, cwd: str | None = None, env: dict | None = None) -> None:
    """Run ``cmd``, stream its stdout+stderr lines to ``log``; raise with the tail if it fails."""
    flags = subprocess.CREATE_NO_WINDOW if sys.platform == "win32" else 0
    proc = subprocess.Popen(
        [str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, text=True, bufsize=1, creationflags=flags,
    )
    assert proc.stdout is not None
    tail: collections.deque[str] = collections.deque(maxlen=8)
    for line in proc.stdout:
        for part in line.rstrip("\n").split("\r"):  # progress bars redraw with \r
            if part.strip():
                log(part)
                tail.append(part)
    if proc.wait() != 0:
        raise RuntimeError(f"{cmd[-1] if cmd else 'command'} failed (exit {proc.returncode}): " + " | ".join(tail))
