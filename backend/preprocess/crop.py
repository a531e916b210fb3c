"""LAM's crop convention, reproduced with our detectors.

Official tools (LAM_SPEC.md section 3): a head box from a head detector is
made square with side ``sqrt(w * h) * 1.65`` around its centre and the photo
is cropped and resized to 1024 x 1024; after matting, the mask is thresholded
at 180/255, the picture composited on white, and a square crop centred on the
image centre that just covers the mask is area-resized to 504 x 504.

We have no head detector (VGGHead), only the face mesh. Its extent runs from
the upper forehead to the chin and cheek to cheek; a whole-head box (hair,
ears) is estimated from it by widening 10 % per side and raising the top by
35 % of the mesh height (:func:`head_box_from_landmarks`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..core.errors import BadInputError

HEAD_CROP_FACTOR = 1.65
HEAD_CROP_SIZE = 1024
MASK_THRESHOLD = 180.0 / 255.0
INPUT_SIZE = 504
# Face-mesh extent -> whole head box (our estimate; see module docstring).
HEAD_WIDEN = 0.10
HEAD_RAISE = 0.35


def head_box_from_landmarks(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    """(cx, cy, w, h) of the estimated head box from mesh landmarks (N, 2+) in pixels."""
    xy = np.asarray(landmarks)[:, :2]
    x0, y0 = xy.min(0)
    x1, y1 = xy.max(0)
    mw, mh = x1 - x0, y1 - y0
    x0, x1 = x0 - HEAD_WIDEN * mw, x1 + HEAD_WIDEN * mw
    y0 = y0 - HEAD_RAISE * mh
    return (0.5 * (x0 + x1), 0.5 * (y0 + y1), x1 - x0, y1 - y0)


def square_from_box(cx: float, cy: float, w: float, h: float, factor: float = HEAD_CROP_FACTOR) -> tuple[float, float, float]:
    """LAM's square around a box: (x0, y0, side) with side = sqrt(w * h) * factor, same centre."""
    side = float(np.sqrt(max(w, 1e-6) * max(h, 1e-6)) * factor)
    return (cx - side / 2, cy - side / 2, side)


def crop_resize(rgb: np.ndarray, x0: float, y0: float, side: float, size: int, fill: int = 255) -> np.ndarray:
    """The square [x0, x0+side) x [y0, y0+side) of ``rgb`` (H, W, C uint8) resized to ``size`` x ``size``.
    Off-image parts are ``fill`` (white). Area averaging when shrinking, bicubic when enlarging."""
    h, w = rgb.shape[:2]
    if side <= 0:
        raise ValueError("crop side must be positive")
    # Integer source window enclosing the square, then a sub-pixel exact resize of the float square.
    ix0, iy0 = int(np.floor(x0)), int(np.floor(y0))
    ix1, iy1 = int(np.ceil(x0 + side)), int(np.ceil(y0 + side))
    win = np.full((iy1 - iy0, ix1 - ix0) + rgb.shape[2:], fill, dtype=rgb.dtype)
    sx0, sy0, sx1, sy1 = max(0, ix0), max(0, iy0), min(w, ix1), min(h, iy1)
    if sx1 > sx0 and sy1 > sy0:
        win[sy0 - iy0:sy1 - iy0, sx0 - ix0:sx1 - ix0] = rgb[sy0:sy1, sx0:sx1]
    pil = Image.fromarray(win)
    box = (x0 - ix0, y0 - iy0, x0 - ix0 + side, y0 - iy0 + side)
    method = Image.Resampling.BOX if side >= size else Image.Resampling.BICUBIC
    return np.asarray(pil.resize((size, size), method, box=box))


def map_points(points: np.ndarray, x0: float, y0: float, side: float, size: int) -> np.ndarray:
    """Pixel coordinates in the source -> in the ``size`` crop of square (x0, y0, side). Extra columns
    (e.g. mesh z) scale with the crop."""
    p = np.array(points, dtype=np.float64, copy=True)
    s = size / side
    p[:, 0] = (p[:, 0] - x0) * s
    p[:, 1] = (p[:, 1] - y0) * s
    if p.shape[1] > 2:
        p[:, 2:] *= s
    return p


def mask_square(alpha: np.ndarray, threshold: float = MASK_THRESHOLD) -> tuple[float, float, float]:
    """LAM's input square on a crop: centred on the image centre, just covering the thresholded mask.
    Returns (x0, y0, side) in pixels of ``alpha`` (H, W)."""
    h, w = alpha.shape
    m = alpha > threshold
    ys, xs = np.nonzero(m)
    if xs.size == 0:
        raise BadInputError(
            "the person could not be separated from the background (empty matte); "
            "use a photo with the head and shoulders clearly visible"
        )
    cx, cy = w // 2, h // 2  # integer centre and extreme mask pixel indices, as the official tools do
    half = max(abs(cx - int(xs.min())), abs(cx - int(xs.max())), abs(cy - int(ys.min())), abs(cy - int(ys.max())))
    half = min(max(half, 8), cx, cy)
    return (float(cx - half), float(cy - half), float(2 * half))


def composite_on_white(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """rgb (H, W, 3 uint8) x mask (H, W in [0, 1]) over white -> float32 (H, W, 3) in [0, 1]."""
    m = mask.astype(np.float32)[..., None]
    return rgb.astype(np.float32) / 255.0 * m + (1.0 - m)


def area_resize(a: np.ndarray, size: int) -> np.ndarray:
    """float32 (H, W[, C]) square -> (size, size[, C]) by area averaging (PIL BOX per channel)."""
    chans = [a] if a.ndim == 2 else [a[..., c] for c in range(a.shape[2])]
    out = [np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BOX))
           for c in chans]
    return out[0] if a.ndim == 2 else np.stack(out, axis=2)
