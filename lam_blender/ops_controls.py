"""Operators behind the panel's reset / keyframe / correctives buttons."""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty

from . import controls

_WHAT = (
    ("ALL", "All", "Expressions and pose"),
    ("EXPRESSION", "Expressions", "Expression shape keys (FLAME and ARKit)"),
    ("POSE", "Pose", "Jaw, neck, eyes and head (bones)"),
)


class _AvatarOperator:
    @classmethod
    def poll(cls, context):
        return controls.find_avatar(context.active_object) is not None


class LAM_HEAD_OT_reset_controls(_AvatarOperator, bpy.types.Operator):
    """Reset the active avatar's expressions and/or pose to neutral"""

    bl_idname = "lam_head.reset_controls"
    bl_label = "Reset"
    bl_options = {"REGISTER", "UNDO"}

    what: EnumProperty(items=_WHAT, default="ALL")  # type: ignore[valid-type]

    def execute(self, context):
        controls.reset(context.active_object, self.what)
        return {"FINISHED"}


class LAM_HEAD_OT_insert_keyframes(_AvatarOperator, bpy.types.Operator):
    """Insert keyframes for the active avatar's controls at the current frame"""

    bl_idname = "lam_head.insert_keyframes"
    bl_label = "Insert Keyframes"
    bl_options = {"REGISTER", "UNDO"}

    what: EnumProperty(items=_WHAT, default="ALL")  # type: ignore[valid-type]

    def execute(self, context):
        n = controls.insert_keyframes(context.active_object, self.what)
        self.report({"INFO"}, f"Keyed {n} channels at frame {context.scene.frame_current}")
        return {"FINISHED"}


class LAM_HEAD_OT_toggle_pose_correctives(_AvatarOperator, bpy.types.Operator):
    """Switch FLAME's pose-corrective shape keys on or off"""

    bl_idname = "lam_head.toggle_pose_correctives"
    bl_label = "Pose Correctives"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        mesh_obj, _ = controls.find_avatar(context.active_object)
        controls.set_pose_correctives(mesh_obj, not controls.pose_correctives_enabled(mesh_obj))
        return {"FINISHED"}


class LAM_HEAD_OT_link_arkit_sides(_AvatarOperator, bpy.types.Operator):
    """Link (or unlink) each right ARKit key to its left one: one slider or F-curve poses both sides"""

    bl_idname = "lam_head.link_arkit_sides"
    bl_label = "Link Left/Right"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        found = controls.find_avatar(context.active_object)
        return found is not None and bool(controls.arkit_pairs(found[0]))

    def execute(self, context):
        mesh_obj, _ = controls.find_avatar(context.active_object)
        controls.link_arkit_sides(mesh_obj, not controls.arkit_sides_linked(mesh_obj))
        return {"FINISHED"}


CLASSES = (LAM_HEAD_OT_reset_controls, LAM_HEAD_OT_insert_keyframes, LAM_HEAD_OT_toggle_pose_correctives,
           LAM_HEAD_OT_link_arkit_sides)
