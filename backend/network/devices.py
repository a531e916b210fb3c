"""Device choice: "auto" picks CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import torch

from ..core.errors import BadInputError


def select_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` -> an available torch.device."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise BadInputError(f"unknown device {name!r}: use auto, cpu, cuda or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(f"device {name!r} requested but CUDA is not available here; use 'auto' or 'cpu'")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise BadInputError(f"device {name!r} requested but Apple MPS is not available here; use 'auto' or 'cpu'")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise BadInputError(f"device {name!r} is not supported: use auto, cpu, cuda or mps")
    return dev
