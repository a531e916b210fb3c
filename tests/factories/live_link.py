"""Apple Live Link Face CSVs, ARKit JSONs, Audio2Face JSONs and Audio2Face-3D CSVs for tests, written
from the format descriptions (LAM_SPEC section 5; Audio2Face's documented export keys; Audio2Face-3D's
``timeCode,blendShapes.<Name>`` columns), not from one recording: any rate, timecode drift, BOM, CRLF,
column order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from backend.core.formats.arkit_track import ARKIT_NAMES, EYE_COLUMNS, HEAD_COLUMNS

PASCAL_NAMES = tuple(n[0].upper() + n[1:] for n in ARKIT_NAMES)


def timecodes(n: int, rate: int, start: str = "12:34:56:10.000", step: float = 1.0) -> list[str]:
    """``HH:MM:SS:FF.fff`` of n rows ``step`` timecode frames apart (1.0005: steps of 1.000 or 1.001
    once printed, the drift of a real recording)."""
    h, m, s, ff = start.split(":")
    first = ((int(h) * 3600 + int(m) * 60 + int(s)) * rate + float(ff)) * 1000
    out = []
    for i in range(n):
        milli = int(round(first + i * step * 1000))
        secs, rem = divmod(milli, rate * 1000)
        frame, frac = divmod(rem, 1000)
        out.append(f"{secs // 3600 % 24:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}:{frame:02d}.{frac:03d}")
    return out


def random_track(n: int, seed: int = 0, head: bool = True, eyes: bool = True):
    """(weights n,52 in [0,1], head n,3 or zeros, eyes n,6 or zeros), smooth-ish in time."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, n)[:, None]
    weights = np.clip(0.5 + 0.45 * np.sin(2 * np.pi * (rng.uniform(0.5, 3, 52) * t + rng.uniform(0, 1, 52))), 0, 1)
    h = 0.3 * np.sin(2 * np.pi * (t * [1.0, 0.7, 0.3] + [0.1, 0.2, 0.3])) if head else np.zeros((n, 3))
    e = 0.2 * np.cos(2 * np.pi * (t * np.arange(1, 7) * 0.5)) if eyes else np.zeros((n, 6))
    return weights, h, e


def live_link_csv(path: Path, weights: np.ndarray, head: np.ndarray | None = None, eyes: np.ndarray | None = None, *,
                  rate: int = 60, start: str = "12:34:56:10.000", step: float = 1.0, codes: list[str] | None = None,
                  order: list[int] | None = None, bom: bool = False, crlf: bool = False,
                  extra: dict[str, np.ndarray] | None = None) -> Path:
    """Write a Live Link Face CSV: Timecode, BlendShapeCount (61), the 52 PascalCase blendshapes,
    HeadYaw..RightEyeRoll (zeros when None), ``extra`` columns; ``order`` permutes the columns."""
    n = weights.shape[0]
    head = np.zeros((n, 3)) if head is None else head
    eyes = np.zeros((n, 6)) if eyes is None else eyes
    codes = codes or timecodes(n, rate, start, step)
    header = ["Timecode", "BlendShapeCount", *PASCAL_NAMES, *HEAD_COLUMNS, *EYE_COLUMNS, *(extra or {})]
    cols = [np.asarray(codes), np.full(n, "61")]
    numbers = np.concatenate([weights, head, eyes, *[np.asarray(v).reshape(n, 1) for v in (extra or {}).values()]],
                             axis=1)
    cols += [np.array([f"{v:.10f}" for v in numbers[:, j]]) for j in range(numbers.shape[1])]
    if order is not None:
        header = [header[i] for i in order]
        cols = [cols[i] for i in order]
    nl = "\r\n" if crlf else "\n"
    lines = [",".join(header)] + [",".join(c[i] for c in cols) for i in range(n)]
    data = nl.join(lines) + nl
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode())
    return path


def arkit_json(path: Path, weights: np.ndarray, names=ARKIT_NAMES, fps: float | None = None,
               head_pose: np.ndarray | None = None, times: bool = False) -> Path:
    """Write the LAM/Audio2Expression ARKit JSON layout."""
    data: dict = {"names": list(names)}
    if fps is not None:
        data["metadata"] = {"fps": fps}
    step = 1.0 / (fps or 30.0)
    data["frames"] = [{"weights": [float(x) for x in row], **({"time": i * step} if times else {})}
                      for i, row in enumerate(weights)]
    if head_pose is not None:
        data["head_pose"] = np.asarray(head_pose).tolist()
    path.write_text(json.dumps(data))
    return path


def audio2face_json(path: Path, weights: np.ndarray, names=ARKIT_NAMES, fps: float | None = 30.0,
                    joints: bool = False, **fields) -> Path:
    """Write NVIDIA Audio2Face's blendshape export: ``exportFps``, ``numPoses``, ``numFrames``,
    ``facsNames`` and ``weightMat`` (frames x poses); ``joints`` adds its joint rotation block
    (one joint, identity quaternions); ``fields`` override or add top-level keys."""
    data: dict = {"trackPath": "/World/audio2face/Player"}
    if fps is not None:
        data["exportFps"] = fps
    data.update(numPoses=len(names), numFrames=int(weights.shape[0]), facsNames=list(names),
                weightMat=[[float(x) for x in row] for row in weights])
    if joints:
        data.update(joints=["jaw"], rotations=[[[0.0, 0.0, 0.0, 1.0]]] * int(weights.shape[0]),
                    translations=[[[0.0, 0.0, 0.0]]] * int(weights.shape[0]))
    data.update(fields)
    path.write_text(json.dumps(data, indent=2))
    return path


def audio2face_csv(path: Path, weights: np.ndarray, names=PASCAL_NAMES, fps: float = 30.0, *,
                   times: np.ndarray | None = None, index: bool = False, prefix: str = "blendShapes.") -> Path:
    """Write Audio2Face-3D's ``animation_frames.csv``: ``timeCode`` in seconds (6 decimals, as its
    clients print them), then one ``blendShapes.<Name>`` column per name; ``index`` puts an unnamed
    row-number column first (a table written with its index)."""
    n = weights.shape[0]
    t = np.arange(n) / fps if times is None else np.asarray(times)
    header = ["timeCode", *(prefix + name for name in names)]
    rows = [[f"{t[i]:.6f}", *(f"{v:.10f}" for v in weights[i])] for i in range(n)]
    if index:
        header = ["", *header]
        rows = [[str(i), *row] for i, row in enumerate(rows)]
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    return path
