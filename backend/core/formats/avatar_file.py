"""The avatar file (``*.npz``): the one contract between backend and add-on.

Numpy only: the Blender add-on imports this module too. The layout is
specified in DESIGN.md ("The avatar file"); this module is its single
implementation. Files are written atomically and read without pickle.

Every source of a head lands in this one model: ``create`` (FLAME rig, five joints,
100 expression components, optional ARKit targets on FLAME's topology) and LAM web
ZIPs (no FLAME expressions, the ZIP's skeleton and its 51 ARKit targets). Version 2
added the optional keys, all validated like the rest:

* ``arkit_dirs`` N,3,K float32 + ``arkit_names`` K str: named ARKit blendshapes
  (``jawOpen``, ``eyeBlinkLeft``, ...), deltas like ``expr_dirs``; both or neither.
* ``opacity_logit`` N float32: the opacity as the source file stored it (a logit), so an
  unedited avatar re-exports bit-exactly; it must agree with ``opacity``.

``pose_dirs`` may have 0 features (no pose correctives, e.g. a skeleton that is not FLAME's).
Version 1 files (no optional keys) still load.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_write import atomic_path
from .npz_arrays import NpzError, read_npz

FORMAT = "lam-head-avatar"
VERSION = 2
JOINT_NAMES = ("root", "neck", "jaw", "eye_l", "eye_r")

# Tolerances for the semantic checks: loose enough for float32 round-off.
_WEIGHT_SUM_TOL = 1e-4
_QUAT_NORM_TOL = 1e-3
_UNIT_RANGE_TOL = 1e-6
_LOGIT_AGREE_TOL = 1e-6  # |sigmoid(opacity_logit) - opacity|


class AvatarFileError(ValueError):
    """A file that is not a valid avatar. ``key`` names the offending entry."""

    def __init__(self, key: str | None, problem: str, path: str | os.PathLike | None = None):
        self.key = key
        self.problem = problem
        self.path = None if path is None else str(path)
        where = f"{self.path}: " if self.path else ""
        what = f"key '{key}': " if key else ""
        super().__init__(f"invalid avatar file: {where}{what}{problem}")


@dataclass
class Avatar:
    """Canonical Gaussians plus their rig. Shapes: N points, E expression components (0 when
    the source has no FLAME expressions), J joints, P = 9 * (J - 1) pose-corrective features
    or 0, F faces, K ARKit targets (optional)."""

    xyz: np.ndarray  # N,3 canonical centres (template + offset)
    template: np.ndarray  # N,3 shaped canonical subdivided FLAME vertices
    rgb: np.ndarray  # N,3 linear colour in [0, 1]
    opacity: np.ndarray  # N in [0, 1]
    scale: np.ndarray  # N,3 standard deviations, metres
    rotation: np.ndarray  # N,4 unit quaternion wxyz
    expr_dirs: np.ndarray  # N,3,E
    pose_dirs: np.ndarray  # N,3,P
    lbs_weights: np.ndarray  # N,J rows sum to 1
    joints: np.ndarray  # J,3 rest joints (shaped, neutral expression)
    joint_expr_dirs: np.ndarray  # J,3,E
    parents: np.ndarray  # J int32, root = -1
    joint_names: tuple[str, ...]
    faces: np.ndarray  # F,3 int32
    shape_params: np.ndarray  # S
    meta: dict[str, Any] = field(default_factory=dict)
    arkit_dirs: np.ndarray | None = None  # N,3,K ARKit blendshapes (optional)
    arkit_names: tuple[str, ...] = ()  # K names, as the LAM ZIP's glTF morph targets
    opacity_logit: np.ndarray | None = None  # N the source file's stored opacity logits (optional)

    @property
    def n_arkit(self) -> int:
        return 0 if self.arkit_dirs is None else int(self.arkit_dirs.shape[2])

    @property
    def has_pose_correctives(self) -> bool:
        return int(self.pose_dirs.shape[2]) > 0

    @property
    def n_points(self) -> int:
        return int(self.xyz.shape[0])

    @property
    def n_expr(self) -> int:
        return int(self.expr_dirs.shape[2])

    @property
    def n_joints(self) -> int:
        return int(self.joints.shape[0])

    @property
    def offset(self) -> np.ndarray:
        return self.xyz - self.template


_FLOAT_KEYS = (
    "xyz", "template", "rgb", "opacity", "scale", "rotation", "expr_dirs", "pose_dirs",
    "lbs_weights", "joints", "joint_expr_dirs", "shape_params",
)
_INT_KEYS = ("parents", "faces")
REQUIRED_KEYS = ("format", "version", *_FLOAT_KEYS, *_INT_KEYS, "joint_names", "meta")
OPTIONAL_KEYS = ("arkit_dirs", "arkit_names", "opacity_logit")


def _check_shape(key: str, a: np.ndarray, shape: tuple) -> None:
    """``shape`` holds ints or None (any size)."""
    ok = a.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, a.shape))
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise AvatarFileError(key, f"shape {tuple(a.shape)} does not match expected {want}")


def _as_float(key: str, value: Any) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype.kind not in "fiu":
        raise AvatarFileError(key, f"expected a float array, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise AvatarFileError(key, "contains NaN or infinite values")
    return a


def _as_int(key: str, value: Any) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype.kind not in "iu":
        raise AvatarFileError(key, f"expected an integer array, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.int32)


def _as_str(key: str, value: Any) -> str:
    a = np.asarray(value)
    if a.dtype.kind != "U" or a.ndim != 0:
        raise AvatarFileError(key, f"expected a string, got {a.dtype} with shape {a.shape}")
    return str(a)


def validate(arrays: Mapping[str, Any]) -> Avatar:
    """Check every key of the contract and return an :class:`Avatar`.

    Raises :class:`AvatarFileError` naming the first bad key.
    """
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise AvatarFileError(missing[0], "missing" + (f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else ""))

    fmt = _as_str("format", arrays["format"])
    if fmt != FORMAT:
        raise AvatarFileError("format", f"is '{fmt}', expected '{FORMAT}'")
    version_arr = np.asarray(arrays["version"])
    if version_arr.dtype.kind not in "iu" or version_arr.ndim != 0:
        raise AvatarFileError("version", "expected an integer scalar")
    version = int(version_arr)
    if version < 1 or version > VERSION:
        raise AvatarFileError("version", f"schema version {version} is not supported (this build reads 1..{VERSION}); update the add-on")

    a = {k: _as_float(k, arrays[k]) for k in _FLOAT_KEYS}
    a.update({k: _as_int(k, arrays[k]) for k in _INT_KEYS})

    _check_shape("xyz", a["xyz"], (None, 3))
    n = a["xyz"].shape[0]
    if n == 0:
        raise AvatarFileError("xyz", "has no points")
    _check_shape("template", a["template"], (n, 3))
    _check_shape("rgb", a["rgb"], (n, 3))
    _check_shape("opacity", a["opacity"], (n,))
    _check_shape("scale", a["scale"], (n, 3))
    _check_shape("rotation", a["rotation"], (n, 4))
    _check_shape("expr_dirs", a["expr_dirs"], (n, 3, None))
    e = a["expr_dirs"].shape[2]
    _check_shape("joints", a["joints"], (None, 3))
    j = a["joints"].shape[0]
    if j < 1:
        raise AvatarFileError("joints", "has no joints")
    _check_shape("lbs_weights", a["lbs_weights"], (n, j))
    if a["pose_dirs"].ndim == 3 and a["pose_dirs"].shape[2] == 0:
        _check_shape("pose_dirs", a["pose_dirs"], (n, 3, 0))
    else:
        _check_shape("pose_dirs", a["pose_dirs"], (n, 3, 9 * (j - 1)))
    _check_shape("joint_expr_dirs", a["joint_expr_dirs"], (j, 3, e))
    _check_shape("parents", a["parents"], (j,))
    _check_shape("faces", a["faces"], (None, 3))
    _check_shape("shape_params", a["shape_params"], (None,))

    for key in ("rgb", "opacity"):
        lo, hi = float(a[key].min()), float(a[key].max())
        if lo < -_UNIT_RANGE_TOL or hi > 1 + _UNIT_RANGE_TOL:
            raise AvatarFileError(key, f"values must lie in [0, 1], found [{lo:.6g}, {hi:.6g}]")
    if (a["scale"] <= 0).any():
        raise AvatarFileError("scale", "standard deviations must be positive")
    qn = np.linalg.norm(a["rotation"], axis=1)
    if np.abs(qn - 1).max() > _QUAT_NORM_TOL:
        raise AvatarFileError("rotation", f"quaternions must be unit length (worst norm {qn[np.argmax(np.abs(qn - 1))]:.6g})")
    w = a["lbs_weights"]
    if w.min() < -_UNIT_RANGE_TOL:
        raise AvatarFileError("lbs_weights", "weights must be non-negative")
    row_err = np.abs(w.sum(axis=1) - 1)
    if row_err.max() > _WEIGHT_SUM_TOL:
        raise AvatarFileError("lbs_weights", f"rows must sum to 1 (row {int(np.argmax(row_err))} sums to {w.sum(axis=1)[np.argmax(row_err)]:.6g})")

    parents = a["parents"]
    if parents[0] != -1:
        raise AvatarFileError("parents", "the first joint must be the root (parent -1)")
    for i in range(1, j):
        if not 0 <= parents[i] < i:
            raise AvatarFileError("parents", f"joint {i} has parent {parents[i]}; parents must precede their children")
    faces = a["faces"]
    if faces.size and (faces.min() < 0 or faces.max() >= n):
        raise AvatarFileError("faces", f"indices must lie in [0, {n}), found [{faces.min()}, {faces.max()}]")

    names_arr = np.asarray(arrays["joint_names"])
    if names_arr.dtype.kind != "U" or names_arr.shape != (j,):
        raise AvatarFileError("joint_names", f"expected {j} strings, got {names_arr.dtype} with shape {names_arr.shape}")
    names = tuple(str(s) for s in names_arr)
    if len(set(names)) != j:
        raise AvatarFileError("joint_names", "names must be unique")

    meta_text = _as_str("meta", arrays["meta"])
    try:
        meta = json.loads(meta_text)
    except json.JSONDecodeError as exc:
        raise AvatarFileError("meta", f"is not valid JSON ({exc.msg})") from None
    if not isinstance(meta, dict):
        raise AvatarFileError("meta", "must be a JSON object")

    arkit_dirs, arkit_names = _validate_arkit(arrays, n)
    opacity_logit = None
    if arrays.get("opacity_logit") is not None:
        opacity_logit = _as_float("opacity_logit", arrays["opacity_logit"])
        _check_shape("opacity_logit", opacity_logit, (n,))
        err = np.abs(0.5 * (1.0 + np.tanh(0.5 * opacity_logit.astype(np.float64))) - a["opacity"])
        if err.max() > _LOGIT_AGREE_TOL:
            raise AvatarFileError("opacity_logit", f"disagrees with 'opacity' (point {int(np.argmax(err))} differs by {err.max():.3g})")

    return Avatar(
        xyz=a["xyz"], template=a["template"], rgb=a["rgb"], opacity=a["opacity"], scale=a["scale"],
        rotation=a["rotation"], expr_dirs=a["expr_dirs"], pose_dirs=a["pose_dirs"],
        lbs_weights=a["lbs_weights"], joints=a["joints"], joint_expr_dirs=a["joint_expr_dirs"],
        parents=parents, joint_names=names, faces=faces, shape_params=a["shape_params"], meta=meta,
        arkit_dirs=arkit_dirs, arkit_names=arkit_names, opacity_logit=opacity_logit,
    )


def _validate_arkit(arrays: Mapping[str, Any], n: int) -> tuple[np.ndarray | None, tuple[str, ...]]:
    has_dirs, has_names = arrays.get("arkit_dirs") is not None, arrays.get("arkit_names") is not None
    if has_dirs != has_names:
        present, absent = ("arkit_dirs", "arkit_names") if has_dirs else ("arkit_names", "arkit_dirs")
        raise AvatarFileError(absent, f"missing ('{present}' is present; the ARKit targets need both)")
    if not has_dirs:
        return None, ()
    dirs = _as_float("arkit_dirs", arrays["arkit_dirs"])
    _check_shape("arkit_dirs", dirs, (n, 3, None))
    names_arr = np.asarray(arrays["arkit_names"])
    k = dirs.shape[2]
    if names_arr.dtype.kind != "U" or names_arr.shape != (k,):
        raise AvatarFileError("arkit_names", f"expected {k} strings, got {names_arr.dtype} with shape {names_arr.shape}")
    names = tuple(str(s) for s in names_arr)
    if len(set(names)) != k or any(not s for s in names):
        raise AvatarFileError("arkit_names", "names must be unique and non-empty")
    return dirs, names


def to_arrays(avatar: Avatar) -> dict[str, np.ndarray]:
    """The exact arrays stored in the file (validated first)."""
    arrays: dict[str, np.ndarray] = {"format": np.array(FORMAT), "version": np.array(VERSION, dtype=np.int32)}
    for f in fields(Avatar):
        value = getattr(avatar, f.name)
        if f.name in OPTIONAL_KEYS and (value is None or (f.name == "arkit_names" and avatar.arkit_dirs is None)):
            continue  # optional key absent
        if f.name in ("joint_names", "arkit_names"):
            arrays[f.name] = np.array(list(value), dtype=str)
        elif f.name == "meta":
            try:  # strict JSON: NaN/Infinity would not be readable by other tools
                arrays[f.name] = np.array(json.dumps(value, sort_keys=True, allow_nan=False))
            except (TypeError, ValueError) as exc:
                raise AvatarFileError("meta", f"is not JSON-serialisable ({exc})") from None
        else:
            arrays[f.name] = np.asarray(value)
    checked = validate(arrays)  # refuse to write what we would refuse to read
    for f in fields(Avatar):
        if f.name not in ("joint_names", "meta", "arkit_names") and f.name in arrays:
            arrays[f.name] = getattr(checked, f.name)
    return arrays


def save_avatar(path: str | os.PathLike, avatar: Avatar) -> Path:
    """Write ``avatar`` to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    arrays = to_arrays(avatar)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def load_avatar(path: str | os.PathLike) -> Avatar:
    """Read and validate an avatar file. Never unpickles."""
    path = Path(path)
    try:
        arrays = read_npz(path)
    except NpzError as exc:
        fix = "" if exc.problem == "file not found" else "; re-create or re-export the avatar"
        raise AvatarFileError(None, exc.problem + fix, path) from None
    try:
        return validate(arrays)
    except AvatarFileError as exc:
        raise AvatarFileError(exc.key, exc.problem, path) from None
