"""Blender extension entry point: the add-on itself lives in ``lam_blender/``.

The repo root is the extension source directory (``blender_manifest.toml``
beside this file), so Blender imports this package and the add-on reaches the
numpy-only backend core as ``..backend.core`` through relative imports.
"""

from .lam_blender import register, unregister  # noqa: F401
