"""Synthetic FLAME models for tests: same structure as the official files, made-up numbers.

Numpy only (the Blender test environment has no torch, no chumpy, no scipy).

* :func:`head_mesh` makes a head-sized open triangle mesh with exactly the requested
  vertex count (and face count, when given: 5023 / 9976 like FLAME 2023).
* :func:`make_flame_arrays` fills in FLAME's arrays (smooth blendshapes, a sparse-looking
  J_regressor, skinning weights, kintree_table with 4294967295 for the root's parent).
* :func:`write_flame_pickle` writes them the way the official files are written: a
  Python 2 protocol-2 pickle (``copy_reg``/``__builtin__`` names, byte strings) with
  ``chumpy.ch.Ch`` objects (array under ``x`` plus bookkeeping with ``__builtin__.set``)
  and a ``scipy.sparse.csc.csc_matrix`` J_regressor. Emitted opcode by opcode, so
  neither Python 2, chumpy nor scipy is needed.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from backend.flame.model import FLAME_JOINT_NAMES, FlameModel

ROOT_PARENT_UINT32 = 4294967295
# Joint targets (metres, FLAME-like layout: root at the neck base, eyes in front).
JOINT_TARGETS = np.array([[0.0, -0.09, -0.01], [0.0, -0.06, -0.02], [0.0, -0.03, 0.03], [0.03, 0.03, 0.08], [-0.03, 0.03, 0.08]])


# ------------------------------------------------------------------------------------ mesh


def _uv_sphere(rings: int, segments: int, centre: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed sphere: two poles + rings x segments; V = rings * segments + 2, F = 2 * segments * rings."""
    theta = np.linspace(0, np.pi, rings + 2)[1:-1]
    phi = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    ring = np.stack([np.sin(t) * np.cos(p), np.cos(t), np.sin(t) * np.sin(p)], -1).reshape(-1, 3)
    verts = np.concatenate([[[0, 1, 0]], ring, [[0, -1, 0]]]) * radius + centre
    top, bottom = 0, rings * segments + 1
    j = np.arange(segments)
    jn = (j + 1) % segments
    faces = [np.stack([np.full(segments, top), 1 + j, 1 + jn], 1)]
    for i in range(rings - 1):
        a, b = 1 + i * segments + j, 1 + i * segments + jn
        faces += [np.stack([a, b + segments, b], 1), np.stack([a, a + segments, b + segments], 1)]
    last = 1 + (rings - 1) * segments
    faces.append(np.stack([np.full(segments, bottom), last + jn, last + j], 1))
    return verts, np.concatenate(faces)


