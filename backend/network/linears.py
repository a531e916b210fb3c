"""How fast mode's linear layers run on CPU: bf16 GEMMs (autocast's default) or fp32 GEMMs with bf16 outputs.

Under bfloat16 autocast every ``nn.Linear`` runs as a bf16 GEMM. That is fast where the CPU has native bf16
(AVX512-BF16, AMX); elsewhere oneDNN emulates it and fp32 GEMMs can be faster. :mod:`.linear_choice` measures
which is faster on this machine; :func:`linears_as` applies it to a model for one forward.

``fp32`` keeps everything around the GEMM as it is under autocast: the output is rounded to the autocast dtype
(bf16), so the attention kernel and every later op see the same dtypes as with ``bf16`` linears; only the GEMM's
inputs are not rounded, so its error is at most the bf16 one's (the output rounding alone).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import linear_choice


def fp32_linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` as a float32 GEMM; the output in the autocast dtype when autocast is on (else x's dtype)."""
    device = x.device.type
    out_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    with torch.autocast(device, enabled=False):
        bias = None if module.bias is None else module.bias.float()
        y = F.linear(x.float(), module.weight.float(), bias)
    return y.to(out_dtype)


def run_linear(name: str, module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """One of :data:`linear_choice.OPTIONS` (under the caller's autocast): ``bf16`` the module as autocast runs
    it, ``fp32`` :func:`fp32_linear`."""
    if name == "bf16":
        return module(x)
    if name == "fp32":
        return fp32_linear(module, x)
    linear_choice.CHOICE.check_name(name, source="run_linear")
    raise AssertionError(f"linear option {name!r} is listed but not implemented")


@contextlib.contextmanager
def linears_as(model: nn.Module, name: str) -> Iterator[None]:
    """For the block: every ``nn.Linear`` of ``model`` runs option ``name`` (``bf16``: unchanged).

    ``fp32`` shadows each linear's ``forward`` with an instance attribute (hooks and state dicts are untouched)
    and restores it afterwards, also on error or cancellation.
    """
    if name == "bf16":
        yield
        return
    linear_choice.CHOICE.check_name(name, source="linears_as")
    patched = [m for m in model.modules() if isinstance(m, nn.Linear) and "forward" not in m.__dict__]
    try:
        for m in patched:
            m.forward = lambda x, _m=m: run_linear(name, _m, x)
        yield
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)
