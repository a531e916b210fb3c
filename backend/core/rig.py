"""FLAME rig evaluation in numpy: blendshapes, linear blend skinning, Gaussian rotations.

Numpy only: the Blender add-on imports this module (export, checks) and the backend
uses it as the reference its torch twin (``backend/render/rig_torch.py``) is tested against.

Semantics (DESIGN.md "Animation semantics", LAM_SPEC.md section 4):

* mode ``"rig"`` (what Blender does): ``LBS(xyz + expr_dirs . expr [+ pose_dirs . pose_feature])``
  with the joints fixed at their rest positions.
* mode ``"lam"`` (the official LAM animation): the joints also move with expression,
  ``joints + joint_expr_dirs . expr``; no pose correctives.
* ARKit weights a pose may carry are matched by name to the avatar's ``arkit_names`` and their
  ``arkit_dirs`` added like the expression blendshapes (before skinning, joints unaffected).
* translation is added after skinning; the pose feature is ``(R_j - I)`` flattened
  row-major for joints 1..J-1 (the FLAME/SMPL convention, so FLAME's ``posedirs`` apply).
* a Gaussian's rotation follows the polar rotation factor ``R(A)`` of its blended
  3x3 skinning matrix ``A = sum_j w_j G_j[:3, :3]``; quaternions are ``w, x, y, z``.

Shapes: B frames, N points, E expression components, J = 5 joints
(root, neck, jaw, eye_l, eye_r), P = 9 * (J - 1) pose-corrective features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

POSE_JOINTS = ("rotation", "neck", "jaw", "eye_l", "eye_r")  # FlamePose field per joint, in joint order
MODES = ("rig", "lam")


# ---------------------------------------------------------------------------------------------
# Pose
# ---------------------------------------------------------------------------------------------


@dataclass
class FlamePose:
    """A batch of FLAME poses. ``expr`` is B,E; the rest are B,3 (axis-angle in radians,
    translation in metres). ``rotation`` is the global (root) rotation; the eyes are
    joints 3 (``eye_l``) and 4 (``eye_r``), in FLAME's ``eyes_pose`` order.

    Optionally ``arkit`` B,K weights of the named ARKit blendshapes ``arkit_names`` (K), matched
    by name to the avatar's: names the avatar lacks are ignored, its others stay at 0."""

    expr: np.ndarray
    rotation: np.ndarray
    neck: np.ndarray
    jaw: np.ndarray
    eye_l: np.ndarray
    eye_r: np.ndarray
    translation: np.ndarray
    arkit: np.ndarray | None = None
    arkit_names: tuple[str, ...] = ()

    @classmethod
    def zeros(cls, batch: int = 1, n_expr: int = 100) -> FlamePose:
        z = lambda: np.zeros((batch, 3), dtype=np.float32)  # noqa: E731
        return cls(np.zeros((batch, n_expr), dtype=np.float32), z(), z(), z(), z(), z(), z())

    @property
    def batch_size(self) -> int:
        return int(np.asarray(self.expr).shape[0])

    def full_pose(self) -> np.ndarray:
        """B,J,3 axis-angle per joint in joint order (root, neck, jaw, eye_l, eye_r)."""
        return np.stack([np.asarray(getattr(self, k), dtype=np.float64) for k in POSE_JOINTS], axis=1)

    def checked(self, n_expr: int) -> FlamePose:
        """Validate shapes against an avatar with ``n_expr`` components; returns float arrays.

        A pose with fewer expression components than the avatar drives the first ones
        (FLAME's components are ordered by importance); more is an error.
        """
        expr = np.asarray(self.expr)
        if expr.ndim != 2:
            raise ValueError(f"FlamePose.expr must be B,E, got shape {expr.shape}")
        b, e = expr.shape
        if e > n_expr:
            raise ValueError(f"FlamePose.expr has {e} components but the avatar has only {n_expr}")
        out = {"expr": expr.astype(np.float32)}
        for key in (*POSE_JOINTS, "translation"):
            a = np.asarray(getattr(self, key))
            if a.shape != (b, 3):
                raise ValueError(f"FlamePose.{key} must have shape ({b}, 3), got {a.shape}")
            out[key] = a.astype(np.float32)
        arkit = None
        if self.arkit is not None:
            arkit = np.asarray(self.arkit, dtype=np.float32)
            if arkit.shape != (b, len(self.arkit_names)):
                raise ValueError(f"FlamePose.arkit must have shape ({b}, {len(self.arkit_names)}) "
                                 f"(frames, arkit_names), got {arkit.shape}")
        return FlamePose(**out, arkit=arkit, arkit_names=tuple(self.arkit_names))

    @property
    def has_rotations(self) -> bool:
        """Whether any joint rotation is non-zero (a pose without any leaves every skeleton at rest)."""
        return any(np.any(np.asarray(getattr(self, k))) for k in POSE_JOINTS)


