"""``lam-head batch ... --ray [ADDRESS]``: the batch's stages on Ray Data.

* prepare (decode, detect, matte, fit, rig): CPU tasks, one photo each;
* infer: actors that load the weights once each (one per GPU, or ``actors`` CPU actors);
* write: CPU tasks writing each photo's files into the shared output folder (atomically).

The plan, the skipping of finished photos and the summary are batch.py's; a photo that fails at any
stage becomes a ``failed`` row with its message and the others go on. Every node needs the backend
installed (``pip install 'lam-head-blender[backend,cluster]'``), the weights and FLAME at the paths
the driver resolved (a shared folder, or the same path on each node), and OUTDIR on a folder every
node writes to (NFS or similar).
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from dataclasses import asdict
from typing import Any

from ..core.errors import CancelToken, MissingAssetError
from . import batch as B
from . import stages as S

RAY_REQUIREMENT = "ray[data]==2.60.0"
PREPARE_MEMORY = 1 << 30  # bytes reserved per preparation task


def require_ray() -> None:
    """MissingAssetError with the install command when Ray Data is not importable."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise MissingAssetError(
            f"--ray needs Ray Data, which is not installed ({exc.name or exc}); install the cluster extra into the "
            f"backend environment: pip install 'lam-head-blender[cluster]' (or: pip install '{RAY_REQUIREMENT}')"
        ) from None


# Rows are {"index": int, "data": bytes, "result": str}: ``data`` carries the pickled prepared photo
# (then prediction) between stages, ``result`` a photo's final record as JSON once it is known.


def _result_json(r: B.PhotoResult) -> str:
    return json.dumps(asdict(r))


def _set_torch_threads(n: int | None) -> None:
    """Ray gives each worker OMP_NUM_THREADS = its CPUs (1); torch's float results depend on its thread
    count, so workers use the driver's count to give what ``lam-head create`` gives on that machine."""
    if n:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


class _Prepare:
    """Stage 1 (a Ray task per photo): the FLAME model stays loaded in each worker process."""

    _runs: dict[int, S.RunSettings] = {}

    def __init__(self, items: list[B.BatchItem], run: S.RunSettings, torch_threads: int | None):
        self.items = {it.index: it for it in items}
        self.run = run
        self.torch_threads = torch_threads

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        _set_torch_threads(self.torch_threads)
        item = self.items[int(row["index"])]
        run = _Prepare._runs.setdefault(id(self.run), self.run)
        t0 = time.perf_counter()
        try:
            photo, fail = B.prepare_item(run, item, CancelToken())
        except Exception as exc:  # CancelledError cannot happen here: no one cancels the token
            photo, fail = None, B.failure(item, exc)
        if fail is not None:
            return {"index": item.index, "data": b"", "result": _result_json(fail)}
        return {"index": item.index, "data": pickle.dumps((photo, time.perf_counter() - t0)), "result": ""}


class _Infer:
    """Stage 2 (an actor): loads the network once, runs it on each batch of prepared photos."""

    def __init__(self, items: list[B.BatchItem], run: S.RunSettings, torch_threads: int | None):
        _set_torch_threads(torch_threads)
        self.items = {it.index: it for it in items}
        self.run = run
        self.net = S.load_network(run)

    def __call__(self, batch):  # pandas DataFrame
        rows = batch.to_dict("records")
        todo = [(i, pickle.loads(r["data"])) for i, r in enumerate(rows) if not r["result"]]
        if todo:
            t0 = time.perf_counter()
            try:
                preds = S.infer(self.net, [photo for _, (photo, _) in todo], self.run.precision)
                each = (time.perf_counter() - t0) / len(todo)
                for (i, (photo, secs)), pred in zip(todo, preds):
                    rows[i]["data"] = pickle.dumps((photo, pred, secs, each, str(self.net.device)))
            except Exception as exc:
                for i, (photo, secs) in todo:
                    item = self.items[int(rows[i]["index"])]
                    rows[i]["data"] = b""
                    rows[i]["result"] = _result_json(B.failure(item, exc, secs, photo.warnings))
        import pandas as pd

        return pd.DataFrame(rows, columns=["index", "data", "result"])


