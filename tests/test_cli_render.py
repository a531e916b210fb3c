"""``lam-head render``: frames on disk for a turntable and a motion; clear one-line errors;
render_avatar wiring through the rig."""

from __future__ import annotations

import numpy as np
import pytest
from factories.avatar import make_avatar
from PIL import Image

from backend.cli import main
from backend.core.formats.avatar_file import save_avatar
from backend.core.formats.flame_motion import save_motion
from backend.core.rig import FlamePose, axis_angle_to_matrix
from backend.render import PinholeCamera, default_head_camera, render_avatar, render_gaussians


@pytest.fixture(scope="module")
def avatar():
    return make_avatar(1500, n_expr=10, seed=1)


@pytest.fixture()
def avatar_path(tmp_path, avatar):
    return save_avatar(tmp_path / "head.npz", avatar)


def _frames(folder):
    return sorted(p.name for p in folder.glob("frame_*.png"))


def test_turntable_writes_frames_and_video(tmp_path, avatar_path, capsys):
    out = tmp_path / "turn"
    rc = main(["render", str(avatar_path), "--turntable", "--frames", "4", "--size", "64", "--renderer", "cpu", "-o", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert _frames(out) == [f"frame_{k:06d}.png" for k in range(4)]
    images = [np.asarray(Image.open(out / f)) for f in _frames(out)]
    assert all(im.shape == (64, 64, 3) for im in images)
    assert (images[0] < 250).any() and (images[0][0, 0] == 255).all()  # a head on white
    assert not np.array_equal(images[0], images[1])  # the camera turns
    assert "4/4 frames" in captured.err and "renderer cpu" in captured.err
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        assert "no video writer" in captured.err
    else:
        assert (out / "render.mp4").stat().st_size > 0


def test_motion_file_drives_the_frames(tmp_path, avatar_path, capsys):
    pose = FlamePose.zeros(5, 12)  # 12 components for a 10-component avatar: truncated with a warning
    pose.jaw[:, 0] = np.linspace(0.0, 0.4, 5)
    pose.rotation[:, 1] = np.linspace(0.0, 0.6, 5)
    motion = save_motion(tmp_path / "motion.npz", pose, fps=25)
    out = tmp_path / "anim"
    (out).mkdir()
    (out / "frame_000009.png").write_bytes(b"stale")  # from an earlier, longer render
    rc = main(["render", str(avatar_path), "--motion", str(motion), "--size", "48", "--background", "transparent",
               "--no-video", "-o", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert _frames(out) == [f"frame_{k:06d}.png" for k in range(5)]
    first, last = (np.asarray(Image.open(out / f)) for f in ("frame_000000.png", "frame_000004.png"))
    assert first.shape == (48, 48, 4) and first[0, 0, 3] == 0 and first[..., 3].max() == 255
    assert not np.array_equal(first, last)
    assert "warning" in captured.err and "12 expression components" in captured.err
    assert "25 fps" in captured.err
    assert not (out / "render.mp4").exists()

    rc = main(["render", str(avatar_path), "--motion", str(motion), "--frames", "2", "--size", "32", "--no-video",
               "-o", str(tmp_path / "two")])
    assert rc == 0 and _frames(tmp_path / "two") == ["frame_000000.png", "frame_000001.png"]


@pytest.mark.parametrize("content", [None, b"garbage"])
def test_missing_or_invalid_avatar_is_one_line_error(tmp_path, capsys, content):
    path = tmp_path / "nope.npz"
    if content is not None:
        path.write_bytes(content)
    rc = main(["render", str(path), "--turntable", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err.startswith("lam-head render: error:") and "nope.npz" in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_bad_motion_and_unusable_gsplat_are_clear(tmp_path, avatar_path, capsys):
    bad = tmp_path / "m.npz"
    np.savez(bad, nothing=np.zeros(2))
    assert main(["render", str(avatar_path), "--motion", str(bad), "-o", str(tmp_path / "o")]) == 1
    assert "no FLAME parameters" in capsys.readouterr().err
    from backend.render.gsplat_rasterizer import gsplat_status

    if not gsplat_status()[0]:
        assert main(["render", str(avatar_path), "--renderer", "gsplat", "-o", str(tmp_path / "g")]) == 1
        assert "gsplat renderer is not usable" in capsys.readouterr().err


def test_render_avatar_rest_pose_is_the_canonical_splats(avatar):
    cam = default_head_camera(avatar.xyz, 40)
    a = render_avatar(avatar, None, cam, backend="cpu")
    b = render_gaussians(avatar.xyz, avatar.rotation, avatar.scale, avatar.opacity, avatar.rgb, cam, backend="cpu")
    np.testing.assert_allclose(a.rgb, b.rgb, atol=1e-6)


def test_rotated_head_equals_rotated_camera_only_with_rotated_gaussians(avatar):
    """A global rotation R about the root joint (at the origin) seen by camera W must look
    like the rest head seen by W R, if the Gaussians rotate with the head."""
    assert np.allclose(avatar.joints[0], 0)
    aa = np.array([0.2, 0.9, -0.1])
    pose = FlamePose.zeros(1, avatar.n_expr)
    pose.rotation[0] = aa
    cam = default_head_camera(avatar.xyz, 48)
    rot4 = np.eye(4)
    rot4[:3, :3] = axis_angle_to_matrix(aa[None])[0]
    moved_cam = PinholeCamera(cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy, cam.world_to_camera @ rot4)
    rest_view = render_avatar(avatar, None, moved_cam, backend="cpu")
    posed = render_avatar(avatar, pose, cam, rotate_gaussians=True, backend="cpu")
    np.testing.assert_allclose(posed.rgb, rest_view.rgb, atol=1e-4)
    canonical = render_avatar(avatar, pose, cam, rotate_gaussians=False, backend="cpu")
    assert np.abs(canonical.rgb - rest_view.rgb).max() > 0.05


def test_render_help_lists_its_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["render", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--motion", "--turntable", "--size", "--fps", "--frames", "--background", "--renderer"):
        assert option in out
