"""Motion input: LAM's flame_param/ folder layout and stacked .npz files -> FlamePose."""

from __future__ import annotations

import numpy as np
import pytest

from backend.core.errors import BadInputError
from backend.core.formats.flame_motion import load_motion, natural_key, save_motion
from backend.core.rig import FlamePose


def _frame(i: int, n_expr: int = 100) -> dict[str, np.ndarray]:
    r = np.random.default_rng(i)
    return {
        "expr": r.normal(size=(1, n_expr)).astype(np.float32),
        "rotation": r.normal(scale=0.1, size=(1, 3)).astype(np.float32),
        "neck_pose": r.normal(scale=0.1, size=(1, 3)).astype(np.float32),
        "jaw_pose": r.normal(scale=0.1, size=(1, 3)).astype(np.float32),
        "eyes_pose": r.normal(scale=0.1, size=(1, 6)).astype(np.float32),
        "translation": r.normal(scale=0.01, size=(1, 3)).astype(np.float32),
        "shape": np.full((1, 300), 0.5, np.float32),
    }


def _write_folder(root, n_frames=12, n_expr=100):
    folder = root / "flame_param"
    folder.mkdir(parents=True)
    for i in range(n_frames):
        np.savez(folder / f"{i}.npz", **_frame(i, n_expr))  # 0.npz .. 11.npz: natural order != lexical
    return folder


def test_natural_order():
    names = ["10.npz", "2.npz", "frame_1.npz", "1.npz", "frame_10.npz", "frame_9.npz"]
    assert sorted(names, key=natural_key) == ["1.npz", "2.npz", "10.npz", "frame_1.npz", "frame_9.npz", "frame_10.npz"]


def test_flame_param_folder_reads_every_frame_in_natural_order(tmp_path):
    _write_folder(tmp_path, 12)
    with pytest.warns(UserWarning, match="100 expression components, the avatar 10"):
        motion = load_motion(tmp_path, n_expr=10)  # the parent folder of flame_param/ works too
    assert motion.fps == 30.0 and motion.n_frames == 12
    pose = motion.pose
    assert isinstance(pose, FlamePose)
    for i in (0, 2, 10, 11):
        f = _frame(i)
        np.testing.assert_array_equal(pose.expr[i], f["expr"][0, :10])
        np.testing.assert_array_equal(pose.rotation[i], f["rotation"][0])
        np.testing.assert_array_equal(pose.neck[i], f["neck_pose"][0])
        np.testing.assert_array_equal(pose.jaw[i], f["jaw_pose"][0])
        np.testing.assert_array_equal(pose.eye_l[i], f["eyes_pose"][0, :3])
        np.testing.assert_array_equal(pose.eye_r[i], f["eyes_pose"][0, 3:])
        np.testing.assert_array_equal(pose.translation[i], f["translation"][0])
    assert motion.shape is not None and motion.shape.shape == (300,)
    assert any("dropped" in w for w in motion.warnings)
    # the folder itself works as well
    assert load_motion(tmp_path / "flame_param").n_frames == 12


def test_stacked_npz_zero_pads_expression(tmp_path):
    t = 7
    pose = FlamePose.zeros(t, 50)
    pose.expr[:] = np.arange(50)
    pose.jaw[:, 0] = np.linspace(0, 0.3, t)
    pose.eye_r[:, 1] = 0.2
    path = save_motion(tmp_path / "m.npz", pose, fps=25)
    with pytest.warns(UserWarning, match="rest set to 0"):
        motion = load_motion(path, n_expr=100)
    assert motion.fps == 25 and motion.n_frames == t
    np.testing.assert_array_equal(motion.pose.expr[:, :50], pose.expr)
    assert (motion.pose.expr[:, 50:] == 0).all() and motion.pose.expr.shape == (t, 100)
    np.testing.assert_array_equal(motion.pose.jaw, pose.jaw)
    np.testing.assert_array_equal(motion.pose.eye_r, pose.eye_r)
    assert load_motion(path, n_expr=50, fps=60).fps == 60  # override, no warning needed


