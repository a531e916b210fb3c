"""The sidebar panel: 3D View > Sidebar > LAM.

Create from a photo (with progress and Cancel), then the active avatar's
controls. Sliders show animatable data directly (shape-key values, pose-bone
rotations), so keyframes, the Dope Sheet, Graph Editor and NLA work as usual.
"""

from __future__ import annotations

import bpy

from . import backend_job, controls, naming, ops_create

N_SHOWN_EXPRESSIONS = 10
_JOINT_LABELS = (("neck", "Neck"), ("jaw", "Jaw"), ("eye_l", "Eye L"), ("eye_r", "Eye R"))


class VIEW3D_PT_lam_head(bpy.types.Panel):
    bl_idname = "VIEW3D_PT_lam_head"
    bl_label = "LAM Head"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "LAM"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.lam_head
        box = layout.box()
        box.label(text="Create from Photo", icon="IMAGE_DATA")
        row = box.row(align=True)
        row.prop(settings, "image", text="")
        row.operator("lam_head.use_sample_portrait", text="", icon="USER")
        if not settings.image and ops_create.sample_portrait():
            box.label(text="No photo chosen: Create uses the sample portrait", icon="INFO")
        job = ops_create.current_job()
        if job is not None and not job.finished:
            box.progress(factor=job.fraction, type="BAR", text=f"{job.message} ({100 * job.fraction:.0f} %)")
            box.operator("lam_head.cancel_create", icon="CANCEL")
        else:
            op = box.operator("lam_head.create_from_image", text="Create", icon="PLAY")
            op.filepath = settings.image
            row = box.row(align=True)
            row.operator("lam_head.create_from_photos", text="Create from Photos...", icon="IMAGE_REFERENCE")
            row.prop(settings, "refine_iterations", text="Refine")
            if job is not None and job.state == backend_job.FAILED:
                box.label(text=job.error[:200], icon="ERROR")
        layout.operator("lam_head.import_avatar", text="Import Avatar File", icon="IMPORT")


class VIEW3D_PT_lam_head_controls(bpy.types.Panel):
    bl_idname = "VIEW3D_PT_lam_head_controls"
    bl_label = "Avatar Controls"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "LAM"
    bl_parent_id = "VIEW3D_PT_lam_head"

    @classmethod
    def poll(cls, context):
        return controls.find_avatar(context.active_object) is not None

    def draw(self, context):
        layout = self.layout
        mesh_obj, arm_obj = controls.find_avatar(context.active_object)
        settings = context.scene.lam_head
        layout.label(text=mesh_obj.name, icon="MESH_DATA")

        col = layout.column(align=True)
        row = col.row()
        row.label(text="FLAME Expressions" if controls.expression_keys(mesh_obj) else "No FLAME expressions")
        row.prop(settings, "show_all_expressions", toggle=True)
        keys = controls.expression_keys(mesh_obj)
        shown = keys if settings.show_all_expressions else keys[:N_SHOWN_EXPRESSIONS]
        for i, kb in enumerate(shown):
            col.prop(kb, "value", text=f"Expression {i + 1}", slider=True)

        bones = dict(zip(mesh_obj.get(naming.PROP_JOINT_NAMES, ()), controls.joint_bones(mesh_obj, arm_obj)))
        col = layout.column(align=True)
        for joint, label in _JOINT_LABELS:
            pb = bones.get(joint)
            if pb is not None:
                col.prop(pb, controls._rotation_path(pb), text=label)
        root = bones.get("root")
        if root is not None:
            col.prop(root, controls._rotation_path(root), text="Head")
            col.prop(root, "location", text="Head Offset")

        row = layout.row(align=True)
        row.operator("lam_head.toggle_pose_correctives", depress=controls.pose_correctives_enabled(mesh_obj),
                     text="Pose Correctives")
        row = layout.row(align=True)
        row.operator("lam_head.reset_controls", text="Reset Expr.", icon="LOOP_BACK").what = "EXPRESSION"
        row.operator("lam_head.reset_controls", text="Reset Pose", icon="LOOP_BACK").what = "POSE"
        row = layout.row(align=True)
        row.operator("lam_head.insert_keyframes", text="Key Expr.", icon="KEY_HLT").what = "EXPRESSION"
        row.operator("lam_head.insert_keyframes", text="Key Pose", icon="KEY_HLT").what = "POSE"
        row.operator("lam_head.insert_keyframes", text="Key All", icon="KEYINGSET").what = "ALL"


class VIEW3D_PT_lam_head_arkit(bpy.types.Panel):
    """ARKit shape keys grouped as artists know them; with Left/Right linked one slider per pair."""

    bl_idname = "VIEW3D_PT_lam_head_arkit"
    bl_label = "ARKit Expressions"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "LAM"
    bl_parent_id = "VIEW3D_PT_lam_head_controls"
    bl_options = {"DEFAULT_CLOSED"}

    @classmethod
    def poll(cls, context):
        found = controls.find_avatar(context.active_object)
        return found is not None and bool(controls.arkit_keys(found[0]))

    def draw(self, context):
        layout = self.layout
        mesh_obj, _ = controls.find_avatar(context.active_object)
        linked = controls.arkit_sides_linked(mesh_obj)
        layout.operator("lam_head.link_arkit_sides", depress=linked, icon="LINKED" if linked else "UNLINKED")
        rights = {right.name for _, right in controls.arkit_pairs(mesh_obj)} if linked else set()
        for label, keys in controls.arkit_groups(mesh_obj):
            col = layout.column(align=True)
            col.label(text=label)
            for kb in keys:
                if kb.name in rights:
                    continue
                text = kb.name[: -len("Left")] + " (L+R)" if linked and kb.name.endswith("Left") else kb.name
                col.prop(kb, "value", text=text, slider=True)


CLASSES = (VIEW3D_PT_lam_head, VIEW3D_PT_lam_head_controls, VIEW3D_PT_lam_head_arkit)
