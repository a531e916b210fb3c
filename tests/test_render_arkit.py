"""ARKit weights through the rig (numpy and torch, matched by name) and ``lam-head render --motion``
with Live Link Face CSVs and ARKit JSONs: timing, avatars without an ARKit basis, other skeletons."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from factories.avatar import make_avatar
from factories.live_link import arkit_json, live_link_csv, random_track
from PIL import Image

from backend.cli import main
from backend.core import rig
from backend.core.formats.arkit_track import ARKIT_NAMES
from backend.core.formats.avatar_file import save_avatar

AVATAR_NAMES = tuple(n for n in ARKIT_NAMES if n != "tongueOut")  # the LAM ZIP's 51


def _arkit_avatar(n_points=400, seed=2):
    av = make_avatar(n_points, n_expr=6, seed=seed)
    rng = np.random.default_rng(seed)
    dirs = rng.normal(scale=0.004, size=(n_points, 3, len(AVATAR_NAMES))).astype(np.float32)
    return dataclasses.replace(av, arkit_dirs=dirs, arkit_names=AVATAR_NAMES)


def _pose_with_arkit(b, names, weights, n_expr=6, seed=0):
    rng = np.random.default_rng(seed)
    pose = rig.FlamePose.zeros(b, n_expr)
    pose.expr[:] = rng.normal(scale=0.5, size=pose.expr.shape)
    for k in ("rotation", "neck", "jaw", "eye_l", "eye_r"):
        getattr(pose, k)[:] = rng.normal(scale=0.15, size=(b, 3))
    pose.translation[:] = rng.normal(scale=0.01, size=(b, 3))
    pose.arkit, pose.arkit_names = weights.astype(np.float32), tuple(names)
    return pose


@pytest.mark.parametrize("mode", ["rig", "lam"])
def test_arkit_weights_add_like_expression_blendshapes_matched_by_name(mode):
    av = _arkit_avatar()
    rng = np.random.default_rng(3)
    w = rng.uniform(0, 1, (4, len(AVATAR_NAMES)))
    order = rng.permutation(len(AVATAR_NAMES))
    names = [AVATAR_NAMES[i] for i in order] + ["tongueOut"]  # shuffled, plus one the avatar lacks
    pose = _pose_with_arkit(4, names, np.concatenate([w[:, order], np.ones((4, 1))], axis=1))
    got = rig.evaluate(av, pose, mode=mode).positions
    # reference: the ARKit basis appended to the expression basis, weights appended to expr
    ref_av = dataclasses.replace(av, expr_dirs=np.concatenate([av.expr_dirs, av.arkit_dirs], axis=2),
                                 joint_expr_dirs=np.concatenate(
                                     [av.joint_expr_dirs, np.zeros((5, 3, len(AVATAR_NAMES)), np.float32)], axis=2))
    ref_pose = dataclasses.replace(pose, expr=np.concatenate([pose.expr, w.astype(np.float32)], axis=1), arkit=None,
                                   arkit_names=())
    np.testing.assert_allclose(got, rig.evaluate(ref_av, ref_pose, mode=mode).positions, atol=1e-6)
    assert np.abs(got - rig.evaluate(av, dataclasses.replace(pose, arkit=None)).positions).max() > 1e-3


def test_arkit_errors_and_missing_names():
    av = _arkit_avatar()
    pose = _pose_with_arkit(1, ["jawOpen"], np.ones((1, 1)))
    with pytest.raises(ValueError, match="no ARKit blendshapes"):
        rig.evaluate(dataclasses.replace(av, arkit_dirs=None, arkit_names=()), pose)
    with pytest.raises(ValueError, match="arkit must have shape"):
        rig.evaluate(av, _pose_with_arkit(1, ["jawOpen", "mouthClose"], np.ones((1, 1))))
    only = rig.arkit_weights(AVATAR_NAMES, pose)
    assert only.shape == (1, 51) and only[0, AVATAR_NAMES.index("jawOpen")] == 1 and only.sum() == 1


def test_any_skeleton_at_rest_takes_arkit_weights_but_no_flame_rotations():
    av = _arkit_avatar()
    three = dataclasses.replace(av, joints=av.joints[:3], parents=av.parents[:3], joint_names=("a", "b", "c"),
                                lbs_weights=np.full((av.n_points, 3), 1 / 3, np.float32),
                                joint_expr_dirs=av.joint_expr_dirs[:3], pose_dirs=np.zeros((av.n_points, 3, 0)))
    pose = rig.FlamePose.zeros(2, 0)
    pose.arkit, pose.arkit_names = np.array([[0.0], [0.7]], np.float32), ("jawOpen",)
    pose.translation[1] = [0.0, 0.01, 0.0]
    got = rig.evaluate(three, pose, pose_correctives=True, with_rotations=True)
    k = AVATAR_NAMES.index("jawOpen")
    np.testing.assert_allclose(got.positions[0], av.xyz, atol=1e-7)
    np.testing.assert_allclose(got.positions[1], av.xyz + 0.7 * av.arkit_dirs[:, :, k] + [0.0, 0.01, 0.0], atol=1e-6)
    np.testing.assert_allclose(got.point_rotations, np.broadcast_to(np.eye(3), got.point_rotations.shape), atol=1e-6)
    pose.jaw[1, 0] = 0.2
    with pytest.raises(ValueError, match="drives 5 joints"):
        rig.evaluate(three, pose)


def test_torch_twin_matches_numpy_with_arkit():
    torch = pytest.importorskip("torch", reason="torch is not installed in this environment")
    from backend.render import rig_torch

    av = _arkit_avatar()
    names = ["mouthSmileLeft", "jawOpen", "tongueOut"]
    pose = _pose_with_arkit(3, names, np.random.default_rng(4).uniform(0, 1, (3, 3)))
    want = rig.evaluate(av, pose, with_rotations=True)
    got = rig_torch.evaluate(rig_torch.TorchRig.from_avatar(av, dtype=torch.float64), rig_torch.TorchPose.from_numpy(
        pose, dtype=torch.float64), with_rotations=True)
    np.testing.assert_allclose(got.positions.numpy(), want.positions, atol=1e-5)
    with pytest.raises(ValueError, match="no ARKit blendshapes"):
        rig_torch.evaluate(dataclasses.replace(av, arkit_dirs=None, arkit_names=()), pose)


# ---------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def arkit_avatar_path(tmp_path_factory):
    return save_avatar(tmp_path_factory.mktemp("av") / "head.npz", _arkit_avatar(1200, seed=5))


def _frames(folder):
    return sorted(p.name for p in folder.glob("frame_*.png"))


def _jaw_track(n):
    w, h, e = random_track(n, seed=1)
    w[:] = 0.0
    w[:, ARKIT_NAMES.index("jawOpen")] = np.linspace(0.0, 1.0, n)
    return w, h, e


def test_render_live_link_csv_at_its_rate_and_resampled(tmp_path, arkit_avatar_path, capsys):
    w, h, e = _jaw_track(8)
    csv = live_link_csv(tmp_path / "take.csv", w, h, e, rate=60, start="00:00:00:55.000")
    out = tmp_path / "a"
    rc = main(["render", str(arkit_avatar_path), "--motion", str(csv), "--size", "40", "--renderer", "cpu",
               "--no-video", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert _frames(out) == [f"frame_{k:06d}.png" for k in range(8)] and "60 fps" in err
    assert "tongueOut" in err and "head/eye angles are not applied" in err  # reported, not silent
    first, last = (np.asarray(Image.open(out / f)) for f in ("frame_000000.png", "frame_000007.png"))
    assert not np.array_equal(first, last)  # the jaw opens

    rc = main(["render", str(arkit_avatar_path), "--motion", str(csv), "--fps", "24", "--size", "40",
               "--renderer", "cpu", "--no-video", "-o", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert len(_frames(tmp_path / "b")) == int(np.floor(7 / 60 * 24)) + 1 and "24 fps" in err


def test_render_arkit_json_and_frames_option(tmp_path, arkit_avatar_path, capsys):
    w, _, _ = _jaw_track(5)
    track = arkit_json(tmp_path / "t.json", w)
    rc = main(["render", str(arkit_avatar_path), "--motion", str(track), "--frames", "3", "--size", "32",
               "--renderer", "cpu", "--no-video", "-o", str(tmp_path / "j")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert len(_frames(tmp_path / "j")) == 3 and "30 fps" in err


def test_render_arkit_track_refused_for_avatars_without_a_basis_and_bad_tracks(tmp_path, capsys):
    plain = save_avatar(tmp_path / "plain.npz", make_avatar(200, n_expr=4))
    w, _, _ = _jaw_track(5)
    track = arkit_json(tmp_path / "t.json", w)
    assert main(["render", str(plain), "--motion", str(track), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "no ARKit blendshapes" in err and "plain.npz" in err
    bad = tmp_path / "bad.csv"
    bad.write_text("Timecode,Foo\n00:00:00:00.000,1\n")
    assert main(["render", str(plain), "--motion", str(bad), "-o", str(tmp_path / "o")]) == 1
    assert "no ARKit blendshape names" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
