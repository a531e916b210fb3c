"""Splat sequence export: every frame equals the backend's rig evaluation of the same pose
(centres 1e-5 m, Gaussian rotations 1e-4 up to sign); plyfile reads every file; a
cancelled or failed export leaves no partial file and restores the scene."""

from __future__ import annotations

import os

import bpy
import numpy as np
import pytest
from mathutils import Quaternion, Vector
from plyfile import PlyData

from backend.core import rig
from backend.core.errors import CancelledError, CancelToken
from backend.core.formats.avatar_file import load_avatar

BONES = ["root", "neck", "jaw", "eye_L", "eye_R"]


def _import(path):
    assert bpy.ops.lam_head.import_avatar(filepath=str(path)) == {"FINISHED"}
    mesh_obj = bpy.context.view_layer.objects.active
    return mesh_obj, mesh_obj.parent


def _key_pose(mesh_obj, arm_obj, frame, expr, jaw, neck=(0, 0, 0), translation=(0, 0, 0)):
    """Keyframe expression shape keys and bone rotations (quaternion mode) at ``frame``."""
    for key in mesh_obj.data.shape_keys.key_blocks:
        if key.name.startswith("expr_"):
            key.value = float(expr[int(key.name[5:])])
            key.keyframe_insert("value", frame=frame)
    for name, aa in (("jaw", jaw), ("neck", neck)):
        pb = arm_obj.pose.bones[name]
        pb.rotation_mode = "QUATERNION"
        v = Vector(aa)
        pb.rotation_quaternion = Quaternion(v.normalized(), v.length) if v.length else Quaternion()
        pb.keyframe_insert("rotation_quaternion", frame=frame)
    root = arm_obj.pose.bones["root"]
    root.location = translation
    root.keyframe_insert("location", frame=frame)


def _pose_now(mesh_obj, arm_obj, n_expr) -> rig.FlamePose:
    """The FLAME pose Blender holds at the current frame, read back from its data."""
    pose = rig.FlamePose.zeros(1, n_expr)
    for key in mesh_obj.data.shape_keys.key_blocks:
        if key.name.startswith("expr_"):
            pose.expr[0, int(key.name[5:])] = key.value
    for name, field in zip(BONES, rig.POSE_JOINTS):
        q = arm_obj.pose.bones[name].matrix_basis.to_quaternion()
        axis, angle = q.to_axis_angle()
        getattr(pose, field)[0] = np.array(axis) * angle
    pose.translation[0] = np.array(arm_obj.pose.bones["root"].location)
    return pose


def _columns(path):
    v = PlyData.read(str(path))["vertex"]
    xyz = np.stack([v["x"], v["y"], v["z"]], 1)
    q = np.stack([v[f"rot_{i}"] for i in range(4)], 1)
    return xyz, q, v


def test_exported_frames_match_backend_evaluation(lam, avatar_file, tmp_path):
    path = avatar_file(n_points=300, n_expr=8, seed=9)
    avatar = load_avatar(path)
    mesh_obj, arm_obj = _import(path)
    rng = np.random.default_rng(0)
    _key_pose(mesh_obj, arm_obj, 1, np.zeros(8), (0, 0, 0))
    _key_pose(mesh_obj, arm_obj, 4, rng.uniform(-2, 2, 8), (0.4, 0.05, -0.02), neck=(0.1, 0.3, 0.0),
              translation=(0.01, -0.02, 0.03))
    scene = bpy.context.scene
    scene.frame_set(2)
    modifier_shown = mesh_obj.modifiers[-1].show_viewport

    out = tmp_path / "seq"
    res = bpy.ops.lam_head.export_splat_sequence(directory=str(out), frame_start=1, frame_end=4)
    assert res == {"FINISHED"}
    names = sorted(p.name for p in out.iterdir())
    assert names == ["canonical.ply"] + [f"frame_{k:06d}.ply" for k in range(1, 5)]
    assert scene.frame_current == 2 and mesh_obj.modifiers[-1].show_viewport == modifier_shown

    correctives = lam.controls.pose_correctives_enabled(mesh_obj)
    moved = 0.0
    for k in range(1, 5):
        scene.frame_set(k)
        pose = _pose_now(mesh_obj, arm_obj, avatar.n_expr)
        want = rig.evaluate(avatar, pose, mode="rig", pose_correctives=correctives, with_rotations=True)
        want_q = rig.rotate_gaussians(avatar.rotation, want.point_rotations)[0]
        xyz, q, v = _columns(out / f"frame_{k:06d}.ply")
        assert np.abs(xyz - want.positions[0]).max() <= 1e-5
        sign = np.sign((q * want_q).sum(1, keepdims=True))
        assert np.abs(q * sign - want_q).max() <= 1e-4
        np.testing.assert_allclose(np.exp(np.stack([v[f"scale_{i}"] for i in range(3)], 1)), avatar.scale, rtol=1e-5)
        moved = max(moved, float(np.abs(q * sign - avatar.rotation * np.sign((q * avatar.rotation).sum(1, keepdims=True))).max()))
    assert moved > 0.05  # the jaw/neck really turned the Gaussians
    xyz, q, _ = _columns(out / "canonical.ply")
    np.testing.assert_array_equal(xyz, avatar.xyz)
    np.testing.assert_array_equal(q, avatar.rotation)


