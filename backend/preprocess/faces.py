"""Find the face to reconstruct and its 478 mediapipe landmarks.

Detection runs mediapipe's BlazeFace models (full range, then short range for
close-ups), the face to use is chosen by :func:`choose_face`, and the face
mesh (478 points incl. irises) runs on a square crop around that face only,
so a neighbour in a group photo cannot be meshed by mistake.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..core.errors import NoFaceError
from .mp_solutions import solution

MIN_DETECTION_SCORE = 0.5
# Smallest tile side for the small-face search.
TILE_MIN = 320


@dataclass(frozen=True)
class FaceBox:
    """A detected face, pixel box in the image it was found in."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    @property
    def center(self) -> tuple[float, float]:
        return (0.5 * (self.x0 + self.x1), 0.5 * (self.y0 + self.y1))

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)


def _iou(a: FaceBox, b: FaceBox) -> float:
    ix = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    iy = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = ix * iy
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def _detect(rgb: np.ndarray, min_score: float, offset: tuple[int, int], boxes: list[FaceBox]) -> None:
    """Run both detector ranges on ``rgb``; add boxes (shifted by ``offset``) to ``boxes``, merging duplicates."""
    fd = solution("face_detection")
    h, w = rgb.shape[:2]
    ox, oy = offset
    for model in (1, 0):  # 1: full range (small faces, up to ~5 m), 0: short range (close-ups)
        with fd.FaceDetection(model_selection=model, min_detection_confidence=min_score) as det:
            result = det.process(np.ascontiguousarray(rgb))
        for d in result.detections or []:
            rb = d.location_data.relative_bounding_box
            box = FaceBox(ox + rb.xmin * w, oy + rb.ymin * h, ox + (rb.xmin + rb.width) * w,
                          oy + (rb.ymin + rb.height) * h, float(d.score[0]))
            if box.area <= 0:
                continue
            same = [i for i, b in enumerate(boxes) if _iou(b, box) > 0.3]
            if not same:
                boxes.append(box)
            elif box.score > boxes[same[0]].score:
                boxes[same[0]] = box


def detect_faces(rgb: np.ndarray, min_score: float = MIN_DETECTION_SCORE) -> list[FaceBox]:
    """All faces in ``rgb`` (uint8 H,W,3), duplicates between the two detector ranges merged.

    The detectors see the picture at 128-192 px, so a face under ~5 % of a large photo is missed; when the
    whole picture yields nothing, overlapping tiles (half the short side, 25 % overlap) are searched too.
    """
    boxes: list[FaceBox] = []
    _detect(rgb, min_score, (0, 0), boxes)
    h, w = rgb.shape[:2]
    if not boxes and min(h, w) >= 2 * TILE_MIN:
        side = max(TILE_MIN, min(h, w) // 2)
        step = int(side * 0.75)
        ys = sorted({*range(0, max(1, h - side), step), max(0, h - side)})
        xs = sorted({*range(0, max(1, w - side), step), max(0, w - side)})
        for y in ys:
            for x in xs:
                _detect(rgb[y:y + side, x:x + side], min_score, (x, y), boxes)
    return boxes


def choose_face(boxes: list[FaceBox], width: int, height: int) -> int:
    """Index of the face to use: the largest and most central one.

    Score = sqrt(box area / image area) - 0.5 * (distance of the box centre from the
    image centre / half the image diagonal): size counts most, centrality breaks near-ties.
    """
    if not boxes:
        raise ValueError("no boxes")
    half_diag = 0.5 * float(np.hypot(width, height))

    def score(b: FaceBox) -> float:
        cx, cy = b.center
        off = float(np.hypot(cx - width / 2, cy - height / 2)) / half_diag
        return float(np.sqrt(b.area / (width * height))) - 0.5 * off

    return int(np.argmax([score(b) for b in boxes]))


def face_landmarks(rgb: np.ndarray, box: FaceBox) -> np.ndarray:
    """478 mediapipe landmarks (x, y in image pixels, z in the same pixel scale, relative depth) of the face
    in ``box``. The mesh runs on a square crop 2.2x the box around it (white padding off-image)."""
    h, w = rgb.shape[:2]
    cx, cy = box.center
    side = 2.2 * max(box.x1 - box.x0, box.y1 - box.y0)
    x0, y0 = int(np.floor(cx - side / 2)), int(np.floor(cy - side / 2))
    n = int(np.ceil(side))
    crop = np.full((n, n, 3), 255, np.uint8)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + n), min(h, y0 + n)
    crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    scale = 1.0
    if n > 768:  # the mesh model sees 192x192 anyway: no need to hand it a huge crop
        scale = 768 / n
        crop = np.asarray(Image.fromarray(crop).resize((768, 768), Image.Resampling.BOX))
    fm = solution("face_mesh")
    with fm.FaceMesh(static_image_mode=True, max_num_faces=3, refine_landmarks=True,
                     min_detection_confidence=0.3) as mesh:
        result = mesh.process(crop)
    faces = result.multi_face_landmarks or []
    if not faces:
        raise NoFaceError(
            "a face was detected but its landmarks could not be found (turned away, covered or blurred?); "
            "use a sharper photo with the face looking roughly at the camera"
        )
    cs = crop.shape[0]
    candidates = [np.array([(p.x * cs, p.y * cs, p.z * cs) for p in f.landmark], dtype=np.float64) for f in faces]
    centre = np.array([cs / 2, cs / 2])
    best = min(candidates, key=lambda lm: float(np.linalg.norm(lm[:, :2].mean(0) - centre)))
    out = best / scale
    out[:, 0] += x0
    out[:, 1] += y0
    return out.astype(np.float32)
