"""Hermetic headless bpy for the Blender tests (imported by conftest.py first).

Blender's user directories point at a temporary folder BEFORE bpy is imported.
Tests may import the helpers: ``from harness import ADDON_MODULE, enable_addon``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if "bpy" in sys.modules:  # pragma: no cover - a guard for the test layout
    raise RuntimeError(
        "bpy was imported before tests/blender/conftest.py could make Blender's user directories hermetic; "
        "do not import bpy at module level outside tests/blender"
    )

_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:  # shared factories: ``from factories.avatar import make_avatar``
    sys.path.insert(0, _TESTS_DIR)

from factories.blender_user_dirs import isolate_blender_user_dirs  # noqa: E402

_USER_ROOT = isolate_blender_user_dirs()

import bpy  # noqa: E402

REPO_ID = "user_default"
EXTENSION_ID = "lam_head"
ADDON_MODULE = f"bl_ext.{REPO_ID}.{EXTENSION_ID}"
BACKEND_PYTHON = os.environ.get("LAM_HEAD_BACKEND_PYTHON") or str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python")


def enable_addon() -> None:
    import addon_utils

    if ADDON_MODULE not in bpy.context.preferences.addons:
        mod = addon_utils.enable(ADDON_MODULE, default_set=True, handle_error=_raise)
        if mod is None:
            raise RuntimeError(f"enabling {ADDON_MODULE} failed")


def disable_addon() -> None:
    import addon_utils

    addon_utils.disable(ADDON_MODULE, default_set=True, handle_error=_raise)


def _raise(exc: BaseException) -> None:
    raise exc
