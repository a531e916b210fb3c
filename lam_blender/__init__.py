"""LAM Head add-on: thin Blender glue around the numpy-only backend core.

Each submodule listed in ``_MODULES`` exposes ``CLASSES`` (registered in
order) and may expose ``register_extra()`` / ``unregister_extra()`` for menu
entries and handlers.
"""

from __future__ import annotations

import importlib

_MODULES = (
    "preferences", "ops_import", "ops_motion", "ops_controls", "ops_create", "ops_export", "ops_export_lam_zip", "panel",
)


def _modules():
    return [importlib.import_module(f"{__name__}.{name}") for name in _MODULES]


def register() -> None:
    import bpy

    for mod in _modules():
        for cls in getattr(mod, "CLASSES", ()):
            bpy.utils.register_class(cls)
        if hasattr(mod, "register_extra"):
            mod.register_extra()


def unregister() -> None:
    import bpy

    for mod in reversed(_modules()):
        if hasattr(mod, "unregister_extra"):
            mod.unregister_extra()
        for cls in reversed(getattr(mod, "CLASSES", ())):
            bpy.utils.unregister_class(cls)