def head_mesh(n_vertices: int, n_faces: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A head-like triangle mesh: an open tube on an ellipsoid (neck and crown openings)
    plus two closed eyeballs, like FLAME's separate eyeball meshes (smaller ones below
    1000 vertices, none below 100).

    Tube r rings x s segments, eyeballs 6 x 10 (+2 poles) each, then k tube faces split at
    their centroid (+1 vertex, +2 faces each): V = r s + 124 + k, F = 2 s (r - 1) + 240 + 2 k.
    With ``n_faces`` given, s = (2 V - F - 8) / 2. FLAME 2023's 5023 / 9976 gives s = 31,
    r = 158, k = 1, and 14995 edges, so one subdivision has 20018 vertices as FLAME's.
    Faces are oriented outwards. Returns vertices V,3 float64 and faces F,3 int64.
    """
    eye_rings, eye_segments = (6, 10) if n_vertices >= 1000 else (3, 6) if n_vertices >= 100 else (0, 0)
    eye_v = 2 * (eye_rings * eye_segments + 2) if eye_rings else 0
    closed = 8 if eye_rings else 0  # each closed eyeball: F = 2 V - 4
    tube_v = n_vertices - eye_v
    if n_faces is None:
        s = max(6, int(round(np.sqrt(max(tube_v, 1) / 2.0))))
    else:
        if (2 * n_vertices - n_faces - closed) % 2 or 2 * n_vertices - n_faces - closed < 6:
            raise ValueError(f"cannot make a mesh with {n_vertices} vertices and {n_faces} faces (need even 2V - F - 8 >= 6)")
        s = (2 * n_vertices - n_faces - closed) // 2
    r = tube_v // s if tube_v > 0 else 0
    k = tube_v - r * s
    if r < 2 or k > 2 * s * (r - 1):
        raise ValueError(f"cannot make a mesh with {n_vertices} vertices and {n_faces} faces")
    theta = np.linspace(0.2 * np.pi, 0.97 * np.pi, r)  # from the neck up to near the crown
    phi = np.linspace(0.0, 2 * np.pi, s, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    dirs = np.stack([np.sin(t) * np.sin(p), -np.cos(t), np.sin(t) * np.cos(p)], -1).reshape(-1, 3)
    verts = dirs * [0.08, 0.11, 0.1] + [0.0, 0.02, 0.0]
    i, j = np.meshgrid(np.arange(r - 1), np.arange(s), indexing="ij")
    a = i * s + j
    b = i * s + (j + 1) % s
    c = (i + 1) * s + (j + 1) % s
    d = (i + 1) * s + j
    faces = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    centres = [np.array([0.0, 0.02, 0.0])] * faces.shape[0]
    if k:
        pick = np.random.default_rng(seed).choice(faces.shape[0], k, replace=False)
        new_v = verts[faces[pick]].mean(axis=1) * 1.01
        new = r * s + np.arange(k)
        fa, fb, fc = faces[pick].T
        faces = np.concatenate(
            [np.delete(faces, pick, axis=0), np.stack([fa, fb, new], 1), np.stack([fb, fc, new], 1), np.stack([fc, fa, new], 1)]
        )
        verts = np.concatenate([verts, new_v])
        centres = [centres[0]] * faces.shape[0]
    for eye in JOINT_TARGETS[3:] if eye_rings else ():
        ev, ef = _uv_sphere(eye_rings, eye_segments, eye, 0.012)
        faces = np.concatenate([faces, ef + verts.shape[0]])
        verts = np.concatenate([verts, ev])
        centres += [eye] * ef.shape[0]
    # orient every face outwards from its part's centre
    tri = verts[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    inward = np.einsum("ij,ij->i", normal, tri.mean(axis=1) - np.asarray(centres)) < 0
    faces[inward] = faces[inward][:, ::-1]
    return verts, faces.astype(np.int64)


# ------------------------------------------------------------------------------------ arrays


def make_flame_arrays(
    n_vertices: int = 600, n_faces: int | None = None, n_shape: int = 300, n_expr: int = 100, seed: int = 0
) -> dict[str, np.ndarray]:
    """FLAME's arrays under the pickle's names, float64 like the official files.
    J_regressor is dense here (:func:`write_flame_pickle` stores it sparse)."""
    v, f = head_mesh(n_vertices, n_faces, seed)
    return flame_arrays_on_mesh(v, f, n_shape, n_expr, seed)


def flame_arrays_on_mesh(
    v: np.ndarray, f: np.ndarray, n_shape: int = 300, n_expr: int = 100, seed: int = 0
) -> dict[str, np.ndarray]:
    """FLAME's arrays for a given mesh (``v`` V,3 in FLAME's frame, ``f`` F,3): the real
    topology with made-up blendshapes, joint regressor and skinning weights."""
    rng = np.random.default_rng(seed)
    v = np.asarray(v, dtype=np.float64)
    n = v.shape[0]
    # smooth blendshapes: random combinations of low-order polynomials of the position
    c = (v - v.mean(0)) / 0.1
    basis = np.stack([np.ones(n), c[:, 0], c[:, 1], c[:, 2], c[:, 0] * c[:, 1], c[:, 1] * c[:, 2], c[:, 2] * c[:, 0], c[:, 0] ** 2, c[:, 1] ** 2, c[:, 2] ** 2], 1)
    k = n_shape + n_expr
    decay = np.concatenate([1.0 / (1 + np.arange(n_shape)) ** 0.5, 1.0 / (1 + np.arange(n_expr)) ** 0.5])
    coef = rng.normal(size=(basis.shape[1], 3, k)) * 2e-3 * decay
    shapedirs = np.einsum("nb,bck->nck", basis, coef)
    posedirs = np.einsum("nb,bcp->ncp", basis, rng.normal(scale=5e-4, size=(basis.shape[1], 3, 36)))
    # J_regressor: each joint averages the vertices nearest its target
    j_reg = np.zeros((5, n))
    for j, target in enumerate(JOINT_TARGETS):
        near = np.argsort(np.linalg.norm(v - target, axis=1))[: min(8, n)]
        w = rng.uniform(0.5, 1.0, size=near.size)
        j_reg[j, near] = w / w.sum()
    joints = j_reg @ v
    dist = np.linalg.norm(v[:, None] - joints[None], axis=2)
    weights = np.exp(-((dist / 0.06) ** 2)) + 1e-4
    weights /= weights.sum(axis=1, keepdims=True)
    kintree = np.array([[ROOT_PARENT_UINT32, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64)
    return {
        "v_template": v,
        "shapedirs": shapedirs,
        "posedirs": posedirs,
        "J_regressor": j_reg,
        "weights": weights,
        "kintree_table": kintree,
        "f": np.asarray(f).astype(np.uint32),
    }


def make_flame_model(n_vertices: int = 600, n_faces: int | None = None, n_shape: int = 20, n_expr: int = 10, seed: int = 0) -> FlameModel:
    """A :class:`FlameModel` directly (no file). Small blendshape counts by default, for speed."""
    return FlameModel.from_arrays(make_flame_arrays(n_vertices, n_faces, n_shape, n_expr, seed), n_shape=n_shape)


def lam_buffers(model: FlameModel, prefix: str = "renderer.flame_model.") -> dict[str, np.ndarray]:
    """The ``renderer.flame_model.*`` buffers LAM's checkpoint would hold for ``model``
    (posedirs as P,V*3; parents; no original faces, only ``faces_up`` and the ``_up`` arrays)."""
    up = model.subdivided(1)
    v = model.n_vertices
    out = {
        "v_template": model.v_template.astype(np.float32),
        "shapedirs": model.shapedirs.astype(np.float32),
        "posedirs": model.posedirs.reshape(v * 3, -1).T.astype(np.float32),
        "J_regressor": model.j_regressor.astype(np.float32),
        "parents": model.parents.astype(np.int64),
        "lbs_weights": model.lbs_weights.astype(np.float32),
        "neck_kin_chain": np.array([1, 0], dtype=np.int64),
        "J_regressor_up": up.j_regressor.astype(np.float32),
        "faces_up": up.faces.astype(np.int64),
        "v_template_up": up.v_template.astype(np.float32),
        "lbs_weights_up": up.lbs_weights.astype(np.float32),
        "shapedirs_up": up.shapedirs.astype(np.float32),
    }
    return {prefix + k: val for k, val in out.items()}


# ------------------------------------------------------------------------------------ Python 2 pickle


class Py2Object:
    """An instance of a new-style class with its ``__dict__`` state. Written as protocol 2
    does (``NEWOBJ``: ``cls.__new__(cls)`` then BUILD), or with ``style="reconstructor"`` as
    protocols 0/1 do (``copy_reg._reconstructor(cls, object, None)`` then BUILD)."""

    def __init__(self, module: str, name: str, state: Any, style: str = "newobj"):
        self.module, self.name, self.state, self.style = module, name, state, style


class Py2Global:
    """A bare reference to ``module.name`` (e.g. to write a forbidden pickle)."""

    def __init__(self, module: str, name: str, args: tuple | None = None):
        self.module, self.name, self.args = module, name, args


class _Py2Writer:
    """Emits protocol-2 opcodes as Python 2's cPickle did (byte strings as STRING opcodes)."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")

    def glob(self, module: str, name: str) -> None:
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def bytestr(self, data: bytes) -> None:  # a Python 2 str
        if len(data) < 256:
            self.out += b"U" + bytes([len(data)]) + data
        else:
            self.out += b"T" + struct.pack("<I", len(data)) + data

    def dump(self, obj: Any) -> None:
        o = self.out
        if obj is None:
            o += b"N"
        elif obj is True or obj is False:
            o += b"\x88" if obj else b"\x89"
        elif isinstance(obj, (int, np.integer)):
            self.int_(int(obj))
        elif isinstance(obj, (float, np.floating)):
            o += b"G" + struct.pack(">d", float(obj))
        elif isinstance(obj, bytes):
            self.bytestr(obj)
        elif isinstance(obj, str):
            self.bytestr(obj.encode("latin1"))
        elif isinstance(obj, tuple):
            if len(obj) == 0:
                o += b")"
            elif len(obj) <= 3:
                for v in obj:
                    self.dump(v)
                o += (b"\x85", b"\x86", b"\x87")[len(obj) - 1]
            else:
                o += b"("
                for v in obj:
                    self.dump(v)
                o += b"t"
        elif isinstance(obj, list):
            o += b"]("
            for v in obj:
                self.dump(v)
            o += b"e"
        elif isinstance(obj, dict):
            o += b"}("
            for key, v in obj.items():
                self.dump(key)
                self.dump(v)
            o += b"u"
        elif isinstance(obj, (set, frozenset)):
            self.glob("__builtin__", "set")
            self.dump(sorted(obj, key=repr))
            o += b"\x85R"
        elif isinstance(obj, np.ndarray):
            self.array(obj)
        elif isinstance(obj, Py2Object):
            if obj.style == "newobj":
                self.glob(obj.module, obj.name)
                o += b")\x81"
            else:
                self.glob("copy_reg", "_reconstructor")
                o += b"("
                self.glob(obj.module, obj.name)
                self.glob("__builtin__", "object")
                o += b"Nt" + b"R"
            self.dump(obj.state)
            o += b"b"
        elif isinstance(obj, Py2Global):
            self.glob(obj.module, obj.name)
            if obj.args is not None:
                self.dump(tuple(obj.args))
                o += b"R"
        else:
            raise TypeError(f"cannot write {type(obj).__name__} as a Python 2 pickle")

    def int_(self, v: int) -> None:
        if 0 <= v < 256:
            self.out += b"K" + bytes([v])
        elif 0 <= v < 65536:
            self.out += b"M" + struct.pack("<H", v)
        elif -(2**31) <= v < 2**31:
            self.out += b"J" + struct.pack("<i", v)
        else:
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(raw)]) + raw

    def dtype(self, dt: np.dtype) -> None:
        self.glob("numpy", "dtype")
        self.dump((dt.str[1:], 0, 1))
        self.out += b"R"
        order = "|" if dt.itemsize == 1 else "<"
        self.dump((3, order, None, None, None, -1, -1, 0))
        self.out += b"b"

    def array(self, a: np.ndarray) -> None:
        a = np.ascontiguousarray(a)
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        self.glob("numpy.core.multiarray", "_reconstruct")
        self.glob("numpy", "ndarray")
        self.dump((0,))
        self.bytestr(b"b")
        self.out += b"\x87R("  # args tuple -> reduce; then the state tuple
        self.int_(1)
        self.dump(tuple(int(s) for s in a.shape))
        self.dtype(a.dtype)
        self.out += b"\x89"  # not Fortran order
        self.bytestr(a.tobytes())
        self.out += b"tb"


