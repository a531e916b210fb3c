"""The backend's numpy-only core, as the add-on sees it.

The one place the add-on reaches across into ``backend/``: everything else in
``lam_blender`` imports from here.
"""

from ..backend.core import avatar_file, errors  # noqa: F401
