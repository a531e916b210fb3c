"""Per-frame splat PLY maths (bpy-free): R(A) rotations, frame arrays, files."""

from __future__ import annotations

import numpy as np
import pytest
from factories.avatar import make_avatar
from plyfile import PlyData

from backend.core import rig, splat_frames
from backend.core.errors import BadInputError
from backend.core.formats import ply


def _rot(axis, angle):
    axis = np.asarray(axis, dtype=np.float64)
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _quat_to_mat(q):
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.stack([
        np.stack([w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z], -1),
    ], -2)


def _svd_polar(a):
    u, _, vt = np.linalg.svd(a)
    return u @ vt


def test_polar_rotation_matches_svd_for_blended_rotations_and_scaled_bones():
    rng = np.random.default_rng(0)
    bones = np.stack([_rot(rng.normal(size=3), rng.uniform(0, 1.2)) for _ in range(5)])
    bones[2] *= 1.7  # a uniformly scaled bone
    bones[3] = bones[3] @ np.diag([1.0, 0.6, 1.3])  # and a non-uniform one
    w = rng.dirichlet(np.ones(5) * 0.5, size=400)
    a_soa = splat_frames.blended_linear(w, bones)
    a = a_soa.T.reshape(-1, 3, 3)
    np.testing.assert_allclose(a, np.einsum("nj,jab->nab", w, bones), atol=1e-12)
    r = splat_frames.polar_rotation_soa(a_soa).T.reshape(-1, 3, 3)
    np.testing.assert_allclose(r, _svd_polar(a), atol=1e-9)


def test_reflections_fall_back_to_closest_proper_rotation():
    a = np.stack([np.diag([1.0, 1.0, -1.0]), np.zeros((3, 3)), _rot([0, 1, 0], 0.3)])
    r = splat_frames.polar_rotation_soa(a.reshape(-1, 9).T).T.reshape(-1, 3, 3)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
    np.testing.assert_allclose(r[2], _rot([0, 1, 0], 0.3), atol=1e-12)


def test_deformed_rotations_compose_r_of_a_with_the_canonical_rotation():
    rng = np.random.default_rng(1)
    n = 300
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    bones = np.zeros((3, 4, 4))
    for j in range(3):
        bones[j, :3, :3] = _rot(rng.normal(size=3), rng.uniform(0, 3.0))  # up to large angles
        bones[j, :3, 3] = rng.normal(size=3)
        bones[j, 3, 3] = 1
    w = rng.dirichlet(np.ones(3), size=n)
    w[:20] = [1, 0, 0]  # rigid points: exactly the bone's rotation
    out = splat_frames.deformed_rotations(q, w, bones)
    assert out.dtype == np.float32 and (out[:, 0] >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-6)
    want = _svd_polar(np.einsum("nj,jab->nab", w, bones[:, :3, :3])) @ _quat_to_mat(q)
    np.testing.assert_allclose(_quat_to_mat(out.astype(np.float64)), want, atol=2e-6)


@pytest.mark.parametrize("expr_scale", [0.0, 1.5])
def test_frame_matches_backend_rig_evaluation(tmp_path, expr_scale):
    """The exporter's path (centres + joint matrices -> PLY) reproduces rig.evaluate + rotate_gaussians."""
    av = make_avatar(n_points=400, n_expr=10, seed=2)
    pose = rig.FlamePose.zeros(1, 10)
    pose.expr[0] = expr_scale * np.linspace(-1, 1, 10)
    pose.jaw[0] = [0.35, 0.05, 0.0]
    pose.neck[0] = [0.1, -0.3, 0.05]
    pose.rotation[0] = [0.0, 0.4, 0.1]
    pose.eye_l[0] = [0.0, 0.2, 0.0]
    pose.translation[0] = [0.01, 0.02, -0.03]
    d = rig.evaluate(av, pose, with_rotations=True)
    want_q = rig.rotate_gaussians(av.rotation, d.point_rotations)[0]

    writer = splat_frames.SplatFrameWriter(av.rgb, av.opacity, av.scale, av.rotation, av.lbs_weights)
    path = writer.write(tmp_path / splat_frames.frame_filename(7), d.positions[0], d.joint_transforms[0])
    assert path.name == "frame_000007.ply"
    v = PlyData.read(str(path))["vertex"]
    got_q = np.stack([v[f"rot_{i}"] for i in range(4)], 1)
    sign = np.sign((got_q * want_q).sum(1, keepdims=True))
    np.testing.assert_allclose(got_q * sign, want_q, atol=1e-5)
    back = ply.read_3dgs_ply(path)
    np.testing.assert_array_equal(back["xyz"], d.positions[0])
    np.testing.assert_allclose(back["scale"], av.scale, rtol=1e-6)
    np.testing.assert_allclose(back["rgb"], av.rgb, atol=1e-6)
    np.testing.assert_allclose(back["opacity"], av.opacity, atol=1e-6)


def test_pre_matrix_rotates_into_world_space():
    rng = np.random.default_rng(3)
    q = rng.normal(size=(50, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w = rng.dirichlet(np.ones(2), size=50)
    bones = np.stack([np.eye(4), np.eye(4)])
    bones[1, :3, :3] = _rot([1, 0, 0], 0.5)
    world = _rot([1, 0, 0], np.pi / 2) * 2.0  # Y-up -> Z-up, uniformly scaled
    out = splat_frames.deformed_rotations(q, w, bones, pre=world)
    want = _svd_polar(world @ np.einsum("nj,jab->nab", w, bones[:, :3, :3])) @ _quat_to_mat(q)
    np.testing.assert_allclose(_quat_to_mat(out.astype(np.float64)), want, atol=2e-6)


def test_bad_shapes_are_refused():
    av = make_avatar(n_points=20)
    writer = splat_frames.SplatFrameWriter(av.rgb, av.opacity, av.scale, av.rotation, av.lbs_weights)
    with pytest.raises(BadInputError, match="centres"):
        writer.frame(np.zeros((19, 3)), np.tile(np.eye(4), (5, 1, 1)))
    with pytest.raises(BadInputError, match="bone matrices"):
        writer.frame(av.xyz, np.zeros((5, 2, 2)))
    with pytest.raises(BadInputError, match="weights must be N,4"):
        writer.frame(av.xyz, np.tile(np.eye(4), (4, 1, 1)))
    with pytest.raises(BadInputError, match="weights"):
        splat_frames.SplatFrameWriter(av.rgb, av.opacity, av.scale, av.rotation, av.lbs_weights[:3])
    assert splat_frames.frame_filename(-3) == "frame_-000003.ply"


def test_rotation_to_quaternion_every_branch():
    """Uniformly random rotations (most past 90 degrees, so every Shepperd branch runs)."""
    rng = np.random.default_rng(5)
    q = rng.normal(size=(2000, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    m = _quat_to_mat(q)
    out = splat_frames.rotation_to_quaternion_soa(m.reshape(-1, 9).T).T
    assert (np.max(np.diagonal(m, axis1=1, axis2=2), axis=1) > np.trace(m, axis1=1, axis2=2)).sum() > 1000
    np.testing.assert_allclose(np.abs((out * q).sum(1)), 1.0, atol=1e-12)  # same rotation up to sign
