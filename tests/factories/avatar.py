"""Synthetic avatars for tests: valid files with a plausible rig, no FLAME needed.

A sphere-ish head of N points around joints laid out like FLAME's (neck below
the head centre, jaw forward, eyes in front), smooth random blendshapes and
LBS weights that fall off with distance to each joint.
"""

from __future__ import annotations

import numpy as np

from backend.core.formats.avatar_file import JOINT_NAMES, Avatar

REST_JOINTS = np.array(
    [[0.0, 0.0, 0.0], [0.0, -0.02, -0.01], [0.0, -0.03, 0.02], [0.03, 0.03, 0.06], [-0.03, 0.03, 0.06]],
    dtype=np.float32,
)


def make_avatar(n_points: int = 500, n_expr: int = 10, seed: int = 0, n_faces: int = 64) -> Avatar:
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n_points, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    template = (d * np.array([0.08, 0.11, 0.1]) + [0.0, 0.02, 0.0]).astype(np.float32)
    xyz = (template + rng.normal(scale=0.003, size=template.shape)).astype(np.float32)
    n_joints = len(JOINT_NAMES)
    dist = np.linalg.norm(template[:, None, :] - REST_JOINTS[None], axis=2)
    w = np.exp(-((dist / 0.05) ** 2)) + 1e-3
    w /= w.sum(axis=1, keepdims=True)
    expr_dirs = rng.normal(scale=0.002, size=(n_points, 3, n_expr)).astype(np.float32)
    pose_dirs = rng.normal(scale=0.001, size=(n_points, 3, 9 * (n_joints - 1))).astype(np.float32)
    q = rng.normal(size=(n_points, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    faces = np.array([rng.choice(n_points, 3, replace=False) for _ in range(n_faces)], dtype=np.int32)
    return Avatar(
        xyz=xyz,
        template=template,
        rgb=rng.uniform(0.05, 0.95, size=(n_points, 3)).astype(np.float32),
        opacity=rng.uniform(0.2, 1.0, size=n_points).astype(np.float32),
        scale=rng.uniform(0.002, 0.008, size=(n_points, 3)).astype(np.float32),
        rotation=q.astype(np.float32),
        expr_dirs=expr_dirs,
        pose_dirs=pose_dirs,
        lbs_weights=w.astype(np.float32),
        joints=REST_JOINTS.copy(),
        joint_expr_dirs=rng.normal(scale=0.001, size=(n_joints, 3, n_expr)).astype(np.float32),
        parents=np.array([-1, 0, 1, 1, 1], dtype=np.int32),
        joint_names=JOINT_NAMES,
        faces=faces,
        shape_params=np.zeros(10, dtype=np.float32),
        meta={"model": "synthetic", "seed": seed},
    )


def make_flame_topology_avatar(n_expr: int = 100, seed: int = 0) -> Avatar:
    """Our own kind of avatar on FLAME 2023's real subdivided topology (20018 points), as
    ``create`` makes it, without torch: the triangles and the ARKit basis are the real ones bundled
    with the backend (from LAM's sample ZIP); vertex positions (an ellipsoid), FLAME's blendshapes,
    joints and weights are made up; the rig comes from ``build_rig``, so the ARKit keys are the
    basis subdivided by our own subdivision."""
    from backend.flame import arkit_basis, build_rig
    from backend.flame.model import FlameModel
    from factories.flame import flame_arrays_on_mesh

    basis = arkit_basis.bundled()
    rng = np.random.default_rng(seed)  # vertex positions: an ellipsoid (the basis carries no mesh)
    v = rng.normal(size=(basis.n_vertices, 3))
    v = v / np.linalg.norm(v, axis=1, keepdims=True) * np.array([0.08, 0.11, 0.1])
    model = FlameModel.from_arrays(flame_arrays_on_mesh(v, basis.faces, 300, n_expr, seed), n_shape=300)
    rig = build_rig(model, np.zeros(300), levels=1, arkit=basis)
    n = rig.n_points
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return Avatar(
        xyz=(rig.template + rng.normal(scale=0.002, size=(n, 3))).astype(np.float32), template=rig.template,
        rgb=rng.uniform(0.05, 0.95, size=(n, 3)).astype(np.float32),
        opacity=rng.uniform(0.2, 1.0, size=n).astype(np.float32),
        scale=rng.uniform(0.001, 0.004, size=(n, 3)).astype(np.float32), rotation=q.astype(np.float32),
        expr_dirs=rig.expr_dirs, pose_dirs=rig.pose_dirs, lbs_weights=rig.lbs_weights, joints=rig.joints,
        joint_expr_dirs=rig.joint_expr_dirs, parents=rig.parents, joint_names=rig.joint_names, faces=rig.faces,
        shape_params=rig.shape_params, meta={"model": "synthetic on FLAME topology", "seed": seed},
        arkit_dirs=rig.arkit_dirs, arkit_names=rig.arkit_names,
    )
