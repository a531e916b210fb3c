"""Rig maths (backend/core/rig.py) against independent per-point computations."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from factories.avatar import make_avatar

from backend.core import rig


def _expm_skew(v: np.ndarray) -> np.ndarray:
    """Rotation for axis-angle v by the matrix-exponential power series (independent of Rodrigues)."""
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]], dtype=np.float64)
    out, term = np.eye(3), np.eye(3)
    for i in range(1, 40):
        term = term @ k / i
        out = out + term
    return out


def _translate(t: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = t
    return m


def _rotate_about(r: np.ndarray, centre: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = r
    return _translate(centre) @ m @ _translate(-centre)


def _random_pose(b: int, e: int, seed: int = 1, scale: float = 0.4) -> rig.FlamePose:
    rng = np.random.default_rng(seed)
    p = rig.FlamePose.zeros(b, e)
    for key in ("rotation", "neck", "jaw", "eye_l", "eye_r"):
        setattr(p, key, rng.normal(scale=scale, size=(b, 3)).astype(np.float32))
    p.translation = rng.normal(scale=0.05, size=(b, 3)).astype(np.float32)
    p.expr = rng.normal(size=(b, e)).astype(np.float32)
    return p


def _reference(av, pose: rig.FlamePose, frame: int, mode: str, correctives: bool) -> np.ndarray:
    """Per-point loop: each joint's skinning matrix is the product, root to joint, of
    rotations about that ancestor's rest position, as explicit 4x4 matrices."""
    names = ("rotation", "neck", "jaw", "eye_l", "eye_r")
    rots = [_expm_skew(np.asarray(getattr(pose, k)[frame], np.float64)) for k in names]
    expr = np.asarray(pose.expr[frame], np.float64)
    joints = np.asarray(av.joints, np.float64).copy()
    if mode == "lam":
        for j in range(joints.shape[0]):
            for c in range(3):
                joints[j, c] += sum(av.joint_expr_dirs[j, c, k] * expr[k] for k in range(len(expr)))
    feat = []
    for j in range(1, 5):
        for r in range(3):
            for c in range(3):
                feat.append(rots[j][r, c] - (1.0 if r == c else 0.0))
    mats = []
    for j in range(5):
        chain, k = [], j
        while k != -1:
            chain.append(k)
            k = int(av.parents[k])
        m = np.eye(4)
        for k in reversed(chain):  # root first
            m = m @ _rotate_about(rots[k], joints[k])
        mats.append(_translate(np.asarray(pose.translation[frame], np.float64)) @ m)
    out = np.zeros((av.xyz.shape[0], 3))
    for n in range(av.xyz.shape[0]):
        v = np.asarray(av.xyz[n], np.float64).copy()
        for c in range(3):
            v[c] += sum(av.expr_dirs[n, c, k] * expr[k] for k in range(len(expr)))
            if correctives:
                v[c] += sum(av.pose_dirs[n, c, p] * feat[p] for p in range(36))
        blended = sum(av.lbs_weights[n, j] * mats[j] for j in range(5))
        out[n] = (blended @ np.append(v, 1.0))[:3]
    return out


@pytest.mark.parametrize(("mode", "correctives"), [("rig", False), ("rig", True), ("lam", False)])
def test_lbs_matches_per_point_reference(mode, correctives):
    av = make_avatar(n_points=40, n_expr=6, seed=3)
    pose = _random_pose(3, 6)
    got = rig.evaluate(av, pose, mode=mode, pose_correctives=correctives).positions
    assert got.shape == (3, 40, 3) and got.dtype == np.float32
    for f in range(3):
        np.testing.assert_allclose(got[f], _reference(av, pose, f, mode, correctives), atol=2e-6)


def test_modes_differ_only_through_joint_expression_motion():
    av = make_avatar(n_points=50, n_expr=6)
    pose = _random_pose(2, 6)
    a = rig.evaluate(av, pose, mode="rig").positions
    b = rig.evaluate(av, pose, mode="lam").positions
    assert np.abs(a - b).max() > 1e-5
    av.joint_expr_dirs[:] = 0
    np.testing.assert_allclose(rig.evaluate(av, pose, mode="lam").positions, a, atol=1e-6)


