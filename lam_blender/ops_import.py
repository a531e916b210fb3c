"""File > Import: LAM Head Avatar (.npz) ``bpy.ops.lam_head.import_avatar(filepath=...)`` and
LAM Web Avatar (.zip) ``bpy.ops.lam_head.import_lam_zip(filepath=...)`` (also by dropping a .zip
on the 3D View). Both build through :func:`build_avatar`, all or nothing."""

from __future__ import annotations

import importlib
from pathlib import Path

import bpy
from bpy.props import StringProperty
from bpy_extras.io_utils import ImportHelper

from . import template_store
from .build_avatar import BuiltAvatar, build_avatar
from .core import avatar_file, errors, lam_zip


def _attach_splats(mesh_obj) -> None:
    # Looked up at call time (the splat node path is its own package, owned separately).
    splat = importlib.import_module(f"{__package__}.splat")
    splat.attach(mesh_obj)


def import_avatar_file(context, filepath: str | Path, name: str | None = None) -> BuiltAvatar:
    """Load, validate and build (named after the file unless ``name``). Raises
    ``AvatarFileError`` on a bad file; on any error the scene is left untouched."""
    filepath = bpy.path.abspath(str(filepath))
    avatar = avatar_file.load_avatar(filepath)
    return build_avatar(context, avatar, name or Path(filepath).stem or "LAM Head", attach=_attach_splats)


def import_lam_zip_file(context, filepath: str | Path, name: str | None = None) -> BuiltAvatar:
    """Read a LAM web ZIP (checked before anything is built) and build it like our own avatars,
    its template parts stored with the mesh for a later ZIP export. Raises ``BadInputError``
    (``LamZipError`` and friends) on a bad file; on any error the scene is left untouched."""
    filepath = bpy.path.abspath(str(filepath))
    avatar, template = lam_zip.read_lam_zip(filepath)

    def attach(mesh_obj) -> None:
        template_store.store_template(mesh_obj, template)
        _attach_splats(mesh_obj)

    return build_avatar(context, avatar, name or template.folder or Path(filepath).stem, attach=attach)


def _run_import(op, context, load) -> set[str]:
    if context.mode != "OBJECT" and context.active_object is not None:
        bpy.ops.object.mode_set(mode="OBJECT")
    try:
        built = load(context, op.filepath)
    except (avatar_file.AvatarFileError, errors.BadInputError) as exc:
        op.report({"ERROR"}, str(exc))
        return {"CANCELLED"}
    except Exception as exc:  # anything else: the build was rolled back; say so
        op.report({"ERROR"}, f"importing {op.filepath} failed, nothing was imported: {type(exc).__name__}: {exc}")
        return {"CANCELLED"}
    op.report({"INFO"}, f"Imported {built.mesh_obj.name}: {len(built.mesh_obj.data.vertices)} Gaussians")
    return {"FINISHED"}


class LAM_HEAD_OT_import_avatar(bpy.types.Operator, ImportHelper):
    """Import a LAM Head avatar file (.npz) as a rigged Gaussian head"""

    bl_idname = "lam_head.import_avatar"
    bl_label = "Import LAM Head Avatar"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".npz"
    filter_glob: StringProperty(default="*.npz", options={"HIDDEN"})  # type: ignore[valid-type]

    def execute(self, context):
        return _run_import(self, context, import_avatar_file)


class LAM_HEAD_OT_import_lam_zip(bpy.types.Operator, ImportHelper):
    """Import a LAM web / OpenAvatarChat avatar ZIP as a rigged Gaussian head with ARKit shape keys"""

    bl_idname = "lam_head.import_lam_zip"
    bl_label = "Import LAM Web Avatar"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".zip"
    filter_glob: StringProperty(default="*.zip", options={"HIDDEN"})  # type: ignore[valid-type]
    directory: StringProperty(subtype="DIR_PATH", options={"SKIP_SAVE", "HIDDEN"})  # type: ignore[valid-type]

    def execute(self, context):
        return _run_import(self, context, import_lam_zip_file)

    def invoke(self, context, event):
        if self.filepath:  # dropped on the viewport (file handler): no file browser
            return self.execute(context)
        return ImportHelper.invoke(self, context, event)


def _menu_import(self, context):
    self.layout.operator(LAM_HEAD_OT_import_avatar.bl_idname, text="LAM Head Avatar (.npz)")
    self.layout.operator(LAM_HEAD_OT_import_lam_zip.bl_idname, text="LAM Web Avatar (.zip)")


CLASSES: tuple = (LAM_HEAD_OT_import_avatar, LAM_HEAD_OT_import_lam_zip)

if hasattr(bpy.types, "FileHandler"):  # Blender 4.1+: drag and drop onto the 3D View

    class LAM_HEAD_FH_lam_zip(bpy.types.FileHandler):
        bl_idname = "LAM_HEAD_FH_lam_zip"
        bl_label = "LAM Web Avatar"
        bl_import_operator = LAM_HEAD_OT_import_lam_zip.bl_idname
        bl_file_extensions = ".zip"

        @classmethod
        def poll_drop(cls, context):
            return context.area is not None and context.area.type == "VIEW_3D"

    CLASSES = (*CLASSES, LAM_HEAD_FH_lam_zip)


def register_extra() -> None:
    bpy.types.TOPBAR_MT_file_import.append(_menu_import)


def unregister_extra() -> None:
    bpy.types.TOPBAR_MT_file_import.remove(_menu_import)
