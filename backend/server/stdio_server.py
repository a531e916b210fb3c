"""``lam-head serve``: the JSON-lines server the Blender add-on talks to.

One request per stdin line, answers and events one per stdout line, logs on
stderr. A reader thread reads stdin and answers the quick methods (``hello``,
``cancel``, ``shutdown``) at once; jobs (``create``, ``create_views``, ``doctor``, ``setup``) run one at a
time on a worker thread, so ``cancel`` reaches a running job. The server never
dies on bad input: every problem becomes an ``error`` answer and the next
request is served.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from .. import __version__
from ..core.errors import CancelledError, CancelToken, LamHeadError

PROTOCOL = 1
log = logging.getLogger("lam_head.server")


class RequestError(LamHeadError):
    """A request the server cannot take (bad JSON, unknown method, bad params, busy)."""


@dataclass
class JobContext:
    """What a job gets: progress (overall fraction 0..1), warnings, cancellation."""

    progress: Callable[[str, float, str], None]
    warn: Callable[[str], None]
    cancel: CancelToken = field(default_factory=CancelToken)


# A job handler: (params, ctx) -> JSON-able result dict.
JobHandler = Callable[[dict, JobContext], dict]


# -- parameter checking ----------------------------------------------------
_PARAM_SPECS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    # name -> (accepted types, required)
    "hello": {},
    "doctor": {},
    "shutdown": {},
    "cancel": {"target": ((int,), True)},
    "create": {
        "image": ((str,), True),
        "output": ((str,), True),
        "device": ((str,), False),
        "precision": ((str,), False),
        "weights": ((str, type(None)), False),
        "flame": ((str, type(None)), False),
        "ply": ((str, type(None)), False),
        "preview": ((str, type(None)), False),
        "lam_zip": ((str, type(None)), False),
        "debug_dir": ((str, type(None)), False),
    },
    # several photos of one person -> one avatar (issue 15); "image" names the photos as a list
    "create_views": {
        "images": ((list,), True),
        "output": ((str,), True),
        "device": ((str,), False),
        "precision": ((str,), False),
        "weights": ((str, type(None)), False),
        "flame": ((str, type(None)), False),
        "ply": ((str, type(None)), False),
        "preview": ((str, type(None)), False),
        "lam_zip": ((str, type(None)), False),
        "refine_iterations": ((int,), False),
        "refine_seconds": ((int, float, type(None)), False),
        "refine_size": ((int,), False),
        "seed": ((int,), False),
    },
    "setup": {
        "accept_licences": ((bool,), False),
        "lam_assets": ((bool,), False),
        "force": ((bool,), False),
        "weights": ((str, type(None)), False),
        "flame": ((str, type(None)), False),
        "landmark_embedding": ((str, type(None)), False),
        "lam_template": ((str, type(None)), False),
        "from_lam_repo": ((str, type(None)), False),
        "origin": ((str, type(None)), False),
    },
}
_PRECISIONS = ("fp32", "fast", "bf16", "fp16")


def check_params(method: str, params: Any) -> dict:
    """Validate ``params`` against the method's spec; raise RequestError('bad_params')."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RequestError(f"params must be a JSON object, got {type(params).__name__}", code="bad_params")
    spec = _PARAM_SPECS[method]
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise RequestError(f"{method}: unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(spec) or 'none'}", code="bad_params")
    for name, (types, required) in spec.items():
        if name not in params:
            if required:
                raise RequestError(f"{method}: missing parameter '{name}'", code="bad_params")
            continue
        value = params[name]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise RequestError(f"{method}: parameter '{name}' must be {want}, got {json.dumps(value)[:60]}", code="bad_params")
        if isinstance(value, str) and name in ("image", "output") and not value.strip():
            raise RequestError(f"{method}: parameter '{name}' is empty", code="bad_params")
    if method in ("create", "create_views") and params.get("precision", "fp32") not in _PRECISIONS:
        raise RequestError(f"{method}: precision must be one of {', '.join(_PRECISIONS)}, got {params['precision']!r}", code="bad_params")
    if method == "create_views":
        _check_views_params(params)
    return params


def _check_views_params(params: dict) -> None:
    images = params["images"]
    if not all(isinstance(i, str) and i.strip() for i in images):
        raise RequestError("create_views: 'images' must be a list of photo paths (non-empty strings)", code="bad_params")
    if params.get("refine_iterations", 0) < 0:
        raise RequestError("create_views: 'refine_iterations' must be 0 or more", code="bad_params")
    if not 16 <= params.get("refine_size", 252) <= 1024:
        raise RequestError("create_views: 'refine_size' must be 16 to 1024 pixels", code="bad_params")
    seconds = params.get("refine_seconds")
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise RequestError("create_views: 'refine_seconds' must be a positive number of seconds or null", code="bad_params")