class _Write:
    """Stage 3 (a Ray task per photo): the photo's files into OUTDIR/<name>/."""

    def __init__(self, items: list[B.BatchItem], run: S.RunSettings):
        self.items = {it.index: it for it in items}
        self.run = run

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["result"]:
            return {"index": row["index"], "result": row["result"]}
        item = self.items[int(row["index"])]
        photo, pred, secs, net_s, device = pickle.loads(row["data"])
        try:
            result = B.write_item(self.run, item, photo, pred, device, CancelToken(), secs + net_s,
                                  {**photo.timings, "network": net_s})
        except Exception as exc:
            result = B.failure(item, exc, secs + net_s, photo.warnings)
        return {"index": item.index, "result": _result_json(result)}


def run_ray_batch(
    plan: B.BatchPlan,
    *,
    address: str | None = None,
    actors: int | None = None,
    progress: B.BatchProgress | None = None,
    torch_threads: int | None = None,
) -> B.BatchReport:
    """Run ``plan`` on Ray (joining ``address``, or a running / new local Ray). The summary is written
    as photos finish; KeyboardInterrupt stops the run (the summary keeps what finished)."""
    require_ray()
    import ray
    import torch

    torch_threads = torch_threads or torch.get_num_threads()

    summary = plan.summary
    report = B.BatchReport(summary)
    t_start = time.perf_counter()
    if progress is not None:
        progress.total = len(plan.items)
        for r in summary.results:
            if r.status == "skipped":
                progress.photo_done(r)
    B.clean_partials(plan.items)
    summary.write()
    if not plan.todo:
        summary.write(final=True)
        return report

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-dataset INFO lines would hide the progress
    started_here = False
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, include_dashboard=False, logging_level=logging.WARNING)
        started_here = True
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        wants_gpu = gpus > 0 and plan.run.device in ("auto", "cuda") or plan.run.device.startswith("cuda")
        n_actors = actors or (gpus if wants_gpu else 1)
        run = plan.run
        if wants_gpu and run.device == "auto":
            run = S.RunSettings(run.assets, run.precision, "cuda", run.lam_template, keep_flame=True)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.execution_options.preserve_order = False
        ctx.execution_options.verbose_progress = False
        ds = ray.data.from_items([{"index": it.index} for it in plan.todo], override_num_blocks=len(plan.todo))
        # Preparation: CPU tasks with a memory reservation (mediapipe, FLAME and the fit), which also keeps
        # Ray from fusing them into the network actors (different resources): they run beside the network.
        ds = ds.map(_Prepare(plan.todo, run, torch_threads), num_cpus=1, memory=PREPARE_MEMORY)
        ds = ds.map_batches(_Infer, fn_constructor_args=(plan.todo, run, torch_threads), batch_format="pandas",
                            batch_size=plan.options.batch_size, compute=ray.data.ActorPoolStrategy(size=n_actors),
                            num_gpus=1 if wants_gpu else 0, num_cpus=0 if wants_gpu else 1)
        ds = ds.map(_Write(plan.todo, run), num_cpus=1)
        report.network_loads = n_actors  # each actor loads the weights once
        for row in ds.iter_rows():
            result = B.PhotoResult(**json.loads(row["result"]))
            summary.set(int(row["index"]), result)
            summary.write()
            if progress is not None:
                progress.photo_done(result)
    except BaseException:
        summary.write(final=True)
        if started_here:
            ray.shutdown()
            started_here = False
        B.clean_partials(plan.items)
        raise
    finally:
        if started_here:
            ray.shutdown()
    summary.write(final=True)
    report.seconds = time.perf_counter() - t_start
    return report