def test_world_coordinates_apply_the_object_transform(lam, avatar_file, tmp_path):
    path = avatar_file(n_points=120, n_expr=4, seed=1)
    mesh_obj, arm_obj = _import(path)
    arm_obj.pose.bones["jaw"].rotation_euler = (0.3, 0.0, 0.0)
    bpy.context.scene.frame_set(1)
    for coords in ("LOCAL", "WORLD"):
        assert bpy.ops.lam_head.export_splat_sequence(directory=str(tmp_path / coords), frame_start=1, frame_end=1,
                                                      coordinates=coords) == {"FINISHED"}
    local, q_local, _ = _columns(tmp_path / "LOCAL" / "frame_000001.ply")
    world, q_world, _ = _columns(tmp_path / "WORLD" / "frame_000001.ply")
    m = np.array(mesh_obj.matrix_world)
    np.testing.assert_allclose(world, local @ m[:3, :3].T + m[:3, 3], atol=1e-6)
    r_obj = rig.matrix_to_quaternion(m[:3, :3])
    want = rig.quaternion_multiply(r_obj[None], q_local.astype(np.float64))
    sign = np.sign((q_world * want).sum(1, keepdims=True))
    np.testing.assert_allclose(q_world * sign, want, atol=1e-5)


def _no_partials(folder):
    return not [p for p in folder.iterdir() if p.name.endswith(".part") or p.name.startswith(".")]


def test_cancel_keeps_finished_frames_only_and_restores_scene(lam, avatar_file, tmp_path):
    mesh_obj, _ = _import(avatar_file(n_points=100, n_expr=4))
    scene = bpy.context.scene
    scene.frame_set(7)
    out = tmp_path / "cancelled"
    job = lam.ops_export.SplatSequenceExport(scene, mesh_obj, out, 1, 10)
    token = CancelToken()

    def progress(done, total):
        assert total == 10
        if done == 3:
            token.cancel()

    with pytest.raises(CancelledError):
        job.run(progress=progress, cancel=token)
    assert sorted(p.name for p in out.iterdir()) == ["canonical.ply"] + [f"frame_{k:06d}.ply" for k in (1, 2, 3)]
    for p in out.iterdir():
        PlyData.read(str(p))
    assert scene.frame_current == 7 and mesh_obj.modifiers[-1].show_viewport


