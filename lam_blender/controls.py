"""The avatar's controls, all on animatable data: expression shape-key values and
pose-bone transforms. Used by the panel's operators and by scripts (motion import).
"""

from __future__ import annotations

from collections.abc import Sequence

import bpy
import numpy as np
from mathutils import Quaternion, Vector

from . import naming

POSE_FIELDS = ("rotation", "neck", "jaw", "eye_l", "eye_r")  # FLAME pose field per joint, in joint order


def find_avatar(obj) -> tuple[bpy.types.Object, bpy.types.Object] | None:
    """(mesh object, armature object) of the avatar ``obj`` belongs to, or None."""
    if obj is None:
        return None
    if obj.type == "ARMATURE":
        for child in obj.children:
            if naming.PROP_AVATAR in child:
                return _with_armature(child)
        return None
    if naming.PROP_AVATAR in obj:
        return _with_armature(obj)
    return None


def _with_armature(mesh_obj):
    for mod in mesh_obj.modifiers:
        if mod.type == "ARMATURE" and mod.object is not None:
            return mesh_obj, mod.object
    return None


def expression_keys(mesh_obj) -> list[bpy.types.ShapeKey]:
    keys = mesh_obj.data.shape_keys
    if keys is None:
        return []
    n = int(mesh_obj.get(naming.PROP_N_EXPR, 0))
    return [keys.key_blocks[naming.expr_key(i)] for i in range(n) if naming.expr_key(i) in keys.key_blocks]


def arkit_keys(mesh_obj) -> list[bpy.types.ShapeKey]:
    """The avatar's ARKit shape keys (named as the ARKit blendshapes), in the avatar's order."""
    keys = mesh_obj.data.shape_keys
    if keys is None:
        return []
    return [keys.key_blocks[n] for n in mesh_obj.get(naming.PROP_ARKIT_NAMES, ()) if n in keys.key_blocks]


def arkit_groups(mesh_obj) -> list[tuple[str, list[bpy.types.ShapeKey]]]:
    """ARKit keys by panel group (brows, eyes, cheeks, nose, jaw, mouth, tongue; others last)."""
    out, seen = [], set()
    keys = arkit_keys(mesh_obj)
    for label, prefix in naming.ARKIT_GROUPS:
        group = [kb for kb in keys if kb.name.startswith(prefix)]
        seen.update(kb.name for kb in group)
        if group:
            out.append((label, group))
    rest = [kb for kb in keys if kb.name not in seen]
    return out + ([("Other", rest)] if rest else [])


def _mirror_name(name: str) -> str | None:
    return name[: -len("Left")] + "Right" if name.endswith("Left") else None


def arkit_pairs(mesh_obj) -> list[tuple[bpy.types.ShapeKey, bpy.types.ShapeKey]]:
    """(left, right) ARKit key pairs of the avatar (``...Left`` / ``...Right``)."""
    by_name = {kb.name: kb for kb in arkit_keys(mesh_obj)}
    return [(kb, by_name[_mirror_name(n)]) for n, kb in by_name.items() if _mirror_name(n) in by_name]


def _right_driver(kb):
    ad = kb.id_data.animation_data
    return ad.drivers.find(kb.path_from_id("value")) if ad is not None else None


def arkit_sides_linked(mesh_obj) -> bool:
    pairs = arkit_pairs(mesh_obj)
    return bool(pairs) and all(_right_driver(right) is not None for _, right in pairs)


def link_arkit_sides(mesh_obj, linked: bool) -> None:
    """Linked: every ``...Right`` key follows its ``...Left`` key through a driver (a plain
    property copy, no Python), so one slider or one F-curve poses both sides. Unlinked: the
    drivers are removed and each side has its own value again (the left one's, to start)."""
    for left, right in arkit_pairs(mesh_obj):
        key = right.id_data
        path = right.path_from_id("value")
        if _right_driver(right) is not None:
            key.driver_remove(path)
        if not linked:
            right.value = left.value
            continue
        driver = right.driver_add("value").driver
        driver.type = "AVERAGE"
        var = driver.variables.new()
        var.name = "left"
        var.type = "SINGLE_PROP"
        var.targets[0].id_type = "KEY"
        var.targets[0].id = key
        var.targets[0].data_path = left.path_from_id("value")


def pose_keys(mesh_obj) -> list[bpy.types.ShapeKey]:
    keys = mesh_obj.data.shape_keys
    if keys is None:
        return []
    return [kb for kb in keys.key_blocks if kb.name.startswith("pose_")]


def joint_bones(mesh_obj, arm_obj) -> list[bpy.types.PoseBone]:
    """Pose bones in avatar joint order."""
    names = list(mesh_obj.get(naming.PROP_JOINT_NAMES, ()))
    return [arm_obj.pose.bones[naming.bone_name(j)] for j in names]


def pose_correctives_enabled(mesh_obj) -> bool:
    keys = pose_keys(mesh_obj)
    return bool(keys) and not keys[0].mute