def py2_pickle_bytes(obj: Any) -> bytes:
    """``obj`` (dicts, lists, tuples, sets, numbers, str, ndarrays, Py2Object, Py2Global) as a
    Python 2 protocol-2 pickle."""
    w = _Py2Writer()
    w.dump(obj)
    w.out += b"."
    return bytes(w.out)


def chumpy(array: np.ndarray, style: str = "newobj") -> Py2Object:
    """A ``chumpy.ch.Ch`` as pickled: the array under ``x`` plus bookkeeping entries."""
    state = {
        "x": np.asarray(array),
        "_dirty_vars": {"x"},
        "_itr": None,
        "_parents": {},
        "_cache": {"drs": {}},
        "_depends_on_deps": {},
        "label": None,
    }
    return Py2Object("chumpy.ch", "Ch", state, style)


def csc_matrix(dense: np.ndarray, module: str = "scipy.sparse.csc", style: str = "newobj") -> Py2Object:
    """A ``scipy.sparse`` CSC matrix as pickled (its ``__dict__``)."""
    dense = np.asarray(dense)
    rows, cols = np.nonzero(dense.T)  # column-major order: rows here are columns
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=dense.shape[1]))]).astype(np.int32)
    state = {
        "_shape": tuple(int(s) for s in dense.shape),
        "maxprint": 50,
        "format": "csc",
        "indices": cols.astype(np.int32),
        "indptr": indptr,
        "data": dense.T[rows, cols].astype(np.float64),
        "_has_sorted_indices": True,
    }
    return Py2Object(module, "csc_matrix", state, style)