def test_zero_pose_returns_xyz_and_rig_template():
    av = make_avatar(n_points=60, n_expr=8)
    for mode in rig.MODES:
        d = rig.evaluate(av, rig.FlamePose.zeros(2, 8), mode=mode, with_rotations=True)
        np.testing.assert_allclose(d.positions, np.broadcast_to(av.xyz, (2, 60, 3)), atol=1e-7)
        np.testing.assert_allclose(d.point_rotations, np.broadcast_to(np.eye(3), (2, 60, 3, 3)), atol=1e-6)
        np.testing.assert_allclose(d.joint_transforms, np.broadcast_to(np.eye(4), (2, 5, 4, 4)), atol=1e-7)
        np.testing.assert_allclose(d.posed_joints[0], av.joints, atol=1e-7)
    # A rig (no Gaussians yet) deforms its template.
    rig_like = SimpleNamespace(**{k: getattr(av, k) for k in ("template", "expr_dirs", "pose_dirs", "lbs_weights", "joints", "joint_expr_dirs", "parents")})
    d = rig.evaluate(rig_like, rig.FlamePose.zeros(1, 8), pose_correctives=True)
    np.testing.assert_allclose(d.positions[0], av.template, atol=1e-7)


def test_translation_is_added_after_skinning():
    av = make_avatar(n_points=30, n_expr=4)
    pose = _random_pose(1, 4)
    base = rig.evaluate(av, pose).positions
    pose.translation = pose.translation + np.array([[0.1, -0.2, 0.3]], np.float32)
    np.testing.assert_allclose(rig.evaluate(av, pose).positions - base, np.broadcast_to([0.1, -0.2, 0.3], base.shape), atol=1e-6)


def test_fewer_expression_components_drive_the_first_ones():
    av = make_avatar(n_points=30, n_expr=10)
    pose = _random_pose(2, 10)
    pose.expr[:, 4:] = 0
    short = rig.FlamePose(**{**pose.__dict__, "expr": pose.expr[:, :4]})
    np.testing.assert_allclose(rig.evaluate(av, short).positions, rig.evaluate(av, pose).positions, atol=1e-7)


def test_joint_transforms_skin_the_points():
    av = make_avatar(n_points=30, n_expr=4)
    pose = _random_pose(2, 4)
    d = rig.evaluate(av, pose)
    shaped = av.xyz[None] + np.einsum("nce,be->bnc", av.expr_dirs, pose.expr)
    homo = np.concatenate([shaped, np.ones((2, 30, 1))], axis=2)
    expect = np.einsum("nj,bjik,bnk->bni", av.lbs_weights, d.joint_transforms, homo)[..., :3]
    np.testing.assert_allclose(d.positions, expect, atol=1e-6)
    # posed joints: where the skinning transform of each joint sends its rest position
    moved = np.einsum("bjik,jk->bji", d.joint_transforms[..., :3, :3], av.joints) + d.joint_transforms[..., :3, 3]
    np.testing.assert_allclose(d.posed_joints, moved, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "blender"}, "mode must be"),
        ({"mode": "lam", "pose_correctives": True}, "no pose correctives"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rig.evaluate(make_avatar(20, 4), rig.FlamePose.zeros(1, 4), **kwargs)


def test_bad_pose_shapes_are_refused():
    av = make_avatar(20, 4)
    with pytest.raises(ValueError, match="only 4"):
        rig.evaluate(av, rig.FlamePose.zeros(1, 5))
    p = rig.FlamePose.zeros(2, 4)
    p.jaw = np.zeros((1, 3))
    with pytest.raises(ValueError, match="jaw"):
        rig.evaluate(av, p)
    with pytest.raises(ValueError, match="B,E"):
        rig.evaluate(av, rig.FlamePose(np.zeros(4), *[np.zeros((1, 3))] * 6))


# ------------------------------------------------------------------ rotations and quaternions


def test_axis_angle_matches_matrix_exponential_including_tiny_angles():
    rng = np.random.default_rng(0)
    vs = np.concatenate([rng.normal(size=(20, 3)), rng.normal(scale=1e-6, size=(5, 3)), np.zeros((1, 3))])
    got = rig.axis_angle_to_matrix(vs)
    for v, r in zip(vs, got):
        np.testing.assert_allclose(r, _expm_skew(v), atol=1e-12)


def test_quaternion_round_trip_and_product():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(200, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[:3] = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]  # 0 and 180 degree cases
    r = rig.quaternion_to_matrix(q)
    back = rig.matrix_to_quaternion(r)
    canon = np.where(q[:, :1] < 0, -q, q)
    close = np.minimum(np.abs(back - canon).max(1), np.abs(back + canon).max(1))  # w == 0: sign free
    assert close.max() < 1e-10
    assert (back[:, 0] >= 0).all()
    p = q[::-1].copy()
    np.testing.assert_allclose(rig.quaternion_to_matrix(rig.quaternion_multiply(q, p)), r @ rig.quaternion_to_matrix(p), atol=1e-12)
    # rotation matrix of axis-angle (axis u, angle t) == quaternion (cos t/2, sin t/2 u)
    np.testing.assert_allclose(rig.matrix_to_quaternion(rig.axis_angle_to_matrix([0.0, 0.0, 0.5])), [np.cos(0.25), 0, 0, np.sin(0.25)], atol=1e-12)


def test_polar_rotation_properties():
    rng = np.random.default_rng(2)
    rots = rig.axis_angle_to_matrix(rng.normal(scale=0.6, size=(5, 3)))
    w = rng.dirichlet(np.ones(5), size=300)
    a = np.einsum("nj,jik->nik", w, rots)  # blended LBS matrices
    assert (np.linalg.det(a) > 0).all()  # so the polar factor is a proper rotation
    r = rig.polar_rotation(a)
    np.testing.assert_allclose(r @ np.swapaxes(r, 1, 2), np.broadcast_to(np.eye(3), r.shape), atol=1e-10)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-10)
    s = np.swapaxes(r, 1, 2) @ a  # A = R S with S symmetric positive definite
    np.testing.assert_allclose(s, np.swapaxes(s, 1, 2), atol=1e-10)
    assert (np.linalg.eigvalsh(s) > 0).all()
    # independent: SVD
    u, _, vt = np.linalg.svd(a)
    np.testing.assert_allclose(r, u @ vt, atol=1e-10)
    # a pure rotation (one joint's weight 1) is its own rotation factor; scale does not matter
    np.testing.assert_allclose(rig.polar_rotation(rots * 0.3), rots, atol=1e-10)


