"""Numpy-only code shared by the backend and the Blender add-on (no torch, no bpy)."""
