"""Which exact attention kernel CPU fast mode (bfloat16) runs: measured once per machine, cached, overridable.

The fastest kernel depends on the CPU (issue 17). On the 2-core AMD EPYC (AVX512-BF16, no AMX) the explicit
bf16 GEMMs (``gemm_bf16``, :func:`attention.cpu_bf16_attention`) beat PyTorch's CPU SDPA, which ran no faster
in bf16 than in fp32 there; on a 2-core Xeon with AMX, PyTorch's bf16 SDPA took 2.2-2.7 s for one full-size
joint-attention layer against 3.8-4.8 s for the GEMM path (calibration there: 0.7-1.0 s, sdpa_bf16 chosen; the
forward 39.5 s against 61.8 s). So instead of hard-coding one:

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
  Key, cache, override and picking are :mod:`backend.setup.machine_choice`'s, shared with the other
  per-machine choices (bf16 or fp32 linears, the refinement's thread split).
* **Override.** ``lam-head create --attention KERNEL`` (:func:`set_override`) or, for the server and the
  add-on, the environment variable ``LAM_HEAD_ATTENTION``; ``auto`` (or unset) means the measured choice.
  ``lam-head doctor`` shows the choice and the measured rates (:func:`describe`); ``lam-head doctor
  --calibrate`` (or ``--calibrate-attention``) measures again.

float32 (the default precision) always runs PyTorch's SDPA: this choice only concerns bfloat16 on CPU.
This module imports neither torch nor the network at import time (the CLI lists :data:`KERNELS` cheaply).
"""


from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..setup import machine_choice as mc
from ..setup.machine_choice import CPU_FLAGS, Timer, cpu_identity, key_string  # noqa: F401 - this module's API

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
TIE_MARGIN = mc.TIE_MARGIN

CHOICE = mc.MachineChoice(
    "attention",
    title="attention kernel (fast mode on CPU)",
    noun="attention kernel",
    default=DEFAULT_KERNEL,
    env_var=ENV_VAR,
    flag="--attention",
    cache_name=CACHE_NAME,
    version=CALIBRATION_VERSION,
    options={name: desc for name, (desc, _tol) in KERNELS.items()},
    accepted_values="KERNEL",
    field="kernel",
    results_field="kernels",
)


def check_name(name: str, source: str = "--attention") -> str | None:
    """A kernel name, or None for ``auto``/empty; anything else raises a clear BadInputError."""
    return CHOICE.check_name(name, source)


def set_override(name: str | None) -> None:
    """Force a kernel for this process (``lam-head create --attention``); None or ``auto``: the measured choice."""
    CHOICE.set_override(name)


def override() -> str | None:
    """The forced kernel: :func:`set_override`, else ``$LAM_HEAD_ATTENTION``; None when the choice is measured."""
    return CHOICE.override()


def machine_key() -> dict[str, Any]:
    """What the measured choice depends on; a record is reused only when all of it matches."""
    return CHOICE.machine_key()


def cache_path() -> Path:
    return CHOICE.cache_path()


def load_cache(path: Path | None = None) -> dict[str, Any]:
    """The cache file's content (``{"machines": {key string: record}}``); empty when absent or unreadable."""
    return CHOICE.load_cache(path)


def cached_record(key: dict[str, Any] | None = None) -> dict | None:
    """The calibration record for this machine key (this process's, else the cache file's), or None."""
    return CHOICE.cached_record(key)


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

    from . import attention

    shape = tuple(shape or CALIBRATION_SHAPE)
    repeats = REPEATS if repeats is None else repeats
    names = tuple(kernels or KERNEL_NAMES)
    for name in names:
        check_name(name, source="calibrate")
    t_start = time.perf_counter()
    h, nq, nk, d = shape
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, h, n, d, generator=g).to(torch.bfloat16) for n in (nq, nk, nk))
    with torch.inference_mode(), torch.autocast("cpu", enabled=False):
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        scale = float(ref.abs().max())
        runs = {name: functools.partial(attention.run_kernel, name, q, k, v) for name in names}
        results = mc.measure_options(runs, lambda _n, out: float((out.float() - ref).abs().max()) / scale,
                                     ERROR_BOUND, timer=timer, repeats=repeats)
    flops = 4.0 * h * nq * nk * d  # q k^T and p v
    full = 4.0 * math.prod(FULL_LAYER)
    for r in results.values():
        r["gflops"] = flops / r["seconds"] / 1e9 if r["seconds"] else None
        r["layer_s"] = r["seconds"] * full / flops if r["seconds"] else None
    winner = mc.pick(results, DEFAULT_KERNEL, TIE_MARGIN)
    if not any(r["accepted"] for r in results.values()):
        log.warning("no attention kernel passed the accuracy check; using %s", winner)
    return CHOICE.make_record(winner, results, t_start, shape=list(shape), error_bound=ERROR_BOUND)


def ensure_choice(n_queries: int | None = None, *, timer: Timer | None = None,
                  progress: Callable[[str], None] | None = None, force: bool = False) -> dict | None:
    """Before a bf16 CPU forward: the record in use, calibrating (and caching) first when none matches this
    machine and the problem is full-size (``n_queries`` >= :data:`CALIBRATE_MIN_QUERIES`, or None).
    ``force`` measures again even when a record matches (``lam-head doctor --calibrate``).

    Returns None when an override is set or a small problem finds no record (the default kernel runs).
    """
    large = n_queries is None or n_queries >= CALIBRATE_MIN_QUERIES
    return CHOICE.ensure(lambda: _calibrate_and_log(timer), large=large, force=force, progress=progress,
                         what="the attention kernels")


def _calibrate_and_log(timer: Timer | None) -> dict[str, Any]:
    record = calibrate(timer=timer)
    rates = ", ".join(f"{n} {r['layer_s']:.1f} s" for n, r in record["kernels"].items() if r["layer_s"])
    log.info("attention kernels on this CPU, per full layer: %s", rates)
    return record


def current_kernel() -> str:
    """The kernel :func:`attention.attention` runs for bfloat16 on CPU: override, else the measured choice for
    this machine, else :data:`DEFAULT_KERNEL`. Never calibrates (that is :func:`ensure_choice`'s job)."""
    return CHOICE.current()


def describe() -> dict[str, Any]:
    """For ``lam-head doctor``: the override, the machine key, the cached record (or None)."""
    info = CHOICE.describe()
    info["kernel"] = info["choice"]
    return info


def format_description(info: dict[str, Any]) -> list[str]:
    """Doctor lines for :func:`describe`'s result."""
    info = {**info, "choice": info.get("kernel", info.get("choice"))}
    lines = CHOICE.head_lines(info, f"the first fast run of {CALIBRATE_MIN_QUERIES}+ points times the kernels once "
                                    "(a few seconds)")
    record = info.get("record")
    if record is None:
        return lines
    h, nq, nk, d = record["shape"]
    load = record.get("load_average")
    lines.append(f"  measured {record['calibrated']} in {record['calibration_s']:.1f} s on {h} heads x {nq} queries "
                 f"x {nk} keys (d {d})" + (f", load average {load:.1f}" if load is not None else "")
                 + f"; machine: {info['machine']}")
    lines += CHOICE.option_lines(record, lambda r: f"{r['gflops']:6.1f} GFLOP/s  ~{r['layer_s']:5.1f} s per full "
                                                   f"layer  error {r['error']:.1e}")
    lines.append(CHOICE.tail_line(info))
    return lines
