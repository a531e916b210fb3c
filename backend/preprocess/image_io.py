"""Read a user's photo file into upright 8-bit RGB, safely.

Photos arrive in every shape: EXIF-rotated phone JPEGs, CMYK from print
workflows, 16-bit PNGs, palette and transparent images, and occasionally a
file that is not a picture or is far too large. Everything either becomes an
``uint8 HxWx3`` array or a :class:`BadInputError` saying what is wrong.

Memory: the header is read first; JPEGs are decoded at a reduced scale by the
codec itself (``draft``), other formats are refused when their decoded size
would exceed :data:`MAX_DECODE_BYTES`; anything larger than
:data:`MAX_WORK_SIDE` is box-downscaled right after decoding. PIL's own
decompression-bomb limit stays in force as a hard ceiling.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core.errors import BadInputError

# The head ends up as a 1024 px crop; a working image with 4096 px on its long side keeps
# a head that fills a quarter of a group photo at full crop resolution.
MAX_WORK_SIDE = 4096
# Bytes the raw decode may take (pixels x channels x bytes per sample) before we refuse.
MAX_DECODE_BYTES = 1_200_000_000
# Smallest photo side we try to find a face in.
MIN_SIDE = 64

EXIF_ORIENTATION = 0x0112
# EXIF orientation tag -> the transpose that makes the stored pixels upright (EXIF 2.3, tag 274).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3,
                    "RGBA": 4, "RGBa": 4, "CMYK": 4, "I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2,
                    "I;16N": 2}


def load_image(path: str | os.PathLike) -> np.ndarray:
    """The photo at ``path`` as upright ``uint8`` RGB, shape (H, W, 3), long side <= MAX_WORK_SIDE.

    Raises BadInputError naming the file and the problem (missing, empty, not an
    image, truncated, too small, too large).
    """
    path = Path(path)
    name = path.name
    if not path.exists():
        raise BadInputError(f"photo not found: {path}")
    if not path.is_file():
        raise BadInputError(f"{path} is not a file; choose a photo (JPEG or PNG)")
    if path.stat().st_size == 0:
        raise BadInputError(f"{name} is empty (0 bytes); choose another photo")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return _decode(img, name)
    except Image.DecompressionBombError as exc:
        raise BadInputError(
            f"{name} is too large to open safely ({exc}); downscale it to at most {MAX_WORK_SIDE} px and try again"
        ) from None
    except UnidentifiedImageError:
        raise BadInputError(
            f"{name} is not an image file this program can read (PNG, JPEG, WebP, TIFF, BMP...); "
            "check that it is a photo and not renamed from something else"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports corrupt data with these
        raise BadInputError(f"{name} is truncated or corrupt ({exc}); re-export or re-download the photo") from None


def _decode(img: Image.Image, name: str) -> np.ndarray:
    w, h = img.size
    if min(w, h) < MIN_SIDE:
        raise BadInputError(f"{name} is only {w} x {h} pixels; a portrait needs at least {MIN_SIDE} px per side")
    orientation = _orientation(img)
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)  # animated/multi-page: the first frame
    if img.format == "JPEG" and max(w, h) > MAX_WORK_SIDE:
        # Let the codec decode at 1/2, 1/4 or 1/8 scale: never holds the full-size pixels.
        img.draft(img.mode, (MAX_WORK_SIDE, MAX_WORK_SIDE))
    dw, dh = img.size
    need = dw * dh * _BYTES_PER_PIXEL.get(img.mode, 8)
    if need > MAX_DECODE_BYTES:
        raise BadInputError(
            f"{name} is {w} x {h} pixels ({w * h / 1e6:.0f} megapixels, {img.mode}); decoding it needs about "
            f"{need / 1e9:.1f} GB. Downscale it to at most {MAX_WORK_SIDE} px on the long side, or save it as JPEG"
        )
    img.load()
    img = _downscale(img)
    rgb = to_rgb8(img)
    if orientation in _UPRIGHT:
        rgb = np.asarray(Image.fromarray(rgb).transpose(_UPRIGHT[orientation]))
    return np.ascontiguousarray(rgb)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block must not lose the photo: treat as upright
        return 1


def _downscale(img: Image.Image) -> Image.Image:
    """Box-filter down to MAX_WORK_SIDE (integer ``reduce`` first: cheap and exact area averaging)."""
    w, h = img.size
    if max(w, h) <= MAX_WORK_SIDE:
        return img
    if img.mode in ("P", "PA", "1"):
        img = img.convert("RGBA" if "transparency" in img.info or img.mode == "PA" else "RGB")
    factor = max(w, h) // MAX_WORK_SIDE
    if factor >= 2 and img.mode not in ("I;16", "I;16B", "I;16L", "I;16N"):
        img = img.reduce(factor)
    w, h = img.size
    if max(w, h) > MAX_WORK_SIDE:
        s = MAX_WORK_SIDE / max(w, h)
        target = (max(1, round(w * s)), max(1, round(h * s)))
        if img.mode.startswith("I;16"):
            img = img.convert("I")
        img = img.resize(target, Image.Resampling.BOX)
    return img


def to_rgb8(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 RGB (H, W, 3). Transparency is composited on white (LAM's background);
    16/32-bit greys are scaled (not clipped) to 8 bits."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(img).astype(np.float64)
        top = 65535.0 if (mode.startswith("I;16") or a.max(initial=0) > 255) else 255.0
        if mode == "F" and a.max(initial=0) <= 1.0:
            top = 1.0
        g = np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "PA", "La"):
        img = img.convert("RGBA")
    elif mode == "RGBa":
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        a = np.asarray(img).astype(np.float32)
        alpha = a[..., 3:4] / 255.0
        rgb = a[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def as_rgb8(image: np.ndarray) -> np.ndarray:
    """Validate an in-memory picture for :func:`prepare_portrait`: uint8/float/uint16, grey, RGB or RGBA
    -> uint8 (H, W, 3)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise BadInputError(f"expected an image array of shape (H, W[, 1|3|4]), got {a.shape}")
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16:
        a = np.round(a.astype(np.float64) / 257.0).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise BadInputError("the image array contains NaN or infinite values")
        a = np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)
    else:
        raise BadInputError(f"unsupported image dtype {a.dtype}; use uint8, uint16 or float in [0, 1]")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        alpha = a[..., 3:4].astype(np.float32) / 255.0
        a = np.clip(np.round(a[..., :3] * alpha + 255.0 * (1 - alpha)), 0, 255).astype(np.uint8)
    h, w = a.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise BadInputError(f"the image is only {w} x {h} pixels; a portrait needs at least {MIN_SIDE} px per side")
    return np.ascontiguousarray(a)
