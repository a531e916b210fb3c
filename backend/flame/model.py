"""The FLAME head model: arrays, loaders (official pickle, our npz, LAM checkpoint buffers).

Loading checks the STRUCTURE (consistent shapes, weights summing to 1, a joint tree,
faces in range), not FLAME's exact sizes, so models with other vertex counts load.
Numpy only (no torch, no chumpy, no scipy).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.atomic_write import atomic_path
from ..core.errors import BadInputError
from ..core.formats.npz_arrays import NpzError, read_npz
from .restricted_pickle import restricted_loads, to_plain
from .subdivide import faces_from_subdivided, plan_subdivision

FLAME_JOINT_NAMES = ("root", "neck", "jaw", "eye_l", "eye_r")
# Shape components at the front of FLAME's ``shapedirs`` (FLAME 2020/2023: 300 shape, then 100
# expression). LAM's renderer uses exactly these counts (LAM_SPEC section 2).
FLAME_SHAPE_COMPONENTS = 300
LAM_PREFIX = "renderer.flame_model."
_WEIGHT_SUM_TOL = 1e-3
_NPZ_FORMAT = "lam-head-flame"


@dataclass
class FlameModel:
    """FLAME arrays. V vertices, K = n_shape + n_expr blendshapes (shape first), J joints,
    P = 9 * (J - 1) pose-corrective features, F faces."""

    v_template: np.ndarray  # V,3 float32
    shapedirs: np.ndarray  # V,3,K float32
    n_shape: int
    posedirs: np.ndarray  # V,3,P float32
    j_regressor: np.ndarray  # J,V float64 (dense)
    lbs_weights: np.ndarray  # V,J float32
    parents: np.ndarray  # J int64, root -1
    faces: np.ndarray  # F,3 int64
    joint_names: tuple[str, ...] = FLAME_JOINT_NAMES

    @property
    def n_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def n_expr(self) -> int:
        return int(self.shapedirs.shape[2]) - self.n_shape

    @property
    def n_joints(self) -> int:
        return int(self.parents.shape[0])

    @property
    def shape_dirs(self) -> np.ndarray:
        """V,3,n_shape identity blendshapes."""
        return self.shapedirs[:, :, : self.n_shape]

    @property
    def expr_dirs(self) -> np.ndarray:
        """V,3,n_expr expression blendshapes."""
        return self.shapedirs[:, :, self.n_shape :]

    def subdivided(self, levels: int = 1) -> FlameModel:
        """The model after ``levels`` midpoint passes: every per-vertex attribute (template,
        shape/expression dirs, pose dirs, LBS weights, J_regressor columns) averaged at new
        vertices. 5023 -> 20018 -> 79936 vertices for FLAME."""
        plan = plan_subdivision(self.faces, self.n_vertices, levels)
        return replace(
            self,
            v_template=plan.apply(self.v_template),
            shapedirs=plan.apply(self.shapedirs),
            posedirs=plan.apply(self.posedirs),
            j_regressor=plan.apply(self.j_regressor, axis=1),
            lbs_weights=plan.apply(self.lbs_weights),
            faces=plan.faces,
        )

    # ------------------------------------------------------------------ loaders

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any], n_shape: int = FLAME_SHAPE_COMPONENTS) -> FlameModel:
        """Build from official pickle names (v_template, shapedirs, posedirs V,3,P, J_regressor,
        weights, kintree_table, f) or LAM checkpoint buffer names (with or without the
        ``renderer.flame_model.`` prefix: posedirs P,V*3, parents, lbs_weights, and no original
        faces: they are recovered from ``faces_up``)."""
        a = {(k[len(LAM_PREFIX) :] if k.startswith(LAM_PREFIX) else k): v for k, v in arrays.items()
             if isinstance(k, str)}  # other keys (a damaged pickle's) name nothing FLAME has

        def get(*names: str) -> Any:
            for n in names:
                if n in a and a[n] is not None:
                    return to_plain(a[n])
            raise BadInputError(f"FLAME model: missing '{names[0]}'" + (f" (or {', '.join(repr(n) for n in names[1:])})" if len(names) > 1 else "") + "; this is not a FLAME model file")

        v_template = _float("v_template", get("v_template"))
        if v_template.ndim != 2 or v_template.shape[1] != 3 or v_template.shape[0] < 3:
            raise BadInputError(f"FLAME model: 'v_template' must be V,3 with V >= 3, got {v_template.shape}")
        n_v = v_template.shape[0]

        posedirs = _float("posedirs", get("posedirs"))
        if posedirs.ndim == 2 and posedirs.shape[1] == n_v * 3:  # LAM / smplx layout P, V*3
            posedirs = posedirs.reshape(-1, n_v, 3).transpose(1, 2, 0)

        if "kintree_table" in a:
            kin = np.asarray(to_plain(a["kintree_table"]))
            if kin.ndim != 2 or kin.shape[0] != 2:
                raise BadInputError(f"FLAME model: 'kintree_table' must be 2,J, got {kin.shape}")
            parents = kin[0].astype(np.int64)
            parents[(parents == 0xFFFFFFFF) | (parents == 0xFFFFFFFFFFFFFFFF) | (parents < 0)] = -1
        else:
            parents = np.asarray(get("parents")).astype(np.int64)

        if "f" in a or "faces" in a:
            faces = np.asarray(get("f", "faces"))
        elif "faces_up" in a:
            faces = faces_from_subdivided(np.asarray(get("faces_up")), n_v)
        else:
            raise BadInputError("FLAME model: missing 'f' (faces); LAM buffers need 'faces_up' instead")

        model = cls(
            v_template=v_template,
            shapedirs=_float("shapedirs", get("shapedirs")),
            n_shape=int(n_shape),
            posedirs=posedirs,
            j_regressor=_float("J_regressor", get("J_regressor", "j_regressor"), np.float64),
            lbs_weights=_float("weights", get("weights", "lbs_weights")),
            parents=parents,
            faces=_int("f", faces),
            joint_names=FLAME_JOINT_NAMES if parents.shape == (5,) else tuple(f"joint{i}" for i in range(parents.shape[0])),
        )
        model.validate()
        return model

    @classmethod
    def from_pickle(cls, path: str | os.PathLike, n_shape: int = FLAME_SHAPE_COMPONENTS) -> FlameModel:
        """An official FLAME pickle (Python 2, chumpy, scipy.sparse), read without those libraries."""
        path = Path(path)
        data = _read(path)
        obj = restricted_loads(data, what=f"FLAME file '{path}'")
        if not isinstance(obj, dict):
            raise BadInputError(f"FLAME file '{path}' holds a {type(obj).__name__}, not a FLAME model dictionary")
        return _with_path(path, lambda: cls.from_arrays(obj, n_shape=n_shape))

    @classmethod
    def from_npz(cls, path: str | os.PathLike) -> FlameModel:
        """Our own ``.npz`` (see :meth:`save_npz`), or an npz of LAM buffer names (n_shape 300)."""
        path = Path(path)
        try:
            arrays = read_npz(path)
        except NpzError as exc:
            raise BadInputError(f"FLAME file '{path}': {exc.problem}") from None
        if "format" in arrays and str(arrays["format"]) == _NPZ_FORMAT:
            def build() -> FlameModel:
                m = cls(
                    v_template=_float("v_template", arrays["v_template"]),
                    shapedirs=_float("shapedirs", arrays["shapedirs"]),
                    n_shape=int(arrays["n_shape"]),
                    posedirs=_float("posedirs", arrays["posedirs"]),
                    j_regressor=_float("j_regressor", arrays["j_regressor"], np.float64),
                    lbs_weights=_float("lbs_weights", arrays["lbs_weights"]),
                    parents=_int("parents", arrays["parents"]),
                    faces=_int("faces", arrays["faces"]),
                    joint_names=tuple(str(s) for s in arrays["joint_names"]),
                )
                m.validate()
                return m

            try:
                return _with_path(path, build)
            except KeyError as exc:
                raise BadInputError(f"FLAME file '{path}': missing {exc}") from None
        n_shape = int(arrays.pop("n_shape", FLAME_SHAPE_COMPONENTS))
        return _with_path(path, lambda: cls.from_arrays(arrays, n_shape=n_shape))

    def save_npz(self, path: str | os.PathLike) -> Path:
        """Write this model as an uncompressed npz (atomically); :meth:`from_npz` reads it."""
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh, format=np.array(_NPZ_FORMAT), v_template=self.v_template, shapedirs=self.shapedirs,
                n_shape=np.array(self.n_shape), posedirs=self.posedirs, j_regressor=self.j_regressor,
                lbs_weights=self.lbs_weights, parents=self.parents, faces=self.faces,
                joint_names=np.array(list(self.joint_names)),
            )
        return path

    # ------------------------------------------------------------------ checks

    def validate(self) -> None:
        """Raise BadInputError naming the first structural problem."""
        n_v = self.n_vertices
        j = int(np.asarray(self.parents).shape[0]) if np.asarray(self.parents).ndim == 1 else -1
        if j < 1:
            raise BadInputError(f"FLAME model: parents/kintree_table must list J >= 1 joints, got shape {np.asarray(self.parents).shape}")
        _shape("v_template", self.v_template, (n_v, 3))
        if self.shapedirs.ndim != 3 or self.shapedirs.shape[:2] != (n_v, 3):
            raise BadInputError(f"FLAME model: 'shapedirs' must be {n_v},3,K, got {self.shapedirs.shape}")
        if not 0 < self.n_shape < self.shapedirs.shape[2]:
            raise BadInputError(
                f"FLAME model: 'shapedirs' has {self.shapedirs.shape[2]} blendshapes; need more than n_shape={self.n_shape} "
                "(shape first, then expression)"
            )
        _shape("posedirs", self.posedirs, (n_v, 3, 9 * (j - 1)))
        _shape("J_regressor", self.j_regressor, (j, n_v))
        _shape("weights", self.lbs_weights, (n_v, j))
        w = self.lbs_weights
        if w.min() < -1e-6:
            raise BadInputError("FLAME model: 'weights' has negative skinning weights")
        err = np.abs(w.sum(axis=1) - 1.0)
        if err.max() > _WEIGHT_SUM_TOL:
            i = int(np.argmax(err))
            raise BadInputError(f"FLAME model: 'weights' rows must sum to 1 (vertex {i} sums to {w[i].sum():.6g})")
        p = self.parents
        if p[0] != -1:
            raise BadInputError(f"FLAME model: joint 0 must be the root (parent -1), its parent is {p[0]}")
        for i in range(1, j):
            if not 0 <= p[i] < i:
                raise BadInputError(f"FLAME model: joint {i} has parent {p[i]}; the joints must form a tree listed parents first")
        f = self.faces
        if f.ndim != 2 or f.shape[1] != 3 or f.shape[0] == 0:
            raise BadInputError(f"FLAME model: faces must be a non-empty F,3 array, got {f.shape}")
        if f.min() < 0 or f.max() >= n_v:
            raise BadInputError(f"FLAME model: face indices must lie in [0, {n_v}), found [{f.min()}, {f.max()}]")
        if len(self.joint_names) != j:
            raise BadInputError(f"FLAME model: {len(self.joint_names)} joint names for {j} joints")


def load_flame(path: str | os.PathLike, n_shape: int = FLAME_SHAPE_COMPONENTS) -> FlameModel:
    """Load a FLAME model from an official pickle, our npz, or a LAM checkpoint
    (``.safetensors`` or a folder holding ``model.safetensors`` with ``renderer.flame_model.*``
    buffers), deciding by content."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise BadInputError(f"FLAME file '{path}' not found; pass the flame2023.pkl (or flame2023_Open.pkl) file")
    with path.open("rb") as fh:
        head = fh.read(16)
    if head.startswith(b"PK\x03\x04"):
        return FlameModel.from_npz(path)
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"c", b"]"):
        return FlameModel.from_pickle(path, n_shape=n_shape)
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        return _with_path(path, lambda: FlameModel.from_arrays(_read_safetensors_buffers(path), n_shape=n_shape))
    raise BadInputError(
        f"'{path}' is not a FLAME model (expected a FLAME .pkl, a .npz written by this tool, or a LAM .safetensors "
        "checkpoint with FLAME buffers)"
    )


