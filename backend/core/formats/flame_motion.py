"""FLAME motion files -> a batched :class:`FlamePose` (numpy + stdlib only).

Reads the official LAM/FLAME tracking layout (LAM_SPEC section 4): a folder
``flame_param/`` (or any folder) of per-frame ``.npz`` files holding
``expr`` [1,100], ``rotation``, ``neck_pose``, ``jaw_pose`` [1,3], ``eyes_pose``
[1,6] (left eye then right eye), ``translation`` [1,3] and optionally ``shape``;
frames are taken in natural order (``2.npz`` before ``10.npz``) at 30 fps. Also a
single ``.npz`` with the same names stacked over frames ([T, ...]), optionally
with an ``fps`` scalar, and a ``.zip`` of either (read in memory through
:class:`~.safe_zip.SafeZip`: checked names, OS junk skipped, bounded inflation).
The Blender side uses this module too.

Other FLAME trackers name the same parameters differently; those names are read too
(:data:`ALIASES`): smplx's FLAME layer (``global_orient``, ``neck_pose``, ``jaw_pose``,
``leye_pose``, ``reye_pose``, ``expression``, ``transl``, ``betas``), DECA/EMOCA
(``expcode``, ``posecode`` = global + jaw, ``shapecode``), SMIRK (``expression_params``,
``pose_params``, ``jaw_params``) and a packed ``full_pose`` in FLAME's joint order
(global, neck, jaw, left eye, right eye). Each renaming is reported in the warnings, so
a user sees how their file was read; the official names win where both are present.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic_write import atomic_path
from ..errors import BadInputError
from ..rig import FlamePose
from .archive_paths import UnsafeArchiveError
from .npz_arrays import NpzError, read_npz
from .safe_zip import SafeZip

DEFAULT_FPS = 30.0
# file key -> (FlamePose field(s), width)
_POSE_KEYS = {"rotation": 3, "neck_pose": 3, "jaw_pose": 3, "eyes_pose": 6, "translation": 3}
KNOWN_KEYS = ("expr", *_POSE_KEYS)
#: official name -> other trackers' names for the same array, tried in this order
ALIASES: dict[str, tuple[str, ...]] = {
    "expr": ("expression", "exp", "expcode", "expression_params"),
    "rotation": ("global_orient", "global_pose", "root_pose"),
    "neck_pose": ("neck",),
    "jaw_pose": ("jaw", "jaw_params"),
    "eyes_pose": ("eye_pose",),
    "translation": ("transl", "trans"),
    "shape": ("betas", "shapecode", "shape_params"),
}
#: packed axis-angle poses in FLAME's joint order, told apart by their width
PACKED_POSES = ("full_pose", "pose", "posecode", "pose_params")
_PACKED_FIELDS = {3: ("rotation",), 6: ("rotation", "jaw_pose"),
                  15: ("rotation", "neck_pose", "jaw_pose", "eyes_pose")}


@dataclass
class Motion:
    """A motion: ``pose`` (B frames), ``fps``, the ``shape`` betas if the file had
    them (not applied: an avatar's shape is baked), and warnings for the user."""

    pose: FlamePose
    fps: float
    source: str
    shape: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return self.pose.batch_size


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers numerically: frame2 < frame10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _read_npz(path: Path | str, data: bytes | None = None) -> dict[str, np.ndarray]:
    """A .npz file's arrays (``data``: its bytes when it is no file on disk, ``path`` then names it)."""
    try:
        return read_npz(path if data is None else data)
    except NpzError as exc:
        raise BadInputError(f"motion file {path}: {exc.problem}") from None


def _frames_array(arrays: dict, key: str, width: int | None, path: Path, n_frames: int | None,
                  called: dict[str, str]) -> np.ndarray | None:
    """arrays[key] as float32 T,width (accepts [width] and [1,width] for one frame); ``called``: what
    the file calls a renamed key, for the messages."""
    if key not in arrays:
        return None
    name = called.get(key, f"'{key}'")
    a = np.asarray(arrays[key])
    if a.dtype.kind not in "fiu":
        raise BadInputError(f"motion file {path}: {name} must hold numbers, got dtype {a.dtype}")
    if a.ndim == 1:
        a = a[None]
    if a.ndim == 3 and a.shape[1] == 1:  # [T,1,W] stacked per-frame arrays
        a = a[:, 0]
    if a.ndim != 2 or (width is not None and a.shape[1] != width):
        want = f"[T, {width}]" if width is not None else "[T, E]"
        raise BadInputError(f"motion file {path}: {name} has shape {tuple(np.shape(arrays[key]))}, expected {want}")
    if n_frames is not None and a.shape[0] != n_frames:
        raise BadInputError(f"motion file {path}: {name} has {a.shape[0]} frames but "
                            f"{called.get('expr', repr('expr'))} has {n_frames}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise BadInputError(f"motion file {path}: {name} contains NaN or infinite values")
    return a


def _rows(a: np.ndarray) -> np.ndarray:
    """A per-frame array as T rows: [W] -> [1,W]; [T,1,W] or [T,J,3] -> [T,W]."""
    a = np.asarray(a)
    if a.ndim == 1:
        return a[None]
    return a.reshape(a.shape[0], int(np.prod(a.shape[1:]))) if a.ndim == 3 else a


def _official_names(arrays: dict, path: Path) -> tuple[dict, dict[str, str], list[str]]:
    """The arrays under LAM's names (from :data:`ALIASES`, :data:`PACKED_POSES` and smplx's separate eye
    poses), what each renamed one was called in the file (for messages), and a note per renaming.
    Official names already present win."""
    out = dict(arrays)
    called: dict[str, str] = {}
    notes: list[str] = []
    for key, names in ALIASES.items():
        found = [n for n in names if n in arrays]
        if not found:
            continue
        if key in arrays:
            notes.append(f"'{key}' used, '{found[0]}' ignored")
            continue
        out[key], called[key] = arrays[found[0]], f"'{found[0]}' (read as '{key}')"
        notes.append(f"'{found[0]}' read as '{key}'" + (f", '{found[1]}' ignored" if len(found) > 1 else ""))
    eyes = {n: _rows(arrays[n]) for n in ("leye_pose", "reye_pose") if n in arrays}
    if eyes and "eyes_pose" not in out:
        shapes = {e.shape for e in eyes.values()}
        if len(shapes) > 1 or any(e.ndim != 2 for e in eyes.values()):
            raise BadInputError(f"motion file {path}: 'leye_pose' and 'reye_pose' must both be [T, 3] "
                                f"(got {', '.join(str(x) for x in shapes)})")
        like = next(iter(eyes.values()))
        out["eyes_pose"] = np.concatenate([eyes.get(n, np.zeros_like(like)) for n in ("leye_pose", "reye_pose")], 1)
        called["eyes_pose"] = "'leye_pose', 'reye_pose' (read as 'eyes_pose')"
        notes.append("'leye_pose', 'reye_pose' read as 'eyes_pose'" + ("" if len(eyes) == 2 else ", the missing eye zero"))
    for name in (n for n in PACKED_POSES if n in arrays):
        packed = _rows(arrays[name])
        fields = _PACKED_FIELDS.get(packed.shape[1]) if packed.ndim == 2 else None
        if fields is None:
            notes.append(f"'{name}' ignored: shape {tuple(np.shape(arrays[name]))} is no FLAME pose "
                         f"(3, 6 or 15 axis-angle values per frame)")
            continue
        taken, start = [], 0
        for key in fields:
            width = _POSE_KEYS[key]
            if key not in out:
                out[key], called[key] = packed[:, start:start + width], f"'{name}' (its {key})"
                taken.append(key)
            start += width
        notes.append(f"'{name}' read as {', '.join(taken)}" if taken else f"'{name}' ignored: its joints are given separately")
        break  # one packed pose is enough; a second would only disagree
    return out, called, notes


def _parse(arrays: dict, path: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None, list[str]]:
    """Validated T-stacked arrays for every known key (missing pose keys -> zeros)."""
    arrays, called, notes = _official_names(arrays, path)
    present = [k for k in KNOWN_KEYS if k in arrays]
    if not present:
        other = ", ".join(n for names in ALIASES.values() for n in names[:1])
        raise BadInputError(
            f"motion file {path}: no FLAME parameters found (keys: {', '.join(sorted(arrays)) or 'none'}); "
            f"expected {', '.join(KNOWN_KEYS)} as in LAM's flame_param/*.npz (or smplx/DECA names such as {other})"
        )
    expr = _frames_array(arrays, "expr", None, path, None, called)
    n = expr.shape[0] if expr is not None else None
    out: dict[str, np.ndarray] = {}
    for key, width in _POSE_KEYS.items():
        a = _frames_array(arrays, key, width, path, n, called)
        if a is not None and n is None:
            n = a.shape[0]
        out[key] = a
    if expr is None:
        notes.append("no 'expr' in the motion: neutral expression")
        expr = np.zeros((n, 0), np.float32)
    out["expr"] = expr
    missing = [k for k, v in out.items() if v is None]
    if missing:
        notes.append(f"missing {', '.join(missing)}: zeros used")
        for k in missing:
            out[k] = np.zeros((n, _POSE_KEYS[k]), np.float32)
    shape = None
    if "shape" in arrays:
        s = np.asarray(arrays["shape"])
        if s.dtype.kind in "fiu" and s.ndim >= 1 and s.size:
            shape = s.reshape(-1, s.shape[-1])[0].astype(np.float32)
        else:
            notes.append(f"{called.get('shape', repr('shape'))} ignored: not an array of numbers")
    return out, shape, notes


def _fit_expr(expr: np.ndarray, n_expr: int | None, notes: list[str]) -> np.ndarray:
    if n_expr is None or expr.shape[1] == n_expr:
        return expr
    e = expr.shape[1]
    if e > n_expr:
        dropped = float(np.abs(expr[:, n_expr:]).max()) if expr.size else 0.0
        notes.append(f"motion has {e} expression components, the avatar {n_expr}: extra ones dropped (largest |value| {dropped:.3g})")
        return np.ascontiguousarray(expr[:, :n_expr])
    if e > 0:
        notes.append(f"motion has {e} expression components, the avatar {n_expr}: the rest set to 0")
    return np.pad(expr, ((0, 0), (0, n_expr - e)))


def _to_pose(a: dict[str, np.ndarray]) -> FlamePose:
    eyes = a["eyes_pose"]
    return FlamePose(
        expr=a["expr"], rotation=a["rotation"], neck=a["neck_pose"], jaw=a["jaw_pose"],
        eye_l=np.ascontiguousarray(eyes[:, :3]), eye_r=np.ascontiguousarray(eyes[:, 3:]),
        translation=a["translation"],
    )


def _frame_files(folder: Path) -> list[Path]:
    if (folder / "flame_param").is_dir():
        folder = folder / "flame_param"
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".npz"]
    if not files:
        raise BadInputError(f"motion folder {folder}: no per-frame .npz files found (expected flame_param/*.npz)")
    return sorted(files, key=lambda p: natural_key(p.name))


def _stack_frames(frames: list[tuple[str, dict]], where: str) -> tuple[dict[str, np.ndarray], np.ndarray | None, list[str]]:
    """Per-frame files (name, arrays), in order, -> T-stacked arrays, shape betas, notes."""
    per_frame = []
    shape = None
    notes: list[str] = []
    for name, raw in frames:
        arrays, s, n = _parse(raw, name)
        if arrays["expr"].shape[0] != 1:
            raise BadInputError(f"motion file {name}: holds {arrays['expr'].shape[0]} frames; a folder needs one frame per file")
        per_frame.append(arrays)
        shape = s if shape is None else shape
        notes.extend(x for x in n if x not in notes)
    widths = {a["expr"].shape[1] for a in per_frame}
    if len(widths) > 1:
        raise BadInputError(f"motion folder {where}: frames disagree on the number of expression components ({sorted(widths)})")
    return {k: np.concatenate([a[k] for a in per_frame]) for k in per_frame[0]}, shape, notes


def _stacked_rate(raw: dict, where: str) -> float:
    if "fps" not in raw:
        return DEFAULT_FPS
    try:
        return float(np.asarray(raw["fps"]).reshape(-1)[0])
    except (ValueError, IndexError):
        raise BadInputError(f"motion file {where}: 'fps' must be a number") from None


def _zip_members(zf: SafeZip) -> list:
    """The .npz members to read: those under a ``flame_param/`` folder if there is one, else the
    .npz files of the one folder that holds them, in natural order."""
    npz = [m for m in zf.files if m.suffix.lower() == ".npz"]
    if not npz:
        raise BadInputError(f"motion ZIP {zf.path}: no .npz files inside (expected flame_param/*.npz or one stacked .npz)")
    tracked = [m for m in npz if m.parent.name == "flame_param"]
    chosen = tracked or npz
    folders = sorted({str(m.parent) for m in chosen})
    if len(folders) > 1:
        raise BadInputError(f"motion ZIP {zf.path}: .npz files in several folders ({', '.join(folders[:4])}); "
                            f"zip one flame_param/ folder or one stacked .npz")
    return sorted(chosen, key=lambda m: natural_key(m.name))


def _read_zip(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None, list[str], float]:
    try:
        zf = SafeZip(path, what="motion ZIP")
    except UnsafeArchiveError as exc:  # its message names the member, not the archive
        raise UnsafeArchiveError(f"motion ZIP {path}: {exc}") from None
    with zf:
        members = _zip_members(zf)
        loaded = [(f"{path}!{m}", _read_npz(f"{path}!{m}", zf.read(m))) for m in members]
    if len(loaded) == 1:
        name, raw = loaded[0]
        stacked, shape, notes = _parse(raw, name)
        return stacked, shape, notes, _stacked_rate(raw, name)
    stacked, shape, notes = _stack_frames(loaded, str(path))
    return stacked, shape, notes, DEFAULT_FPS


def load_motion(path: str | os.PathLike, n_expr: int | None = None, fps: float | None = None) -> Motion:
    """Read a motion (folder of per-frame .npz, one stacked .npz, or a .zip of either) as a batched pose.

    ``n_expr``: the avatar's E; expressions are truncated or zero-padded to it, with
    a warning (also in ``Motion.warnings``). ``fps`` overrides the file's rate."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"motion not found: {path}")
    if path.is_dir():
        stacked, shape, notes = _stack_frames([(str(f), _read_npz(f)) for f in _frame_files(path)], str(path))
        rate = DEFAULT_FPS
    elif path.suffix.lower() == ".npz":
        raw = _read_npz(path)
        stacked, shape, notes = _parse(raw, path)
        rate = _stacked_rate(raw, str(path))
    elif path.suffix.lower() == ".zip":
        stacked, shape, notes, rate = _read_zip(path)
    else:
        raise BadInputError(f"motion {path}: expected a folder of per-frame .npz files (flame_param/), one .npz file, "
                            f"or a .zip of either")
    if fps is not None:
        rate = float(fps)
    if not rate > 0:
        raise BadInputError(f"motion {path}: frame rate must be positive, got {rate}")
    stacked["expr"] = _fit_expr(stacked["expr"], n_expr, notes)
    for note in notes:
        warnings.warn(f"motion {path.name}: {note}", UserWarning, stacklevel=2)
    return Motion(pose=_to_pose(stacked), fps=rate, source=str(path), shape=shape, warnings=notes)


def save_motion(path: str | os.PathLike, pose: FlamePose, fps: float = DEFAULT_FPS) -> Path:
    """Write a stacked motion .npz (the single-file layout load_motion reads), atomically."""
    path = Path(path)
    arrays = {
        "expr": np.asarray(pose.expr, np.float32),
        "rotation": np.asarray(pose.rotation, np.float32),
        "neck_pose": np.asarray(pose.neck, np.float32),
        "jaw_pose": np.asarray(pose.jaw, np.float32),
        "eyes_pose": np.concatenate([np.asarray(pose.eye_l, np.float32), np.asarray(pose.eye_r, np.float32)], axis=1),
        "translation": np.asarray(pose.translation, np.float32),
        "fps": np.asarray(float(fps)),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return path
