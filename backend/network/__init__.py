"""The LAM network (image -> canonical Gaussians), checkpoint-compatible with the official LAM release.

Torch-free parts (``config``, ``layout``, ``safetensors_io``, ``random_checkpoint``) import without torch;
the rest is loaded lazily on first attribute access, so ``backend.network.random_checkpoint`` works in
environments that have no torch (Blender's Python in tests).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_lam": "checkpoint",
    "LoadReport": "checkpoint",
    "predict": "inference",
    "predict_batch": "inference",
    "predict_from_betas": "inference",
    "GaussianPrediction": "inference",
    "select_device": "devices",
    "LamModel": "model",
    "read_flame_buffers": "safetensors_io",
    "write_random_checkpoint": "random_checkpoint",
    "tiny_config": "config",
    "lam20k_config": "config",
    "load_config": "config",
    "LamConfig": "config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
