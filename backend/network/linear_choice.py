"""Whether CPU fast mode's linear layers run as bf16 or fp32 GEMMs: measured once per machine, cached, overridable.

bf16 GEMMs are about twice as fast as fp32 where the CPU has native bf16 (AVX512-BF16, AMX); without it oneDNN
emulates them and fp32 can win (issue 17). So the first full-size bf16 CPU forward (as many points as the
attention calibration needs, :data:`attention_choice.CALIBRATE_MIN_QUERIES`) times both on
:data:`CALIBRATION_ROWS` rows of one transformer block's linears at their full widths (q, k, v, out: D -> D;
feed-forward D -> 4D -> D; D = 1024), fed as fast mode feeds them (LayerNorm outputs in fp32, the attention output
and the GELU output in bf16), under bf16 autocast. The GEMMs' per-row cost is that of the full layer (20018 point
rows), so the rate predicts it. 3-7 s measured on the 2-core EPYC at load average 1.5-3. Each option's output is compared with the fp32 GEMM of the
same inputs (max |out - ref| / max |ref|); one above :data:`ERROR_BOUND` is never chosen. ``bf16`` (the path fast
mode was tuned with) stays unless ``fp32`` is faster by more than the tie margin.

Cache ``linear_choice.json``, machine key, ``--linears`` / ``$LAM_HEAD_LINEARS`` override and doctor lines as for
the attention kernel (:mod:`backend.setup.machine_choice`). fp32 precision never uses this: its linears are fp32.
Torch-free at import time (the CLI lists :data:`OPTIONS` cheaply); :mod:`.linears` applies the choice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..setup import machine_choice as mc

log = logging.getLogger("lam_head.linears")

#: name -> (what it is, documented max error vs the fp32 GEMM, relative to max |output|).
OPTIONS: dict[str, tuple[str, float]] = {
    "bf16": ("bf16 GEMMs (autocast: inputs and weights rounded to bf16, fp32 accumulation)", 1e-2),
    "fp32": ("fp32 GEMMs, output rounded to bf16", 5e-3),
}
OPTION_NAMES: tuple[str, ...] = tuple(OPTIONS)
DEFAULT = "bf16"
ERROR_BOUND = 2e-2
ENV_VAR = "LAM_HEAD_LINEARS"
CACHE_NAME = "linear_choice.json"
CALIBRATION_VERSION = 1
#: Rows of the calibration's linears (the full layer runs 20018 point rows; its feed-forward 4096 at a time).
CALIBRATION_ROWS = 2048
#: Transformer width and feed-forward width of LAM-20K.
WIDTH, HIDDEN = 1024, 4096
REPEATS = 2
FULL_POINTS = 20018

CHOICE = mc.MachineChoice(
    "linears",
    title="linear layers (fast mode on CPU)",
    noun="linear layer option",
    default=DEFAULT,
    env_var=ENV_VAR,
    flag="--linears",
    cache_name=CACHE_NAME,
    version=CALIBRATION_VERSION,
    options={name: desc for name, (desc, _tol) in OPTIONS.items()},
    accepted_values="bf16|fp32",
)


def forward_linear_flops(n_points: int = FULL_POINTS) -> float:
    """FLOPs of the LAM-20K transformer's and heads' linears at ``n_points`` (the encoder's are ~2 % of them)."""
    from .config import lam20k_config, parse_config

    cfg = parse_config(lam20k_config())
    d, m, n = cfg.transformer_dim, (504 // cfg.dino.patch_size) ** 2, n_points
    flops = 2.0 * m * cfg.encoder_feat_dim * d  # linear_cond_proj
    for i in range(cfg.transformer_layers):
        last = i == cfg.transformer_layers - 1
        flops += 2.0 * n * 12 * d * d  # q, k, v, out (4 d^2) and the 4x feed-forward (8 d^2) of the points
        flops += 2.0 * m * (2 if last else 12) * d * d  # image tokens (last block: k, v only)
    q, h = cfg.gs_query_dim, cfg.mlp_neurons
    dims = [q] + [h] * cfg.mlp_hidden_layers + [q]
    flops += 2.0 * n * (sum(a * b for a, b in zip(dims, dims[1:])) + q * 14)
    return flops


def calibrate(rows: int | None = None, options: tuple[str, ...] | None = None, timer: mc.Timer | None = None,
              repeats: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Time each option on one block's linears at ``rows`` rows (default :data:`CALIBRATION_ROWS`) and pick the
    fastest accurate one. ``timer(name, run)`` is injectable for tests. Returns the record (nothing saved)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from . import linears

    rows = int(rows or CALIBRATION_ROWS)
    repeats = REPEATS if repeats is None else repeats
    names = tuple(options or OPTION_NAMES)
    for name in names:
        CHOICE.check_name(name, source="calibrate")
    t_start = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    bf16 = torch.bfloat16

    def layer(n_in: int, n_out: int) -> nn.Linear:
        lin = nn.Linear(n_in, n_out)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(n_out, n_in, generator=g) * n_in**-0.5)
            lin.bias.copy_(torch.randn(n_out, generator=g) * 0.02)
        return lin.requires_grad_(False)

    x32 = torch.randn(1, rows, WIDTH, generator=g)  # a LayerNorm output (fp32 under autocast)
    a16 = torch.randn(1, rows, WIDTH, generator=g).to(bf16)  # the attention output (bf16)
    h16 = F.gelu(torch.randn(1, rows, HIDDEN, generator=g), approximate="tanh").to(bf16)  # the GELU output (bf16)
    # (layer, its input): q, k, v and the feed-forward's first layer read x32; out reads a16; ff.net.2 reads h16
    plan = [(layer(WIDTH, WIDTH), x32) for _ in range(3)] + [(layer(WIDTH, WIDTH), a16),
                                                            (layer(WIDTH, HIDDEN), x32), (layer(HIDDEN, WIDTH), h16)]
    flops = sum(2.0 * rows * lin.in_features * lin.out_features for lin, _ in plan)
    with torch.inference_mode():
        refs = [F.linear(x.float(), lin.weight, lin.bias) for lin, x in plan]
        scales = [float(r.abs().max()) for r in refs]

        def run(name: str) -> list[torch.Tensor]:
            with torch.autocast("cpu", dtype=bf16):
                return [linears.run_linear(name, lin, x) for lin, x in plan]

        def error(_name: str, outs: list[torch.Tensor]) -> float:
            return max(float((o.float() - r).abs().max()) / s for o, r, s in zip(outs, refs, scales))

        results = mc.measure_options({n: (lambda n=n: run(n)) for n in names}, error, ERROR_BOUND,
                                     timer=timer, repeats=repeats)
    full = forward_linear_flops()
    for r in results.values():
        r["gflops"] = flops / r["seconds"] / 1e9 if r["seconds"] else None
        r["forward_s"] = r["seconds"] * full / flops if r["seconds"] else None
    winner = mc.pick(results, DEFAULT)
    return CHOICE.make_record(winner, results, t_start, rows=rows, error_bound=ERROR_BOUND)


def ensure_choice(n_points: int | None = None, *, timer: mc.Timer | None = None,
                  progress: Callable[[str], None] | None = None, force: bool = False) -> dict | None:
    """Before a bf16 CPU forward: the record in use, measuring first when none matches this machine and the
    problem is full-size (the attention calibration's threshold). None when overridden or small and unmeasured."""
    from .attention_choice import CALIBRATE_MIN_QUERIES

    large = n_points is None or n_points >= CALIBRATE_MIN_QUERIES
    return CHOICE.ensure(lambda: calibrate(timer=timer), large=large, force=force, progress=progress,
                         what="bf16 and fp32 linear layers")


def current() -> str:
    """``bf16`` or ``fp32``: override, else this machine's measured choice, else :data:`DEFAULT`. Never measures."""
    return CHOICE.current()


def set_override(name: str | None) -> None:
    """Force an option for this process (``lam-head create --linears``); None or ``auto``: the measured one."""
    CHOICE.set_override(name)


def describe() -> dict[str, Any]:
    return CHOICE.describe()


def format_description(info: dict[str, Any]) -> list[str]:
    """Doctor lines for :func:`describe`'s result."""
    lines = CHOICE.head_lines(info, "the first fast run of 4096+ points times bf16 and fp32 GEMMs once (a few seconds)")
    record = info.get("record")
    if record is None:
        return lines
    load = record.get("load_average")
    lines.append(f"  measured {record['calibrated']} in {record['calibration_s']:.1f} s on one block's linears x "
                 f"{record['rows']} rows" + (f", load average {load:.1f}" if load is not None else "")
                 + f"; machine: {info['machine']}")
    lines += CHOICE.option_lines(record, lambda r: f"{r['gflops']:6.1f} GFLOP/s  ~{r['forward_s']:5.1f} s per "
                                                   f"forward's linears  error {r['error']:.1e}")
    lines.append(CHOICE.tail_line(info))
    return lines
