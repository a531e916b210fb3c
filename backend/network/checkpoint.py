"""Load an official-layout LAM checkpoint (``config.json`` + ``model.safetensors``) into :class:`LamModel`.

The model is built on the meta device and the tensors read from the memory-mapped safetensors file are
assigned directly (``load_state_dict(assign=True)``): peak memory stays near one copy of the weights.
Strict by default: missing, unexpected and wrongly shaped keys are refused, listed by name. Optional keys:
the ``attn.norm_added_q/k`` pair (QK-norm on image tokens: used only when the checkpoint has it) and
``renderer.flame_model.*`` FLAME buffers (recognised, not loaded into the network; see read_flame_buffers).
Key names are the official ones throughout: the DINOv2 encoder is transformers' module, and dinov2.py maps
``encoder.model.*`` onto it inside ``load_state_dict`` (its ``state_dict`` reports the official names).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.errors import BadInputError
from .config import LamConfig, load_config
from .devices import select_device
from .model import LamModel
from .point_embed import fourier_basis
from .safetensors_io import CONFIG_NAME, FLAME_PREFIX, WEIGHTS_NAME, read_header

_ADDED_QK = re.compile(r"transformer\.layers\.\d+\.attn\.norm_added_[qk]\.weight")
_LIST_MAX = 12


@dataclass
class LoadReport:
    """What :func:`load_lam` found. ``missing``/``unexpected``/``mismatched`` are empty after a strict load."""

    weights_path: str
    config: LamConfig
    device: str
    qk_norm_context: bool
    n_parameters: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    flame_buffer_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def has_flame_buffers(self) -> bool:
        return bool(self.flame_buffer_keys)


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_MAX])
    return shown + (f" ... and {len(keys) - _LIST_MAX} more" if len(keys) > _LIST_MAX else "")


def _init_missing(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Default values for keys a lenient (strict=False) load could not find."""
    if name.endswith("pcl_embed.basis"):
        return fourier_basis()
    if name.endswith(".bias"):
        return torch.zeros(shape)
    if len(shape) == 1:
        return torch.ones(shape)
    return torch.randn(shape) * (1.0 / math.sqrt(max(1, math.prod(shape[1:]))))


def load_lam(
    weights_dir: str | Path,
    device: str | torch.device = "auto",
    strict: bool = True,
    qk_norm: bool = True,
) -> tuple[LamModel, LoadReport]:
    """Build the network from ``weights_dir/config.json`` and load ``weights_dir/model.safetensors``.

    ``qk_norm=False`` skips the per-head RMSNorm on q/k (reproduces an older attention implementation).
    With ``strict=False`` mismatched/missing keys are reported and left at default values instead of refused.
    Returns the model in eval mode on the selected device (float32) and a :class:`LoadReport`. On CPU the
    weights stay views of the file's memory mapping; ``model.weights_file`` names the file so that the
    forward can hand each stage's pages back after use (weight_pages.py).
    """
    from safetensors import SafetensorError, safe_open

    weights_dir = Path(weights_dir)
    if not weights_dir.is_dir():
        raise BadInputError(f"LAM weights folder not found: {weights_dir}")
    cfg = load_config(weights_dir / CONFIG_NAME)
    path = weights_dir / WEIGHTS_NAME
    header = read_header(path)
    dev = select_device(device)

    added = [k for k in header if _ADDED_QK.fullmatch(k)]
    qk_context = bool(added)
    with torch.device("meta"):
        model = LamModel(cfg, qk_norm_context=qk_context)
    expected = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}

    report = LoadReport(str(path), cfg, str(dev), qk_context)
    report.flame_buffer_keys = sorted(k for k in header if k.startswith(FLAME_PREFIX))
    report.missing = [k for k in expected if k not in header]
    report.unexpected = sorted(k for k in header if k not in expected and not k.startswith(FLAME_PREFIX))
    report.mismatched = [
        f"{k} (checkpoint {list(header[k].shape)}, config expects {list(s)})"
        for k, s in expected.items()
        if k in header and header[k].shape != s
    ]
    if not qk_context:
        report.notes.append("optional attn.norm_added_q/k absent: no QK-norm on image tokens (as the checkpoint was trained)")
    if report.flame_buffer_keys:
        report.notes.append(f"{len(report.flame_buffer_keys)} renderer.flame_model.* FLAME buffers present (read_flame_buffers)")
    problems = []
    if report.mismatched:
        problems.append(f"{len(report.mismatched)} shape mismatch(es): {_names(report.mismatched)}")
    if report.missing:
        problems.append(f"{len(report.missing)} missing key(s): {_names(report.missing)}")
    if report.unexpected:
        problems.append(f"{len(report.unexpected)} unexpected key(s): {_names(report.unexpected)}")
    if problems and strict:
        raise BadInputError(
            f"{path} does not match {weights_dir / CONFIG_NAME}: " + "; ".join(problems)
            + ". Use the config.json that came with these weights."
        )
    report.notes.extend(problems)

    bad = {m.split(" ", 1)[0] for m in report.mismatched}
    state: dict[str, torch.Tensor] = {}
    load_dev = str(dev) if dev.type == "cuda" else "cpu"
    try:
        with safe_open(str(path), framework="pt", device=load_dev) as f:
            for k in expected:
                if k in header and k not in bad:
                    t = f.get_tensor(k)
                    state[k] = t if t.dtype == torch.float32 else t.float()
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise BadInputError(f"{path}: cannot read tensors ({exc}); re-download the model weights") from exc
    for k, s in expected.items():
        if k not in state:
            state[k] = _init_missing(k, s).to(load_dev)
    model.load_state_dict(state, strict=True, assign=True)
    del state
    model = model.to(dev).eval()
    model.requires_grad_(False)
    if dev.type == "cpu":
        model.weights_file = str(path)  # the CPU tensors are views of safetensors' private mapping
    if not qk_norm:
        model.set_qk_norm(False)
        report.notes.append("QK-norm disabled by request")
    report.n_parameters = sum(p.numel() for p in model.parameters())
    return model, report