def arkit_weights(avatar_names: tuple[str, ...] | list[str], pose: FlamePose) -> np.ndarray:
    """The pose's ARKit weights on the avatar's targets: B,K_avatar float32 (0 where the pose has none)."""
    b = pose.batch_size
    out = np.zeros((b, len(avatar_names)), dtype=np.float32)
    if pose.arkit is None:
        return out
    index = {n: i for i, n in enumerate(pose.arkit_names)}
    for k, name in enumerate(avatar_names):
        if name in index:
            out[:, k] = np.asarray(pose.arkit)[:, index[name]]
    return out


@dataclass
class Deformed:
    """Result of :func:`evaluate`.

    positions: B,N,3 deformed centres. point_rotations: B,N,3,3 polar rotation per point
    (or None). joint_transforms: B,J,4,4 skinning transforms (rest space -> posed space,
    translation included): ``positions = sum_j w_j joint_transforms_j [x; 1]``.
    posed_joints: B,J,3 joint positions after posing (translation included).
    """

    positions: np.ndarray
    point_rotations: np.ndarray | None
    joint_transforms: np.ndarray
    posed_joints: np.ndarray


# ---------------------------------------------------------------------------------------------
# Rotations and quaternions (w, x, y, z)
# ---------------------------------------------------------------------------------------------


def skew(v: np.ndarray) -> np.ndarray:
    """...,3 -> ...,3,3 cross-product matrix: skew(v) @ u == cross(v, u)."""
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    o = np.zeros_like(x)
    return np.stack([np.stack([o, -z, y], -1), np.stack([z, o, -x], -1), np.stack([-y, x, o], -1)], -2)


def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    """...,3 axis-angle (radians) -> ...,3,3 rotation (Rodrigues), exact near zero too."""
    aa = np.asarray(aa, dtype=np.float64)
    theta2 = np.sum(aa * aa, axis=-1)
    theta = np.sqrt(theta2)
    small = theta < 1e-4
    safe = np.where(small, 1.0, theta)
    # R = I + a K + b K^2 with K = skew(aa), a = sin(t)/t, b = (1 - cos(t))/t^2 (Taylor near 0)
    a = np.where(small, 1.0 - theta2 / 6.0, np.sin(safe) / safe)
    b = np.where(small, 0.5 - theta2 / 24.0, (1.0 - np.cos(safe)) / (safe * safe))
    k = skew(aa)
    return np.eye(3) + a[..., None, None] * k + b[..., None, None] * (k @ k)


