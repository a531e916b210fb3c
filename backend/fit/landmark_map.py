"""Mediapipe face mesh (478) -> iBUG/dlib 68-point landmark correspondence.

The 68-point layout: 0-16 jaw contour (from the subject's right ear to the
left), 17-21 right brow, 22-26 left brow, 27-30 nose bridge, 31-35 nostrils,
36-41 right eye, 42-47 left eye, 48-59 outer lips, 60-67 inner lips ("right"
= the subject's right = image left in a frontal photo). Each entry is the
mediapipe mesh vertex at the same anatomical point; the jaw entries are
mirror pairs (127/356, 234/454, 93/323, 132/361, 58/288, 136/365, 150/379,
176/400) around the chin 152.
"""

from __future__ import annotations

import numpy as np

MEDIAPIPE_TO_IBUG68 = np.array(
    [
        # jaw 0-16
        127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
        # brows 17-21 (right), 22-26 (left)
        70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
        # nose bridge 27-30, nostrils 31-35
        168, 197, 5, 4, 75, 97, 2, 326, 305,
        # right eye 36-41, left eye 42-47
        33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
        # outer lips 48-59
        61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
        # inner lips 60-67
        78, 82, 13, 312, 308, 317, 14, 87,
    ],
    dtype=np.int64,
)
assert MEDIAPIPE_TO_IBUG68.shape == (68,)

JAW = slice(0, 17)
# Iris centres in the refined 478-point mesh (468-472 one iris, 473-477 the other; first of each is the centre).
IRIS_CENTRES = (468, 473)


def ibug68_from_mediapipe(landmarks478: np.ndarray) -> np.ndarray:
    """(478, 2|3) -> (68, 2|3): pick the corresponding mesh points."""
    lm = np.asarray(landmarks478)
    if lm.shape[0] < 468:
        raise ValueError(f"expected mediapipe mesh landmarks (468 or 478 points), got {lm.shape}")
    return lm[MEDIAPIPE_TO_IBUG68]
