"""Names the add-on gives to Blender data. One place, so importer, panel,
drivers, splat nodes and exporter agree (and scripts can rely on them)."""

from __future__ import annotations

# Bones, in avatar joint order; vertex groups carry the same names.
BONE_NAMES = {"root": "root", "neck": "neck", "jaw": "jaw", "eye_l": "eye_L", "eye_r": "eye_R"}

# Point-domain attributes on the avatar mesh ("color" is avoided on purpose:
# an attribute of that name renders black in Cycles).
ATTR_RGB = "lam_rgb"  # FLOAT_VECTOR, linear RGB in [0, 1]
ATTR_OPACITY = "lam_opacity"  # FLOAT in [0, 1]
ATTR_SCALE = "lam_scale"  # FLOAT_VECTOR, Gaussian standard deviations (metres)
ATTR_ROTATION = "lam_rotation"  # QUATERNION (wxyz), canonical orientation
ATTR_TEMPLATE = "lam_template"  # FLOAT_VECTOR, shaped canonical FLAME vertex (for offset.ply)
ATTR_LBS_PREFIX = "lam_lbs_"  # FLOAT per joint: lam_lbs_root, lam_lbs_neck, ... (export reads these)

# Shape keys
BASIS_KEY = "Basis"


def expr_key(i: int) -> str:
    return f"expr_{i:03d}"


def pose_key(i: int) -> str:
    return f"pose_{i:02d}"


# Custom properties on the mesh object
PROP_AVATAR = "lam_head_avatar"  # marks an avatar mesh; value: JSON of the avatar's meta
PROP_JOINT_NAMES = "lam_joint_names"  # avatar joint names, in order
