"""CPU splat renderer: exactness against an independent brute-force reference,
camera conventions, backgrounds, depth, backend selection."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from backend.core.errors import BadInputError, MissingAssetError
from backend.render import PinholeCamera, default_head_camera, look_at, orbit_camera, render_gaussians, select_backend


# ----------------------------------------------------------------- reference
def _quat_to_matrix(q):
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def reference_render(means, quats, scales, opacities, colors, cam, background):
    """Brute force in float64: every pixel loops over all Gaussians sorted by depth.

    EWA: Sigma = R S S^T R^T in camera space, pinhole Jacobian with x/z, y/z clamped
    to the field of view + 30 %, +0.3 px^2 on the diagonal; alpha = min(0.999,
    o exp(-0.5 d^T Sigma2^-1 d)), skip alpha < 1/255, stop before T <= 1e-4."""
    W, H, fx, fy, cx, cy = cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy
    rot, t = cam.world_to_camera[:3, :3], cam.world_to_camera[:3, 3]
    lim = [(W - cx) / fx + 0.3 * 0.5 * W / fx, cx / fx + 0.3 * 0.5 * W / fx,
           (H - cy) / fy + 0.3 * 0.5 * H / fy, cy / fy + 0.3 * 0.5 * H / fy]
    splats = []
    for g in range(len(means)):
        pc = rot @ means[g] + t
        x, y, z = pc
        if z < cam.near or z > cam.far:
            continue
        R = _quat_to_matrix(np.asarray(quats[g], dtype=np.float64))
        cov = rot @ R @ np.diag(np.asarray(scales[g], dtype=np.float64) ** 2) @ R.T @ rot.T
        tx = z * np.clip(x / z, -lim[1], lim[0])
        ty = z * np.clip(y / z, -lim[3], lim[2])
        J = np.array([[fx / z, 0, -fx * tx / z**2], [0, fy / z, -fy * ty / z**2]])
        cov2 = J @ cov @ J.T + 0.3 * np.eye(2)
        splats.append((z, g, np.array([fx * x / z + cx, fy * y / z + cy]), np.linalg.inv(cov2)))
    splats.sort(key=lambda s: (s[0], s[1]))
    rgb = np.zeros((H, W, 3))
    alpha = np.zeros((H, W))
    depth = np.zeros((H, W))
    for i in range(H):
        for j in range(W):
            p = np.array([j + 0.5, i + 0.5])
            T, c, d = 1.0, np.zeros(3), 0.0
            for z, g, m, conic in splats:
                delta = m - p
                power = 0.5 * delta @ conic @ delta
                a = min(0.999, opacities[g] * np.exp(-power))
                if power < 0 or a < 1 / 255:
                    continue
                if T * (1 - a) <= 1e-4:
                    break
                c += colors[g] * a * T
                d += z * a * T
                T *= 1 - a
            alpha[i, j] = 1 - T
            rgb[i, j] = c + (0 if background is None else T * np.asarray(background))
            depth[i, j] = d / max(1 - T, 1e-10)
    return rgb, alpha, depth


def tiny_scene(seed=3):
    """~20 Gaussians: anisotropic rotated ones, overlaps, an opaque stack that saturates
    T, one behind the camera, one too faint, some partly off-screen."""
    rng = np.random.default_rng(seed)
    n = 14
    means = np.c_[rng.uniform(-0.25, 0.25, n), rng.uniform(-0.2, 0.2, n), rng.uniform(-0.2, 0.2, n)]
    scales = rng.uniform(0.01, 0.08, (n, 3)) * rng.choice([0.2, 1.0], (n, 3))
    quats = rng.normal(size=(n, 4))
    opac = rng.uniform(0.3, 0.95, n)
    stack = np.c_[np.full(5, 0.05), np.full(5, -0.03), np.linspace(0.15, 0.05, 5)]  # saturates T
    extra_means = np.r_[stack, [[0.0, 0.0, 1.5]], [[0.0, 0.05, 0.0]], [[0.45, 0.3, 0.0]]]
    extra_scales = np.r_[np.full((5, 3), 0.06), np.full((3, 3), 0.05)]
    extra_quats = np.r_[rng.normal(size=(5, 4)), np.tile([1.0, 0, 0, 0], (3, 1))]
    extra_opac = np.r_[np.full(5, 0.97), 0.9, 0.002, 0.8]  # behind camera, too faint, off-corner
    means = np.r_[means, extra_means]
    return dict(
        means=means.astype(np.float32),
        quats_wxyz=np.r_[quats, extra_quats].astype(np.float32),
        scales=np.r_[scales, extra_scales].astype(np.float32),
        opacities=np.r_[opac, extra_opac].astype(np.float32),
        colors=rng.uniform(0, 1, (len(means), 3)).astype(np.float32),
    )


def tiny_camera():
    return PinholeCamera(32, 24, fx=30.0, fy=28.0, cx=16.3, cy=11.7, world_to_camera=look_at([0.1, 0.05, 1.0], [0, 0, 0]))


# ----------------------------------------------------------------- tests
def test_cpu_matches_brute_force_reference():
    scene, cam = tiny_scene(), tiny_camera()
    out = render_gaussians(**scene, camera=cam, background=(1, 1, 1), backend="cpu")
    rgb, alpha, depth = reference_render(*[scene[k].astype(np.float64) for k in scene], cam, (1, 1, 1))
    assert out.backend == "cpu"
    assert out.rgb.shape == (24, 32, 3) and out.alpha.shape == (24, 32) and out.depth.shape == (24, 32)
    # the scene exercises what it should: saturated pixels, empty pixels, partial coverage
    assert (alpha > 0.999).any() and (alpha == 0).any() and ((alpha > 0.05) & (alpha < 0.9)).any()
    np.testing.assert_allclose(out.rgb, rgb, atol=1e-5)
    np.testing.assert_allclose(out.alpha, alpha, atol=1e-5)
    np.testing.assert_allclose(out.depth, depth, atol=1e-5 * max(1.0, depth.max()))


@pytest.mark.parametrize("seed", [11, 12])
def test_cpu_matches_reference_other_scenes_transparent(seed):
    scene, cam = tiny_scene(seed), tiny_camera()
    out = render_gaussians(**scene, camera=cam, background=None, backend="cpu")
    rgb, alpha, _ = reference_render(*[scene[k].astype(np.float64) for k in scene], cam, None)
    np.testing.assert_allclose(out.rgb, rgb, atol=1e-5)
    np.testing.assert_allclose(out.alpha, alpha, atol=1e-5)


def test_white_equals_transparent_plus_one_minus_alpha():
    scene, cam = tiny_scene(), tiny_camera()
    white = render_gaussians(**scene, camera=cam, background=(1, 1, 1), backend="cpu")
    clear = render_gaussians(**scene, camera=cam, background=None, backend="cpu")
    assert clear.background is None
    np.testing.assert_allclose(white.rgb, clear.rgb + (1 - clear.alpha)[..., None], atol=1e-6)
    np.testing.assert_array_equal(white.alpha, clear.alpha)
    assert (clear.rgb <= clear.alpha[..., None] + 1e-6).all()  # premultiplied
    rgba = white.rgba_straight()
    np.testing.assert_allclose(rgba[..., :3] * rgba[..., 3:], clear.rgb, atol=1e-5)


def test_depth_of_single_and_stacked_gaussians():
    cam = PinholeCamera(40, 40, 50.0, 50.0, 20.0, 20.0, look_at([0, 0, 2.0], [0, 0, 0]))
    one = dict(means=np.zeros((1, 3)), quats_wxyz=[[1.0, 0, 0, 0]], scales=np.full((1, 3), 0.1),
               opacities=[0.8], colors=[[1.0, 0, 0]])
    out = render_gaussians(**one, camera=cam, backend="cpu")
    drawn = out.alpha > 0
    assert drawn.sum() > 50 and not drawn.all()
    np.testing.assert_allclose(out.depth[drawn], 2.0, rtol=1e-5)  # float32: d / alpha
    assert (out.depth[~drawn] == 0).all()
    # two splats at depths 1.8 and 2.2 with the same footprint: alpha-weighted mean
    two = dict(means=[[0, 0, 0.2], [0, 0, -0.2]], quats_wxyz=[[1.0, 0, 0, 0]] * 2, scales=[[0.09] * 3, [0.11] * 3],
               opacities=[0.5, 0.5], colors=[[1.0, 0, 0], [0, 0, 1.0]])
    out2 = render_gaussians(**two, camera=cam, backend="cpu")
    c = out2.depth[20, 20]
    a1 = 0.5 * np.exp(-0.5 * 2 * (0.5**2) / ((0.09 * 50 / 1.8) ** 2 + 0.3))
    a2 = 0.5 * np.exp(-0.5 * 2 * (0.5**2) / ((0.11 * 50 / 2.2) ** 2 + 0.3))
    expected = (1.8 * a1 + 2.2 * a2 * (1 - a1)) / (a1 + a2 * (1 - a1))
    assert c == pytest.approx(expected, rel=1e-5)


def test_gaussian_lands_on_its_projected_pixel():
    cam = PinholeCamera(64, 48, 70.0, 72.0, 30.0, 25.0, look_at([0.3, 0.2, 1.2], [0.0, 0.02, 0.0]))
    for point in ([0.05, 0.03, 0.02], [-0.1, -0.08, 0.05], [0.12, 0.1, -0.05]):
        p = np.asarray(point)
        pc = cam.world_to_camera[:3, :3] @ p + cam.world_to_camera[:3, 3]
        u, v = cam.fx * pc[0] / pc[2] + cam.cx, cam.fy * pc[1] / pc[2] + cam.cy
        out = render_gaussians(p[None], [[1.0, 0, 0, 0]], [[0.002] * 3], [0.9], [[1.0, 1.0, 1.0]], cam, backend="cpu")
        i, j = np.unravel_index(np.argmax(out.alpha), out.alpha.shape)
        assert (i, j) == (int(np.floor(v)), int(np.floor(u)))
        uv, _ = cam.project(p[None])
        np.testing.assert_allclose(uv[0], [u, v])


def test_flame_framing_camera_on_plus_z_sees_x_right_y_up():
    cam = orbit_camera([0, 0, 0], 1.0, 0.0, 0.0, fov_deg=20, size=64)
    np.testing.assert_allclose(cam.position, [0, 0, 1.0], atol=1e-12)
    (right, up, centre), z = cam.project(np.array([[0.05, 0, 0], [0, 0.05, 0], [0, 0, 0]]))
    assert right[0] > 32 and right[1] == pytest.approx(32)  # +X appears on the right
    assert up[1] < 32 and up[0] == pytest.approx(32)  # +Y appears at the top
    np.testing.assert_allclose(centre, [32, 32])
    assert np.allclose(z, 1.0)
    side = orbit_camera([0, 0, 0], 1.0, 90.0, 0.0, focal=100.0, size=(80, 60))
    np.testing.assert_allclose(side.position, [1.0, 0, 0], atol=1e-12)
    assert (side.width, side.height, side.cx, side.cy) == (80, 60, 40.0, 30.0)


def test_default_head_camera_frames_the_head():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(500, 3)) * [0.08, 0.11, 0.1] + [0.0, 0.02, 0.01]
    cam = default_head_camera(pts, 128)
    center = 0.5 * (pts.min(0) + pts.max(0))
    assert cam.position[2] > center[2] + 0.5  # in front of the face (+Z)
    uv, z = cam.project(pts)
    assert (z > 0).all() and (uv >= 0).all() and (uv < 128).all()
    assert np.ptp(uv[:, 1]) > 0.5 * 128  # the head fills the frame


def test_near_far_and_bad_inputs():
    cam = PinholeCamera(16, 16, 20.0, 20.0, 8.0, 8.0, look_at([0, 0, 1.0], [0, 0, 0]), near=0.5, far=2.0)
    g = dict(quats_wxyz=[[1.0, 0, 0, 0]], scales=[[0.05] * 3], opacities=[0.9], colors=[[1.0, 0, 0]])
    assert render_gaussians(means=[[0, 0, 0.6]], camera=cam, backend="cpu", **g).alpha.max() == 0  # z = 0.4 < near
    assert render_gaussians(means=[[0, 0, -1.5]], camera=cam, backend="cpu", **g).alpha.max() == 0  # z = 2.5 > far
    assert render_gaussians(means=[[0, 0, 0]], camera=cam, backend="cpu", **g).alpha.max() > 0.5
    with pytest.raises(BadInputError, match="colors"):
        render_gaussians(np.zeros((2, 3)), np.ones((2, 4)), np.ones((2, 3)), np.ones(2), np.ones((2, 4)), cam, backend="cpu")
    with pytest.raises(BadInputError, match="renderer"):
        render_gaussians(np.zeros((1, 3)), np.ones((1, 4)), np.ones((1, 3)), np.ones(1), np.ones((1, 3)), cam, backend="vulkan")
    with pytest.raises(BadInputError, match="NaN"):
        render_gaussians([[0, 0, np.nan]], camera=cam, backend="cpu", **g)
    with pytest.raises(BadInputError):
        PinholeCamera(16, 16, -1.0, 20.0, 8.0, 8.0)
    empty = render_gaussians(np.zeros((0, 3)), np.zeros((0, 4)), np.zeros((0, 3)), np.zeros(0), np.zeros((0, 3)), cam,
                             background=(0.2, 0.4, 0.6), backend="cpu")
    assert empty.alpha.max() == 0 and np.allclose(empty.rgb, [0.2, 0.4, 0.6])


def test_backend_selection_says_what_it_picked(caplog):
    from backend.render.gsplat_rasterizer import gsplat_status

    ok, reason = gsplat_status()
    assert reason
    with caplog.at_level(logging.INFO, logger="backend.render.api"):
        import backend.render.api as api

        api._announced.clear()
        chosen = select_backend("auto")
    assert chosen == ("gsplat" if ok else "cpu")
    assert any(f"renderer: {chosen}" in r.getMessage() for r in caplog.records)
    if not ok:
        with pytest.raises(MissingAssetError, match="gsplat"):
            select_backend("gsplat")


def test_blender_camera_settings_project_like_our_camera():
    """The Blender camera made from blender_camera_settings() maps points to the same
    image coordinates (off-centre principal point included)."""
    bpy = pytest.importorskip("bpy")
    import mathutils
    from bpy_extras.object_utils import world_to_camera_view

    cam = PinholeCamera(64, 48, 70.0, 70.0, 30.0, 27.0, look_at([0.3, 0.2, 1.2], [0.0, 0.02, 0.0]))
    st = cam.blender_camera_settings()
    scene = bpy.data.scenes.new("lam_render_camera_check")
    data = bpy.data.cameras.new("lam_render_camera_check")
    ob = bpy.data.objects.new("lam_render_camera_check", data)
    try:
        scene.render.resolution_x, scene.render.resolution_y = st["resolution"]
        scene.render.resolution_percentage = 100
        data.lens, data.sensor_width, data.sensor_fit = st["lens"], st["sensor_width"], st["sensor_fit"]
        data.shift_x, data.shift_y = st["shift_x"], st["shift_y"]
        scene.collection.objects.link(ob)
        ob.matrix_world = mathutils.Matrix(st["matrix_world"].tolist())
        pts = np.array([[0.05, 0.03, 0.02], [-0.1, -0.08, 0.05], [0.12, 0.1, -0.05]])
        uv, _ = cam.project(pts)
        for p, (u, v) in zip(pts, uv):
            c = world_to_camera_view(scene, ob, mathutils.Vector(p))
            assert (c.x * 64, (1 - c.y) * 48) == (pytest.approx(u, abs=1e-4), pytest.approx(v, abs=1e-4))
    finally:
        bpy.data.objects.remove(ob)
        bpy.data.cameras.remove(data)
        bpy.data.scenes.remove(scene)
