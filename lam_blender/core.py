"""The backend's numpy/stdlib-only modules, as the add-on sees it.

The one place the add-on reaches across into ``backend/``: everything else in
``lam_blender`` imports from here (never torch: only ``backend.core`` and the
stdlib-only environment/assets helpers).
"""

from ..backend.core import client, errors, motion_channels, splat_frames  # noqa: F401
from ..backend.core.formats import arkit_track, avatar_file, flame_motion, lam_zip, ply  # noqa: F401
from ..backend.setup import assets, environment  # noqa: F401
