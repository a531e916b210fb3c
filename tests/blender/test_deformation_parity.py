"""Blender's evaluated mesh equals the backend's rig-mode evaluation (1e-5 m)."""

from __future__ import annotations

import bpy
import numpy as np
import pytest
from mathutils import Quaternion, Vector

from backend.core import rig
from backend.core.formats.avatar_file import load_avatar

TOL = 1e-5


def _random_pose(rng, n_expr: int, scale: float = 1.0) -> rig.FlamePose:
    aa = lambda s: rng.normal(scale=s * scale, size=(1, 3)).astype(np.float32)  # noqa: E731
    return rig.FlamePose(
        expr=rng.uniform(-2.5, 2.5, size=(1, n_expr)).astype(np.float32),
        rotation=aa(0.3), neck=aa(0.3), jaw=aa(0.25), eye_l=aa(0.2), eye_r=aa(0.2),
        translation=rng.normal(scale=0.05, size=(1, 3)).astype(np.float32),
    )


def _import(path):
    assert bpy.ops.lam_head.import_avatar(filepath=str(path)) == {"FINISHED"}
    mesh_obj = bpy.context.active_object
    for mod in mesh_obj.modifiers:  # compare the deformation, not the splat instancing after it
        mod.show_viewport = mod.type == "ARMATURE"
    return mesh_obj


def _set_quaternions(lam, mesh_obj, pose: rig.FlamePose) -> None:
    """Independent of the add-on's helper: quaternion mode, values set directly."""
    _, arm_obj = lam.controls.find_avatar(mesh_obj)
    for key in mesh_obj.data.shape_keys.key_blocks:
        if key.name.startswith("expr_"):
            key.value = float(pose.expr[0, int(key.name[5:])])
    names = ["root", "neck", "jaw", "eye_L", "eye_R"]
    for name, field in zip(names, rig.POSE_JOINTS):
        pb = arm_obj.pose.bones[name]
        pb.rotation_mode = "QUATERNION"
        aa = Vector(getattr(pose, field)[0].tolist())
        pb.rotation_quaternion = Quaternion(aa.normalized(), aa.length)
    arm_obj.pose.bones["root"].location = pose.translation[0].tolist()


@pytest.mark.parametrize("correctives", [False, True])
@pytest.mark.parametrize("setter", ["euler_helper", "quaternion_direct"])
def test_blender_matches_rig_evaluate(lam, avatar_file, correctives, setter):
    path = avatar_file(n_points=600, n_expr=12, seed=7)
    avatar = load_avatar(path)
    mesh_obj = _import(path)
    lam.controls.set_pose_correctives(mesh_obj, correctives)
    rng = np.random.default_rng(11)
    for _ in range(3):
        pose = _random_pose(rng, avatar.n_expr)
        if setter == "euler_helper":
            lam.controls.apply_flame_pose(
                mesh_obj, expr=pose.expr[0], translation=pose.translation[0],
                **{f: getattr(pose, f)[0] for f in rig.POSE_JOINTS},
            )
        else:
            _set_quaternions(lam, mesh_obj, pose)
        bpy.context.view_layer.update()
        got = lam.controls.evaluated_positions(mesh_obj)
        want = rig.evaluate(avatar, pose, mode="rig", pose_correctives=correctives).positions[0]
        err = np.abs(got - want).max()
        assert err <= TOL, f"max deviation {err:.3g} m"
        # The correctives must matter for this pose, or the test could not tell them apart.
        other = rig.evaluate(avatar, pose, mode="rig", pose_correctives=not correctives).positions[0]
        assert np.abs(got - other).max() > 10 * TOL


def test_world_space_is_z_up(lam, avatar_file):
    """The rotation lives on the objects: world = (+90 deg about X) . FLAME, not baked into the data."""
    path = avatar_file(n_points=200, seed=2)
    avatar = load_avatar(path)
    mesh_obj = _import(path)
    bpy.context.view_layer.update()
    local = lam.controls.evaluated_positions(mesh_obj)
    np.testing.assert_allclose(local, avatar.xyz, atol=1e-7)
    world = local @ np.array(mesh_obj.matrix_world)[:3, :3].T
    np.testing.assert_allclose(world, np.stack([avatar.xyz[:, 0], -avatar.xyz[:, 2], avatar.xyz[:, 1]], 1), atol=1e-6)


def test_keyframed_animation_evaluates_per_frame(lam, avatar_file):
    """Keys inserted by the controls play back through frame_set like any rig."""
    path = avatar_file(n_points=300, n_expr=6, seed=5)
    avatar = load_avatar(path)
    mesh_obj = _import(path)
    rng = np.random.default_rng(3)
    poses = {1: _random_pose(rng, avatar.n_expr), 10: _random_pose(rng, avatar.n_expr)}
    for frame, pose in poses.items():
        lam.controls.apply_flame_pose(
            mesh_obj, expr=pose.expr[0], translation=pose.translation[0], **{f: getattr(pose, f)[0] for f in rig.POSE_JOINTS}
        )
        assert lam.controls.insert_keyframes(mesh_obj, "ALL", frame=frame) > 0
    lam.controls.reset(mesh_obj, "ALL")
    for frame, pose in poses.items():
        bpy.context.scene.frame_set(frame)
        got = lam.controls.evaluated_positions(mesh_obj)
        want = rig.evaluate(avatar, pose, mode="rig", pose_correctives=True).positions[0]
        assert np.abs(got - want).max() <= TOL
