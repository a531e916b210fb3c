"""File > Import > LAM Head Avatar (.npz): ``bpy.ops.lam_head.import_avatar(filepath=...)``."""

from __future__ import annotations

import importlib
from pathlib import Path

import bpy
from bpy.props import StringProperty
from bpy_extras.io_utils import ImportHelper

from .build_avatar import BuiltAvatar, build_avatar
from .core import avatar_file


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


class LAM_HEAD_OT_import_avatar(bpy.types.Operator, ImportHelper):
    """Import a LAM Head avatar file (.npz) as a rigged Gaussian head"""

    bl_idname = "lam_head.import_avatar"
    bl_label = "Import LAM Head Avatar"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".npz"
    filter_glob: StringProperty(default="*.npz", options={"HIDDEN"})  # type: ignore[valid-type]

    def execute(self, context):
        if context.mode != "OBJECT" and context.active_object is not None:
            bpy.ops.object.mode_set(mode="OBJECT")
        try:
            built = import_avatar_file(context, self.filepath)
        except avatar_file.AvatarFileError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        except Exception as exc:  # anything else: the build was rolled back; say so
            self.report({"ERROR"}, f"importing {self.filepath} failed, nothing was imported: {type(exc).__name__}: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Imported {built.mesh_obj.name}: {len(built.mesh_obj.data.vertices)} Gaussians")
        return {"FINISHED"}


def _menu_import(self, context):
    self.layout.operator(LAM_HEAD_OT_import_avatar.bl_idname, text="LAM Head Avatar (.npz)")


CLASSES = (LAM_HEAD_OT_import_avatar,)


def register_extra() -> None:
    bpy.types.TOPBAR_MT_file_import.append(_menu_import)


def unregister_extra() -> None:
    bpy.types.TOPBAR_MT_file_import.remove(_menu_import)
