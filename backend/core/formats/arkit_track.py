"""ARKit blendshape tracks -> one :class:`ArkitTrack` (numpy + stdlib only; the add-on imports it).

Three layouts (the first two: LAM_SPEC section 5):

* **Apple Live Link Face CSV**: ``Timecode,BlendShapeCount,EyeBlinkLeft,...`` then one row per
  frame; PascalCase names (``EyeBlinkLeft`` -> ``eyeBlinkLeft``), ``HH:MM:SS:FF.fff`` timecodes,
  then head and eye angles in radians. Columns are matched by name, never by position.
* **ARKit JSON** (LAM / Audio2Expression): ``{"names": [...], "metadata": {"fps": 30},
  "frames": [{"weights": [...]}, ...]}``; optional per-frame ``time`` and top-level ``head_pose``.
* **Audio2Face blendshape JSON** (NVIDIA Audio2Face's export, the other common audio-to-expression
  tool): ``{"exportFps": 30, "numPoses": K, "numFrames": T, "facsNames": [...], "weightMat":
  [[K floats] x T]}``; its optional joint ``rotations``/``translations`` are not read.
* **Audio2Face-3D CSV** (``animation_frames.csv`` of NVIDIA's Audio2Face-3D service and its
  clients): ``timeCode,blendShapes.EyeBlinkLeft,...``, time codes in seconds, one row per frame,
  sometimes after an unnamed index column (a table written with its row numbers).

Channels come out in Apple's order (:data:`ARKIT_NAMES`) whatever the file's order, so a file
with shuffled columns gives the same track. Names that are not ARKit's are left out with a
warning; a file with none of ARKit's names, or any damage, is refused with a
:class:`~backend.core.errors.BadInputError` naming the file and the problem.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..motion_timing import resample_arrays

# The 52 ARKit blendshapes in Apple's capture order (the order of Live Link Face's columns).
ARKIT_NAMES: tuple[str, ...] = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight", "jawForward", "jawRight", "jawLeft", "jawOpen", "mouthClose", "mouthFunnel",
    "mouthPucker", "mouthRight", "mouthLeft", "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthPressLeft", "mouthPressRight",
    "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft", "mouthUpperUpRight", "browDownLeft",
    "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff", "cheekSquintLeft",
    "cheekSquintRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
)
_BY_LOWER = {n.lower(): n for n in ARKIT_NAMES}
_ORDER = {n: i for i, n in enumerate(ARKIT_NAMES)}

HEAD_COLUMNS = ("HeadYaw", "HeadPitch", "HeadRoll")
EYE_COLUMNS = ("LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll")
DEFAULT_JSON_FPS = 30.0  # LAM's web player plays ARKit JSON at 30 fps
_STANDARD_RATES = (24.0, 25.0, 30.0, 48.0, 50.0, 60.0, 100.0, 120.0, 240.0)

# The LAM web player's per-channel scales (LAM_SPEC section 7), applied before it uses a track.
# A family name ("mouthPress") scales every ARKit channel of that family (mouthPressLeft/Right).
_LAM_WEB_FAMILIES = {
    "jawOpen": 1.2, "mouthClose": 0.2, "mouthLowerDown": 0.7, "mouthShrugUpper": 0.1,
    **{f: 1.3 for f in ("mouthDimple", "mouthFrown", "mouthFunnel", "mouthLeft", "mouthRight", "mouthPress",
                        "mouthRoll", "mouthShrugLower", "mouthStretch", "mouthUpperUp")},
}
LAM_WEB_CALIBRATION: dict[str, float] = {
    name: scale for fam, scale in _LAM_WEB_FAMILIES.items() for name in ARKIT_NAMES
    if name == fam or (name.startswith(fam) and name[len(fam):] in ("Left", "Right", "Lower", "Upper"))
}


@dataclass
class ArkitTrack:
    """T frames of K ARKit channels.

    ``names``: ARKit/glTF names in Apple's order; ``weights`` T,K float32 as in the file;
    ``times`` T float64 seconds from the first frame, as the file times them (rows are still
    meant one per frame at the nominal rate ``fps``: see :mod:`backend.core.motion_timing`);
    ``head`` T,3 (yaw, pitch, roll; radians) or None when not recorded; ``eyes`` T,6 (left yaw,
    pitch, roll, right yaw, pitch, roll; radians) or None; ``head_documented`` is False when the
    head angles' convention is unknown (ARKit JSON ``head_pose``)."""

    names: tuple[str, ...]
    weights: np.ndarray
    times: np.ndarray
    fps: float
    source: str
    head: np.ndarray | None = None
    eyes: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    head_documented: bool = True

    @property
    def n_frames(self) -> int:
        return int(self.weights.shape[0])

    def channel(self, name: str) -> np.ndarray:
        """The T values of one channel (KeyError naming the channels present when absent)."""
        try:
            return self.weights[:, self.names.index(name)]
        except ValueError:
            raise KeyError(f"{name!r} is not in the track ({', '.join(self.names)})") from None

    def resampled(self, target_fps: float, start_frame: int = 0) -> tuple[np.ndarray, ArkitTrack]:
        """(scene frame numbers M, the track at those frames) by :mod:`backend.core.motion_timing`'s
        convention, rows timed one per frame at ``fps``: same rate -> the rows exactly."""
        frames, a = resample_arrays({"weights": self.weights, "head": self.head, "eyes": self.eyes}, target_fps,
                                    start_frame, source_fps=self.fps)
        times = (frames - frames[0]) / float(target_fps)
        return frames, replace(self, weights=a["weights"], head=a["head"], eyes=a["eyes"], times=times,
                               fps=float(target_fps), warnings=list(self.warnings))


