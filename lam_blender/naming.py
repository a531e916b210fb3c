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
ATTR_OPACITY_LOGIT = "lam_opacity_logit"  # FLOAT, the source file's stored logit (LAM ZIPs; exact re-export)

# Shape keys
BASIS_KEY = "Basis"


def expr_key(i: int) -> str:
    return f"expr_{i:03d}"


def pose_key(i: int) -> str:
    return f"pose_{i:02d}"


# Custom properties on the mesh object
PROP_AVATAR = "lam_head_avatar"  # marks an avatar mesh; value: JSON of the avatar's meta
PROP_JOINT_NAMES = "lam_joint_names"  # avatar joint names, in order

# Slider ranges (KeyBlock.value is clamped to them, drivers included): pose
# features are entries of R - I, so they lie in [-2, 2].
EXPR_SLIDER_RANGE = (-3.0, 3.0)
POSE_SLIDER_RANGE = (-2.0, 2.0)

# Objects the importer creates (collection and mesh object take the avatar's name)
ARMATURE_SUFFIX = "_rig"
ARMATURE_MODIFIER = "LAM Armature"
BONE_LENGTH = 0.02  # metres, along +Y of FLAME space (identity rest orientation)
BONE_ROTATION_MODE = "XYZ"

# More custom properties on the mesh object (raw values for lossless export)
PROP_PARENTS = "lam_parents"  # J ints
PROP_JOINT_EXPR_DIRS = "lam_joint_expr_dirs"  # J*3*E floats, row-major (J,3,E)
PROP_SHAPE_PARAMS = "lam_shape_params"  # S floats
PROP_N_EXPR = "lam_n_expr"  # E
PROP_ARKIT_NAMES = "lam_arkit_names"  # K ARKit shape-key names (the keys carry exactly these names)
PROP_LAM_TEMPLATE = "lam_template_text"  # the Text holding a LAM ZIP's template parts (a name in older files)

# ARKit weights are [0, 1]; the range leaves room for calibration scales and overshoot.
ARKIT_SLIDER_RANGE = (-1.0, 2.0)
# Panel groups of ARKit keys, as artists know them: (label, name prefix).
ARKIT_GROUPS = (("Brows", "brow"), ("Eyes", "eye"), ("Cheeks", "cheek"), ("Nose", "nose"), ("Jaw", "jaw"),
                ("Mouth", "mouth"), ("Tongue", "tongue"))


def bone_name(joint_name: str) -> str:
    return BONE_NAMES.get(joint_name, joint_name)


def lbs_attr(joint_name: str) -> str:
    return f"{ATTR_LBS_PREFIX}{joint_name}"
