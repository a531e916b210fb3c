"""File > Export > LAM Web Avatar (.zip): ``bpy.ops.lam_head.export_lam_zip(filepath=...)``.

Writes the active avatar as a ZIP the LAM web player / OpenAvatarChat load. The avatar is read
back from Blender (:func:`read_avatar`), so the artist's edits to the Gaussians (colour and
opacity attributes, centres moved in edit mode) are what gets written. The parts the Gaussians
do not carry (skeleton, skin weights, morph targets, animations) come from a template: the one
stored with an avatar imported from a LAM ZIP, else the one registered with
``lam-head setup --lam-template``. All checks and the (atomic) write are the backend's
``lam_zip.write_lam_zip``: on any error no file is left and an existing one is kept.
"""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import StringProperty
from bpy_extras.io_utils import ExportHelper

from . import controls, template_store
from .core import assets, avatar_file, errors, lam_zip
from .read_avatar import read_avatar

NO_TEMPLATE = ("no LAM template for '{name}': import a LAM web ZIP (File > Import > LAM Web Avatar) and export "
               "that avatar, or register any LAM web ZIP as the template with: lam-head setup --lam-template ZIP")


def template_for(mesh_obj: bpy.types.Object) -> lam_zip.LamTemplate:
    """The avatar's own template (imported from a LAM ZIP), else the registered one; raises
    ``LamZipError`` when there is none (an avatar made by ``create`` needs a registered one)."""
    stored = template_store.load_template(mesh_obj)
    if stored is not None:
        return stored
    path = assets.installed_lam_template()
    if path is None:
        raise lam_zip.LamZipError(NO_TEMPLATE.format(name=mesh_obj.name))
    return lam_zip.read_template(path)


def export_lam_zip(obj: bpy.types.Object | None, filepath: str | Path) -> Path:
    """Write the avatar ``obj`` belongs to (its mesh or armature) to ``filepath``; returns the path.
    Raises ``BadInputError`` / ``AvatarFileError`` / ``OSError`` with nothing written."""
    found = controls.find_avatar(obj)
    if found is None:
        what = f"'{obj.name}' is not" if obj is not None else "no active object is"
        raise errors.BadInputError(f"{what} a LAM Head avatar: select an imported avatar (its mesh or armature)")
    mesh_obj = found[0]
    if mesh_obj.mode == "EDIT":  # its attributes are not readable and its moves not written back yet
        raise errors.BadInputError(f"'{mesh_obj.name}' is in edit mode: leave it first")
    avatar = read_avatar(mesh_obj)
    template = template_for(mesh_obj)
    return lam_zip.write_lam_zip(bpy.path.abspath(str(filepath)), avatar, template)


class LAM_HEAD_OT_export_lam_zip(bpy.types.Operator, ExportHelper):
    """Export the active avatar as a LAM web / OpenAvatarChat avatar ZIP"""

    bl_idname = "lam_head.export_lam_zip"
    bl_label = "Export LAM Web Avatar"
    bl_options = {"REGISTER"}

    filename_ext = ".zip"
    filter_glob: StringProperty(default="*.zip", options={"HIDDEN"})  # type: ignore[valid-type]

    # No poll: with no avatar selected the operator runs and says why, instead of a bare
    # "context is incorrect".

    def invoke(self, context, event):
        found = controls.find_avatar(context.active_object)
        if found is not None and not self.filepath:  # name the file after the avatar, not the .blend
            name = bpy.path.clean_name(found[0].name) + self.filename_ext
            self.filepath = str(Path(bpy.data.filepath).with_name(name)) if bpy.data.filepath else name
        return ExportHelper.invoke(self, context, event)

    def execute(self, context):
        obj = context.active_object
        mode = obj.mode if obj is not None else "OBJECT"
        if mode == "EDIT":  # write the edit-mode moves back to the mesh (and make its attributes readable)
            bpy.ops.object.mode_set(mode="OBJECT")
        try:
            path = export_lam_zip(obj, self.filepath)
        except (errors.LamHeadError, avatar_file.AvatarFileError, OSError) as exc:
            self.report({"ERROR"}, f"LAM web ZIP export failed, nothing was written: {exc}")
            return {"CANCELLED"}
        finally:
            if mode == "EDIT":
                bpy.ops.object.mode_set(mode="EDIT")
        self.report({"INFO"}, f"Exported {path}")
        return {"FINISHED"}


def _menu_export(self, context):
    self.layout.operator(LAM_HEAD_OT_export_lam_zip.bl_idname, text="LAM Web Avatar (.zip)")


CLASSES: tuple = (LAM_HEAD_OT_export_lam_zip,)


def register_extra() -> None:
    bpy.types.TOPBAR_MT_file_export.append(_menu_export)


def unregister_extra() -> None:
    bpy.types.TOPBAR_MT_file_export.remove(_menu_export)