def test_stacked_official_names_without_fps_default_30(tmp_path):
    frames = [_frame(i, 20) for i in range(4)]
    np.savez(tmp_path / "seq.npz", **{k: np.concatenate([f[k] for f in frames]) for k in frames[0]})
    motion = load_motion(tmp_path / "seq.npz", n_expr=20)
    assert motion.fps == 30.0 and motion.n_frames == 4 and not motion.warnings
    np.testing.assert_array_equal(motion.pose.eye_l[3], frames[3]["eyes_pose"][0, :3])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_text("not a zip"), "not a readable"),
        (lambda p: np.savez(p, foo=np.zeros(3)), "no FLAME parameters"),
        (lambda p: np.savez(p, expr=np.zeros((4, 10)), jaw_pose=np.zeros((3, 3))), "3 frames"),
        (lambda p: np.savez(p, expr=np.zeros((4, 10)), eyes_pose=np.zeros((4, 3))), "eyes_pose"),
        (lambda p: np.savez(p, expr=np.array(["a", "b"])), "numbers"),
        (lambda p: np.savez(p, expr=np.full((2, 5), np.nan)), "NaN"),
        (lambda p: np.savez(p, expr=np.array([{"x": 1}], dtype=object)), "pickle"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, make, message):
    path = tmp_path / "bad.npz"
    make(path)
    with pytest.raises(BadInputError, match=message):
        load_motion(path, n_expr=10)


