"""Tiny random LAM checkpoints in the official layout (config.json + model.safetensors).

numpy + safetensors only (no torch): usable from the Blender test environment too.
A forward on 20018 points with this config takes about a second on CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backend.network.config import tiny_config
from backend.network.random_checkpoint import write_random_checkpoint


def make_tiny_weights_dir(
    tmp_path: Path,
    seed: int = 0,
    *,
    name: str = "lam_tiny",
    qk_norm_context: bool = True,
    flame_buffers: dict[str, np.ndarray] | None = None,
    config_overrides: dict | None = None,
) -> Path:
    """Write a seeded tiny checkpoint under ``tmp_path/name`` and return that folder.

    ``flame_buffers`` (names without the ``renderer.flame_model.`` prefix) are stored like the official
    checkpoint may store them, for code that reads FLAME from the checkpoint.
    """
    config = tiny_config()
    config.update(config_overrides or {})
    extra = {f"renderer.flame_model.{k}": np.asarray(v) for k, v in (flame_buffers or {}).items()}
    return write_random_checkpoint(Path(tmp_path) / name, config, seed=seed, qk_norm_context=qk_norm_context, extra_tensors=extra)
