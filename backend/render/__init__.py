"""Gaussian splat rendering: a numba CPU renderer and gsplat (CUDA) behind one API.

Torch is never imported at module level here (the Blender-side environments
have no torch); gsplat is imported only when it is used.
"""

from .api import (
    BACKENDS,
    RenderOutput,
    deform_avatar,
    iter_render_avatar,
    render_avatar,
    render_gaussians,
    select_backend,
    slice_pose,
)
from .camera import PinholeCamera, default_head_camera, head_frame, look_at, orbit_camera

__all__ = [
    "BACKENDS",
    "PinholeCamera",
    "RenderOutput",
    "default_head_camera",
    "deform_avatar",
    "head_frame",
    "iter_render_avatar",
    "look_at",
    "orbit_camera",
    "render_avatar",
    "render_gaussians",
    "select_backend",
    "slice_pose",
]
