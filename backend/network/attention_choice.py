"""Which exact attention kernel CPU fast mode (bfloat16) runs: measured once per machine, cached, overridable.

The fastest kernel depends on the CPU (issue 17). On the 2-core AMD EPYC (AVX512-BF16, no AMX) the explicit
bf16 GEMMs (``gemm_bf16``, :func:`attention.cpu_bf16_attention`) beat PyTorch's CPU SDPA, which ran no faster
in bf16 than in fp32 there; on a 2-core Xeon with AMX, PyTorch's bf16 SDPA took 2.71 s for one full-size
joint-attention layer against 4.83 s for the GEMM path. So instead of hard-coding one:

* **Calibration.** The first bf16 CPU forward of a full-size problem (:data:`CALIBRATE_MIN_QUERIES` query
  points or more; smaller ones take seconds and use :data:`DEFAULT_KERNEL` or an earlier choice) runs every
  kernel of :data:`KERNELS` on :data:`CALIBRATION_SHAPE`: the full key count and head size with fewer heads and
  queries, so the per-element costs (score rows of 21314 keys, d 64) are those of the full layer. Each kernel
  runs once for its accuracy (also its warm-up), then :data:`REPEATS` timed rounds, interleaved so that a
  change of load hits all of them; the fastest of the accurate ones wins (the default unless another is more
  than :data:`TIE_MARGIN` faster). A few seconds: 7-9 s measured on the 2-core EPYC at load average 4-6 (about 3-4 x its quiet times).
* **Accuracy bound.** Each kernel's output is compared with float32 SDPA on the same bf16 inputs; the error is
  max |out - ref| / max |ref|. A kernel above :data:`ERROR_BOUND` is excluded whatever its speed.
* **Cache.** ``attention_choice.json`` in the asset cache (``assets.home()``) holds one record per machine
  key: CPU model and its bf16/AMX flags, torch version, CPU capability, thread count and
  :data:`CALIBRATION_VERSION`. A matching record is reused; any change (another CPU, a torch upgrade,
  ``torch.set_num_threads``) calibrates again. An unwritable cache only costs a calibration per process.
* **Override.** ``lam-head create --attention KERNEL`` (:func:`set_override`) or, for the server and the
  add-on, the environment variable ``LAM_HEAD_ATTENTION``; ``auto`` (or unset) means the measured choice.
  ``lam-head doctor`` shows the choice and the measured rates (:func:`describe`).

float32 (the default precision) always runs PyTorch's SDPA: this choice only concerns bfloat16 on CPU.
This module imports neither torch nor the network at import time (the CLI lists :data:`KERNELS` cheaply).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.errors import BadInputError

log = logging.getLogger("lam_head.attention")

#: name -> (what it is, documented max error vs float32 SDPA relative to max |output|, unit-scale logits).
#: tests/test_attention_choice.py holds every kernel to its tolerance on random inputs.
KERNELS: dict[str, tuple[str, float]] = {
    "sdpa_bf16": ("PyTorch SDPA in bfloat16, query chunks of 4096", 8e-3),
    "sdpa_bf16_q1024": ("PyTorch SDPA in bfloat16, query chunks of 1024", 8e-3),
    "sdpa_fp32": ("PyTorch SDPA in float32 (inputs upcast, output bfloat16), query chunks of 4096", 4e-3),
    "gemm_bf16": ("explicit bf16 GEMMs and softmax per head and 512-row block (cpu_bf16_attention)", 1.5e-2),
}
KERNEL_NAMES: tuple[str, ...] = tuple(KERNELS)
#: Calibration excludes a kernel whose error (relative to max |ref|) exceeds this, however fast it is.
ERROR_BOUND = 2e-2
#: Used before any calibration (small problems) and as the fallback: the path fast mode was tuned with.
DEFAULT_KERNEL = "gemm_bf16"
ENV_VAR = "LAM_HEAD_ATTENTION"
CACHE_NAME = "attention_choice.json"
#: Bump when the kernels or the calibration change: old records then no longer match.
CALIBRATION_VERSION = 1
#: heads, queries, keys, head dim: the full layer's keys and head size, 1/8 of its heads, ~1/10 of its queries.
CALIBRATION_SHAPE = (2, 2048, 21314, 64)
#: One full-size LAM-20K joint-attention layer (20018 point queries; keys: points + 1296 image tokens).
FULL_LAYER = (16, 20018, 21314, 64)
#: A bf16 CPU forward with at least this many query points calibrates first (if no record matches).
CALIBRATE_MIN_QUERIES = 4096
REPEATS = 2
#: Another kernel replaces :data:`DEFAULT_KERNEL` only when faster by more than this fraction: within the timing
#: noise of a busy machine the tuned default stays (a loss of at most 3 %, inside issue 17's 1.1 x goal).
TIE_MARGIN = 0.03
#: The CPU flags that decide bf16 speed (kept in the machine key).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")

Timer = Callable[[str, Callable[[], Any]], float]  # timer(kernel name, run) -> seconds of one run

_override: str | None = None
_memo: dict[tuple[str, str], dict] = {}  # (cache file, machine key) -> record, this process


def check_name(name: str, source: str = "--attention") -> str | None:
    """A kernel name, or None for ``auto``/empty; anything else raises a clear BadInputError."""
    name = (name or "").strip()
    if name in ("", "auto"):
        return None
    if name not in KERNELS:
        raise BadInputError(f"unknown attention kernel {name!r} ({source}): use auto or one of {', '.join(KERNEL_NAMES)}")
    return name


def set_override(name: str | None) -> None:
    """Force a kernel for this process (``lam-head create --attention``); None or ``auto``: the measured choice."""
    global _override
    _override = check_name(name) if name is not None else None


def override() -> str | None:
    """The forced kernel: :func:`set_override`, else ``$LAM_HEAD_ATTENTION``; None when the choice is measured."""
    if _override is not None:
        return _override
    return check_name(os.environ.get(ENV_VAR, ""), source=f"${ENV_VAR}")


@functools.lru_cache(maxsize=1)
def cpu_identity() -> tuple[str, tuple[str, ...]]:
    """(CPU model name, the bf16-relevant flags it has), from /proc/cpuinfo where there is one."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    return model, tuple(f for f in CPU_FLAGS if f in flags)