def flame_meta(model: FlameModel) -> str:
    """A short JSON description (sizes) for logs and avatar metadata."""
    return json.dumps({"vertices": model.n_vertices, "faces": int(model.faces.shape[0]), "n_shape": model.n_shape, "n_expr": model.n_expr, "joints": model.n_joints})


# ---------------------------------------------------------------------- helpers


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BadInputError(f"FLAME file '{path}' not found") from None
    except OSError as exc:
        raise BadInputError(f"cannot read FLAME file '{path}' ({exc})") from None


def _read_safetensors_buffers(path: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors import safe_open
    except ImportError:
        raise BadInputError("reading FLAME buffers from a .safetensors checkpoint needs the 'safetensors' package") from None
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith(LAM_PREFIX)}
    except Exception as exc:  # safetensors raises its own error types
        raise BadInputError(f"'{path}' is not a readable safetensors file ({exc})") from None


def _with_path(path: Path, build: Any) -> FlameModel:
    """Run ``build`` and prefix any BadInputError with the file name."""
    try:
        return build()
    except BadInputError as exc:
        if str(path) in str(exc):
            raise
        raise BadInputError(f"'{path}': {exc}") from None


def _float(key: str, value: Any, dtype: Any = np.float32) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype.kind not in "fiu":
        raise BadInputError(f"FLAME model: '{key}' must be numeric, got {a.dtype}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are refused just below
        a = np.ascontiguousarray(a, dtype=dtype)
    if not np.isfinite(a).all():
        raise BadInputError(f"FLAME model: '{key}' contains NaN or infinite values")
    return a


def _int(key: str, value: Any) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype.kind not in "iu":
        raise BadInputError(f"FLAME model: '{key}' must be integer indices, got {a.dtype}")
    return a.astype(np.int64)


def _shape(key: str, a: np.ndarray, shape: tuple[int, ...]) -> None:
    if tuple(a.shape) != tuple(shape):
        raise BadInputError(f"FLAME model: '{key}' has shape {tuple(a.shape)}, expected {tuple(shape)}")
