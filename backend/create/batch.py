"""``lam-head batch``: many photos -> one avatar folder each, with one network load.

The stages of ``create`` (stages.py) scheduled over photos: a preparation process runs decode, detect,
matte, fit and rig for the next photo while the network runs on the current one in this process (a
process, not a thread: the FLAME fit sets torch's process-wide thread count while it runs, which would
change the network's float results); the network is loaded once, on the first photo that reaches it. Each photo's files go to ``OUTDIR/<name>/`` (written
atomically, the avatar file last). A photo that fails is recorded with its message and the run goes
on; ``OUTDIR/summary.json`` and ``summary.csv`` list every photo after each one finishes. A photo
whose avatar (and every requested extra) is already there, made from the same photo bytes, is
skipped, so an interrupted run is resumed by running it again (``force`` redoes everything).

The plan (which photos, their names and output paths, what is already done) and the summary are
shared with the Ray Data runner (ray_batch.py).
"""

from __future__ import annotations

import collections
import csv
import io
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.atomic_write import atomic_path
from ..core.errors import BadInputError, CancelledError, CancelToken, LamHeadError
from ..core.file_hash import sha256_file
from . import stages as S

log = logging.getLogger("lam_head.batch")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
LIST_SUFFIXES = (".txt", ".lst")
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
CSV_COLUMNS = ("name", "source", "status", "code", "message", "avatar", "seconds", "warnings")

# Exit statuses of `lam-head batch` (cli/batch.py).
EXIT_OK = 0  # every photo has its avatar (made now or by an earlier run)
EXIT_ERROR = 1  # the run could not start or stopped on an error of its own (message on stderr)
EXIT_PHOTOS_FAILED = 3  # the run finished but at least one photo failed (see summary.json)
EXIT_INTERRUPTED = 130  # Ctrl-C / cancel: nothing half-written, the summary lists what finished


@dataclass
class BatchOptions:
    weights: str | os.PathLike | None = None
    flame: str | os.PathLike | None = None
    precision: str = "fp32"
    device: str = "auto"
    ply: bool = False
    preview: bool = False
    lam_zip: bool = False
    force: bool = False
    prefetch: int = 1  # photos prepared ahead of the network (0: one after the other, no thread)
    batch_size: int = 1  # photos per network forward


@dataclass
class BatchItem:
    """One input photo: its position, file, folder name and the files it should produce."""

    index: int
    source: Path
    name: str
    outputs: S.Outputs

    def requested(self) -> list[Path]:
        o = self.outputs
        return [p for p in (o.ply, o.preview, o.lam_zip, o.avatar) if p is not None]


@dataclass
class PhotoResult:
    name: str
    source: str
    status: str  # created | skipped | failed | pending
    message: str = ""
    code: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ inputs