def machine_key() -> dict[str, Any]:
    """What the measured choice depends on; a record is reused only when all of it matches."""
    import torch

    model, flags = cpu_identity()
    return {
        "cpu": model,
        "flags": list(flags),
        "torch": torch.__version__,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "version": CALIBRATION_VERSION,
    }


def key_string(key: dict[str, Any]) -> str:
    flags = " ".join(key["flags"]) or "no avx2"
    return (f"{key['cpu']} [{flags}] | torch {key['torch']} {key['capability']} | {key['threads']} threads"
            f" | v{key['version']}")


def cache_path() -> Path:
    from ..setup import assets

    return assets.home() / CACHE_NAME


def load_cache(path: Path | None = None) -> dict[str, Any]:
    """The cache file's content (``{"machines": {key string: record}}``); empty when absent or unreadable."""
    path = path or cache_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"machines": {}}
    if not isinstance(data, dict) or not isinstance(data.get("machines"), dict):
        return {"machines": {}}
    return data


def _usable(record: Any) -> bool:
    return isinstance(record, dict) and record.get("kernel") in KERNELS


def cached_record(key: dict[str, Any] | None = None) -> dict | None:
    """The calibration record for this machine key (this process's, else the cache file's), or None."""
    key = key or machine_key()
    path = cache_path()
    memo_key = (str(path), key_string(key))
    if memo_key in _memo:
        return _memo[memo_key]
    record = load_cache(path)["machines"].get(key_string(key))
    if _usable(record) and record.get("key") == key:
        _memo[memo_key] = record
        return record
    return None


