"""The sidebar panel: 3D View > Sidebar > LAM."""

from __future__ import annotations

import bpy


class VIEW3D_PT_lam_head(bpy.types.Panel):
    bl_idname = "VIEW3D_PT_lam_head"
    bl_label = "LAM Head"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "LAM"

    def draw(self, context):
        self.layout.label(text="LAM Head")


CLASSES = (VIEW3D_PT_lam_head,)