def test_failed_write_leaves_no_partial_file(lam, avatar_file, tmp_path, monkeypatch):
    mesh_obj, _ = _import(avatar_file(n_points=100, n_expr=4))
    out = tmp_path / "failed"
    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append(dst)
        if str(dst).endswith("frame_000003.ply"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(RuntimeError, match="splat export failed: .*No space left"):  # the operator's ERROR report
        bpy.ops.lam_head.export_splat_sequence(directory=str(out), frame_start=1, frame_end=5)
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["canonical.ply", "frame_000001.ply", "frame_000002.ply"]
    assert _no_partials(out) and mesh_obj.modifiers[-1].show_viewport


def test_bad_requests_are_refused_clearly(lam, avatar_file, tmp_path):
    mesh_obj, _ = _import(avatar_file(n_points=50, n_expr=4))
    with pytest.raises(Exception, match="frame range is empty"):
        lam.ops_export.SplatSequenceExport(bpy.context.scene, mesh_obj, tmp_path, 5, 4)
    bpy.context.view_layer.objects.active = None
    with pytest.raises(RuntimeError, match="poll"):
        bpy.ops.lam_head.export_splat_sequence(directory=str(tmp_path), frame_start=1, frame_end=1)
    assert any("_menu_export" in getattr(f, "__name__", "") for f in bpy.types.TOPBAR_MT_file_export._dyn_ui_initialize())


def _animate_with_driver_and_nla(mesh_obj, arm_obj):
    """expr_2 driven by a user driver (an animated Empty's X location); the jaw and expr_0
    animated only through NLA strips (no active actions)."""
    empty = bpy.data.objects.new("driver_source", None)
    bpy.context.scene.collection.objects.link(empty)
    for frame, x in ((1, -0.3), (6, 0.9)):
        empty.location.x = x
        empty.keyframe_insert("location", index=0, frame=frame)
    fcurve = mesh_obj.data.shape_keys.key_blocks["expr_002"].driver_add("value")
    var = fcurve.driver.variables.new()
    var.name, var.type = "x", "TRANSFORMS"
    var.targets[0].id = empty
    var.targets[0].transform_type = "LOC_X"
    fcurve.driver.type = "SCRIPTED"
    fcurve.driver.expression = "2*x - 0.1"
    jaw = arm_obj.pose.bones["jaw"]
    jaw.rotation_mode = "XYZ"
    for frame, angle in ((1, 0.0), (6, 0.5)):
        jaw.rotation_euler = (angle, 0.1 * angle, 0.0)
        jaw.keyframe_insert("rotation_euler", frame=frame)
    expr0 = mesh_obj.data.shape_keys.key_blocks["expr_000"]
    for frame, value in ((1, 1.5), (6, -1.0)):
        expr0.value = value
        expr0.keyframe_insert("value", frame=frame)
    for owner in (arm_obj, mesh_obj.data.shape_keys):
        ad = owner.animation_data
        action, ad.action = ad.action, None
        strip = ad.nla_tracks.new().strips.new("strip", 2, action)  # starts at frame 2: shifted by one frame
        if hasattr(strip, "action_slot") and strip.action_slot is None:
            strip.action_slot = action.slots[0]


def _evaluated_now(lam, mesh_obj):
    return lam.controls.evaluated_positions(mesh_obj)


def test_user_drivers_and_nla_export_exactly_on_the_fast_path(lam, avatar_file, tmp_path):
    mesh_obj, arm_obj = _import(avatar_file(n_points=200, n_expr=6, seed=4))
    _animate_with_driver_and_nla(mesh_obj, arm_obj)
    scene = bpy.context.scene
    splat_mod = mesh_obj.modifiers.get(lam.ops_export.SPLAT_MODIFIER)
    active_index = mesh_obj.active_shape_key_index = 3
    job = lam.ops_export.SplatSequenceExport(scene, mesh_obj, tmp_path / "fast", 1, 7)
    job.run()
    assert job.fast and job.fast_blocker is None
    slow = lam.ops_export.SplatSequenceExport(scene, mesh_obj, tmp_path / "slow", 1, 7)
    slow.use_fast_path = False
    slow.run()
    assert not slow.fast and slow.fast_blocker == "switched off"
    # Everything the fast path switched off is back.
    assert not mesh_obj.show_only_shape_key and mesh_obj.active_shape_key_index == active_index
    assert all(m.show_viewport for m in mesh_obj.modifiers)

    if splat_mod is not None:
        splat_mod.show_viewport = False  # the evaluated mesh must be the deformed points
    keys = mesh_obj.data.shape_keys.key_blocks
    seen = []
    for k in range(1, 8):
        scene.frame_set(k)
        want = _evaluated_now(lam, mesh_obj)
        seen.append((keys["expr_002"].value, keys["expr_000"].value, arm_obj.pose.bones["jaw"].rotation_euler.x))
        xyz, q, _ = _columns(tmp_path / "fast" / f"frame_{k:06d}.ply")
        assert np.abs(xyz - want).max() <= 1e-5, k
        xyz_slow, q_slow, _ = _columns(tmp_path / "slow" / f"frame_{k:06d}.ply")
        assert np.abs(xyz_slow - want).max() <= 1e-5, k
        np.testing.assert_allclose(q, q_slow, atol=1e-5)
    seen = np.array(seen)
    # The driver and both NLA strips really animated the frames (the strips start at frame 2).
    assert np.ptp(seen[:, 0]) > 1.0 and np.ptp(seen[:, 1]) > 1.0 and np.ptp(seen[:, 2]) > 0.3
    assert seen[0, 1] == seen[1, 1] == 1.5 and seen[1, 2] == 0.0


def test_unmodelled_features_fall_back_to_the_evaluated_mesh(lam, avatar_file, tmp_path):
    mesh_obj, arm_obj = _import(avatar_file(n_points=150, n_expr=4, seed=5))
    keys = mesh_obj.data.shape_keys.key_blocks
    masked = mesh_obj.vertex_groups.new(name="mask")
    masked.add(list(range(0, 150, 2)), 1.0, "REPLACE")
    keys["expr_001"].vertex_group = "mask"
    keys["expr_001"].value = 1.8
    arm_obj.pose.bones["jaw"].rotation_euler = (0.3, 0.0, 0.0)
    scene = bpy.context.scene
    job = lam.ops_export.SplatSequenceExport(scene, mesh_obj, tmp_path, 1, 1)
    job.run()
    assert not job.fast and "vertex group" in job.fast_blocker
    splat_mod = mesh_obj.modifiers.get(lam.ops_export.SPLAT_MODIFIER)
    if splat_mod is not None:
        splat_mod.show_viewport = False
    scene.frame_set(1)
    xyz, _, _ = _columns(tmp_path / "frame_000001.ply")
    assert np.abs(xyz - _evaluated_now(lam, mesh_obj)).max() <= 1e-5
