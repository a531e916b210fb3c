"""Several avatars in one scene stay independent: each one's motion, pose correctives and splat
rotations are its own (they share the splat node group and material), and each exports its own
splat sequence and LAM ZIP (with its own edits)."""

from __future__ import annotations

import bpy
import numpy as np
import pytest
from factories import lam_zips
from factories.avatar import make_avatar
from plyfile import PlyData

from backend.core import rig
from backend.core.formats.avatar_file import save_avatar
from backend.core.formats.flame_motion import save_motion

REAL = lam_zips.real_zips()


def _import(tmp_path, seed: int):
    av = make_avatar(n_points=250 + 10 * seed, n_expr=10, seed=seed)
    assert bpy.ops.lam_head.import_avatar(filepath=str(save_avatar(tmp_path / f"a{seed}.npz", av))) == {"FINISHED"}
    return bpy.context.view_layer.objects.active, av


def _take(seed: int, frames: int = 6) -> rig.FlamePose:
    rng = np.random.default_rng(seed)
    pose = rig.FlamePose.zeros(frames, 10)
    pose.expr[:] = rng.normal(size=pose.expr.shape)
    for field, s in (("rotation", 0.2), ("neck", 0.3), ("jaw", 0.25), ("eye_l", 0.1), ("eye_r", 0.1)):
        getattr(pose, field)[:] = rng.normal(scale=s, size=(frames, 3))
    pose.translation[:] = rng.normal(scale=0.02, size=(frames, 3))
    return pose


def _frame(pose: rig.FlamePose, i: int) -> rig.FlamePose:
    return rig.FlamePose(**{f: getattr(pose, f)[i:i + 1] for f in
                            ("expr", "rotation", "neck", "jaw", "eye_l", "eye_r", "translation")})


def _exported(mesh_obj, folder, frame: int) -> tuple[np.ndarray, np.ndarray]:
    bpy.context.view_layer.objects.active = mesh_obj
    assert bpy.ops.lam_head.export_splat_sequence(directory=str(folder), frame_start=frame, frame_end=frame,
                                                  write_canonical=False) == {"FINISHED"}
    v = PlyData.read(str(folder / f"frame_{frame:06d}.ply"))["vertex"]
    return np.stack([v[a] for a in "xyz"], 1), np.stack([v[f"rot_{i}"] for i in range(4)], 1)


def test_each_avatar_moves_and_exports_as_its_own_rig_says(lam, tmp_path):
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 30, 1.0
    (obj_a, av_a), (obj_b, av_b) = _import(tmp_path, 1), _import(tmp_path, 2)
    takes = {}
    for obj, seed in ((obj_a, 11), (obj_b, 12)):
        takes[obj.name] = _take(seed)
        save_motion(tmp_path / f"take{seed}.npz", takes[obj.name], fps=30)
        bpy.context.view_layer.objects.active = obj
        scene.frame_set(1)
        assert bpy.ops.lam_head.import_motion(filepath=str(tmp_path / f"take{seed}.npz")) == {"FINISHED"}
    lam.controls.set_pose_correctives(obj_a, True)
    lam.controls.set_pose_correctives(obj_b, False)
    assert obj_a.modifiers[-1].node_group == obj_b.modifiers[-1].node_group  # one shared splat node group

    for frame in (2, 5):
        for obj, av, correctives in ((obj_a, av_a, True), (obj_b, av_b, False)):
            want = rig.evaluate(av, _frame(takes[obj.name], frame - 1), mode="rig", pose_correctives=correctives,
                                with_rotations=True)
            want_q = rig.rotate_gaussians(av.rotation, want.point_rotations)[0]
            xyz, q = _exported(obj, tmp_path / f"{obj.name}_{frame}", frame)
            assert np.abs(xyz - want.positions[0]).max() <= 1e-5, (obj.name, frame)
            sign = np.sign((q * want_q).sum(1, keepdims=True))
            assert np.abs(q * sign - want_q).max() <= 1e-4, (obj.name, frame)


@pytest.mark.skipif(not REAL, reason=f"no real LAM ZIP in {lam_zips.REAL_DIR}")
def test_two_lam_zip_avatars_export_their_own_edits(lam, tmp_path, monkeypatch):
    monkeypatch.setenv("LAM_HEAD_HOME", str(tmp_path / "empty_home"))
    objs = []
    for _ in range(2):
        assert bpy.ops.lam_head.import_lam_zip(filepath=str(REAL[0])) == {"FINISHED"}
        objs.append(bpy.context.view_layer.objects.active)
    attr = objs[1].data.attributes["lam_rgb"]
    rgb = np.empty(len(attr.data) * 3, np.float32)
    attr.data.foreach_get("vector", rgb)
    attr.data.foreach_set("vector", 1.0 - rgb)  # an edit to the second avatar only
    src = lam_zips.read_ply(lam_zips.members(REAL[0])["offset.ply"])
    f_dc = lambda ply: np.stack([ply[f"f_dc_{c}"] for c in range(3)], 1)  # noqa: E731
    got = []
    for i, obj in enumerate(objs):
        bpy.context.view_layer.objects.active = obj
        assert bpy.ops.lam_head.export_lam_zip(filepath=str(tmp_path / f"{i}.zip")) == {"FINISHED"}
        got.append(f_dc(lam_zips.read_ply(lam_zips.members(tmp_path / f"{i}.zip")["offset.ply"])))
    np.testing.assert_array_equal(got[0], f_dc(src))
    np.testing.assert_allclose(got[1], 1.0 - f_dc(src), atol=1e-6)