def _save(record: dict) -> None:
    from ..core.atomic_write import atomic_path

    path = cache_path()
    _memo[(str(path), key_string(record["key"]))] = record
    data = load_cache(path)
    data["machines"][key_string(record["key"])] = record
    data["format"] = "lam-head attention choice, one record per machine key"
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    except OSError as exc:  # read-only cache: keep the choice for this process only
        log.warning("could not save the attention choice to %s: %s", path, exc)


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _time_once(_name: str, run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def calibrate(
    shape: tuple[int, int, int, int] | None = None,
    kernels: tuple[str, ...] | None = None,
    timer: Timer | None = None,
    repeats: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure each kernel on ``shape`` (heads, queries, keys, head dim; default :data:`CALIBRATION_SHAPE`)
    and pick the fastest accurate one.

    Inputs are unit normal, rounded to bf16 like fast mode's q/k/v (after the per-head RMSNorm the logits
    have unit scale). ``timer(name, run)`` returns the seconds of one run (injectable for tests); each kernel
    gets its best of ``repeats`` rounds. Returns the record that the cache stores (nothing is saved here).
    """
    import torch
    import torch.nn.functional as F

    from .attention import run_kernel

    shape = tuple(shape or CALIBRATION_SHAPE)
    repeats = REPEATS if repeats is None else repeats
    names = tuple(kernels or KERNEL_NAMES)
    for name in names:
        check_name(name, source="calibrate")
    timer = timer or _time_once
    t_start = time.perf_counter()
    h, nq, nk, d = shape
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, h, n, d, generator=g).to(torch.bfloat16) for n in (nq, nk, nk))
    results: dict[str, dict[str, Any]] = {}
    with torch.inference_mode(), torch.autocast("cpu", enabled=False):
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        scale = float(ref.abs().max())
        runs = {name: functools.partial(run_kernel, name, q, k, v) for name in names}
        for name, run in runs.items():  # accuracy first; also each kernel's warm-up
            err = float((run().float() - ref).abs().max()) / scale
            results[name] = {"error": err, "accepted": bool(err <= ERROR_BOUND), "seconds": math.inf}
        del ref
        for _ in range(repeats):
            for name, run in runs.items():
                if results[name]["accepted"]:
                    results[name]["seconds"] = min(results[name]["seconds"], float(timer(name, run)))
    flops = 4.0 * h * nq * nk * d  # q k^T and p v
    full = 4.0 * math.prod(FULL_LAYER)
    for r in results.values():
        finite = math.isfinite(r["seconds"]) and r["seconds"] > 0
        r["gflops"] = flops / r["seconds"] / 1e9 if finite else None
        r["layer_s"] = r["seconds"] * full / flops if finite else None
        if not finite:
            r["seconds"] = None
    accepted = [n for n in names if results[n]["accepted"] and results[n]["seconds"] is not None]
    winner = min(accepted, key=lambda n: results[n]["seconds"]) if accepted else DEFAULT_KERNEL
    if DEFAULT_KERNEL in accepted and results[DEFAULT_KERNEL]["seconds"] <= results[winner]["seconds"] * (1 + TIE_MARGIN):
        winner = DEFAULT_KERNEL
    if not accepted:
        log.warning("no attention kernel passed the accuracy check; using %s", winner)
    return {
        "kernel": winner,
        "key": machine_key(),
        "calibrated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "calibration_s": time.perf_counter() - t_start,
        "load_average": _load_average(),
        "shape": list(shape),
        "error_bound": ERROR_BOUND,
        "kernels": results,
    }


def ensure_choice(n_queries: int | None = None, *, timer: Timer | None = None,
                  progress: Callable[[str], None] | None = None, force: bool = False) -> dict | None:
    """Before a bf16 CPU forward: the record in use, calibrating (and caching) first when none matches this
    machine and the problem is full-size (``n_queries`` >= :data:`CALIBRATE_MIN_QUERIES`, or None).
    ``force`` measures again even when a record matches (``lam-head doctor --calibrate-attention``).

    Returns None when an override is set or a small problem finds no record (the default kernel runs).
    """
    if override() is not None and not force:
        return None
    key = machine_key()
    record = None if force else cached_record(key)
    if record is not None or (n_queries is not None and n_queries < CALIBRATE_MIN_QUERIES):
        return record
    if progress is not None:
        progress("timing the attention kernels on this CPU (once per machine, a few seconds)")
    record = calibrate(timer=timer)
    _save(record)
    rates = ", ".join(f"{n} {r['layer_s']:.1f} s" for n, r in record["kernels"].items() if r["layer_s"])
    log.info("attention kernel for this CPU: %s (per full layer: %s; calibration %.1f s)",
             record["kernel"], rates, record["calibration_s"])
    return record


def current_kernel() -> str:
    """The kernel :func:`attention.attention` runs for bfloat16 on CPU: override, else the measured choice for
    this machine, else :data:`DEFAULT_KERNEL`. Never calibrates (that is :func:`ensure_choice`'s job)."""
    forced = override()
    if forced is not None:
        return forced
    record = cached_record()
    return record["kernel"] if record is not None else DEFAULT_KERNEL


def describe() -> dict[str, Any]:
    """For ``lam-head doctor``: the override, the machine key, the cached record (or None)."""
    try:
        forced = override()
        error = None
    except BadInputError as exc:
        forced, error = None, str(exc)
    key = machine_key()
    record = cached_record(key)
    return {
        "override": forced,
        "override_error": error,
        "machine": key_string(key),
        "cache_file": str(cache_path()),
        "record": record,
        "kernel": forced or (record["kernel"] if record else DEFAULT_KERNEL),
    }


def format_description(info: dict[str, Any]) -> list[str]:
    """Doctor lines for :func:`describe`'s result."""
    lines = [f"attention kernel (fast mode on CPU): {info['kernel']}"]
    if info.get("override_error"):
        lines[0] += f"  (${ENV_VAR} INVALID: {info['override_error']})"
    elif info.get("override"):
        lines[0] += f"  (forced by --attention or ${ENV_VAR})"
    record = info.get("record")
    if record is None:
        lines.append(f"  not measured on this machine yet ({info['machine']}): the first fast run of "
                     f"{CALIBRATE_MIN_QUERIES}+ points times the kernels once (a few seconds)")
        return lines
    h, nq, nk, d = record["shape"]
    load = record.get("load_average")
    lines.append(f"  measured {record['calibrated']} in {record['calibration_s']:.1f} s on {h} heads x {nq} queries "
                 f"x {nk} keys (d {d})" + (f", load average {load:.1f}" if load is not None else "")
                 + f"; machine: {info['machine']}")
    for name, r in record["kernels"].items():
        mark = "*" if name == record["kernel"] else " "
        if r.get("seconds") is None:
            lines.append(f"   {mark} {name:16s} excluded: error {r['error']:.1e} > {record['error_bound']:.0e}")
        else:
            lines.append(f"   {mark} {name:16s} {r['gflops']:6.1f} GFLOP/s  ~{r['layer_s']:5.1f} s per full layer"
                         f"  error {r['error']:.1e}")
    lines.append(f"  cache: {info['cache_file']}  (measure again: lam-head doctor --calibrate-attention; "
                 f"override: lam-head create --attention KERNEL, or ${ENV_VAR})")
    return lines
