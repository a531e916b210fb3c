"""FLAME rig evaluation in torch: the same semantics as :mod:`backend.core.rig` (numpy), on
tensors, for the renderer and batch export on GPU. Forward kinematics come from
``smplx.lbs`` (``batch_rodrigues``, ``batch_rigid_transform``).

Shapes: B frames, N points, E expression components, J = 5 joints, P = 9 * (J - 1).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from smplx.lbs import batch_rigid_transform, batch_rodrigues

from ..core.rig import MODES, POSE_JOINTS, FlamePose


@dataclass
class TorchRig:
    """Rig tensors of an avatar (``points`` = Gaussian centres, or the template of a rig)."""

    points: torch.Tensor  # N,3
    expr_dirs: torch.Tensor  # N,3,E
    pose_dirs: torch.Tensor  # N,3,P
    lbs_weights: torch.Tensor  # N,J
    joints: torch.Tensor  # J,3
    joint_expr_dirs: torch.Tensor  # J,3,E
    parents: torch.Tensor  # J long
    arkit_dirs: torch.Tensor | None = None  # N,3,K named ARKit blendshapes (optional)
    arkit_names: tuple[str, ...] = ()

    @classmethod
    def from_avatar(cls, avatar: Any, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> TorchRig:
        """From an Avatar (uses ``xyz``) or a RigArrays (uses ``template``)."""
        xyz = getattr(avatar, "xyz", None)
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
        return cls(
            points=t(avatar.template if xyz is None else xyz),
            expr_dirs=t(avatar.expr_dirs),
            pose_dirs=t(avatar.pose_dirs),
            lbs_weights=t(avatar.lbs_weights),
            joints=t(avatar.joints),
            joint_expr_dirs=t(avatar.joint_expr_dirs),
            parents=torch.as_tensor(np.asarray(avatar.parents), dtype=torch.long, device=device),
            arkit_dirs=None if getattr(avatar, "arkit_dirs", None) is None else t(avatar.arkit_dirs),
            arkit_names=tuple(getattr(avatar, "arkit_names", ())),
        )


@dataclass
class TorchPose:
    """Batched FLAME pose tensors: expr B,E; the others B,3; ``arkit`` B,K weights of the named
    ARKit blendshapes ``arkit_names`` or None (see :class:`FlamePose`)."""

    expr: torch.Tensor
    rotation: torch.Tensor
    neck: torch.Tensor
    jaw: torch.Tensor
    eye_l: torch.Tensor
    eye_r: torch.Tensor
    translation: torch.Tensor
    arkit: torch.Tensor | None = None
    arkit_names: tuple[str, ...] = ()

    @classmethod
    def from_numpy(cls, pose: FlamePose, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> TorchPose:
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
        tensors = {f.name: t(getattr(pose, f.name)) for f in fields(cls) if f.name not in ("arkit", "arkit_names")}
        arkit = None if pose.arkit is None else t(pose.arkit)
        return cls(**tensors, arkit=arkit, arkit_names=tuple(pose.arkit_names))


@dataclass
class TorchDeformed:
    """positions B,N,3; point_rotations B,N,3,3 or None; joint_transforms B,J,4,4 (rest -> posed
    skinning transforms, translation included); posed_joints B,J,3."""

    positions: torch.Tensor
    point_rotations: torch.Tensor | None
    joint_transforms: torch.Tensor
    posed_joints: torch.Tensor


def _cofactor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x 9,M (entries of 3x3 matrices, row-major) -> cofactors 9,M (= det * X^-T) and det M."""
    a00, a01, a02, a10, a11, a12, a20, a21, a22 = x.unbind(0)
    c = torch.stack(
        [
            a11 * a22 - a12 * a21, a12 * a20 - a10 * a22, a10 * a21 - a11 * a20,
            a21 * a02 - a22 * a01, a22 * a00 - a20 * a02, a20 * a01 - a21 * a00,
            a01 * a12 - a02 * a11, a02 * a10 - a00 * a12, a00 * a11 - a01 * a10,
        ]
    )
    return c, a00 * c[0] + a01 * c[1] + a02 * c[2]