def test_polar_rotation_of_reflections_and_singular_matrices_is_a_rotation():
    a = np.array([np.diag([1.0, 1.0, -1.0]), np.zeros((3, 3)), np.diag([2.0, 1.0, 0.0])])
    r = rig.polar_rotation(a)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-10)
    np.testing.assert_allclose(r @ np.swapaxes(r, 1, 2), np.broadcast_to(np.eye(3), r.shape), atol=1e-10)


def test_polar_rotation_falls_back_to_svd_when_newton_has_not_converged():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(20, 3, 3))
    a[np.linalg.det(a) < 0] *= -1
    u, _, vt = np.linalg.svd(a)
    np.testing.assert_allclose(rig.polar_rotation(a, max_iter=1), u @ vt, atol=1e-10)
    np.testing.assert_allclose(rig.polar_rotation(a), u @ vt, atol=1e-10)


def test_point_rotations_follow_the_skinning():
    av = make_avatar(n_points=50, n_expr=4)
    pose = _random_pose(2, 4)
    d = rig.evaluate(av, pose, with_rotations=True)
    blended = np.einsum("nj,bjik->bnik", av.lbs_weights.astype(np.float64), d.joint_transforms[..., :3, :3].astype(np.float64))
    u, _, vt = np.linalg.svd(blended)
    np.testing.assert_allclose(d.point_rotations, u @ vt, atol=1e-5)