# -- the real handlers -------------------------------------------------------
def hello_info() -> dict:
    """Versions and the device ``create`` would use with device="auto"."""
    info: dict[str, Any] = {"protocol": PROTOCOL, "version": __version__, "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["device"] = f"cuda ({torch.cuda.get_device_name(0)})"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            info["device"] = "mps"
        else:
            info["device"] = "cpu"
    except ImportError:
        info["torch"] = None
        info["device"] = None
    return info


def run_doctor(params: dict, ctx: JobContext) -> dict:
    from ..cli.doctor import collect_report

    return collect_report()


def run_create(params: dict, ctx: JobContext) -> dict:
    from ..create.pipeline import create_avatar, overall_fraction

    result = create_avatar(
        params["image"], params["output"],
        weights=params.get("weights"), flame=params.get("flame"),
        device=params.get("device", "auto"), precision=params.get("precision", "fp32"),
        ply=params.get("ply"), preview=params.get("preview"), lam_zip=params.get("lam_zip"),
        debug_dir=params.get("debug_dir"),
        progress=lambda stage, frac, msg="": ctx.progress(stage, overall_fraction(stage, frac), msg),
        on_warning=ctx.warn, cancel=ctx.cancel,
    )
    return _create_answer(result)


def run_create_views(params: dict, ctx: JobContext) -> dict:
    """2-4 photos -> one avatar (joint fit, network on the most frontal photo, refinement on all)."""
    from ..create.views import DEFAULT_REFINE_ITERATIONS, DEFAULT_REFINE_SIZE, create_from_views, views_overall_fraction

    result = create_from_views(
        params["images"], params["output"],
        weights=params.get("weights"), flame=params.get("flame"),
        device=params.get("device", "auto"), precision=params.get("precision", "fp32"),
        ply=params.get("ply"), preview=params.get("preview"), lam_zip=params.get("lam_zip"),
        refine_iterations=params.get("refine_iterations", DEFAULT_REFINE_ITERATIONS),
        refine_seconds=params.get("refine_seconds"), refine_size=params.get("refine_size", DEFAULT_REFINE_SIZE),
        seed=params.get("seed", 0),
        progress=lambda stage, frac, msg="": ctx.progress(stage, views_overall_fraction(stage, frac), msg),
        on_warning=ctx.warn, cancel=ctx.cancel,
    )
    return {
        **_create_answer(result),
        "network_photo": result.network_photo,
        "network_reason": result.network_reason,
        "refinement": result.refinement,
    }


def _create_answer(result: Any) -> dict:
    return {
        "avatar": str(result.path),
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
        "warnings": list(result.warnings),
        **({"ply": str(result.ply)} if result.ply else {}),
        **({"preview": str(result.preview)} if result.preview else {}),
        **({"lam_zip": str(result.lam_zip)} if getattr(result, "lam_zip", None) else {}),
    }


def run_setup(params: dict, ctx: JobContext) -> dict:
    """Download / register assets (the add-on's first-use flow). Downloads need
    ``accept_licences: true`` (else error ``licence_not_accepted`` quoting them)."""
    from ..setup import assets

    lines = assets.run_setup(**params, progress=ctx.progress, cancel=ctx.cancel)
    status = assets.status()
    return {"lines": lines, "assets": status, "ready": all(a["present"] for a in status if a["required"])}


DEFAULT_JOBS: dict[str, JobHandler] = {
    "create": run_create, "create_views": run_create_views, "doctor": run_doctor, "setup": run_setup,
}


# -- the server ---------------------------------------------------------------
class Server:
    """Serve requests from ``instream`` (binary or text lines) to ``outstream`` (text).

    ``jobs`` maps method names to job handlers (defaults: the real ``create``
    and ``doctor``); tests pass their own to exercise the protocol alone.
    """

    def __init__(
        self,
        instream: IO,
        outstream: IO[str],
        jobs: Mapping[str, JobHandler] | None = None,
        hello: Callable[[], dict] = hello_info,
        progress_interval: float = 0.05,
    ):
        self.instream = instream
        self.outstream = outstream
        self.jobs = dict(DEFAULT_JOBS if jobs is None else jobs)
        self.hello = hello
        self.progress_interval = progress_interval
        self._out_lock = threading.Lock()
        self._job_lock = threading.Lock()
        self._job_id: int | None = None
        self._job_token: CancelToken | None = None
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()

    # -- output --------------------------------------------------------
    def _write(self, obj: dict) -> None:
        line = json.dumps(obj, allow_nan=False, default=str)
        with self._out_lock:
            try:
                self.outstream.write(line + "\n")
                self.outstream.flush()
            except (BrokenPipeError, OSError, ValueError):
                log.warning("client went away; stopping")
                self._stop.set()

    def _error(self, rid: Any, code: str, message: str) -> None:
        self._write({"id": rid, "error": {"code": code, "message": message}})

    # -- main loop -----------------------------------------------------
    def serve_forever(self) -> int:
        """Run until ``shutdown`` or end of input; returns the exit status (0)."""
        reader = threading.Thread(target=self._read_loop, daemon=True, name="lam-serve-reader")
        reader.start()
        self._stop.wait()
        self._cancel_running("the server is shutting down")
        worker = self._worker
        if worker is not None:
            worker.join(timeout=30.0)
        return 0

    def _read_loop(self) -> None:
        try:
            for raw in iter(self.instream.readline, b"" if _is_binary(self.instream) else ""):
                if self._stop.is_set():
                    break
                line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
                if line.strip():
                    self.handle_line(line)
        except Exception:  # a broken stdin must still end the server cleanly
            log.error("reading requests failed:\n%s", traceback.format_exc())
        finally:
            self._stop.set()

    def handle_line(self, line: str) -> None:
        """Answer one request line (quick methods here, jobs on the worker)."""
        try:
            req = json.loads(line)
        except json.JSONDecodeError as exc:
            self._error(None, "bad_request", f"not valid JSON ({exc.msg} at column {exc.colno}); send one JSON object per line")
            return
        if not isinstance(req, dict):
            self._error(None, "bad_request", "a request must be a JSON object with id, method and params")
            return
        rid = req.get("id")
        if isinstance(rid, bool) or not isinstance(rid, int):
            self._error(None, "bad_request", f"request id must be an integer, got {json.dumps(rid)[:40]}")
            return
        method = req.get("method")
        try:
            if not isinstance(method, str):
                raise RequestError("request has no method name", code="bad_request")
            if method not in _PARAM_SPECS or (method not in self.jobs and method not in ("hello", "cancel", "shutdown")):
                known = sorted({"hello", "cancel", "shutdown", *self.jobs})
                raise RequestError(f"unknown method {method!r}; known: {', '.join(known)}", code="unknown_method")
            params = check_params(method, req.get("params"))
            if method == "hello":
                self._write({"id": rid, "result": self.hello()})
            elif method == "cancel":
                self._write({"id": rid, "result": {"cancelled": self._cancel_running("cancelled by the user", params["target"])}})
            elif method == "shutdown":
                self._write({"id": rid, "result": {}})
                self._stop.set()
            else:
                self._start_job(rid, method, params)
        except RequestError as exc:
            self._error(rid, exc.code, str(exc))
        except Exception as exc:  # a bug in a quick method: report, keep serving
            log.error("request %s failed:\n%s", rid, traceback.format_exc())
            self._error(rid, "internal", f"internal error: {type(exc).__name__}: {exc}")

    # -- jobs ------------------------------------------------------------
    def _start_job(self, rid: int, method: str, params: dict) -> None:
        with self._job_lock:
            if self._job_id is not None:
                raise RequestError(f"busy with request {self._job_id}; wait for it or cancel it", code="busy")
            token = CancelToken()
            self._job_id, self._job_token = rid, token
            self._worker = threading.Thread(
                target=self._run_job, args=(rid, method, params, token), daemon=True, name=f"lam-job-{rid}"
            )
            self._worker.start()

    def _cancel_running(self, why: str, target: int | None = None) -> bool:
        with self._job_lock:
            if self._job_token is None or (target is not None and target != self._job_id):
                return False
            log.info("cancelling request %s: %s", self._job_id, why)
            self._job_token.cancel()
            return True

    def _run_job(self, rid: int, method: str, params: dict, token: CancelToken) -> None:
        last: dict[str, Any] = {"t": 0.0, "stage": None, "message": None}

        def progress(stage: str, fraction: float, message: str = "") -> None:
            now = time.monotonic()
            frac = float(fraction) if math.isfinite(fraction) else 0.0
            frac = min(1.0, max(0.0, frac))
            same = stage == last["stage"] and message == last["message"]
            if same and now - last["t"] < self.progress_interval and frac < 1.0:
                return  # throttle repeats: at most ~20 a second (a new stage or message always goes out)
            last.update(t=now, stage=stage, message=message)
            self._write({"id": rid, "event": "progress", "stage": str(stage), "fraction": frac, "message": str(message)})

        def warn(message: str) -> None:
            self._write({"id": rid, "event": "warning", "message": str(message)})

        ctx = JobContext(progress=progress, warn=warn, cancel=token)
        t0 = time.monotonic()
        try:
            token.check()
            result = self.jobs[method](params, ctx)
            answer: dict = {"id": rid, "result": result}
            log.info("request %s (%s) done in %.2f s", rid, method, time.monotonic() - t0)
        except CancelledError as exc:
            answer = {"id": rid, "error": {"code": "cancelled", "message": str(exc)}}
            log.info("request %s (%s) cancelled", rid, method)
        except LamHeadError as exc:
            answer = {"id": rid, "error": {"code": exc.code, "message": str(exc)}}
            log.info("request %s (%s) failed: %s", rid, method, exc)
        except Exception as exc:
            log.error("request %s (%s) crashed:\n%s", rid, method, traceback.format_exc())
            answer = {"id": rid, "error": {"code": "internal", "message": f"internal error: {type(exc).__name__}: {exc} (details in the backend log)"}}
        with self._job_lock:
            self._job_id, self._job_token = None, None
        self._write(answer)


def _is_binary(stream: IO) -> bool:
    return "b" in getattr(stream, "mode", "") or not hasattr(stream, "encoding")
