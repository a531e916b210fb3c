"""Seeded random checkpoints in the official LAM layout (numpy + safetensors only, no torch).

For tests (tiny config) and the full-size benchmark (written tensor by tensor, never all in memory).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .config import parse_config, tiny_config
from .layout import state_dict_layout
from .safetensors_io import CONFIG_NAME, WEIGHTS_NAME, write_safetensors_streaming

__all__ = ["tiny_config", "write_random_checkpoint", "fourier_basis_np"]


def fourier_basis_np() -> np.ndarray:
    """3, 24 float32: the point-embedding basis (2^k * float32(pi) per axis block)."""
    basis = np.zeros((3, 24), np.float32)
    for a in range(3):
        basis[a, 8 * a : 8 * a + 8] = np.float32(np.pi) * (2.0 ** np.arange(8)).astype(np.float32)
    return basis


def _random_tensor(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name == "pcl_embed.basis":
        return fourier_basis_np()
    if name.startswith("renderer.gs_net.out_layers.scaling."):  # plausible sigmas (~4 mm), not all clamped
        base = -5.5 if name.endswith("bias") else 0.0
        return (base + 0.2 * rng.standard_normal(shape, dtype=np.float32) / np.float32(math.sqrt(shape[-1]))).astype(
            np.float32
        )
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "gamma":
        return rng.uniform(0.1, 1.0, shape).astype(np.float32)
    if len(shape) == 1 and leaf == "weight":  # LayerNorm / RMSNorm scales
        return (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    if leaf == "bias":
        return (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    if leaf in ("cls_token", "pos_embed", "register_tokens"):
        return (0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return (rng.standard_normal(shape, dtype=np.float32) / np.float32(math.sqrt(fan_in))).astype(np.float32)


def write_random_checkpoint(
    out_dir: str | Path,
    config: dict[str, Any],
    seed: int = 0,
    qk_norm_context: bool = True,
    extra_tensors: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` with seeded random weights; return ``out_dir``.

    ``extra_tensors`` are appended under their names (e.g. ``renderer.flame_model.*`` buffers).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = parse_config(config)
    entries = [(e.name, e.shape, np.float32) for e in state_dict_layout(cfg, qk_norm_context)]
    extra = dict(extra_tensors or {})
    entries += [(k, v.shape, v.dtype) for k, v in extra.items()]
    rng = np.random.default_rng(seed)

    def produce(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return extra[name] if name in extra else _random_tensor(rng, name, shape)

    write_safetensors_streaming(out_dir / WEIGHTS_NAME, entries, produce)
    tmp = out_dir / (CONFIG_NAME + ".partial")
    tmp.write_text(json.dumps(config, indent=2), encoding="utf-8")
    os.replace(tmp, out_dir / CONFIG_NAME)
    return out_dir