def test_rotate_gaussians_composes_rotations():
    rng = np.random.default_rng(4)
    q = rng.normal(size=(30, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    r = rig.axis_angle_to_matrix(rng.normal(size=(2, 30, 3)))
    out = rig.rotate_gaussians(q.astype(np.float32), r)
    assert out.shape == (2, 30, 4) and out.dtype == np.float32
    np.testing.assert_allclose(rig.quaternion_to_matrix(out), r @ rig.quaternion_to_matrix(q)[None], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-6)


# ------------------------------------------------------------------ torch twin


def _torch():
    return pytest.importorskip("torch", reason="torch is not installed in this environment (numpy-only test env)")


@pytest.mark.parametrize(("mode", "correctives"), [("rig", False), ("rig", True), ("lam", False)])
def test_torch_matches_numpy(mode, correctives):
    torch = _torch()
    from backend.render import rig_torch

    av = make_avatar(n_points=300, n_expr=12, seed=5)
    pose = _random_pose(4, 12, seed=6)
    ref = rig.evaluate(av, pose, mode=mode, pose_correctives=correctives, with_rotations=True)
    got = rig_torch.evaluate(av, pose, mode=mode, pose_correctives=correctives, with_rotations=True)
    np.testing.assert_allclose(got.positions.numpy(), ref.positions, atol=2e-6)
    np.testing.assert_allclose(got.point_rotations.numpy(), ref.point_rotations, atol=2e-5)
    np.testing.assert_allclose(got.joint_transforms.numpy(), ref.joint_transforms, atol=2e-6)
    np.testing.assert_allclose(got.posed_joints.numpy(), ref.posed_joints, atol=2e-6)
    # float64 tensors on an explicit TorchRig / TorchPose agree tighter
    trig = rig_torch.TorchRig.from_avatar(av, dtype=torch.float64)
    tpose = rig_torch.TorchPose.from_numpy(pose, dtype=torch.float64)
    got64 = rig_torch.evaluate(trig, tpose, mode=mode, pose_correctives=correctives)
    np.testing.assert_allclose(got64.positions.numpy(), ref.positions, atol=1e-6)


def test_torch_quaternions_and_polar_match_numpy():
    torch = _torch()
    from backend.render import rig_torch

    rng = np.random.default_rng(8)
    q = rng.normal(size=(40, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    r = rig.axis_angle_to_matrix(rng.normal(size=(3, 40, 3)))
    got = rig_torch.rotate_gaussians(torch.as_tensor(q), torch.as_tensor(r)).numpy()
    np.testing.assert_allclose(got, rig.rotate_gaussians(q, r), atol=1e-6)
    a = np.concatenate([np.einsum("nj,jik->nik", rng.dirichlet(np.ones(5), 50), rig.axis_angle_to_matrix(rng.normal(scale=0.5, size=(5, 3)))),
                        [np.diag([1.0, 1.0, -1.0]), np.zeros((3, 3))]])
    np.testing.assert_allclose(rig_torch.polar_rotation(torch.as_tensor(a)).numpy(), rig.polar_rotation(a), atol=1e-10)


def test_torch_refuses_bad_options():
    _torch()
    from backend.render import rig_torch

    av = make_avatar(20, 4)
    with pytest.raises(ValueError, match="mode must be"):
        rig_torch.evaluate(av, rig.FlamePose.zeros(1, 4), mode="x")
    with pytest.raises(ValueError, match="no pose correctives"):
        rig_torch.evaluate(av, rig.FlamePose.zeros(1, 4), mode="lam", pose_correctives=True)
    with pytest.raises(ValueError, match="only 4"):
        rig_torch.evaluate(av, rig.FlamePose.zeros(1, 6))


def test_lam_mode_equals_flame_forward_of_the_original_model():
    """build_rig (no subdivision) + mode "lam" == FLAME itself (smplx.lbs, no pose correctives)."""
    torch = _torch()
    from factories.flame import make_flame_model
    from smplx.lbs import lbs

    from backend.flame import build_rig

    m = make_flame_model(300, n_shape=10, n_expr=6, seed=9)
    rng = np.random.default_rng(10)
    betas = rng.normal(size=10)
    r = build_rig(m, betas, levels=0)
    pose = _random_pose(2, 6, seed=11)
    got = rig.evaluate(r, pose, mode="lam").positions
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    coeffs = torch.cat([t(betas)[None].expand(2, -1), t(pose.expr)], dim=1)
    full = torch.cat([t(getattr(pose, k)) for k in ("rotation", "neck", "jaw", "eye_l", "eye_r")], dim=1)
    verts, _ = lbs(coeffs, full, t(m.v_template), t(m.shapedirs), torch.zeros(36, m.n_vertices * 3, dtype=torch.float64),
                   t(m.j_regressor), torch.as_tensor(m.parents), t(m.lbs_weights))
    expect = verts.numpy() + pose.translation[:, None, :]
    np.testing.assert_allclose(got, expect, atol=3e-6)


@pytest.mark.cuda
def test_torch_on_cuda_matches_numpy():
    torch = _torch()
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    from backend.render import rig_torch

    av = make_avatar(n_points=2000, n_expr=12, seed=5)
    pose = _random_pose(4, 12, seed=6)
    ref = rig.evaluate(av, pose, mode="lam", with_rotations=True)
    got = rig_torch.evaluate(rig_torch.TorchRig.from_avatar(av, device="cuda"), pose, mode="lam", with_rotations=True)
    np.testing.assert_allclose(got.positions.cpu().numpy(), ref.positions, atol=5e-6)
    np.testing.assert_allclose(got.point_rotations.cpu().numpy(), ref.point_rotations, atol=5e-5)
