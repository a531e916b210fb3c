"""Motion import in Blender: ARKit tracks (the real JSON, generated Live Link Face CSVs,
Audio2Face exports and Audio2Face-3D CSVs) and FLAME sequences become keyframes on a real LAM ZIP
avatar and on our own avatars; playback equals the track (1e-6) and the numpy rig (1e-5 m); bad
files change nothing."""

from __future__ import annotations

import json

import bpy
import numpy as np
import pytest
from factories import lam_zips, live_link
from factories.avatar import make_avatar

from backend.core import rig
from backend.core.formats.arkit_track import ARKIT_NAMES
from backend.core.formats.avatar_file import save_avatar

REAL_JSON = lam_zips.REAL_DIR / "test_expression_1s.json"
REAL = lam_zips.real_zips()
needs_real = pytest.mark.skipif(not REAL or not REAL_JSON.is_file(), reason=f"no real LAM files in {lam_zips.REAL_DIR}")


def _scene(fps: int, frame: int = 1):
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = fps, 1.0
    scene.frame_set(frame)
    return scene


def _our_avatar(tmp_path, n_expr: int = 12, arkit: bool = True):
    av = make_avatar(n_points=300, n_expr=n_expr, seed=5)
    if arkit:
        rng = np.random.default_rng(1)
        av.arkit_names = ARKIT_NAMES[:-1]  # the 51 of LAM's ZIPs (no tongueOut)
        av.arkit_dirs = rng.normal(scale=2e-3, size=(av.n_points, 3, len(av.arkit_names))).astype(np.float32)
    path = save_avatar(tmp_path / "ours.npz", av)
    assert bpy.ops.lam_head.import_avatar(filepath=str(path)) == {"FINISHED"}
    return bpy.context.view_layer.objects.active, av


def _key_values(mesh_obj, names, frames) -> np.ndarray:
    keys = mesh_obj.data.shape_keys.key_blocks
    out = np.empty((len(frames), len(names)))
    for i, f in enumerate(frames):
        bpy.context.scene.frame_set(int(f))
        out[i] = [keys[n].value for n in names]
    return out


def _ids():
    return {n: {i.name for i in getattr(bpy.data, n)} for n in ("actions", "objects", "meshes")}