def matrix_to_quaternion(r: np.ndarray) -> np.ndarray:
    """...,3,3 rotation -> ...,4 unit quaternion (w, x, y, z) with w >= 0 (Shepperd's method)."""
    r = np.asarray(r, dtype=np.float64)
    m00, m01, m02 = r[..., 0, 0], r[..., 0, 1], r[..., 0, 2]
    m10, m11, m12 = r[..., 1, 0], r[..., 1, 1], r[..., 1, 2]
    m20, m21, m22 = r[..., 2, 0], r[..., 2, 1], r[..., 2, 2]
    # Four candidate formulas, each stable when its leading component is the largest.
    diag = np.stack([m00 + m11 + m22, m00 - m11 - m22, -m00 + m11 - m22, -m00 - m11 + m22], -1)
    lead = np.sqrt(np.maximum(1.0 + diag, 1e-12)) * 0.5  # |w|, |x|, |y|, |z| candidates
    f = 0.25 / lead
    cand = np.stack(
        [
            np.stack([lead[..., 0], (m21 - m12) * f[..., 0], (m02 - m20) * f[..., 0], (m10 - m01) * f[..., 0]], -1),
            np.stack([(m21 - m12) * f[..., 1], lead[..., 1], (m01 + m10) * f[..., 1], (m02 + m20) * f[..., 1]], -1),
            np.stack([(m02 - m20) * f[..., 2], (m01 + m10) * f[..., 2], lead[..., 2], (m12 + m21) * f[..., 2]], -1),
            np.stack([(m10 - m01) * f[..., 3], (m02 + m20) * f[..., 3], (m12 + m21) * f[..., 3], lead[..., 3]], -1),
        ],
        -2,
    )
    pick = np.argmax(diag, axis=-1)[..., None, None]
    q = np.take_along_axis(cand, np.broadcast_to(pick, (*pick.shape[:-2], 1, 4)), axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """...,4 quaternion (w, x, y, z; normalised here) -> ...,3,3 rotation."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def quaternion_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of ...,4 quaternions (w, x, y, z), broadcasting.
    As rotations: first b, then a."""
    a = np.asarray(a)
    b = np.asarray(b)
    aw, ax, ay, az = a[..., 0], a[..., 1], a[..., 2], a[..., 3]
    bw, bx, by, bz = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        -1,
    )