def polar_rotation(a: torch.Tensor, max_iter: int = 30) -> torch.Tensor:
    """...,3,3 -> rotation factor of the polar decomposition, as the numpy twin: Newton
    X <- (X + X^-T) / 2 on all matrices until none moves; det <= 0 or not converged: closest
    rotation from an SVD with the determinant fixed."""
    shape = a.shape
    x = a.reshape(-1, 9).T.contiguous()  # 9,M
    tol = 1e-12 if x.dtype == torch.float64 else 1e-6
    _, det0 = _cofactor(x)
    ok = det0 > 1e-9 * (x * x).sum(0).clamp_min(1e-60) ** 1.5
    x = torch.where(ok, x, torch.eye(3, dtype=x.dtype, device=x.device).reshape(9, 1))  # placeholders
    moving = torch.ones_like(ok)
    for _ in range(max_iter):
        c, det = _cofactor(x)
        nxt = 0.5 * (x + c / det)
        moving = (nxt - x).abs().amax(0) > tol
        x = nxt
        if not bool(moving.any()):
            break
    out = x.T.reshape(-1, 3, 3)
    bad = ~ok | moving
    if bool(bad.any()):
        u, _, vh = torch.linalg.svd(a.reshape(-1, 3, 3)[bad])
        d = torch.sign(torch.linalg.det(u @ vh))
        d = torch.where(d == 0, torch.ones_like(d), d)
        u = torch.cat([u[..., :2], u[..., 2:] * d[:, None, None]], dim=-1)
        out = out.clone()
        out[bad] = u @ vh
    return out.reshape(shape)


def matrix_to_quaternion(r: torch.Tensor) -> torch.Tensor:
    """...,3,3 -> ...,4 (w, x, y, z), w >= 0 (Shepperd's method, as the numpy twin)."""
    m00, m01, m02 = r[..., 0, 0], r[..., 0, 1], r[..., 0, 2]
    m10, m11, m12 = r[..., 1, 0], r[..., 1, 1], r[..., 1, 2]
    m20, m21, m22 = r[..., 2, 0], r[..., 2, 1], r[..., 2, 2]
    diag = torch.stack([m00 + m11 + m22, m00 - m11 - m22, -m00 + m11 - m22, -m00 - m11 + m22], -1)
    lead = (1.0 + diag).clamp_min(1e-12).sqrt() * 0.5
    f = 0.25 / lead
    cand = torch.stack(
        [
            torch.stack([lead[..., 0], (m21 - m12) * f[..., 0], (m02 - m20) * f[..., 0], (m10 - m01) * f[..., 0]], -1),
            torch.stack([(m21 - m12) * f[..., 1], lead[..., 1], (m01 + m10) * f[..., 1], (m02 + m20) * f[..., 1]], -1),
            torch.stack([(m02 - m20) * f[..., 2], (m01 + m10) * f[..., 2], lead[..., 2], (m12 + m21) * f[..., 2]], -1),
            torch.stack([(m10 - m01) * f[..., 3], (m02 + m20) * f[..., 3], (m12 + m21) * f[..., 3], lead[..., 3]], -1),
        ],
        -2,
    )
    pick = diag.argmax(dim=-1)[..., None, None].expand(*diag.shape[:-1], 1, 4)
    q = torch.gather(cand, -2, pick).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product a * b (w, x, y, z), broadcasting."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        -1,
    )