def test_bad_paths(tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        load_motion(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no per-frame"):
        load_motion(tmp_path / "empty")
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(BadInputError, match="expected a folder"):
        load_motion(tmp_path / "m.json")


# Other trackers' names: smplx's FLAME layer, DECA/EMOCA, SMIRK, packed full poses.


def _stacked(n_frames: int, n_expr: int = 100) -> dict[str, np.ndarray]:
    frames = [_frame(i, n_expr) for i in range(n_frames)]
    return {k: np.concatenate([f[k] for f in frames]) for k in frames[0]}


def _assert_same_pose(got: FlamePose, want: dict[str, np.ndarray], fields=None):
    eyes = want["eyes_pose"]
    expected = {"expr": want["expr"], "rotation": want["rotation"], "neck": want["neck_pose"],
                "jaw": want["jaw_pose"], "eye_l": eyes[:, :3], "eye_r": eyes[:, 3:], "translation": want["translation"]}
    for name in fields or expected:
        np.testing.assert_array_equal(getattr(got, name), expected[name], err_msg=name)


def test_smplx_flame_layer_names_read_as_the_official_ones(tmp_path):
    a = _stacked(5)
    np.savez(tmp_path / "official.npz", **a)
    np.savez(tmp_path / "smplx.npz", global_orient=a["rotation"], neck_pose=a["neck_pose"], jaw_pose=a["jaw_pose"],
             leye_pose=a["eyes_pose"][:, :3], reye_pose=a["eyes_pose"][:, 3:], expression=a["expr"],
             transl=a["translation"], betas=a["shape"])
    official = load_motion(tmp_path / "official.npz", n_expr=100)
    with pytest.warns(UserWarning):
        renamed = load_motion(tmp_path / "smplx.npz", n_expr=100)
    _assert_same_pose(renamed.pose, a)
    _assert_same_pose(official.pose, a)
    np.testing.assert_array_equal(renamed.shape, official.shape)
    assert not official.warnings
    assert {"'global_orient' read as 'rotation'", "'expression' read as 'expr'", "'transl' read as 'translation'", "'betas' read as 'shape'",
            "'leye_pose', 'reye_pose' read as 'eyes_pose'"} <= set(renamed.warnings)


def _packed_case(kind: str, a: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """(file arrays, the pose fields they carry) for one tracker's packing, built from FLAME's joint order."""
    g, n, j, e = a["rotation"], a["neck_pose"], a["jaw_pose"], a["eyes_pose"]
    if kind == "full_pose":  # smplx FlameOutput.full_pose: global, neck, jaw, left eye, right eye
        return {"full_pose": np.concatenate([g, n, j, e], 1), "expr": a["expr"]}, ("rotation", "neck", "jaw", "eye_l", "eye_r")
    if kind == "full_pose_joints":  # the same as T,5,3
        return {"full_pose": np.stack([g, n, j, e[:, :3], e[:, 3:]], 1), "expr": a["expr"]}, ("rotation", "neck", "jaw", "eye_l", "eye_r")
    if kind == "deca":  # DECA/EMOCA codes: posecode = global + jaw
        return {"posecode": np.concatenate([g, j], 1), "expcode": a["expr"], "shapecode": a["shape"][:, :100]}, ("rotation", "jaw")
    assert kind == "smirk"  # SMIRK: global in pose_params, the jaw apart
    return {"pose_params": g, "jaw_params": j, "expression_params": a["expr"]}, ("rotation", "jaw")


@pytest.mark.parametrize("kind", ["full_pose", "full_pose_joints", "deca", "smirk"])
def test_packed_poses_unpack_in_flame_joint_order(tmp_path, kind):
    a = _stacked(6, n_expr=50)
    arrays, carried = _packed_case(kind, a)
    np.savez(tmp_path / "m.npz", **arrays)
    with pytest.warns(UserWarning):
        motion = load_motion(tmp_path / "m.npz", n_expr=100)
    _assert_same_pose(motion.pose, a, carried)
    np.testing.assert_array_equal(motion.pose.expr[:, :50], a["expr"])
    assert (motion.pose.expr[:, 50:] == 0).all()
    for field in {"rotation", "neck", "jaw", "eye_l", "eye_r", "translation"} - set(carried):
        assert (getattr(motion.pose, field) == 0).all(), field  # what the file does not carry stays neutral
    assert any("read as" in w for w in motion.warnings)


def test_official_names_win_over_other_names(tmp_path):
    a = _stacked(3)
    np.savez(tmp_path / "m.npz", **a, expression=a["expr"] + 1, full_pose=np.ones((3, 15), np.float32))
    with pytest.warns(UserWarning):
        motion = load_motion(tmp_path / "m.npz")
    _assert_same_pose(motion.pose, a)
    assert "'expr' used, 'expression' ignored" in motion.warnings
    assert "'full_pose' ignored: its joints are given separately" in motion.warnings


def test_a_folder_of_renamed_per_frame_files(tmp_path):
    folder = tmp_path / "flame_param"
    folder.mkdir()
    frames = [_frame(i, 20) for i in range(11)]
    for i, f in enumerate(frames):
        np.savez(folder / f"{i}.npz", expression=f["expr"], global_orient=f["rotation"], jaw_pose=f["jaw_pose"])
    with pytest.warns(UserWarning):
        motion = load_motion(tmp_path, n_expr=20)
    assert "'expression' read as 'expr'" in motion.warnings
    np.testing.assert_array_equal(motion.pose.rotation[10], frames[10]["rotation"][0])
    np.testing.assert_array_equal(motion.pose.expr[2], frames[2]["expr"][0])
    assert (motion.pose.neck == 0).all()


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"leye_pose": np.zeros((4, 3)), "reye_pose": np.zeros((5, 3))}, "'leye_pose' and 'reye_pose' must both be"),
        ({"pose": np.zeros((4, 7))}, r"no FLAME parameters found \(keys: pose\)"),
        ({"expression": np.array(["a", "b"])}, r"'expression' \(read as 'expr'\) must hold numbers"),
        ({"expr": np.zeros((4, 10)), "transl": np.zeros((4, 2))}, r"'transl' \(read as 'translation'\) has shape \(4, 2\)"),
        ({"expression": np.zeros((4, 10)), "full_pose": np.zeros((3, 15))}, r"'full_pose' \(its rotation\) has 3 frames "
                                                                           r"but 'expression' \(read as 'expr'\) has 4"),
    ],
)
def test_renamed_arrays_that_are_wrong_are_named_as_the_file_names_them(tmp_path, arrays, message):
    np.savez(tmp_path / "m.npz", **arrays)
    with pytest.raises(BadInputError, match=message):
        load_motion(tmp_path / "m.npz")
