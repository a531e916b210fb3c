"""Client for ``lam-head serve``: the add-on's side of the JSON-lines protocol.

Standard library only (the Blender add-on imports it; Blender's Python never
imports torch). The backend runs as a subprocess; a reader thread turns its
stdout into messages and another keeps the tail of its stderr, so
:meth:`BackendClient.poll` never blocks the UI longer than asked.

Protocol (one JSON object per line): request ``{"id", "method", "params"}``;
events ``{"id", "event": "progress"|"warning", ...}``; one final
``{"id", "result": {...}}`` or ``{"id", "error": {"code", "message"}}``.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import LamHeadError

PROTOCOL = 1
_STDERR_TAIL_LINES = 40
_EOF = object()


class BackendError(LamHeadError):
    """The backend answered a request with an error (``code`` as in errors.py)."""

    def __init__(self, code: str, message: str):
        super().__init__(message, code=code)


class BackendDied(BackendError):
    """The backend process is gone (crashed, killed, or never started)."""

    def __init__(self, message: str):
        super().__init__("backend_died", message)


class BackendClient:
    """Drive one ``<python> -m backend serve`` subprocess.

    ``root_dir`` is the directory that contains ``backend/``; it becomes the
    working directory and is put first on ``PYTHONPATH``. ``on_log`` receives
    each stderr line (from the reader thread) if given.
    """

    def __init__(
        self,
        python: str | os.PathLike,
        root_dir: str | os.PathLike,
        env: Mapping[str, str] | None = None,
        on_log: Callable[[str], None] | None = None,
    ):
        self.python = str(python)
        self.root_dir = str(Path(root_dir).resolve())
        self.env = dict(env) if env is not None else None
        self.on_log = on_log
        self._proc: subprocess.Popen | None = None
        self._messages: queue.Queue = queue.Queue()
        self._backlog: collections.deque = collections.deque()  # read but not yet handed out
        self._stderr_tail: collections.deque = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self._pending: set[int] = set()  # ids sent and not yet answered
        self._next_id = 1
        self._write_lock = threading.Lock()
        self._eof = False
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------
    def start(self) -> BackendClient:
        """Spawn the backend. Returns self (so ``BackendClient(...).start()`` chains)."""
        if self.alive:
            return self
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = self.root_dir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("PYTHONIOENCODING", "utf-8")
        flags = subprocess.CREATE_NO_WINDOW if sys.platform == "win32" else 0
        try:
            self._proc = subprocess.Popen(
                [self.python, "-m", "backend", "serve"],
                cwd=self.root_dir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, creationflags=flags,
            )
        except OSError as exc:
            raise BackendDied(f"could not start the backend ({self.python}): {exc}") from None
        self._messages = queue.Queue()
        self._backlog.clear()
        self._pending.clear()
        self._stderr_tail.clear()
        self._eof = False
        self._threads = [
            threading.Thread(target=self._read_stdout, args=(self._proc.stdout,), daemon=True, name="lam-client-out"),
            threading.Thread(target=self._read_stderr, args=(self._proc.stderr,), daemon=True, name="lam-client-err"),
        ]
        for t in self._threads:
            t.start()
        return self

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def stderr_tail(self) -> str:
        return "\n".join(self._stderr_tail)

    def shutdown(self, timeout: float = 10.0) -> int | None:
        """Ask the backend to exit; kill it if it has not within ``timeout`` s."""
        if self._proc is None:
            return None
        if self.alive:
            try:
                self.send("shutdown", {})
            except BackendDied:
                pass
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self._finish()

    def kill(self) -> int | None:
        """Stop the backend at once (no cleanup on its side)."""
        if self._proc is None:
            return None
        if self.alive:
            self._proc.kill()
        self._proc.wait()
        return self._finish()

    def _finish(self) -> int | None:
        assert self._proc is not None
        for t in self._threads:
            t.join(timeout=2.0)
        for stream in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        return self._proc.returncode

    def __enter__(self) -> BackendClient:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # -- reader threads --------------------------------------------------
    def _read_stdout(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                self._log(f"[backend stdout, not protocol] {line}")
                continue
            if isinstance(msg, dict):
                self._messages.put(msg)
            else:
                self._log(f"[backend stdout, not an object] {line}")
        self._messages.put(_EOF)

    def _read_stderr(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            self._log(raw.decode("utf-8", "replace").rstrip("\r\n"))

    def _log(self, line: str) -> None:
        self._stderr_tail.append(line)
        if self.on_log is not None:
            try:
                self.on_log(line)
            except Exception:  # a UI callback must not kill the reader
                pass

    # -- requests --------------------------------------------------------
    def send(self, method: str, params: Mapping[str, Any] | None = None) -> int:
        """Send one request; returns its id. Non-blocking apart from the pipe write."""
        if not self.alive:
            raise self._died("the backend is not running")
        with self._write_lock:
            rid = self._next_id
            self._next_id += 1
            line = json.dumps({"id": rid, "method": method, "params": dict(params or {})}) + "\n"
            try:
                assert self._proc is not None and self._proc.stdin is not None
                self._proc.stdin.write(line.encode("utf-8"))
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                raise self._died("the backend stopped reading requests") from None
            self._pending.add(rid)
        return rid

    def poll(self, timeout: float = 0.0) -> list[dict]:
        """Messages that arrived, waiting at most ``timeout`` s for the first.

        Raises :class:`BackendDied` once the backend has exited while requests
        were still unanswered (after handing out everything it said first).
        """
        out: list[dict] = list(self._backlog)
        self._backlog.clear()
        block = not out and timeout > 0
        deadline = time.monotonic() + timeout
        while True:
            try:
                if block:
                    item = self._messages.get(timeout=max(0.0, deadline - time.monotonic()))
                    block = False
                else:
                    item = self._messages.get_nowait()
            except queue.Empty:
                break
            if item is _EOF:
                self._eof = True
                continue
            if "result" in item or "error" in item:
                self._pending.discard(item.get("id"))
            out.append(item)
        if not out and self._eof and self._pending:
            pending = sorted(self._pending)
            self._pending.clear()
            raise self._died(f"the backend exited while request(s) {pending} were running")
        return out

    def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        on_event: Callable[[dict], None] | None = None,
        timeout: float | None = None,
    ) -> dict:
        """Send a request and wait for its answer; events go to ``on_event``.

        Returns the result dict; raises :class:`BackendError` for an error
        answer, :class:`BackendDied` if the process dies, ``TimeoutError``.
        """
        rid = self.send(method, params)
        return self.wait(rid, on_event=on_event, timeout=timeout)

    def wait(self, rid: int, on_event: Callable[[dict], None] | None = None, timeout: float | None = None) -> dict:
        """Wait for the answer to request ``rid`` (messages for other ids are kept for :meth:`poll`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        keep: list[dict] = []
        try:
            while True:
                left = 0.5 if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer to request {rid} within {timeout} s")
                for msg in self.poll(min(left, 0.5)):
                    if msg.get("id") != rid:
                        keep.append(msg)
                    elif "event" in msg:
                        if on_event is not None:
                            on_event(msg)
                    elif "error" in msg:
                        err = msg["error"] if isinstance(msg["error"], dict) else {}
                        raise BackendError(str(err.get("code", "error")), str(err.get("message", "unknown error")))
                    elif "result" in msg:
                        return msg["result"]
        finally:
            self._backlog.extend(keep)

    def cancel(self, rid: int) -> int:
        """Ask the backend to cancel request ``rid``; returns the cancel request's id.

        The cancelled job then answers with error code ``"cancelled"``.
        """
        return self.send("cancel", {"target": int(rid)})

    def _died(self, what: str) -> BackendDied:
        if self._proc is not None:
            try:
                self._proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
            for t in self._threads[1:]:
                t.join(timeout=1.0)  # let the stderr reader catch the last words
        code = self.returncode
        tail = self.stderr_tail().strip()
        msg = f"{what} (exit status {code})" if code is not None else what
        if tail:
            msg += "; last backend output:\n" + tail
        return BackendDied(msg)
