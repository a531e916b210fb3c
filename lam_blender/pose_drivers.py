"""Drivers for FLAME's pose-corrective shape keys.

FLAME's pose feature is (R_j - I) flattened row-major for joints 1..J-1 (neck,
jaw, eyes); R_j is the joint's local rotation, which with identity rest
orientation is exactly the pose bone's local rotation. Each corrective key is
driven by one entry of R_j - I, written as a polynomial of the bone's unit
quaternion (w, x, y, z) so the driver stays a Blender "simple expression"
(evaluated without Python, no auto-run needed).
"""

from __future__ import annotations

# Entry (r, c) of R(q) - I as (expression, quaternion components it reads).
_ENTRIES: tuple[tuple[str, str], ...] = (
    ("-2*(y*y+z*z)", "yz"), ("2*(x*y-w*z)", "wxyz"), ("2*(x*z+w*y)", "wxyz"),
    ("2*(x*y+w*z)", "wxyz"), ("-2*(x*x+z*z)", "xz"), ("2*(y*z-w*x)", "wxyz"),
    ("2*(x*z-w*y)", "wxyz"), ("2*(y*z+w*x)", "wxyz"), ("-2*(x*x+y*y)", "xy"),
)
_CHANNEL = {"w": "ROT_W", "x": "ROT_X", "y": "ROT_Y", "z": "ROT_Z"}


def pose_feature_terms(n_joints: int) -> list[tuple[int, str, str]]:
    """For each pose feature i (9 * (n_joints - 1) of them): (joint index, expression, components)."""
    return [(1 + i // 9, *_ENTRIES[i % 9]) for i in range(9 * (n_joints - 1))]


def add_pose_drivers(key, arm_obj, bone_names: list[str], key_names: list[str]) -> None:
    """Drive ``key.key_blocks[key_names[i]].value`` by pose feature i of the bones of ``arm_obj``."""
    for i, (joint, expression, comps) in enumerate(pose_feature_terms(len(bone_names))):
        fcurve = key.key_blocks[key_names[i]].driver_add("value")
        driver = fcurve.driver
        driver.type = "SCRIPTED"
        for comp in comps:
            var = driver.variables.new()
            var.name = comp
            var.type = "TRANSFORMS"
            target = var.targets[0]
            target.id = arm_obj
            target.bone_target = bone_names[joint]
            target.transform_type = _CHANNEL[comp]
            target.rotation_mode = "QUATERNION"
            target.transform_space = "LOCAL_SPACE"
        driver.expression = expression
