"""Alpha matte of the person in a head crop (mediapipe selfie segmentation).

LAM was trained on StyleMatte mattes; we cannot ship those weights, so the
matte comes from mediapipe's selfie segmentation (a person/background model
whose weights ship inside the mediapipe wheel). It covers head, hair, neck and
shoulders like a portrait matte, at a coarser edge quality: the pipeline
thresholds it at 180/255 anyway (LAM's own convention, see crop.py).
"""

from __future__ import annotations

import numpy as np

from .mp_solutions import solution


def person_matte(rgb: np.ndarray) -> np.ndarray:
    """Foreground probability (H, W) float32 in [0, 1] for ``rgb`` (uint8 H, W, 3)."""
    ss = solution("selfie_segmentation")
    with ss.SelfieSegmentation(model_selection=0) as seg:  # 0: the general (square 256x256) model
        result = seg.process(np.ascontiguousarray(rgb))
    mask = result.segmentation_mask
    if mask is None:
        return np.zeros(rgb.shape[:2], np.float32)
    return np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0)
