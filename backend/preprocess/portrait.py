"""Photo -> LAM's network input: the 504 x 504 head crop on white, with its matte and landmarks.

Stages (progress stage names "detect", then "matte", as the pipeline times them): detect faces, choose one, face mesh,
LAM head crop to 1024, matte, mask threshold + composite on white + LAM's
mask-covering centred crop, area resize to 504. See crop.py for the
convention and where it departs from the official tools.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..core.atomic_write import atomic_path
from ..core.errors import CancelToken, NoFaceError
from ..fit.landmark_map import MEDIAPIPE_TO_IBUG68
from . import crop as C
from .faces import choose_face, detect_faces, face_landmarks
from .image_io import as_rgb8
from .matte import person_matte

Progress = Callable[[str, float, str], None]
# Head crops smaller than this (source pixels) reach the 504 px network input enlarged more than 3x.
SMALL_HEAD_PX = 168


@dataclass
class PreparedPortrait:
    """What the network and the FLAME fit need.

    image: (504, 504, 3) float32 in [0, 1], composited on white.
    alpha: (504, 504) float32 in [0, 1]: the thresholded matte after the area resize.
    landmarks68: (68, 2) float32 pixels in the 504 image (iBUG order).
    landmarks478: (478, 3) float32 mediapipe mesh, x, y pixels in the 504 image, z relative depth (same scale).
    warnings: things the user should know (several faces, ...).
    head_crop: (x0, y0, side) of the 1024 head crop in the (upright, possibly downscaled) source image.
    input_crop: (x0, y0, side) of the 504 input inside the 1024 head crop.
    timings: seconds per stage.
    """

    image: np.ndarray
    alpha: np.ndarray
    landmarks68: np.ndarray
    landmarks478: np.ndarray
    warnings: list[str] = field(default_factory=list)
    head_crop: tuple[float, float, float] = (0.0, 0.0, 0.0)
    input_crop: tuple[float, float, float] = (0.0, 0.0, 0.0)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return int(self.image.shape[0])


def prepare_portrait(
    rgb: np.ndarray,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
    debug_dir: str | os.PathLike | None = None,
) -> PreparedPortrait:
    """``rgb`` (H, W, 3) uint8 (or anything :func:`as_rgb8` accepts) -> :class:`PreparedPortrait`.

    Raises NoFaceError when no face is found; BadInputError for unusable arrays.
    ``debug_dir``: also write crop.png, matte.png, landmarks.png there for inspection.
    """
    import time

    def report(stage: str, f: float, msg: str) -> None:
        if cancel is not None:
            cancel.check()
        if progress is not None:
            progress(stage, f, msg)

    timings: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        timings[name] = now - t
        t = now

    rgb = as_rgb8(rgb)
    h, w = rgb.shape[:2]
    warnings: list[str] = []
    report("detect", 0.0, "finding the face")
    boxes = detect_faces(rgb)
    lap("detect")
    if not boxes:
        raise NoFaceError(
            "no face found in the photo; use a photo where one face is clearly visible, "
            "looking roughly at the camera, not too small"
        )
    idx = choose_face(boxes, w, h)
    if len(boxes) > 1:
        warnings.append(f"{len(boxes)} faces found in the photo; using the largest, most central one")
    report("detect", 0.4, "face landmarks")
    lm = face_landmarks(rgb, boxes[idx])
    lap("landmarks")

    report("detect", 0.8, "cropping the head")
    x0, y0, side = C.square_from_box(*C.head_box_from_landmarks(lm))
    if side < SMALL_HEAD_PX:
        warnings.append(f"the head is small in the photo (a {side:.0f} px crop, enlarged {C.INPUT_SIZE / side:.1f}x for "
                        "the network); the avatar will look blurry. A closer or higher-resolution photo is sharper")
    head = C.crop_resize(rgb, x0, y0, side, C.HEAD_CROP_SIZE)
    lm_head = C.map_points(lm, x0, y0, side, C.HEAD_CROP_SIZE)
    lap("crop")

    report("matte", 0.0, "separating the person from the background")
    matte = person_matte(head)
    lap("matte")

    report("matte", 0.7, "composing the network input")
    ix0, iy0, iside = C.mask_square(matte)
    ix0, iy0, iside = math.floor(ix0), math.floor(iy0), math.ceil(iside)
    iside = min(iside, C.HEAD_CROP_SIZE - max(ix0, iy0))
    mask = (matte > C.MASK_THRESHOLD).astype(np.float32)
    comp = C.composite_on_white(head, mask)[iy0:iy0 + iside, ix0:ix0 + iside]
    image = np.clip(C.area_resize(comp, C.INPUT_SIZE), 0.0, 1.0).astype(np.float32)
    alpha = np.clip(C.area_resize(mask[iy0:iy0 + iside, ix0:ix0 + iside], C.INPUT_SIZE), 0.0, 1.0)
    lm504 = C.map_points(lm_head, ix0, iy0, iside, C.INPUT_SIZE).astype(np.float32)
    lap("compose")
    report("matte", 1.0, "")
    out = PreparedPortrait(
        image=image,
        alpha=alpha.astype(np.float32),
        landmarks68=lm504[MEDIAPIPE_TO_IBUG68, :2].copy(),
        landmarks478=lm504,
        warnings=warnings,
        head_crop=(float(x0), float(y0), float(side)),
        input_crop=(float(ix0), float(iy0), float(iside)),
        timings=timings,
    )
    if debug_dir is not None:
        save_debug(out, debug_dir)
    return out


def save_debug(p: PreparedPortrait, folder: str | os.PathLike) -> dict[str, Path]:
    """Write crop.png (the network input), matte.png and landmarks.png (input + 68 points numbered,
    mesh points dotted) into ``folder``; each written to a temp name and renamed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    crop = Image.fromarray(np.round(p.image * 255).astype(np.uint8))
    matte = Image.fromarray(np.round(p.alpha * 255).astype(np.uint8))
    overlay = crop.copy()
    d = ImageDraw.Draw(overlay)
    for x, y in p.landmarks478[:, :2]:
        d.point((float(x), float(y)), fill=(0, 160, 255))
    for k, (x, y) in enumerate(p.landmarks68):
        d.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(255, 40, 40))
        d.text((x + 3, y - 5), str(k), fill=(200, 0, 0))
    out = {}
    for name, img in (("crop.png", crop), ("matte.png", matte), ("landmarks.png", overlay)):
        final = folder / name
        with atomic_path(final) as tmp:
            img.save(tmp, format="PNG")
        out[name] = final
    return out