@needs_real
def test_real_arkit_json_on_a_real_lam_zip_avatar_exact_rows_at_30_fps(lam):
    scene = _scene(30, frame=7)
    assert bpy.ops.lam_head.import_lam_zip(filepath=str(REAL[0])) == {"FINISHED"}
    mesh_obj = bpy.context.view_layer.objects.active
    assert bpy.ops.lam_head.import_motion(filepath=str(REAL_JSON)) == {"FINISHED"}
    data = json.loads(REAL_JSON.read_text())
    names, weights = data["names"], np.array([f["weights"] for f in data["frames"]], np.float64)
    keys = [n for n in names if n in mesh_obj.data.shape_keys.key_blocks]
    assert len(keys) >= len(names) - 1  # everything but tongueOut, which LAM ZIPs lack
    action = mesh_obj.data.shape_keys.animation_data.action
    assert action.name == REAL_JSON.stem
    rows = np.r_[0:5, len(weights) // 2, len(weights) - 1]
    got = _key_values(mesh_obj, keys, 7 + rows)
    want = weights[rows][:, [names.index(k) for k in keys]]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert scene.frame_current == 7 + rows[-1]


@needs_real
@pytest.mark.parametrize("fps", [24, 60])
def test_real_json_resampled_to_other_scene_rates(lam, fps):
    _scene(fps, frame=1)
    assert bpy.ops.lam_head.import_lam_zip(filepath=str(REAL[0])) == {"FINISHED"}
    mesh_obj = bpy.context.view_layer.objects.active
    assert bpy.ops.lam_head.import_motion(filepath=str(REAL_JSON)) == {"FINISHED"}
    data = json.loads(REAL_JSON.read_text())
    k = data["names"].index("jawOpen")
    track = np.array([f["weights"][k] for f in data["frames"]])
    frames = np.array([1, 2, 3, 10, 51, 1 + int((len(track) - 1) / 30 * fps)])
    want = np.interp((frames - 1) / fps, np.arange(len(track)) / 30.0, track)  # linear in time, independent
    np.testing.assert_allclose(_key_values(mesh_obj, ["jawOpen"], frames)[:, 0], want, atol=1e-6)


@pytest.mark.parametrize("rate, scene_fps", [(60, 60), (60, 30), (30, 24)])
def test_live_link_csv_with_shuffled_columns_keys_by_name(lam, tmp_path, rate, scene_fps):
    _scene(scene_fps)
    mesh_obj, _ = _our_avatar(tmp_path)
    weights, head, eyes = live_link.random_track(90, seed=2)
    plain = live_link.live_link_csv(tmp_path / "plain.csv", weights, head, eyes, rate=rate, step=1.0005)
    order = list(np.random.default_rng(0).permutation(2 + 52 + 9))
    shuffled = live_link.live_link_csv(tmp_path / "shuffled.csv", weights, head, eyes, rate=rate, step=1.0005,
                                       order=order, bom=True, crlf=True)
    names = [n for n in ARKIT_NAMES[:-1] if not n.startswith("eyeLook")]  # eyes go to the eye bones here
    frames = np.arange(1, 1 + int(89 / rate * scene_fps) + 1)
    got = {}
    for path in (plain, shuffled):
        bpy.context.scene.frame_set(1)
        assert bpy.ops.lam_head.import_motion(filepath=str(path)) == {"FINISHED"}
        got[path.name] = _key_values(mesh_obj, names, frames)
    np.testing.assert_array_equal(got["plain.csv"], got["shuffled.csv"])
    cols = [ARKIT_NAMES.index(n) for n in names]
    want = np.stack([np.interp((frames - 1) / scene_fps, np.arange(90) / rate, weights[:, c]) for c in cols], 1)
    np.testing.assert_allclose(got["plain.csv"], want, atol=1e-6)
    # head angles on the neck, eye angles on the eye bones (XYZ Euler = pitch, yaw, roll)
    arm_obj = mesh_obj.parent
    f = int(frames[len(frames) // 2])
    bpy.context.scene.frame_set(f)
    t = (f - 1) / scene_fps
    want_head = [np.interp(t, np.arange(90) / rate, head[:, i]) for i in (1, 0, 2)]
    np.testing.assert_allclose(tuple(arm_obj.pose.bones["neck"].rotation_euler), want_head, atol=1e-5)
    want_eye = [np.interp(t, np.arange(90) / rate, eyes[:, i]) for i in (1, 0, 2)]
    np.testing.assert_allclose(tuple(arm_obj.pose.bones["eye_L"].rotation_euler), want_eye, atol=1e-5)
    # one new action per import (two takes), the first kept for the NLA
    takes = [a for a in bpy.data.actions if a.name.startswith(("plain", "shuffled"))]
    assert len(takes) == 2 and all(a.use_fake_user or a.users for a in takes)


def test_audio2face_export_keys_the_arkit_shapes_by_name(lam, tmp_path):
    _scene(30)
    mesh_obj, _ = _our_avatar(tmp_path)
    weights, _, _ = live_link.random_track(40, seed=6, head=False, eyes=False)
    order = np.random.default_rng(6).permutation(52)
    path = live_link.audio2face_json(tmp_path / "a2f_take.json", weights[:, order],
                                     names=[live_link.PASCAL_NAMES[i] for i in order], fps=60, joints=True)
    assert bpy.ops.lam_head.import_motion(filepath=str(path)) == {"FINISHED"}
    assert mesh_obj.data.shape_keys.animation_data.action.name == "a2f_take"
    names = list(ARKIT_NAMES[:-1])
    frames = np.arange(1, 21)  # 60 fps rows at a 30 fps scene: every other row, exactly
    want = weights[::2][:, [ARKIT_NAMES.index(n) for n in names]]
    np.testing.assert_allclose(_key_values(mesh_obj, names, frames), want, atol=1e-6)


def test_an_audio2face_3d_csv_keys_the_arkit_shapes_by_name(lam, tmp_path):
    _scene(30)
    mesh_obj, _ = _our_avatar(tmp_path)
    weights, _, _ = live_link.random_track(30, seed=8, head=False, eyes=False)
    order = np.random.default_rng(8).permutation(52)
    path = live_link.audio2face_csv(tmp_path / "animation_frames.csv", weights[:, order],
                                    names=[live_link.PASCAL_NAMES[i] for i in order], fps=30, index=True)
    assert bpy.ops.lam_head.import_motion(filepath=str(path)) == {"FINISHED"}
    names = list(ARKIT_NAMES[:-1])
    want = weights[:, [ARKIT_NAMES.index(n) for n in names]]
    np.testing.assert_allclose(_key_values(mesh_obj, names, np.arange(1, 31)), want, atol=1e-6)

def test_flame_sequence_plays_back_as_the_numpy_rig(lam, tmp_path):
    _scene(30)
    mesh_obj, av = _our_avatar(tmp_path, n_expr=12, arkit=False)
    rng = np.random.default_rng(4)
    t = 20
    pose = {"expr": rng.normal(size=(t, 12)) * 0.8, "rotation": rng.normal(scale=0.2, size=(t, 3)),
            "neck_pose": rng.normal(scale=0.2, size=(t, 3)), "jaw_pose": rng.normal(scale=0.2, size=(t, 3)),
            "eyes_pose": rng.normal(scale=0.15, size=(t, 6)), "translation": rng.normal(scale=0.02, size=(t, 3))}
    np.savez(tmp_path / "take.npz", **{k: v.astype(np.float32) for k, v in pose.items()}, fps=np.array(30.0))
    assert bpy.ops.lam_head.import_motion(filepath=str(tmp_path / "take.npz")) == {"FINISHED"}
    for mod in mesh_obj.modifiers:
        mod.show_viewport = mod.type == "ARMATURE"
    correctives = lam.controls.pose_correctives_enabled(mesh_obj)
    for i in (0, 5, t - 1):
        bpy.context.scene.frame_set(1 + i)
        f = lambda a, i=i: np.asarray(a[i:i + 1], np.float32)  # noqa: E731
        want = rig.evaluate(av, rig.FlamePose(expr=f(pose["expr"]), rotation=f(pose["rotation"]),
                                              neck=f(pose["neck_pose"]), jaw=f(pose["jaw_pose"]),
                                              eye_l=f(pose["eyes_pose"][:, :3]), eye_r=f(pose["eyes_pose"][:, 3:]),
                                              translation=f(pose["translation"])),
                            mode="rig", pose_correctives=correctives).positions[0]
        got = lam.controls.evaluated_positions(mesh_obj)
        assert np.abs(got - want).max() <= 1e-5, i


def test_a_flame_motion_zip_is_read_too(lam, tmp_path):
    import zipfile

    _scene(30)
    mesh_obj, _ = _our_avatar(tmp_path, arkit=False)
    with zipfile.ZipFile(tmp_path / "take.zip", "w") as zf:
        for i in range(3):
            frame = {"expr": np.full((1, 12), 0.1 * i, np.float32), "rotation": np.zeros((1, 3), np.float32),
                     "neck_pose": np.zeros((1, 3), np.float32), "jaw_pose": np.full((1, 3), 0.05 * i, np.float32),
                     "eyes_pose": np.zeros((1, 6), np.float32), "translation": np.zeros((1, 3), np.float32)}
            np.savez(tmp_path / f"{i}.npz", **frame)
            zf.write(tmp_path / f"{i}.npz", f"flame_param/{i}.npz")
    assert bpy.ops.lam_head.import_motion(filepath=str(tmp_path / "take.zip")) == {"FINISHED"}
    np.testing.assert_allclose(_key_values(mesh_obj, ["expr_000"], [1, 2, 3])[:, 0], [0.0, 0.1, 0.2], atol=1e-6)
    # the same frames as a flame_param/ folder (the file browser's directory, no file chosen)
    folder = tmp_path / "flame_param"
    folder.mkdir()
    for i in range(3):
        (tmp_path / f"{i}.npz").rename(folder / f"{i}.npz")
    bpy.context.scene.frame_set(11)
    assert bpy.ops.lam_head.import_motion(filepath=str(folder) + "/") == {"FINISHED"}
    np.testing.assert_allclose(_key_values(mesh_obj, ["expr_000"], [11, 12, 13])[:, 0], [0.0, 0.1, 0.2], atol=1e-6)


def _bad_files(tmp_path) -> list[tuple[str, str]]:
    w, _, _ = live_link.random_track(10)
    lines = live_link.live_link_csv(tmp_path / "good.csv", w).read_text().splitlines()
    (tmp_path / "header.csv").write_text("Frame,Foo,Bar\n1,2,3\n")
    (tmp_path / "rowlen.csv").write_text("\n".join(lines[:3] + [lines[3].rsplit(",", 5)[0]]) + "\n")
    cells = lines[3].split(",")
    cells[5] = "nan"
    (tmp_path / "nan.csv").write_text("\n".join(lines[:3] + [",".join(cells)]) + "\n")
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "unknown.json").write_text(json.dumps({"names": ["foo", "bar"], "frames": [{"weights": [0, 1]}]}))
    (tmp_path / "noframes.json").write_text(json.dumps({"names": list(ARKIT_NAMES), "frames": []}))
    return [("header.csv", "no 'Timecode' column"), ("rowlen.csv", "line 4 has 58 values"), ("nan.csv", "NaN"),
            ("empty.json", "empty"), ("unknown.json", "no ARKit blendshape names"), ("noframes.json", "no frames")]


def test_bad_files_are_refused_and_nothing_changes(lam, tmp_path):
    _scene(30)
    mesh_obj, _ = _our_avatar(tmp_path)
    before = _ids()
    for name, match in _bad_files(tmp_path):
        with pytest.raises(RuntimeError, match=match) as info:
            bpy.ops.lam_head.import_motion(filepath=str(tmp_path / name))
        assert name in str(info.value)
        assert _ids() == before and mesh_obj.data.shape_keys.animation_data.action is None
    with pytest.raises(RuntimeError, match="not found"):
        bpy.ops.lam_head.import_motion(filepath=str(tmp_path / "missing.csv"))


@needs_real
def test_a_flame_motion_on_a_lam_zip_avatar_keys_the_head_pose(lam, tmp_path):
    _scene(30)
    assert bpy.ops.lam_head.import_lam_zip(filepath=str(REAL[0])) == {"FINISHED"}
    mesh_obj = bpy.context.view_layer.objects.active
    arm_obj = mesh_obj.parent
    rng = np.random.default_rng(2)
    rotation, neck = rng.normal(scale=0.2, size=(4, 3)), rng.normal(scale=0.2, size=(4, 3))
    np.savez(tmp_path / "take.npz", expr=rng.normal(size=(4, 100)).astype(np.float32),
             rotation=rotation.astype(np.float32), neck_pose=neck.astype(np.float32),
             jaw_pose=np.full((4, 3), 0.1, np.float32))
    assert bpy.ops.lam_head.import_motion(filepath=str(tmp_path / "take.npz")) == {"FINISHED"}
    assert mesh_obj.data.shape_keys.animation_data is None or mesh_obj.data.shape_keys.animation_data.action is None
    for f in range(4):
        bpy.context.scene.frame_set(1 + f)
        for bone, aa in (("neckLower", rotation[f]), ("head", neck[f])):
            got = np.array(arm_obj.pose.bones[bone].rotation_euler.to_matrix())
            np.testing.assert_allclose(got, rig.axis_angle_to_matrix(aa.astype(np.float32)), atol=1e-6)


def test_an_avatar_without_arkit_keys_refuses_an_arkit_track(lam, tmp_path):
    _scene(30)
    _our_avatar(tmp_path, arkit=False)
    w, _, _ = live_link.random_track(5)
    path = live_link.arkit_json(tmp_path / "t.json", w, fps=30)
    with pytest.raises(RuntimeError, match="no ARKit keys"):
        bpy.ops.lam_head.import_motion(filepath=str(path))


@needs_real
def test_real_json_on_our_own_avatar_on_flame_topology(lam, tmp_path):
    from factories.avatar import make_flame_topology_avatar

    from backend.flame import arkit_basis, plan_subdivision

    _scene(30)
    av = make_flame_topology_avatar(n_expr=20)
    assert bpy.ops.lam_head.import_avatar(filepath=str(save_avatar(tmp_path / "ours.npz", av))) == {"FINISHED"}
    mesh_obj = bpy.context.view_layer.objects.active
    keys = mesh_obj.data.shape_keys.key_blocks
    basis = arkit_basis.bundled()
    want_dirs = plan_subdivision(basis.faces, basis.n_vertices, 1).apply(basis.dirs)
    for name in ("jawOpen", "eyeBlinkLeft", "mouthSmileRight"):  # ARKit deltas = the subdivided basis
        co = np.empty(3 * len(mesh_obj.data.vertices), np.float32)
        keys[name].data.foreach_get("co", co)
        np.testing.assert_allclose(co.reshape(-1, 3) - av.xyz, want_dirs[:, :, basis.names.index(name)], atol=1e-6)
    assert bpy.ops.lam_head.import_motion(filepath=str(REAL_JSON)) == {"FINISHED"}
    for mod in mesh_obj.modifiers:
        mod.show_viewport = mod.type == "ARMATURE"
    data = json.loads(REAL_JSON.read_text())
    weights = np.array([f["weights"] for f in data["frames"]], np.float64)
    for row in (0, len(weights) // 3):
        bpy.context.scene.frame_set(1 + row)
        w = np.array([weights[row, data["names"].index(n)] if n in data["names"] else 0.0 for n in av.arkit_names])
        want = av.xyz + np.einsum("nck,k->nc", av.arkit_dirs.astype(np.float64), w)
        assert np.abs(lam.controls.evaluated_positions(mesh_obj) - want).max() <= 1e-5
