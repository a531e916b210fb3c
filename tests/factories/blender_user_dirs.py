"""Hermetic Blender: point its user folders (config, scripts, extensions, ...) at a
fresh temporary folder. Call before ``import bpy``; bpy reads them once at import."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

KINDS = ("CONFIG", "SCRIPTS", "EXTENSIONS", "DATAFILES", "RESOURCES")


def isolate_blender_user_dirs(prefix: str = "lam-head-blender-user-") -> Path:
    """Create the folders, export ``BLENDER_USER_<KIND>`` for each, remove them at exit."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    for kind in KINDS:
        (root / kind.lower()).mkdir()
        os.environ[f"BLENDER_USER_{kind}"] = str(root / kind.lower())
    return root