def collect_photos(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; folders -> their image files (by suffix, sorted, not recursive, no hidden
    files); ``.txt`` / ``.lst`` files -> one path per line (relative to the list's folder; blank
    lines and ``#`` comments skipped; a listed folder is expanded too). Duplicates are dropped."""
    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve() if p.exists() else p.absolute()
        if key not in seen:
            seen.add(key)
            out.append(p)

    def expand(p: Path, from_list: bool) -> None:
        if p.is_dir():
            for child in sorted(p.iterdir(), key=lambda c: c.name):
                if child.is_file() and not child.name.startswith(".") and child.suffix.lower() in IMAGE_SUFFIXES:
                    add(child)
        elif p.suffix.lower() in LIST_SUFFIXES and p.is_file() and not from_list:
            try:
                lines = p.read_text(encoding="utf-8-sig").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise BadInputError(f"cannot read the list of photos {p}: {exc}") from None
            for line in lines:
                line = line.strip()
                if line and not line.startswith("#"):
                    q = Path(line).expanduser()
                    expand(q if q.is_absolute() else p.parent / q, True)
        else:
            add(p)  # a file as given (a missing or unreadable one fails as that photo)

    for x in inputs:
        expand(Path(x).expanduser(), False)
    return out


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(stem: str) -> str:
    """A folder / file name from a photo's stem: letters, digits, '.', '-', '_' (others -> '_')."""
    name = _UNSAFE.sub("_", stem).strip("._") or "photo"
    return name[:100]


def plan_items(photos: Sequence[Path], outdir: Path, options: BatchOptions) -> list[BatchItem]:
    """Name each photo after its file (``-2``, ``-3``... for repeats, in input order) and lay out its outputs."""
    items: list[BatchItem] = []
    used: set[str] = set()
    for i, src in enumerate(photos):
        base = safe_name(src.stem)
        name, k = base, 1
        while name.lower() in used:
            k += 1
            name = f"{base}-{k}"
        used.add(name.lower())
        folder = outdir / name
        outputs = S.Outputs(folder / f"{name}.npz",
                            folder / f"{name}.ply" if options.ply else None,
                            folder / f"{name}.png" if options.preview else None,
                            folder / f"{name}.zip" if options.lam_zip else None)
        items.append(BatchItem(i, src, name, outputs))
    return items


def already_done(item: BatchItem) -> bool:
    """Every requested file is there and the avatar was made from this very photo (same SHA-256)."""
    if not all(p.is_file() for p in item.requested()):
        return False
    try:
        import numpy as np

        with np.load(item.outputs.avatar, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
        return meta.get("source_image_sha256") == sha256_file(item.source)
    except Exception:  # unreadable avatar or photo: make it again
        return False


def clean_partials(items: Sequence[BatchItem]) -> None:
    """Remove temporaries (``.<stem>.<hex>.part<suffix>``) that a killed worker left in the photos' folders."""
    for it in items:
        folder = it.outputs.avatar.parent
        if folder.is_dir():
            for tmp in folder.glob(".*.part*"):
                tmp.unlink(missing_ok=True)


def outputs_dict(item: BatchItem, preview_written: bool = True) -> dict[str, str]:
    o = item.outputs
    d = {"avatar": str(o.avatar)}
    if o.ply is not None:
        d["ply"] = str(o.ply)
    if o.preview is not None and preview_written:
        d["preview"] = str(o.preview)
    if o.lam_zip is not None:
        d["lam_zip"] = str(o.lam_zip)
    return d


# ------------------------------------------------------------------------------------ summary


class Summary:
    """``summary.json`` + ``summary.csv`` in OUTDIR: every photo's status, rewritten (atomically) as
    photos finish, so an interrupted run still leaves an accurate account."""

    def __init__(self, outdir: Path, items: Sequence[BatchItem], settings: dict[str, Any]):
        self.outdir = outdir
        self.settings = settings
        self.started = _now()
        self.results: list[PhotoResult] = [PhotoResult(it.name, str(it.source), "pending") for it in items]
        self.finished: str | None = None
        self._lock = threading.Lock()

    def set(self, index: int, result: PhotoResult) -> None:
        with self._lock:
            self.results[index] = result

    def counts(self) -> dict[str, int]:
        c = {"total": len(self.results), "created": 0, "skipped": 0, "failed": 0, "pending": 0}
        for r in self.results:
            c[r.status] = c.get(r.status, 0) + 1
        return c

    def as_dict(self) -> dict[str, Any]:
        return {"started": self.started, "finished": self.finished, "outdir": str(self.outdir),
                "settings": self.settings, "counts": self.counts(), "photos": [asdict(r) for r in self.results]}

    def write(self, final: bool = False) -> None:
        with self._lock:
            if final:
                self.finished = _now()
            data = self.as_dict()
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(CSV_COLUMNS)
            for r in self.results:
                w.writerow([r.name, r.source, r.status, r.code, r.message, r.outputs.get("avatar", ""),
                            f"{r.seconds:.2f}", " | ".join(r.warnings)])
            self.outdir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.outdir / SUMMARY_JSON) as tmp:
                tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
            with atomic_path(self.outdir / SUMMARY_CSV) as tmp:
                tmp.write_text(buf.getvalue(), encoding="utf-8", newline="")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------ progress


class BatchProgress:
    """One status line on stderr: ``[ 7/20] 1 failed, 2 skipped | 4.1 photos/min | ETA 3m10s | name: stage``
    (rewritten in place on a terminal; on a pipe a line per finished photo)."""

    def __init__(self, total: int, stream=None):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total = total
        self.done = self.failed = self.skipped = 0
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self._last = 0.0

    def line(self, current: str = "") -> str:
        made = self.done - self.skipped
        elapsed = time.monotonic() - self.t0
        left = self.total - self.done
        rate = made / elapsed * 60 if made and elapsed > 0 else 0.0
        eta = _duration(elapsed / made * left) if made else "?"
        parts = [f"[{self.done:>{len(str(self.total))}}/{self.total}] {self.failed} failed, {self.skipped} skipped",
                 f"{rate:.1f} photos/min" if made else "-- photos/min", f"ETA {eta if left else '0s'}"]
        if current:
            parts.append(current)
        return " | ".join(parts)

    def stage(self, name: str, stage: str) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._last < 0.2:
                return
            self._last = now
            self.stream.write("\r" + self.line(f"{name}: {stage}")[:119].ljust(119))
            self.stream.flush()

    def photo_done(self, result: PhotoResult) -> None:
        with self._lock:
            self.done += 1
            self.failed += result.status == "failed"
            self.skipped += result.status == "skipped"
            what = f"{result.name}: {result.status}" + (f" ({result.message})" if result.status == "failed" else "")
            if self.tty:
                self.stream.write("\r" + self.line(what)[:119].ljust(119))
            else:
                self.stream.write(self.line(what) + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _duration(s: float) -> str:
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


# ------------------------------------------------------------------------------------ stages per photo


def failure(item: BatchItem, exc: BaseException, seconds: float = 0.0, warnings: Sequence[str] = ()) -> PhotoResult:
    """A failed photo's record: LamHeadError messages as they are, anything else as an internal error."""
    if isinstance(exc, LamHeadError):
        msg, code = str(exc), exc.code
    else:
        msg, code = f"internal error: {type(exc).__name__}: {exc}", "internal"
    return PhotoResult(item.name, str(item.source), "failed", msg, code, {}, round(seconds, 3), list(warnings))


def check_rig_for(run: S.RunSettings, item: BatchItem) -> Callable[[Any], None] | None:
    if item.outputs.lam_zip is None:
        return None
    from .pipeline import LamWebExport

    return LamWebExport(item.outputs.lam_zip, run.lam_template).check_rig


def prepare_item(run: S.RunSettings, item: BatchItem, cancel: CancelToken,
                 on_stage: Callable[[str], None] | None = None) -> tuple[S.PreparedPhoto | None, PhotoResult | None]:
    """(prepared photo, None) or (None, failure). CancelledError and KeyboardInterrupt propagate."""
    warnings: list[str] = []
    progress = None if on_stage is None else (lambda stage, f, m="": on_stage(stage))
    st = S.Stages(progress, cancel)
    t0 = time.perf_counter()
    try:
        if item.outputs.lam_zip is not None:
            from ..core.formats.lam_zip import check_zip_name

            check_zip_name(item.outputs.lam_zip)
        photo = S.prepare_photo(run, item.source, st, lambda w: warnings.append(w) if w not in warnings else None,
                                check_rig=check_rig_for(run, item))
        st.close()
    except CancelledError:
        raise
    except Exception as exc:
        log.debug("preparing %s failed", item.source, exc_info=True)
        return None, failure(item, exc, time.perf_counter() - t0, warnings)
    photo.warnings = warnings
    photo.timings = dict(st.timings)
    return photo, None


def write_item(run: S.RunSettings, item: BatchItem, photo: S.PreparedPhoto, pred: Any, device: str,
               cancel: CancelToken, seconds: float, timings: dict[str, float]) -> PhotoResult:
    """Write one photo's files (nothing left on failure or cancel) -> its record."""
    warnings = list(photo.warnings)
    created: list[Path] = []
    t0 = time.perf_counter()
    try:
        preview = S.write_photo(run, photo, pred, device, item.outputs,
                                lambda w: warnings.append(w) if w not in warnings else None, cancel, created)
    except BaseException as exc:
        for p in created:
            p.unlink(missing_ok=True)
        if isinstance(exc, (CancelledError, KeyboardInterrupt)) or not isinstance(exc, Exception):
            raise
        return failure(item, exc, seconds + time.perf_counter() - t0, warnings)
    timings = {**timings, "write": time.perf_counter() - t0}
    return PhotoResult(item.name, str(item.source), "created", "", "", outputs_dict(item, preview is not None),
                       round(seconds + timings["write"], 3), warnings, {k: round(v, 4) for k, v in timings.items()})


# ------------------------------------------------------------------------------------ the run


@dataclass
class BatchPlan:
    outdir: Path
    options: BatchOptions
    items: list[BatchItem]
    todo: list[BatchItem]
    summary: Summary
    run: S.RunSettings


def make_plan(inputs: Sequence[str | os.PathLike], outdir: str | os.PathLike, options: BatchOptions) -> BatchPlan:
    """Photos, names, outputs; assets resolved (a missing one fails here, before any work); what is
    already done marked ``skipped`` in the summary."""
    from .pipeline import PRECISIONS, note_ignored_component_counts, resolve_assets

    if options.precision not in PRECISIONS:
        raise BadInputError(f"precision must be one of {', '.join(PRECISIONS)}, got {options.precision!r}")
    if options.batch_size < 1 or options.prefetch < 0:
        raise BadInputError("--batch-size must be at least 1 and --prefetch at least 0")
    outdir = Path(outdir).expanduser()
    if outdir.exists() and not outdir.is_dir():
        raise BadInputError(f"the output folder is a file: {outdir}")
    photos = collect_photos(inputs)
    if not photos:
        raise BadInputError(f"no photos found in {' '.join(map(str, inputs))} (looked for {', '.join(IMAGE_SUFFIXES)})")
    res = resolve_assets(options.weights, options.flame)
    note_ignored_component_counts(res.config)
    template = None
    if options.lam_zip:
        from .lam_web import resolve_template

        template = resolve_template()
    run = S.RunSettings(res, options.precision, options.device, template, keep_flame=True)
    items = plan_items(photos, outdir, options)
    settings = {"weights_dir": str(res.weights_dir), "flame_source": res.flame_source, "precision": options.precision,
                "device": options.device, "ply": options.ply, "preview": options.preview, "lam_zip": options.lam_zip}
    summary = Summary(outdir, items, settings)
    todo = []
    for it in items:
        if not options.force and already_done(it):
            summary.set(it.index, PhotoResult(it.name, str(it.source), "skipped", "already done (--force redoes it)",
                                              "", outputs_dict(it, it.outputs.preview is None or it.outputs.preview.is_file())))
        else:
            todo.append(it)
    return BatchPlan(outdir, options, items, todo, summary, run)


@dataclass
class BatchReport:
    summary: Summary
    network_loads: int = 0
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        return self.summary.counts()

    @property
    def exit_status(self) -> int:
        return EXIT_PHOTOS_FAILED if self.counts["failed"] else EXIT_OK


_END: Any = object()


def run_batch(
    inputs: Sequence[str | os.PathLike],
    outdir: str | os.PathLike,
    options: BatchOptions | None = None,
    *,
    progress: BatchProgress | None = None,
    cancel: CancelToken | None = None,
    plan: BatchPlan | None = None,
) -> BatchReport:
    """Run the batch in this process. Raises LamHeadError when the run cannot start (missing assets,
    no photos), CancelledError / KeyboardInterrupt when cancelled (after writing the summary)."""
    options = options or BatchOptions()
    cancel = cancel or CancelToken()
    plan = plan or make_plan(inputs, outdir, options)
    summary, run = plan.summary, plan.run
    t_start = time.perf_counter()
    report = BatchReport(summary)
    if progress is not None:
        progress.total = len(plan.items)
        for r in summary.results:
            if r.status == "skipped":
                progress.photo_done(r)
    clean_partials(plan.items)
    summary.write()
    if not plan.todo:
        summary.write(final=True)
        return report

    def on_stage(item: BatchItem) -> Callable[[str], None] | None:
        if progress is None:
            return None
        return lambda stage: progress.stage(item.name, stage)

    # prefetch > 0: preparation in a separate process, so it overlaps the network without sharing torch's
    # process-wide settings (the FLAME fit sets torch's thread count to 1 while it runs, which would
    # change the network's float results if both ran in one process); 0: one after the other, here.
    prep = _PrepareProcess(run, options.prefetch) if options.prefetch > 0 else None
    source = prep.results(plan.todo, cancel) if prep is not None else _inline_iter(plan.todo, run, cancel, on_stage)

    net: S.Network | None = None

    def finish(item: BatchItem, result: PhotoResult) -> None:
        summary.set(item.index, result)
        summary.write()
        if progress is not None:
            progress.photo_done(result)

    try:
        pending: list[tuple[BatchItem, S.PreparedPhoto, float]] = []
        exhausted = False
        while not exhausted or pending:
            # Gather up to batch_size prepared photos (failures are recorded as they come).
            while not exhausted and len(pending) < options.batch_size:
                entry = next(source, _END)
                if entry is _END:
                    exhausted = True
                    break
                item, photo, fail, secs = entry
                if fail is not None:
                    finish(item, fail)
                    continue
                pending.append((item, photo, secs))
                if options.batch_size > 1 and prep is not None and not prep.ready():
                    break  # don't wait for more: run what is ready
            if not pending:
                continue
            cancel.check()
            if net is None:
                if progress is not None:
                    progress.stage(pending[0][0].name, "loading the network")
                t0 = time.perf_counter()
                net = S.load_network(run)
                report.network_loads += 1
                load_s = time.perf_counter() - t0
                for note in net.notes:
                    log.info("weights: %s", note)
            else:
                load_s = 0.0
            batch, pending = pending, []
            if progress is not None:
                progress.stage(batch[0][0].name, "network")
            t0 = time.perf_counter()
            try:
                preds = S.infer(net, [p for _, p, _ in batch], run.precision, cancel=cancel)
            except (CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:
                for item, photo, secs in batch:
                    finish(item, failure(item, exc, secs + time.perf_counter() - t0, photo.warnings))
                continue
            net_s = (time.perf_counter() - t0) / len(batch)
            for (item, photo, secs), pred in zip(batch, preds):
                if progress is not None:
                    progress.stage(item.name, "write")
                timings = {**photo.timings, **({"load": load_s} if load_s else {}), "network": net_s}
                finish(item, write_item(run, item, photo, pred, str(net.device), cancel, secs + net_s + load_s, timings))
                load_s = 0.0
    except BaseException:
        cancel.cancel()
        summary.write(final=True)
        raise
    finally:
        if prep is not None:
            prep.close()
    summary.write(final=True)
    report.seconds = time.perf_counter() - t_start
    return report


class _PrepareProcess:
    """One spawned process that prepares photos, ``prefetch`` ahead of the consumer, in input order.
    It writes nothing, so ending it at any moment (cancel, Ctrl-C) is safe."""

    def __init__(self, run: S.RunSettings, prefetch: int):
        self.run = run
        self.prefetch = prefetch
        self.pool: Any = None
        self.futures: collections.deque = collections.deque()

    def _start(self) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_worker_init, initargs=(self.run,))

    def ready(self) -> bool:
        return bool(self.futures) and self.futures[0][1].done()

    def results(self, todo: Sequence[BatchItem], cancel: CancelToken):
        from concurrent.futures import TimeoutError as FutureTimeout
        from concurrent.futures.process import BrokenProcessPool

        queue_ = collections.deque(todo)
        self._start()

        def submit() -> None:
            while queue_ and len(self.futures) <= self.prefetch:  # the one in work + prefetch waiting
                item = queue_.popleft()
                self.futures.append((item, self.pool.submit(_worker_prepare, item)))

        submit()
        while self.futures:
            item, fut = self.futures[0]
            while True:
                try:
                    photo, fail, secs = fut.result(timeout=0.5)
                    break
                except FutureTimeout:
                    cancel.check()
                except BrokenProcessPool:  # the process died (out of memory?) on this photo: note it, start anew
                    photo, secs = None, 0.0
                    fail = failure(item, RuntimeError("the preparation process died on this photo (out of memory?)"))
                    rest = [it for it, _ in list(self.futures)[1:]]
                    self.close()
                    self.futures.clear()
                    self.futures.append((item, fut))
                    queue_.extendleft(reversed(rest))
                    self._start()
                    break
            self.futures.popleft()
            submit()
            yield item, photo, fail, secs

    def close(self) -> None:
        if self.pool is None:
            return
        procs = list(getattr(self.pool, "_processes", {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:  # it may be in the middle of a photo: nothing to keep there
            p.terminate()
        for p in procs:
            p.join(timeout=10)
        self.pool = None


_WORKER_RUN: S.RunSettings | None = None


def _worker_init(run: S.RunSettings) -> None:
    import signal

    global _WORKER_RUN
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _WORKER_RUN = run


def _worker_prepare(item: BatchItem) -> tuple[S.PreparedPhoto | None, PhotoResult | None, float]:
    assert _WORKER_RUN is not None
    t0 = time.perf_counter()
    photo, fail = prepare_item(_WORKER_RUN, item, CancelToken())
    return photo, fail, time.perf_counter() - t0


def _inline_iter(todo: Sequence[BatchItem], run: S.RunSettings, cancel: CancelToken, on_stage):
    for item in todo:
        t0 = time.perf_counter()
        photo, fail = prepare_item(run, item, cancel, on_stage(item))
        yield item, photo, fail, time.perf_counter() - t0


__all__ = ["BatchOptions", "BatchPlan", "BatchProgress", "BatchReport", "PhotoResult", "Summary", "collect_photos",
           "make_plan", "run_batch", "EXIT_OK", "EXIT_ERROR", "EXIT_PHOTOS_FAILED", "EXIT_INTERRUPTED"]
