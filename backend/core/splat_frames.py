"""Per-frame 3DGS PLY arrays for an animated avatar (the maths behind the Blender splat-sequence export).

Numpy only, no bpy: the exporter reads deformed centres and bone matrices out of
Blender and hands them here. Semantics (DESIGN.md "Animation semantics"): a
Gaussian's rotation follows the polar rotation factor R(A) of its blended LBS
matrix ``A = sum_j w_j G_j[:3, :3]``; its new quaternion is ``quat(R(A)) * q``;
scales, colours and opacities are static.

Speed matters (the goal is >= 100 frames/s for 20k points), so the per-point 3x3
maths runs on structure-of-arrays components (9 rows of N values) rather than on
N tiny 3x3 matrices, and the static PLY columns are encoded once.

Shapes: N points, J bones.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import BadInputError
from .formats import ply

# Newton polar iteration (quadratic): stop after a step that moved no entry more than this (float64).
_POLAR_TOL = 1e-6  # the step after a change of d leaves an error of about d^2
_POLAR_MAX_ITER = 30


def _linear_parts(bone_matrices: np.ndarray) -> np.ndarray:
    m = np.asarray(bone_matrices, dtype=np.float64)
    if m.ndim != 3 or m.shape[1:] not in ((4, 4), (3, 3)):
        raise BadInputError(f"bone matrices must be J,4,4 or J,3,3, got shape {m.shape}")
    return m[:, :3, :3]


def blended_linear(weights: np.ndarray, bone_matrices: np.ndarray, dtype=np.float64) -> np.ndarray:
    """weights N,J and bone matrices J,4,4 (or J,3,3)
    -> 9,N: A = sum_j w_j G_j[:3,:3], row-major components (a00, a01, ..., a22) per point."""
    lin = _linear_parts(bone_matrices).reshape(-1, 9)  # J,9
    w = np.asarray(weights)
    if w.ndim != 2 or w.shape[1] != lin.shape[0]:
        raise BadInputError(f"weights must be N,{lin.shape[0]} (one column per bone), got shape {w.shape}")
    return weighted_rows(lin.T, np.ascontiguousarray(w.T, dtype=dtype))  # 9,N


def weighted_rows(rows: np.ndarray, weights_t: np.ndarray) -> np.ndarray:
    """rows R,J and weights J,N -> R,N sums over j of rows[:, j] * weights[j], in the weights'
    dtype. ``einsum`` (its own single-threaded loop) rather than a matrix product: BLAS
    would start threads for this small product, which costs more than it gains on a busy
    machine (measured: steadier and faster export frames)."""
    return np.einsum("rj,jn->rn", np.asarray(rows, dtype=weights_t.dtype), weights_t)


def _cofactors(a: np.ndarray, c: np.ndarray | None = None, tmp: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """9,N matrices -> (9,N cofactor matrices = det * A^-T, N determinants); ``c``/``tmp``:
    optional 9,N / N buffers (no allocation per call)."""
    a00, a01, a02, a10, a11, a12, a20, a21, a22 = a
    if c is None:
        c = np.empty_like(a)
    if tmp is None:
        tmp = np.empty_like(a[0])
    for row, (p, q, r, s) in enumerate((
        (a11, a22, a12, a21), (a12, a20, a10, a22), (a10, a21, a11, a20),
        (a02, a21, a01, a22), (a00, a22, a02, a20), (a01, a20, a00, a21),
        (a01, a12, a02, a11), (a02, a10, a00, a12), (a00, a11, a01, a10),
    )):
        np.multiply(p, q, out=c[row])
        np.multiply(r, s, out=tmp)
        c[row] -= tmp
    det = a00 * c[0]
    det += a01 * c[1]
    det += a02 * c[2]
    return c, det


def polar_rotation_soa(a: np.ndarray, dtype=np.float64) -> np.ndarray:
    """9,N matrices -> 9,N rotation factors R of their polar decompositions A = R S.

    Scaled Newton iteration X <- (g X + X^-T / g) / 2, g = sqrt(|X^-1|_F / |X|_F)
    (Higham), quadratic convergence; blended LBS matrices are near-rotations, so a
    few steps. Matrices with det <= 0 have no proper-rotation polar factor: they
    get the closest rotation from an SVD with the sign fixed, U diag(1, 1, det(U V^T)) V^T.
    ``dtype``: float64, or float32 for speed (rotations then good to about 1e-6).
    """
    x = np.array(a, dtype=dtype, copy=True)
    tol = _POLAR_TOL if np.dtype(dtype) == np.float64 else 1e-4  # float32: stop above rounding noise
    c = np.empty_like(x)
    tmp = np.empty_like(x[0])
    _, det0 = _cofactors(x, c, tmp)
    norm0 = np.sqrt((x * x).sum(axis=0))
    good = det0 > 1e-9 * np.maximum(norm0, 1e-30) ** 3
    if not good.all():
        x[:, ~good] = np.eye(3, dtype=dtype).reshape(9, 1)  # placeholders, replaced by the SVD answer below
    converged = False
    for _ in range(_POLAR_MAX_ITER):  # whole-array steps: cheaper than tracking unconverged columns
        c, det = _cofactors(x, c, tmp)
        c /= det  # X^-T
        g = np.sqrt(np.sqrt(np.einsum("ij,ij->j", c, c) / np.einsum("ij,ij->j", x, x)))
        c /= g
        x *= g
        c += x
        c *= 0.5  # the next iterate
        x /= g
        np.subtract(c, x, out=x)
        delta = float(np.abs(x).max()) if x.size else 0.0
        x, c = c, x
        if delta <= tol:
            converged = True
            break
    if not converged:
        raise ArithmeticError("polar decomposition did not converge")  # not reachable for det > 0
    bad = ~good
    if bad.any():
        m = np.asarray(a, dtype=np.float64)[:, bad].T.reshape(-1, 3, 3)
        u, _, vt = np.linalg.svd(m)
        d = np.sign(np.linalg.det(u @ vt))
        d[d == 0] = 1.0
        u[:, :, 2] *= d[:, None]
        x[:, bad] = (u @ vt).reshape(-1, 9).T
    return x


def rotation_to_quaternion_soa(r: np.ndarray) -> np.ndarray:
    """9,N rotations -> 4,N unit quaternions (w, x, y, z), Shepperd's method per column.

    The w-led formula (stable when the trace is the largest candidate, i.e. rotations
    under 90 degrees: nearly every Gaussian of a head) runs on all columns; the few
    others are redone with the formula led by their largest diagonal entry.
    """
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = r
    tr = r00 + r11 + r22
    q = np.empty((4, r.shape[1]), dtype=r.dtype)
    s = np.sqrt(np.maximum(1.0 + tr, 1e-30)) * 2.0
    q[0] = 0.25 * s
    q[1] = (r21 - r12) / s
    q[2] = (r02 - r20) / s
    q[3] = (r10 - r01) / s
    diag_max = np.maximum(np.maximum(r00, r11), r22)
    other = np.flatnonzero(diag_max > tr)
    if other.size:
        o = r[:, other]
        a00, a01, a02, a10, a11, a12, a20, a21, a22 = o
        pick = np.argmax(np.stack([a00, a11, a22]), axis=0)
        qo = np.empty((4, other.size), dtype=r.dtype)
        for k, sign in enumerate(((1, -1, -1), (-1, 1, -1), (-1, -1, 1))):
            sel = pick == k
            if not sel.any():
                continue
            t = np.sqrt(np.maximum(1.0 + sign[0] * a00 + sign[1] * a11 + sign[2] * a22, 1e-30)) * 2.0
            cand = [
                np.stack([(a21 - a12) / t, 0.25 * t, (a01 + a10) / t, (a02 + a20) / t]),
                np.stack([(a02 - a20) / t, (a01 + a10) / t, 0.25 * t, (a12 + a21) / t]),
                np.stack([(a10 - a01) / t, (a02 + a20) / t, (a12 + a21) / t, 0.25 * t]),
            ][k]
            qo[:, sel] = cand[:, sel]
        q[:, other] = qo
    return q


def quaternion_multiply_soa(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of 4,N quaternions (w, x, y, z): first b, then a."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ])


def _unit_positive_w(q: np.ndarray) -> np.ndarray:
    q = q / np.sqrt((q * q).sum(axis=0))
    return np.where(q[0] < 0, -q, q)


def deformed_rotations(rotation: np.ndarray, weights: np.ndarray, bone_matrices: np.ndarray,
                       pre: np.ndarray | None = None, dtype=np.float32) -> np.ndarray:
    """Canonical quaternions N,4 (wxyz) -> N,4 float32 ``quat(R(A)) * q``, unit, w >= 0.

    ``pre``: an optional 3x3 applied after the blend (A' = pre @ A), e.g. an object's
    world matrix when exporting in world space. ``dtype``: the working precision;
    float32 (default, about twice as fast) keeps rotations within about 1e-6.
    """
    lin = _linear_parts(bone_matrices)
    if pre is not None:
        lin = np.asarray(pre, dtype=np.float64)[:3, :3] @ lin  # pre @ sum_j w_j G_j = sum_j w_j (pre @ G_j)
    return rotations_from_blend(rotation, blended_linear(weights, lin, dtype=dtype), dtype=dtype)


def rotations_from_blend(rotation: np.ndarray, a: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Canonical quaternions N,4 (wxyz) and blended linear parts A 9,N -> N,4 float32
    ``quat(R(A)) * q`` (unit, w >= 0)."""
    r = polar_rotation_soa(a, dtype=dtype)
    q = np.asarray(rotation).T.astype(dtype)
    return _unit_positive_w(quaternion_multiply_soa(rotation_to_quaternion_soa(r), q)).T.astype(np.float32)


class ShapeKeyBlend:
    """Blender's relative shape-key mix in numpy: ``basis + sum_k v_k (key_k - basis)``.

    ``keys`` K,N,3 float32: the absolute positions of every key block, the basis (the
    reference key, row ``reference``) included; every key must be relative to the basis.
    The array is taken over and overwritten with the deltas (no 4*K*N*3-byte copy).
    Keys whose value is 0 (muted ones are passed as 0; the basis's value is ignored)
    cost nothing, as in Blender.
    """

    def __init__(self, keys: np.ndarray, reference: int = 0):
        k = np.asarray(keys)
        if k.dtype != np.float32 or k.ndim != 3 or k.shape[2] != 3 or not 0 <= reference < k.shape[0]:
            raise BadInputError(f"shape keys must be float32 K,N,3 with the basis row inside, got {k.dtype} {k.shape}")
        self.basis = k[reference].reshape(-1).copy()  # 3N
        self.deltas = k.reshape(k.shape[0], -1)  # K,3N
        self.deltas -= self.basis
        self.reference = reference
        self._out = np.empty((k.shape[1], 3), dtype=np.float32)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """values K (one per key block) -> N,3 mixed positions (an internal buffer, overwritten
        by the next call)."""
        v = np.asarray(values, dtype=np.float32)
        if v.shape != (self.deltas.shape[0],):
            raise BadInputError(f"expected {self.deltas.shape[0]} shape-key values, got shape {v.shape}")
        out = self._out.reshape(-1)
        out[:] = self.basis
        for i in np.flatnonzero(v).tolist():  # in place, key by key: no K,3N gather copy
            if i != self.reference:
                out += v[i] * self.deltas[i]
        return self._out


class SplatFrameWriter:
    """Writes the frames of one avatar's animation as standard 3DGS PLYs.

    The static columns (normals, f_dc, opacity logit, ln scale) are encoded once;
    each frame fills in the centres and rotated quaternions and writes the file
    atomically. Inputs: rgb N,3 [0,1]; opacity N [0,1]; scale N,3 sigma (metres);
    rotation N,4 wxyz canonical; weights N,J LBS weights (rows sum to 1).
    ``scale_factor`` multiplies all scales (world-space export of a scaled object).
    """

    def __init__(self, rgb: np.ndarray, opacity: np.ndarray, scale: np.ndarray, rotation: np.ndarray,
                 weights: np.ndarray, scale_factor: float = 1.0):
        rotation = np.asarray(rotation, dtype=np.float64)
        n = rotation.shape[0] if rotation.ndim == 2 else -1
        cols = ply.encode_3dgs(np.zeros((max(n, 0), 3), dtype=np.float32), rgb, opacity,
                               np.asarray(scale, dtype=np.float64) * scale_factor, rotation)
        self._data = ply.columns_to_vertex_array(cols)
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 2 or w.shape[0] != n:
            raise BadInputError(f"weights must be N,J with N = {n} points, got shape {w.shape}")
        self.rotation = rotation.astype(np.float32)
        self.weights = w.astype(np.float32)
        self._weights_t = np.ascontiguousarray(self.weights.T)  # J,N
        self.n_points = n

    def frame(self, centres: np.ndarray, bone_matrices: np.ndarray, pre: np.ndarray | None = None) -> np.ndarray:
        """Deformed centres N,3 + bone deformation matrices J,4,4 -> the frame's structured PLY
        array (an internal buffer, overwritten by the next call)."""
        c = np.asarray(centres)
        if c.shape != (self.n_points, 3):
            raise BadInputError(f"centres must have shape ({self.n_points}, 3), got {c.shape}")
        d = self._data
        d["x"], d["y"], d["z"] = c[:, 0], c[:, 1], c[:, 2]
        q = deformed_rotations(self.rotation, self.weights, bone_matrices, pre)
        d["rot_0"], d["rot_1"], d["rot_2"], d["rot_3"] = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
        return d

    def write(self, path: str | os.PathLike, centres: np.ndarray, bone_matrices: np.ndarray,
              pre: np.ndarray | None = None) -> Path:
        return ply.write_vertex_array(path, self.frame(centres, bone_matrices, pre))

    def frame_skinned(self, points: np.ndarray, bone_matrices: np.ndarray, pre: np.ndarray | None = None) -> np.ndarray:
        """Undeformed (shape-keyed) points N,3 + bone matrices J,4,4 -> the frame's PLY array,
        skinning the centres here: c = sum_j w_j G_j [p, 1] (linear blend skinning, float32 as
        Blender's Armature modifier), then ``pre`` (4x4, e.g. the object's world matrix) if given.
        The same blended matrices give the rotations. Weights must be normalised (rows sum to 1)."""
        p = np.asarray(points, dtype=np.float32)
        if p.shape != (self.n_points, 3):
            raise BadInputError(f"points must have shape ({self.n_points}, 3), got {p.shape}")
        g = np.asarray(bone_matrices, dtype=np.float64)
        if g.ndim != 3 or g.shape[1:] != (4, 4) or g.shape[0] != self.weights.shape[1]:
            raise BadInputError(f"bone matrices must be {self.weights.shape[1]},4,4, got shape {g.shape}")
        if pre is not None:
            g = np.asarray(pre, dtype=np.float64) @ g
        b = weighted_rows(g[:, :3, :].reshape(-1, 12).T, self._weights_t)  # 12,N rows (a00 a01 a02 t0 a10 ...)
        d = self._data
        for i, name in enumerate(("x", "y", "z")):
            r = 4 * i
            c = b[r] * p[:, 0]
            c += b[r + 1] * p[:, 1]
            c += b[r + 2] * p[:, 2]
            c += b[r + 3]
            d[name] = c
        q = rotations_from_blend(self.rotation, b[[0, 1, 2, 4, 5, 6, 8, 9, 10]])
        d["rot_0"], d["rot_1"], d["rot_2"], d["rot_3"] = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
        return d


def frame_filename(frame: int) -> str:
    """``frame_NNNNNN.ply`` (6 digits, the Blender frame number; negative frames keep their sign)."""
    return f"frame_{frame:06d}.ply" if frame >= 0 else f"frame_-{-frame:06d}.ply"
