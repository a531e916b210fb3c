"""Read an imported avatar back out of Blender as an :class:`Avatar` (for export).

Inverse of ``build_avatar``: every array comes from the Blender data the
importer made (attributes, shape keys, bones, custom properties). Exact except
the blendshapes, which Blender stores as absolute key positions: ``key - basis``
recovers them to float32 rounding of the positions (~1e-8 m).
"""

from __future__ import annotations

import json

import numpy as np

from . import controls, naming
from .core import avatar_file, ply


def _attr(mesh, name: str, width: int) -> np.ndarray:
    if name not in mesh.attributes:
        raise avatar_file.AvatarFileError(None, f"the mesh '{mesh.name}' has no attribute '{name}'; was it imported by LAM Head?")
    a = mesh.attributes[name]
    out = np.empty(len(mesh.vertices) * width, dtype=np.float32)
    a.data.foreach_get("value" if a.data_type in ("FLOAT", "QUATERNION") else "vector", out)
    return out.reshape(-1, width) if width > 1 else out


def _key_co(kb, n: int) -> np.ndarray:
    out = np.empty(n * 3, dtype=np.float32)
    (kb.points if hasattr(kb, "points") else kb.data).foreach_get("co", out)
    return out.reshape(n, 3)


def read_avatar(obj) -> avatar_file.Avatar:
    """The avatar (canonical, unposed) of the LAM Head object ``obj`` (mesh or armature)."""
    found = controls.find_avatar(obj)
    if found is None:
        raise avatar_file.AvatarFileError(None, f"'{obj.name if obj else None}' is not a LAM Head avatar")
    mesh_obj, arm_obj = found
    me = mesh_obj.data
    n = len(me.vertices)
    keys = me.shape_keys.key_blocks
    basis = _key_co(keys[naming.BASIS_KEY], n)
    expr = [_key_co(kb, n) - basis for kb in controls.expression_keys(mesh_obj)]
    pose = [_key_co(kb, n) - basis for kb in controls.pose_keys(mesh_obj)]
    arkit_names = tuple(mesh_obj.get(naming.PROP_ARKIT_NAMES, ()))
    missing = [k for k in arkit_names if k not in keys]
    if missing:
        raise avatar_file.AvatarFileError("arkit_dirs", f"the ARKit shape keys {missing[:3]} of '{mesh_obj.name}' were removed")
    arkit = [_key_co(keys[k], n) - basis for k in arkit_names]
    joint_names = tuple(mesh_obj[naming.PROP_JOINT_NAMES])
    n_expr = len(expr)
    totals = np.empty(len(me.polygons), dtype=np.int32)
    me.polygons.foreach_get("loop_total", totals)
    if (totals != 3).any():
        raise avatar_file.AvatarFileError("faces", f"the mesh '{me.name}' has non-triangle faces; LAM avatars are triangles")
    faces = np.empty(len(me.loops), dtype=np.int32)  # loops follow the polygons, 3 each
    me.loops.foreach_get("vertex_index", faces)
    joints = np.array([arm_obj.data.bones[naming.bone_name(j)].head_local for j in joint_names], dtype=np.float32)
    return avatar_file.Avatar(
        xyz=basis,
        template=_attr(me, naming.ATTR_TEMPLATE, 3),
        rgb=_attr(me, naming.ATTR_RGB, 3),
        opacity=_attr(me, naming.ATTR_OPACITY, 1),
        scale=_attr(me, naming.ATTR_SCALE, 3),
        rotation=_attr(me, naming.ATTR_ROTATION, 4),
        expr_dirs=np.stack(expr, axis=2) if expr else np.zeros((n, 3, 0), np.float32),
        pose_dirs=np.stack(pose, axis=2) if pose else np.zeros((n, 3, 0), np.float32),
        lbs_weights=np.stack([_attr(me, naming.lbs_attr(j), 1) for j in joint_names], axis=1),
        joints=joints,
        joint_expr_dirs=np.asarray(mesh_obj[naming.PROP_JOINT_EXPR_DIRS], dtype=np.float32).reshape(len(joint_names), 3, n_expr),
        parents=np.asarray(mesh_obj[naming.PROP_PARENTS], dtype=np.int32),
        joint_names=joint_names,
        faces=faces.reshape(-1, 3),
        shape_params=np.asarray(mesh_obj[naming.PROP_SHAPE_PARAMS], dtype=np.float32),
        meta=json.loads(mesh_obj[naming.PROP_AVATAR]),
        arkit_dirs=np.stack(arkit, axis=2) if arkit else None,
        arkit_names=arkit_names,
        opacity_logit=_source_logits(me),
    )


def _source_logits(me) -> np.ndarray | None:
    """The source file's opacity logits, with fresh ones where the artist changed the opacity."""
    if naming.ATTR_OPACITY_LOGIT not in me.attributes:
        return None
    logit, opacity = _attr(me, naming.ATTR_OPACITY_LOGIT, 1), _attr(me, naming.ATTR_OPACITY, 1)
    edited = np.abs(ply.logit_to_opacity(logit).astype(np.float64) - opacity) > 1e-7
    return np.where(edited, ply.opacity_to_logit(opacity), logit).astype(np.float32)