def set_pose_correctives(mesh_obj, enabled: bool) -> None:
    """Pose correctives on (FLAME's pose blendshapes, driven by the bones) or off (muted)."""
    for kb in pose_keys(mesh_obj):
        kb.mute = not enabled


def set_bone_rotation(pb: bpy.types.PoseBone, axis_angle: Sequence[float]) -> None:
    """Set a pose bone's local rotation from a FLAME axis-angle vector, in the bone's rotation mode."""
    aa = Vector(tuple(float(v) for v in axis_angle))
    angle = aa.length
    q = Quaternion(aa.normalized(), angle) if angle > 0 else Quaternion()
    if pb.rotation_mode == "QUATERNION":
        pb.rotation_quaternion = q
    elif pb.rotation_mode == "AXIS_ANGLE":
        pb.rotation_axis_angle = (angle, *(aa.normalized() if angle > 0 else Vector((0, 1, 0))))
    else:
        pb.rotation_euler = q.to_matrix().to_euler(pb.rotation_mode)


def apply_flame_pose(mesh_obj, expr: Sequence[float] = (), translation: Sequence[float] = (0, 0, 0), **joints) -> None:
    """Set one FLAME pose: ``expr`` (<= E values, the rest 0), per-joint axis-angles
    (``rotation``, ``neck``, ``jaw``, ``eye_l``, ``eye_r``; missing ones 0) and the
    root translation (metres, FLAME space)."""
    mesh_obj, arm_obj = find_avatar(mesh_obj)
    unknown = set(joints) - set(POSE_FIELDS)
    if unknown:
        raise ValueError(f"unknown FLAME pose fields: {sorted(unknown)}")
    values = np.zeros(len(expression_keys(mesh_obj)))
    values[: len(expr)] = np.asarray(expr, dtype=np.float64)
    for kb, v in zip(expression_keys(mesh_obj), values.tolist()):
        kb.value = v
    bones = joint_bones(mesh_obj, arm_obj)
    for field, pb in zip(POSE_FIELDS, bones):
        set_bone_rotation(pb, joints.get(field, (0.0, 0.0, 0.0)))
    bones[0].location = Vector(tuple(float(t) for t in translation))


def reset(mesh_obj, what: str = "ALL") -> None:
    """``what``: 'EXPRESSION' (FLAME expression and ARKit keys to 0), 'POSE' (bones to rest) or 'ALL'."""
    mesh_obj, arm_obj = find_avatar(mesh_obj)
    if what in ("EXPRESSION", "ALL"):
        for kb in expression_keys(mesh_obj) + arkit_keys(mesh_obj):
            kb.value = 0.0
    if what in ("POSE", "ALL"):
        for pb in arm_obj.pose.bones:
            pb.location = (0.0, 0.0, 0.0)
            pb.rotation_quaternion = (1.0, 0.0, 0.0, 0.0)
            pb.rotation_euler = (0.0, 0.0, 0.0)
            pb.rotation_axis_angle = (0.0, 0.0, 1.0, 0.0)
            pb.scale = (1.0, 1.0, 1.0)


def _rotation_path(pb) -> str:
    return {"QUATERNION": "rotation_quaternion", "AXIS_ANGLE": "rotation_axis_angle"}.get(pb.rotation_mode, "rotation_euler")


def insert_keyframes(mesh_obj, what: str = "ALL", frame: float | None = None) -> int:
    """Key the current controls at ``frame`` (default: the current frame); returns how many channels were keyed."""
    mesh_obj, arm_obj = find_avatar(mesh_obj)
    if frame is None:
        frame = bpy.context.scene.frame_current
    n = 0
    if what in ("EXPRESSION", "ALL"):
        for kb in expression_keys(mesh_obj) + arkit_keys(mesh_obj):
            if _right_driver(kb) is None:  # a linked right side follows its left key
                n += bool(kb.keyframe_insert("value", frame=frame))
    if what in ("POSE", "ALL"):
        for pb in arm_obj.pose.bones:
            n += bool(pb.keyframe_insert(_rotation_path(pb), frame=frame))
        root = joint_bones(mesh_obj, arm_obj)[0]
        n += bool(root.keyframe_insert("location", frame=frame))
    return n


def evaluated_positions(mesh_obj, depsgraph=None) -> np.ndarray:
    """N,3 evaluated vertex positions of the avatar mesh in its local (FLAME) space."""
    depsgraph = depsgraph or bpy.context.evaluated_depsgraph_get()
    ob_eval = mesh_obj.evaluated_get(depsgraph)
    me = ob_eval.data
    n = len(mesh_obj.data.vertices)
    if len(me.vertices) < n:
        raise RuntimeError(f"evaluated mesh has {len(me.vertices)} vertices, expected {n}")
    co = np.empty(len(me.vertices) * 3, dtype=np.float32)
    me.vertices.foreach_get("co", co)
    return co.reshape(-1, 3)[:n]

