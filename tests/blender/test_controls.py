"""Panel controls: everything lives on animatable data; operators reset, key and toggle."""

from __future__ import annotations

import bpy
import pytest


@pytest.fixture
def avatar(lam, avatar_file):
    assert bpy.ops.lam_head.import_avatar(filepath=str(avatar_file(n_points=200, n_expr=14))) == {"FINISHED"}
    return lam.controls.find_avatar(bpy.context.active_object)


def test_keyframes_land_in_shape_key_and_armature_actions(lam, avatar):
    mesh_obj, arm_obj = avatar
    keys = mesh_obj.data.shape_keys.key_blocks
    keys["expr_002"].value = 1.5
    arm_obj.pose.bones["jaw"].rotation_euler.x = 0.3
    bpy.context.scene.frame_set(5)
    assert bpy.ops.lam_head.insert_keyframes(what="ALL") == {"FINISHED"}
    key_action = mesh_obj.data.shape_keys.animation_data.action
    arm_action = arm_obj.animation_data.action
    assert key_action is not None and arm_action is not None
    shape_anim = mesh_obj.data.shape_keys.animation_data
    curve = shape_anim.action.fcurves.find('key_blocks["expr_002"].value') if hasattr(shape_anim.action, "fcurves") else None
    if curve is None:  # Blender 5.x: slotted actions keep F-curves in layers/strips/channelbags
        channelbag = shape_anim.action.layers[0].strips[0].channelbag(shape_anim.action_slot)
        curve = channelbag.fcurves.find('key_blocks["expr_002"].value')
    assert curve is not None and curve.evaluate(5) == pytest.approx(1.5)
    assert bpy.ops.lam_head.reset_controls(what="ALL") == {"FINISHED"}
    assert keys["expr_002"].value == 0.0 and arm_obj.pose.bones["jaw"].rotation_euler.x == 0.0
    bpy.context.scene.frame_set(5)  # the keys bring the pose back
    assert keys["expr_002"].value == pytest.approx(1.5)


def test_pose_correctives_toggle(lam, avatar):
    mesh_obj, _ = avatar
    assert lam.controls.pose_correctives_enabled(mesh_obj)
    bpy.ops.lam_head.toggle_pose_correctives()
    assert all(kb.mute for kb in lam.controls.pose_keys(mesh_obj))
    bpy.ops.lam_head.toggle_pose_correctives()
    assert not any(kb.mute for kb in lam.controls.pose_keys(mesh_obj))


def test_controls_work_from_the_armature_too(lam, avatar):
    mesh_obj, arm_obj = avatar
    bpy.context.view_layer.objects.active = arm_obj
    assert lam.controls.find_avatar(arm_obj) == (mesh_obj, arm_obj)
    assert bpy.ops.lam_head.reset_controls.poll()
    bpy.context.view_layer.objects.active = None
    assert not bpy.ops.lam_head.reset_controls.poll()


class _Recorder:
    """A stand-in for UILayout that checks every property and operator the panel draws exists."""

    def __init__(self, log):
        self.log = log

    def __getattr__(self, name):
        if name not in bpy.types.UILayout.bl_rna.functions and name not in ("enabled", "active"):
            raise AttributeError(f"UILayout has no {name}()")
        return lambda *a, **k: _Recorder(self.log)

    def prop(self, data, prop, **kw):
        assert prop in data.bl_rna.properties, f"{data} has no property {prop}"
        self.log.append(("prop", data, prop))

    def operator(self, idname, **kw):
        mod, name = idname.split(".")
        assert getattr(getattr(bpy.ops, mod), name).get_rna_type() is not None
        self.log.append(("operator", idname))
        return type("Props", (), {})()


def test_panel_draws_the_controls_of_the_active_avatar(lam, avatar):
    mesh_obj, arm_obj = avatar
    log = []
    panel = lam.panel
    for cls in (panel.VIEW3D_PT_lam_head, panel.VIEW3D_PT_lam_head_controls):
        assert cls.poll(bpy.context) if hasattr(cls, "poll") else True
        cls.draw(type("P", (), {"layout": _Recorder(log)})(), bpy.context)
    props = [(d, p) for kind, *rest in log if kind == "prop" for d, p in [rest]]
    sliders = [d for d, p in props if isinstance(d, bpy.types.ShapeKey)]
    assert len(sliders) == 10, "the first 10 expression sliders"
    assert all(d.id_data == mesh_obj.data.shape_keys for d in sliders), "sliders are the animatable key values"
    bone_props = {d.name for d, p in props if isinstance(d, bpy.types.PoseBone)}
    assert {"jaw", "neck", "eye_L", "eye_R", "root"} <= bone_props
    assert not any(isinstance(d, bpy.types.WindowManager) for d, p in props)
    ops = {rest[0] for kind, *rest in log if kind == "operator"}
    assert {"lam_head.create_from_image", "lam_head.reset_controls", "lam_head.insert_keyframes"} <= ops
    bpy.context.scene.lam_head.show_all_expressions = True
    log.clear()
    panel.VIEW3D_PT_lam_head_controls.draw(type("P", (), {"layout": _Recorder(log)})(), bpy.context)
    assert sum(isinstance(rest[0], bpy.types.ShapeKey) for kind, *rest in log if kind == "prop") == 14