def _cofactor(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x 9,M (3x3 matrices, row-major entries as rows) -> cofactor matrices 9,M (= det * X^-T) and det M."""
    a00, a01, a02, a10, a11, a12, a20, a21, a22 = x
    c = np.empty_like(x)
    c[0] = a11 * a22 - a12 * a21
    c[1] = a12 * a20 - a10 * a22
    c[2] = a10 * a21 - a11 * a20
    c[3] = a21 * a02 - a22 * a01
    c[4] = a22 * a00 - a20 * a02
    c[5] = a20 * a01 - a21 * a00
    c[6] = a01 * a12 - a02 * a11
    c[7] = a02 * a10 - a00 * a12
    c[8] = a00 * a11 - a01 * a10
    return c, a00 * c[0] + a01 * c[1] + a02 * c[2]


def polar_rotation(a: np.ndarray, tol: float = 1e-12, max_iter: int = 30) -> np.ndarray:
    """...,3,3 -> ...,3,3 float64: the rotation factor R of the polar decomposition A = R S.

    Newton's iteration X <- (X + X^-T) / 2 in float64 (quadratic convergence; blended LBS
    matrices are near-rotations: about five steps), on matrices stored entry-wise (9,M) so
    every step is a few dozen vector operations. Matrices with det <= 0 (whose polar factor
    is no proper rotation) or that do not converge get the closest rotation from an SVD with
    the determinant fixed, U diag(1, 1, det(U V^T)) V^T.
    """
    a = np.asarray(a)
    shape = a.shape
    x = np.array(a.reshape(-1, 9).T, dtype=np.float64, order="C")  # 9,M
    m = x.shape[1]
    _, det0 = _cofactor(x)
    ok = det0 > 1e-9 * np.maximum(np.einsum("im,im->m", x, x), 1e-60) ** 1.5
    # Iterate on all columns in place while most still move; fancy-index only the stragglers.
    todo = None if ok.all() else np.flatnonzero(ok)  # None: every column
    xs = x if todo is None else x[:, todo]
    moving = np.ones(xs.shape[1], dtype=bool)
    for _ in range(max_iter):
        if xs.shape[1] == 0:
            break
        c, det = _cofactor(xs)
        c /= det
        c += xs
        c *= 0.5
        xs -= c
        moving = np.abs(xs).max(axis=0) > tol
        if todo is None:
            x = c
        else:
            x[:, todo] = c
        xs = c
        n_moving = int(np.count_nonzero(moving))
        if n_moving == 0:
            break
        if n_moving < moving.size // 2:
            idx = np.flatnonzero(moving)
            todo = idx if todo is None else todo[idx]
            xs, moving = xs[:, idx], moving[idx]
    bad = ~ok
    if moving.any():  # still moving after max_iter
        bad[np.flatnonzero(moving) if todo is None else todo[moving]] = True
    out = x.T.reshape(m, 3, 3)
    if bad.any():
        u, _, vt = np.linalg.svd(a.reshape(m, 3, 3)[bad].astype(np.float64))
        d = np.sign(np.linalg.det(u @ vt))
        d[d == 0] = 1.0
        u[:, :, 2] *= d[:, None]
        out[bad] = u @ vt
    return out.reshape(shape)


def rotate_gaussians(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """q N,4 canonical quaternions (w, x, y, z), r B,N,3,3 rotations -> B,N,4 rotated quaternions
    quat(r) * q, unit length, w >= 0."""
    out = quaternion_multiply(matrix_to_quaternion(r), np.asarray(q, dtype=np.float64)[None])
    out = out / np.linalg.norm(out, axis=-1, keepdims=True)
    return np.where(out[..., :1] < 0, -out, out).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Blendshapes and skinning
# ---------------------------------------------------------------------------------------------


def blend(dirs: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """dirs N,3,K and coeffs B,K -> B,N,3 offsets sum_k dirs[..., k] * coeffs[:, k]."""
    n, _, k = dirs.shape
    flat = dirs.reshape(n * 3, k) @ np.asarray(coeffs, dtype=dirs.dtype).T  # N*3,B
    return flat.T.reshape(-1, n, 3)


def pose_feature(rot_mats: np.ndarray) -> np.ndarray:
    """B,J,3,3 joint rotations -> B,9*(J-1): (R_j - I) flattened row-major for joints 1..J-1."""
    b, j = rot_mats.shape[:2]
    return (rot_mats[:, 1:] - np.eye(3)).reshape(b, 9 * (j - 1))


def rigid_transforms(rot_mats: np.ndarray, joints: np.ndarray, parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward kinematics.

    rot_mats B,J,3,3 local joint rotations; joints B,J,3 rest joint positions; parents J
    (parents precede children, root -1). Returns posed joints B,J,3 and the skinning
    transforms B,J,4,4 that map rest space to posed space (rest joint position removed).
    """
    b, j = rot_mats.shape[:2]
    rel = joints.copy()
    rel[:, 1:] -= joints[:, parents[1:]]
    local = np.zeros((b, j, 4, 4))
    local[:, :, :3, :3] = rot_mats
    local[:, :, :3, 3] = rel
    local[:, :, 3, 3] = 1.0
    chain = [local[:, 0]]
    for i in range(1, j):
        chain.append(chain[parents[i]] @ local[:, i])
    world = np.stack(chain, axis=1)  # B,J,4,4: joint frames in posed space
    posed = world[:, :, :3, 3].copy()
    skin = world.copy()
    skin[:, :, :3, 3] -= np.einsum("bjik,bjk->bji", world[:, :, :3, :3], joints)
    return posed, skin


