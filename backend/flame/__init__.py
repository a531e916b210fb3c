"""FLAME for LAM: safe loading of the official files, midpoint subdivision, the per-point rig.

Numpy only; the rig evaluation itself is :mod:`backend.core.rig` (numpy) and
:mod:`backend.render.rig_torch` (torch).
"""

from .arkit_basis import ArkitBasis
from .model import FLAME_JOINT_NAMES, FLAME_SHAPE_COMPONENTS, FlameModel, load_flame
from .restricted_pickle import FLAME_ALLOWED, NUMPY_ALLOWED, load_pickled_npy, restricted_loads
from .rig_arrays import RigArrays, build_rig
from .subdivide import faces_from_subdivided, plan_subdivision, subdivide_faces

__all__ = [
    "ArkitBasis",
    "FLAME_SHAPE_COMPONENTS",
    "FLAME_ALLOWED",
    "FLAME_JOINT_NAMES",
    "NUMPY_ALLOWED",
    "FlameModel",
    "RigArrays",
    "build_rig",
    "faces_from_subdivided",
    "load_flame",
    "load_pickled_npy",
    "plan_subdivision",
    "restricted_loads",
    "subdivide_faces",
]
