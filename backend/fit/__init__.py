"""FLAME fit to 2D landmarks (torch, CPU, seconds).

``fit_flame`` and ``load_landmark_embedding`` are loaded on first use so that
``backend.fit.landmark_map`` (numpy only) can be imported without torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FlameFit", "LandmarkEmbedding", "fit_flame", "load_landmark_embedding"]


def __getattr__(name: str) -> Any:
    if name in ("FlameFit", "fit_flame"):
        from . import flame_fit

        return getattr(flame_fit, name)
    if name in ("LandmarkEmbedding", "load_landmark_embedding"):
        from . import embedding

        return getattr(embedding, name)
    raise AttributeError(name)