def skin_points(points: np.ndarray, weights: np.ndarray, transforms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear blend skinning.

    points B,N,3; weights N,J; transforms B,J,4,4 -> (positions B,N,3, blended 3x4 matrices B,N,3,4).
    """
    b, j = transforms.shape[:2]
    t = np.matmul(weights, transforms[:, :, :3, :].reshape(b, j, 12).astype(weights.dtype))  # B,N,12
    t = t.reshape(b, -1, 3, 4)
    x, y, z = points[..., 0:1], points[..., 1:2], points[..., 2:3]
    pos = t[..., 0] * x + t[..., 1] * y + t[..., 2] * z + t[..., 3]
    return pos, t


def _rest_points(avatar: Any) -> np.ndarray:
    """The canonical points: an Avatar's Gaussian centres, or a rig's template."""
    xyz = getattr(avatar, "xyz", None)
    return np.asarray(avatar.template if xyz is None else xyz)


def evaluate(
    avatar: Any,
    pose: FlamePose,
    mode: str = "rig",
    pose_correctives: bool = False,
    with_rotations: bool = False,
) -> Deformed:
    """Deform the avatar's points (``xyz``; a :class:`RigArrays` has none, its ``template`` is used)
    by a batch of FLAME poses. See the module docstring for the two modes.

    ``avatar`` needs expr_dirs N,3,E; pose_dirs N,3,P; lbs_weights N,J; joints J,3;
    joint_expr_dirs J,3,E; parents J (an :class:`~backend.core.formats.avatar_file.Avatar` or a RigArrays).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "lam" and pose_correctives:
        raise ValueError("mode 'lam' has no pose correctives (LAM never applies them); use mode 'rig'")
    points = _rest_points(avatar).astype(np.float32)
    expr_dirs = np.asarray(avatar.expr_dirs, dtype=np.float32)
    weights = np.asarray(avatar.lbs_weights, dtype=np.float32)
    rest_joints = np.asarray(avatar.joints, dtype=np.float64)
    parents = np.asarray(avatar.parents, dtype=np.int64)
    n_joints = rest_joints.shape[0]
    pose = pose.checked(expr_dirs.shape[2])
    flame_skeleton = n_joints == len(POSE_JOINTS)
    if not flame_skeleton and pose.has_rotations:
        raise ValueError(f"a FLAME pose drives {len(POSE_JOINTS)} joints, the avatar has {n_joints}")
    b, e = pose.expr.shape

    shaped = points[None] + blend(expr_dirs[:, :, :e], pose.expr)  # B,N,3
    if pose.arkit is not None and pose.arkit.shape[1] and np.any(pose.arkit):
        arkit_dirs = getattr(avatar, "arkit_dirs", None)
        if arkit_dirs is None:
            raise ValueError("the pose carries ARKit weights but the avatar has no ARKit blendshapes (arkit_dirs)")
        arkit_dirs = np.asarray(arkit_dirs, dtype=np.float32)
        shaped += blend(arkit_dirs, arkit_weights(tuple(avatar.arkit_names), pose))
    if flame_skeleton:
        rot_mats = axis_angle_to_matrix(pose.full_pose())  # B,J,3,3
    else:  # any skeleton at rest (no rotations): identity joint rotations
        rot_mats = np.broadcast_to(np.eye(3), (b, n_joints, 3, 3)).copy()
        pose_correctives = False  # (R - I) is zero: the correctives add nothing
    if pose_correctives:
        pose_dirs = np.asarray(avatar.pose_dirs, dtype=np.float32)
        shaped += blend(pose_dirs, pose_feature(rot_mats).astype(np.float32))
    joints = np.broadcast_to(rest_joints, (b, n_joints, 3))
    if mode == "lam":
        joint_dirs = np.asarray(avatar.joint_expr_dirs, dtype=np.float64)[:, :, :e]
        joints = joints + blend(joint_dirs, pose.expr)

    posed_joints, transforms = rigid_transforms(rot_mats, np.ascontiguousarray(joints), parents)
    transforms[:, :, :3, 3] += pose.translation[:, None, :]
    posed_joints += pose.translation[:, None, :]
    positions, blended = skin_points(shaped, weights, transforms)

    rotations = polar_rotation(blended[..., :3]).astype(np.float32) if with_rotations else None
    return Deformed(
        positions=positions.astype(np.float32, copy=False),
        point_rotations=rotations,
        joint_transforms=transforms.astype(np.float32),
        posed_joints=posed_joints.astype(np.float32),
    )