def rotate_gaussians(q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """q N,4 canonical (w, x, y, z), r B,N,3,3 -> B,N,4 = quat(r) * q, unit, w >= 0."""
    out = quaternion_multiply(matrix_to_quaternion(r), q[None].to(r.dtype))
    out = out / out.norm(dim=-1, keepdim=True)
    return torch.where(out[..., :1] < 0, -out, out)


def evaluate(
    rig: Any,
    pose: TorchPose | FlamePose,
    mode: str = "rig",
    pose_correctives: bool = False,
    with_rotations: bool = False,
) -> TorchDeformed:
    """Same contract as :func:`backend.core.rig.evaluate`. ``rig``: a :class:`TorchRig` (or an
    Avatar / RigArrays, converted to CPU float32); ``pose``: a :class:`TorchPose` (or a numpy
    FlamePose, moved to the rig's device)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "lam" and pose_correctives:
        raise ValueError("mode 'lam' has no pose correctives (LAM never applies them); use mode 'rig'")
    if not isinstance(rig, TorchRig):
        rig = TorchRig.from_avatar(rig)
    dtype, device = rig.points.dtype, rig.points.device
    if isinstance(pose, FlamePose):
        pose = TorchPose.from_numpy(pose.checked(rig.expr_dirs.shape[2]), device, dtype)
    n_joints = rig.joints.shape[0]
    full_pose = torch.stack([getattr(pose, k).to(dtype) for k in POSE_JOINTS], dim=1)  # B,5,3
    flame_skeleton = n_joints == len(POSE_JOINTS)
    if not flame_skeleton and bool(full_pose.any()):
        raise ValueError(f"a FLAME pose drives {len(POSE_JOINTS)} joints, the avatar has {n_joints}")
    b, e = pose.expr.shape
    if e > rig.expr_dirs.shape[2]:
        raise ValueError(f"pose.expr has {e} components but the avatar has only {rig.expr_dirs.shape[2]}")

    expr = pose.expr.to(dtype)
    shaped = rig.points[None] + torch.einsum("nce,be->bnc", rig.expr_dirs[:, :, :e], expr)
    if pose.arkit is not None and pose.arkit.shape[1] and bool(pose.arkit.any()):
        if rig.arkit_dirs is None:
            raise ValueError("the pose carries ARKit weights but the avatar has no ARKit blendshapes (arkit_dirs)")
        index = {n: i for i, n in enumerate(pose.arkit_names)}
        pick = [(k, index[n]) for k, n in enumerate(rig.arkit_names) if n in index]
        if pick:
            dst, src = (torch.as_tensor(x, dtype=torch.long, device=device) for x in zip(*pick))
            shaped = shaped + torch.einsum("nck,bk->bnc", rig.arkit_dirs[:, :, dst], pose.arkit[:, src].to(dtype))
    if flame_skeleton:
        rot_mats = batch_rodrigues(full_pose.reshape(-1, 3)).reshape(b, n_joints, 3, 3)
    else:  # any skeleton at rest (no rotations)
        rot_mats = torch.eye(3, dtype=dtype, device=device).expand(b, n_joints, 3, 3).contiguous()
        pose_correctives = False
    if pose_correctives:
        eye = torch.eye(3, dtype=dtype, device=device)
        feature = (rot_mats[:, 1:] - eye).reshape(b, -1)  # (R_j - I) row-major, joints 1..J-1
        shaped = shaped + torch.einsum("ncp,bp->bnc", rig.pose_dirs, feature)
    joints = rig.joints[None].expand(b, -1, -1)
    if mode == "lam":
        joints = joints + torch.einsum("jce,be->bjc", rig.joint_expr_dirs[:, :, :e], expr)

    posed_joints, transforms = batch_rigid_transform(rot_mats, joints.contiguous(), rig.parents, dtype=dtype)
    transl = pose.translation.to(dtype)
    transforms = transforms.clone()
    transforms[:, :, :3, 3] += transl[:, None]
    posed_joints = posed_joints + transl[:, None]

    blended = torch.matmul(rig.lbs_weights, transforms[:, :, :3, :].reshape(b, n_joints, 12)).reshape(b, -1, 3, 4)
    positions = torch.einsum("bnij,bnj->bni", blended[..., :3], shaped) + blended[..., 3]
    rotations = polar_rotation(blended[..., :3]) if with_rotations else None
    return TorchDeformed(positions, rotations, transforms, posed_joints)