def write_flame_pickle(
    path: str | os.PathLike,
    arrays: dict[str, np.ndarray],
    sparse_module: str = "scipy.sparse.csc",
    use_chumpy: bool = True,
    style: str = "newobj",
) -> Path:
    """Write FLAME arrays (pickle names) like the official release: chumpy objects for the
    template and blendshapes, a sparse J_regressor, plus the official bookkeeping keys.
    ``style``: how objects are rebuilt (``"newobj"``, protocol 2's way, or ``"reconstructor"``)."""
    data = {
        "J_regressor": csc_matrix(arrays["J_regressor"], sparse_module, style),
        "f": np.asarray(arrays["f"]),
        "kintree_table": np.asarray(arrays["kintree_table"]),
        "weights": chumpy(arrays["weights"], style) if use_chumpy else np.asarray(arrays["weights"]),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        "J": chumpy(np.asarray(arrays["J_regressor"]) @ np.asarray(arrays["v_template"]), style),
    }
    for key in ("v_template", "shapedirs", "posedirs"):
        data[key] = chumpy(arrays[key], style) if use_chumpy else np.asarray(arrays[key])
    path = Path(path)
    path.write_bytes(py2_pickle_bytes(data))
    return path


def write_synthetic_flame(path: str | os.PathLike, n_vertices_hint: int = 800, seed: int = 0) -> Path:
    """An official-structure FLAME pickle (300 shape + 100 expression columns) of about
    ``n_vertices_hint`` vertices; small by default so it loads well under a second."""
    return write_flame_pickle(path, make_flame_arrays(n_vertices_hint, None, 300, 100, seed))


__all__ = [
    "FLAME_JOINT_NAMES",
    "Py2Global",
    "Py2Object",
    "chumpy",
    "csc_matrix",
    "flame_arrays_on_mesh",
    "head_mesh",
    "lam_buffers",
    "make_flame_arrays",
    "make_flame_model",
    "py2_pickle_bytes",
    "write_flame_pickle",
    "write_synthetic_flame",
]