def arkit_name(column: str) -> str | None:
    """The ARKit name of a column (``EyeBlinkLeft``, ``eyeBlinkLeft`` -> ``eyeBlinkLeft``), else None."""
    return _BY_LOWER.get(column.strip().lower())


def calibration_scales(names: tuple[str, ...] | list[str], strength: float = 1.0,
                       lam_web: bool = True) -> np.ndarray:
    """Per-channel factors K float32: ``strength`` times the LAM web player's scale (1 when off)."""
    table = LAM_WEB_CALIBRATION if lam_web else {}
    return np.array([float(strength) * table.get(n, 1.0) for n in names], dtype=np.float32)


def apply_calibration(track: ArkitTrack, strength: float = 1.0, lam_web: bool = True) -> ArkitTrack:
    """A copy whose weights are scaled as :func:`calibration_scales` says (not clipped: the web
    player does not clip either). Head and eye angles are unchanged."""
    scales = calibration_scales(track.names, strength, lam_web)
    return replace(track, weights=(track.weights * scales[None]).astype(np.float32), warnings=list(track.warnings))


# ------------------------------------------------------------------------------------- detection


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise BadInputError(f"ARKit track not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadInputError(f"ARKit track {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise BadInputError(f"ARKit track {path}: the file is empty")
    return text


def _kind_of_text(text: str) -> str | None:
    head = text.lstrip("\ufeff \t\r\n")
    if head.startswith("{"):
        return "json"
    cells = [c.strip().strip('"').lower() for c in head.split("\n", 1)[0].split(",", 2)[:2]]
    # Live Link Face starts with Timecode; Audio2Face-3D's CSV with timeCode, perhaps after an index column
    return "csv" if cells[0] == "timecode" or (cells[0] == "" and cells[1:] == ["timecode"]) else None


def sniff_arkit_track(path: str | os.PathLike) -> str | None:
    """'csv' or 'json' when ``path`` is (by content, else by extension) an ARKit track, else None."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, "rb") as fh:
        start = fh.read(4096)
    kind = _kind_of_text(start.decode("utf-8-sig", errors="replace"))
    if kind is None and path.suffix.lower() in (".csv", ".json"):
        kind = path.suffix.lower()[1:]
    return kind


def load_arkit_track(path: str | os.PathLike) -> ArkitTrack:
    """Read a Live Link Face CSV or an ARKit JSON, deciding by content, then by extension."""
    path = Path(path)
    text = _read_text(path)
    kind = _kind_of_text(text) or {".csv": "csv", ".json": "json"}.get(path.suffix.lower())
    if kind == "json":
        return parse_arkit_json(text, str(path))
    if kind == "csv":
        return parse_arkit_csv(text, str(path))
    raise BadInputError(f"ARKit track {path}: not a Live Link Face CSV (header 'Timecode,BlendShapeCount,...'), "
                        f"an Audio2Face-3D CSV (header 'timeCode,blendShapes.EyeBlinkLeft,...') "
                        f"nor an ARKit JSON ({{\"names\": [...], \"frames\": [...]}} or Audio2Face's "
                        f"{{\"facsNames\": [...], \"weightMat\": [...]}})")


def _snap_rate(rate: float) -> float:
    for std in _STANDARD_RATES:
        if abs(rate - std) <= 0.005 * std:
            return std
    return float(rate)


def _channels(columns: list[str], where: str) -> tuple[list[int], tuple[str, ...], list[str]]:
    """File positions of the ARKit channels in Apple's order, their names, and the unknown names."""
    found: dict[str, int] = {}
    unknown = []
    for i, col in enumerate(columns):
        name = arkit_name(col)
        if name is None:
            unknown.append(col)
        elif name in found:
            raise BadInputError(f"{where}: the channel {name!r} appears twice")
        else:
            found[name] = i
    if not found:
        shown = ", ".join(repr(u) for u in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        raise BadInputError(f"{where}: no ARKit blendshape names found (names: {shown or 'none'}); "
                            f"expected names like 'eyeBlinkLeft', 'jawOpen'")
    names = tuple(sorted(found, key=_ORDER.__getitem__))
    return [found[n] for n in names], names, unknown


def _unknown_note(unknown: list[str]) -> str:
    shown = ", ".join(unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
    return f"{len(unknown)} channel(s) that are not ARKit blendshapes ignored: {shown}"


def _range_note(weights: np.ndarray, names: tuple[str, ...]) -> list[str]:
    out = (weights < -1e-3) | (weights > 1 + 1e-3)
    if not out.any():
        return []
    cols = [names[k] for k in np.flatnonzero(out.any(axis=0))]
    return [f"values outside [0, 1] in {', '.join(cols[:5])}{' ...' if len(cols) > 5 else ''} "
            f"(range {weights.min():.3g} to {weights.max():.3g}); kept as they are"]


# ------------------------------------------------------------------------------ Live Link Face CSV

_TIMECODE = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2})[:;](\d+)(\.\d+)?$")


def _parse_timecodes(codes: list[str], lines: list[int], where: str) -> tuple[np.ndarray, np.ndarray]:
    """Whole seconds (int) and frame-within-second with its fraction (float) per row."""
    secs = np.empty(len(codes), np.int64)
    frame = np.empty(len(codes), np.float64)
    for k, code in enumerate(codes):
        m = _TIMECODE.match(code.strip())
        if m is None:
            raise BadInputError(f"{where}: line {lines[k]}: timecode {code!r} is not HH:MM:SS:FF.fff")
        h, mi, s, ff, frac = m.groups()
        secs[k] = int(h) * 3600 + int(mi) * 60 + int(s)
        frame[k] = int(ff) + (float(frac) if frac else 0.0)
    back = np.diff(secs) < -43200  # past midnight: the clock starts again at 00:00:00
    if back.any():
        secs[1:] += 86400 * np.cumsum(back)
    return secs, frame


def _timecode_rate(secs: np.ndarray, frame: np.ndarray, where: str, notes: list[str]) -> float:
    """The timecode's frames per second (the FF field's base), from where the FF field wraps."""
    top = float(frame.max())
    same = np.diff(secs) == 0
    steps = np.diff(frame)[same]
    step = float(np.median(steps)) if steps.size else 1.0
    wraps = np.flatnonzero(np.diff(secs) == 1)
    if wraps.size:
        # frame[i] + step == base + frame[i + 1] at a second boundary
        estimates = frame[wraps] + step - frame[wraps + 1]
        base = float(np.round(np.median(estimates)))
        if base <= top:
            raise BadInputError(f"{where}: timecode frame numbers reach {top:g}, but the seconds change every "
                                f"{base:g} frames; the timecodes are inconsistent")
        return base
    candidates = [r for r in _STANDARD_RATES if r > top]
    if not candidates:
        raise BadInputError(f"{where}: timecode frame numbers reach {top:g}: no frame rate fits")
    base = 60.0 if 60.0 in candidates else candidates[0]
    notes.append(f"the recording is shorter than a second boundary: its timecode rate cannot be derived, "
                 f"{base:g} fps assumed")
    return base


A2F_PREFIX = "blendshapes."  # Audio2Face-3D's column prefix, compared in lower case


def parse_arkit_csv(text: str, source: str = "<csv>") -> ArkitTrack:
    """A CSV track's text -> ArkitTrack: Audio2Face-3D's when its columns are ``blendShapes.*``,
    else Live Link Face's."""
    first = text.lstrip("\ufeff \t\r\n").split("\n", 1)[0].lower()
    if any(c.strip().strip('"').startswith(A2F_PREFIX) for c in first.split(",")):
        return parse_audio2face_csv(text, source)
    return parse_live_link_csv(text, source)


def _csv_table(text: str, where: str, expected: str) -> tuple[list[str], np.ndarray, list[int]]:
    """(header cells, T,C table of strings, the file's line number of each row) of a comma-separated
    text with a time code column (BOM, CRLF and blank lines tolerated)."""
    numbered = [(i + 1, ln) for i, ln in enumerate(text.lstrip("\ufeff").splitlines()) if ln.strip()]
    if not numbered:
        raise BadInputError(f"{where}: the file is empty")
    header = [c.strip().strip('"').strip() for c in numbered[0][1].split(",")]
    lower = [c.lower() for c in header]
    if "timecode" not in lower:
        raise BadInputError(f"{where}: the header has no 'Timecode' column (it starts {', '.join(header[:4])!r}); "
                            f"expected {expected!r}")
    dup = sorted({c for c in lower if c and lower.count(c) > 1})
    if dup:
        raise BadInputError(f"{where}: the header names {', '.join(dup)} more than once")
    rows = numbered[1:]
    if not rows:
        raise BadInputError(f"{where}: the header has no frames after it")
    cells = []
    for line_no, line in rows:
        parts = line.split(",")
        if len(parts) != len(header):
            raise BadInputError(f"{where}: line {line_no} has {len(parts)} values, the header {len(header)}")
        cells.append(parts)
    return header, np.array(cells, dtype=str), [n for n, _ in rows]


def _csv_numbers(table: np.ndarray, col_idx: list[int], header: list[str], line_nos: list[int],
                 where: str) -> np.ndarray:
    """The columns ``col_idx`` as float64, refusing text, NaN and infinities by line and column."""
    block = table[:, col_idx]
    try:
        values = block.astype(np.float64)
    except ValueError:
        for r, c in np.ndindex(*block.shape):
            try:
                float(block[r, c])
            except ValueError:
                raise BadInputError(f"{where}: line {line_nos[r]}, column {header[col_idx[c]]}: "
                                    f"{block[r, c]!r} is not a number") from None
        raise
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = (int(x[0]) for x in np.nonzero(bad))
        raise BadInputError(f"{where}: line {line_nos[r]}, column {header[col_idx[c]]}: "
                            f"{block[r, c].strip()} (NaN or infinite values are refused)")
    return values


def _row_rate(steps: np.ndarray, unit_rate: float, line_nos: list[int], column: str, notes: list[str]) -> float:
    """The rate of rows that lie ``steps`` apart (in units of 1/``unit_rate`` s): the median step's, snapped to a
    standard rate. Downstream rows are keyed one per frame at that rate, so a step over 1.5 rows is noted as a
    gap (a dropped row shifts the rest)."""
    per_row = float(np.median(steps))
    gaps = np.flatnonzero(steps > 1.5 * per_row)
    if gaps.size:
        notes.append(f"{gaps.size} {column} gap(s) (first at line {line_nos[gaps[0] + 1]}, "
                     f"{steps[gaps[0]] / per_row - 1:.3g} frames missing?): rows are timed one per frame")
    return _snap_rate(unit_rate / per_row)


def parse_live_link_csv(text: str, source: str = "<csv>") -> ArkitTrack:
    """A Live Link Face CSV's text -> ArkitTrack (BOM and CRLF tolerated)."""
    where = f"Live Link Face CSV {source}"
    header, table, line_nos = _csv_table(text, where, "Timecode,BlendShapeCount,EyeBlinkLeft,...")
    lower = [c.lower() for c in header]
    special = {"timecode", "blendshapecount", *(c.lower() for c in HEAD_COLUMNS + EYE_COLUMNS)}
    shape_cols = [i for i, c in enumerate(lower) if c not in special]
    pos, names, unknown = _channels([header[i] for i in shape_cols], where)
    notes = [_unknown_note(unknown)] if unknown else []

    def numbers(col_idx: list[int]) -> np.ndarray:
        return _csv_numbers(table, col_idx, header, line_nos, where)

    weights = numbers([shape_cols[p] for p in pos]).astype(np.float32)
    notes += _range_note(weights, names)

    def angles(cols: tuple[str, ...], what: str) -> np.ndarray | None:
        have = [c for c in cols if c.lower() in lower]
        if not have:
            return None
        if len(have) != len(cols):
            notes.append(f"{what} columns incomplete ({', '.join(have)}): {what} angles ignored")
            return None
        values = numbers([lower.index(c.lower()) for c in cols]).astype(np.float32)
        return None if not values.any() else values  # all zero: the app did not record them

    head = angles(HEAD_COLUMNS, "head")
    eyes = angles(EYE_COLUMNS, "eye")

    secs, frame = _parse_timecodes(list(table[:, lower.index("timecode")]), line_nos, where)
    base = _timecode_rate(secs, frame, where, notes)
    clock = (secs - secs[0]) + frame / base - frame[0] / base
    steps = np.diff(clock) * base  # in timecode frames
    if steps.size and (steps <= 0).any():
        k = int(np.flatnonzero(steps <= 0)[0])
        raise BadInputError(f"{where}: timecodes go backwards or repeat at line {line_nos[k + 1]} "
                            f"({table[k, lower.index('timecode')]} then {table[k + 1, lower.index('timecode')]})")
    fps = _row_rate(steps, base, line_nos, "timecode", notes) if steps.size else base
    return ArkitTrack(names=names, weights=weights, times=clock.astype(np.float64), fps=fps, source=source,
                      head=head, eyes=eyes, warnings=notes)



def parse_audio2face_csv(text: str, source: str = "<csv>") -> ArkitTrack:
    """An Audio2Face-3D ``animation_frames.csv``'s text -> ArkitTrack. ``timeCode`` is seconds; the
    rate is the median step's, snapped to a standard rate (30 fps for a single row)."""
    where = f"Audio2Face-3D CSV {source}"
    header, table, line_nos = _csv_table(text, where, "timeCode,blendShapes.EyeBlinkLeft,...")
    lower = [c.lower() for c in header]
    time_col = lower.index("timecode")
    # an unnamed column is the row index a table writer added: not a channel
    cols = [i for i, c in enumerate(lower) if i != time_col and c]
    shown = [header[i][len(A2F_PREFIX):] if lower[i].startswith(A2F_PREFIX) else header[i] for i in cols]
    pos, names, unknown = _channels(shown, where)
    notes = [_unknown_note(unknown)] if unknown else []
    weights = _csv_numbers(table, [cols[p] for p in pos], header, line_nos, where).astype(np.float32)
    notes += _range_note(weights, names)

    t = _csv_numbers(table, [time_col], header, line_nos, where)[:, 0]
    steps = np.diff(t)
    if (steps <= 0).any():
        k = int(np.flatnonzero(steps <= 0)[0])
        raise BadInputError(f"{where}: timeCode goes backwards or repeats at line {line_nos[k + 1]} "
                            f"({t[k]:g} then {t[k + 1]:g} s)")
    if steps.size:
        fps = _row_rate(steps, 1.0, line_nos, "timeCode", notes)
    else:
        fps = DEFAULT_JSON_FPS
        notes.append(f"a single row: its rate cannot be derived, {fps:g} fps assumed")
    return ArkitTrack(names=names, weights=weights, times=t - t[0], fps=fps, source=source, warnings=notes)


# ------------------------------------------------------------------------------------- ARKit JSON


def parse_arkit_json(text: str, source: str = "<json>") -> ArkitTrack:
    """An ARKit JSON's text -> ArkitTrack. Rate: ``metadata.fps``, else the frames' ``time`` steps,
    else 30 fps. ``head_pose`` [T][3] is kept as ``head`` with ``head_documented`` False."""
    where = f"ARKit JSON {source}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if isinstance(data, dict) and "facsNames" in data and "weightMat" in data:
        return _parse_audio2face(data, source)
    if not isinstance(data, dict) or "names" not in data or "frames" not in data:
        keys = ", ".join(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise BadInputError(f"{where}: expected an object with 'names' and 'frames' (LAM's ARKit JSON) or "
                            f"'facsNames' and 'weightMat' (Audio2Face's export) (found {keys or 'nothing'})")
    raw_names, frames = _names(data, "names", where), data["frames"]
    if not isinstance(frames, list) or not frames:
        raise BadInputError(f"{where}: no frames ('frames' is {'empty' if frames == [] else 'not a list'})")
    pos, names, unknown = _channels(raw_names, where)
    notes = [_unknown_note(unknown)] if unknown else []

    rows = []
    for k, fr in enumerate(frames):
        w = fr.get("weights") if isinstance(fr, dict) else None
        if not isinstance(w, list):
            raise BadInputError(f"{where}: frame {k} has no 'weights' list")
        rows.append(w)
    weights = _weight_table(rows, raw_names, pos, where, "frame", "'names'")
    notes += _range_note(weights, names)

    meta = data.get("metadata")
    meta_fps = _rate(meta.get("fps") if isinstance(meta, dict) else None, "metadata.fps", where)
    times = _json_times(frames, where)
    if times is not None and len(times) > 1:
        time_fps = _snap_rate(1.0 / float(np.median(np.diff(times))))
        if meta_fps is not None and abs(time_fps - meta_fps) > 0.005 * meta_fps:
            notes.append(f"metadata.fps {meta_fps:g} disagrees with the frames' times ({time_fps:g} fps): "
                         f"metadata.fps used")
        fps = float(meta_fps) if meta_fps is not None else time_fps
    else:
        fps = float(meta_fps) if meta_fps is not None else DEFAULT_JSON_FPS
    if times is None:
        times = np.arange(len(frames), dtype=np.float64) / fps

    head = _json_head(data.get("head_pose"), len(frames), notes)
    return ArkitTrack(names=names, weights=weights, times=times, fps=fps, source=source, head=head,
                      eyes=None, warnings=notes, head_documented=head is None)


def _parse_audio2face(data: dict, source: str) -> ArkitTrack:
    """Audio2Face's blendshape export: ``weightMat`` rows are frames at ``exportFps``."""
    where = f"Audio2Face JSON {source}"
    raw_names, rows = _names(data, "facsNames", where), data["weightMat"]
    if not isinstance(rows, list) or not rows:
        raise BadInputError(f"{where}: no frames ('weightMat' is {'empty' if rows == [] else 'not a list'})")
    pos, names, unknown = _channels(raw_names, where)
    notes = [_unknown_note(unknown)] if unknown else []
    for k, row in enumerate(rows):
        if not isinstance(row, list):
            raise BadInputError(f"{where}: 'weightMat' row {k} is not a list of weights")
    weights = _weight_table(rows, raw_names, pos, where, "'weightMat' row", "'facsNames'")
    notes += _range_note(weights, names)
    for key, have in (("numFrames", len(rows)), ("numPoses", len(raw_names))):
        said = data.get(key)
        if said is not None and said != have:
            notes.append(f"{key} says {said!r}, the weights have {have}: the weights are used")
    fps = _rate(data.get("exportFps"), "exportFps", where)
    if fps is None:
        fps = DEFAULT_JSON_FPS
        notes.append(f"no exportFps: {fps:g} fps assumed")
    if any(data.get(k) for k in ("rotations", "translations")):
        notes.append("Audio2Face's joint rotations/translations are not read: only the blendshapes are keyed")
    times = np.arange(len(rows), dtype=np.float64) / fps
    return ArkitTrack(names=names, weights=weights, times=times, fps=float(fps), source=source, warnings=notes)


def _names(data: dict, key: str, where: str) -> list[str]:
    names = data[key]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BadInputError(f"{where}: {key!r} must be a list of strings")
    return names


def _weight_table(rows: list[list], raw_names: list[str], pos: list[int], where: str, row_word: str,
                  names_key: str) -> np.ndarray:
    """T,K float32 of the ARKit channels (file positions ``pos``) from T rows of len(raw_names) numbers."""
    width = len(raw_names)
    for k, row in enumerate(rows):
        if len(row) != width:
            raise BadInputError(f"{where}: {row_word} {k} has {len(row)} weights, {names_key} has {width}")
    try:
        table = np.array(rows, dtype=np.float64)
    except (TypeError, ValueError):
        k = next(i for i, r in enumerate(rows) if not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                          for x in r))
        raise BadInputError(f"{where}: {row_word} {k}: weights must be numbers") from None
    bad = ~np.isfinite(table)
    if bad.any():
        k, c = (int(x[0]) for x in np.nonzero(bad))
        raise BadInputError(f"{where}: {row_word} {k}, {raw_names[c]}: NaN or infinite values are refused")
    return table[:, pos].astype(np.float32)


def _rate(value, key: str, where: str) -> float | None:
    """A file's frame rate field: None when absent, refused unless a positive finite number."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value) or value <= 0):
        raise BadInputError(f"{where}: {key} must be a positive number, got {value!r}")
    return None if value is None else float(value)


def _json_times(frames: list, where: str) -> np.ndarray | None:
    """The frames' ``time`` (seconds, from the first) when every frame has one, else None."""
    raw = [fr.get("time") if isinstance(fr, dict) else None for fr in frames]
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in raw):
        return None
    t = np.asarray(raw, dtype=np.float64)
    if not np.isfinite(t).all():
        raise BadInputError(f"{where}: a frame's 'time' is NaN or infinite")
    steps = np.diff(t)
    if (steps <= 0).any():
        k = int(np.flatnonzero(steps <= 0)[0])
        raise BadInputError(f"{where}: frame times go backwards or repeat at frame {k + 1} ({t[k]:g} then {t[k + 1]:g} s)")
    return t - t[0]


def _json_head(raw, n: int, notes: list[str]) -> np.ndarray | None:
    if raw is None:
        return None
    try:
        head = np.array(raw, dtype=np.float64)
    except (TypeError, ValueError):
        head = None
    if head is None or head.shape != (n, 3) or not np.isfinite(head).all():
        notes.append(f"'head_pose' is not {n} finite [x, y, z] triples: ignored")
        return None
    notes.append("'head_pose' kept, but its axis order and convention are undocumented")
    return head.astype(np.float32)
