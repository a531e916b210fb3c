"""Turn an :class:`Avatar` into Blender data: one collection with a point mesh
(Gaussian centres + FLAME faces, attributes, shape keys, vertex groups) and an
armature. All-or-nothing: on any failure every datablock created is removed.

Frames: mesh and armature data stay in FLAME space (Y up); the Y-up -> Z-up
rotation (+90 degrees about X) sits on the armature object and the mesh is
its child with an identity local transform.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import bpy
import numpy as np

from . import naming, pose_drivers

# ID collections a failed build may have added to (the splat node path included).
_ID_COLLECTIONS = (
    "objects", "meshes", "armatures", "collections", "materials", "node_groups", "images",
    "textures", "actions", "texts", "shape_keys",
)


@dataclass
class BuiltAvatar:
    collection: bpy.types.Collection
    mesh_obj: bpy.types.Object
    arm_obj: bpy.types.Object


def _id_snapshot() -> dict[str, set[int]]:
    return {name: {idb.as_pointer() for idb in getattr(bpy.data, name)} for name in _ID_COLLECTIONS}


@contextmanager
def all_or_nothing() -> Iterator[None]:
    """Remove every ID datablock created inside the block if it raises."""
    before = _id_snapshot()
    try:
        yield
    except BaseException:
        new = [
            idb for name in _ID_COLLECTIONS if name != "shape_keys"  # keys go with their mesh
            for idb in getattr(bpy.data, name) if idb.as_pointer() not in before[name]
        ]
        if new:
            bpy.data.batch_remove(new)
        raise


def _set_attr(mesh, name: str, kind: str, values: np.ndarray) -> None:
    attr = mesh.attributes.new(name, kind, "POINT")
    field = "value" if kind in ("FLOAT", "QUATERNION") else "vector"
    attr.data.foreach_set(field, np.ascontiguousarray(values, dtype=np.float32).ravel())


def _build_mesh(avatar, name: str):
    n = avatar.n_points
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(n)
    mesh.vertices.foreach_set("co", avatar.xyz.ravel())
    faces = avatar.faces
    if len(faces):
        f = len(faces)
        mesh.loops.add(3 * f)
        mesh.polygons.add(f)
        mesh.loops.foreach_set("vertex_index", faces.astype(np.int32).ravel())
        mesh.polygons.foreach_set("loop_start", np.arange(0, 3 * f, 3, dtype=np.int32))
    mesh.update(calc_edges=True)
    _set_attr(mesh, naming.ATTR_RGB, "FLOAT_VECTOR", avatar.rgb)
    _set_attr(mesh, naming.ATTR_OPACITY, "FLOAT", avatar.opacity)
    _set_attr(mesh, naming.ATTR_SCALE, "FLOAT_VECTOR", avatar.scale)
    _set_attr(mesh, naming.ATTR_ROTATION, "QUATERNION", avatar.rotation)
    _set_attr(mesh, naming.ATTR_TEMPLATE, "FLOAT_VECTOR", avatar.template)
    if avatar.opacity_logit is not None:
        _set_attr(mesh, naming.ATTR_OPACITY_LOGIT, "FLOAT", avatar.opacity_logit)
    for j, joint in enumerate(avatar.joint_names):
        _set_attr(mesh, naming.lbs_attr(joint), "FLOAT", avatar.lbs_weights[:, j])
    return mesh


def _set_key_co(kb, co: np.ndarray) -> None:
    # ``points`` (4.1+) takes the fast raw-array path; ``data`` goes point by point.
    target = kb.points if hasattr(kb, "points") else kb.data
    target.foreach_set("co", co.ravel())


def _add_shape_keys(obj, avatar) -> list[str]:
    """Basis + E expression keys + K ARKit keys (the target names) + P pose-corrective keys,
    all at value 0; returns the pose key names."""
    obj.shape_key_add(name=naming.BASIS_KEY, from_mix=False)
    base = avatar.xyz
    lo, hi = naming.EXPR_SLIDER_RANGE
    for e in range(avatar.n_expr):
        kb = obj.shape_key_add(name=naming.expr_key(e), from_mix=False)
        _set_key_co(kb, avatar.expr_dirs[:, :, e] + base)
        kb.slider_min, kb.slider_max, kb.value = lo, hi, 0.0
    if avatar.arkit_dirs is not None:
        lo, hi = naming.ARKIT_SLIDER_RANGE
        for k, name in enumerate(avatar.arkit_names):
            kb = obj.shape_key_add(name=name, from_mix=False)
            _set_key_co(kb, avatar.arkit_dirs[:, :, k] + base)
            kb.slider_min, kb.slider_max, kb.value = lo, hi, 0.0
            if kb.name != name:  # Blender renamed it (a clash): the name contract would break
                raise ValueError(f"ARKit target '{name}' clashes with another shape key name")
    lo, hi = naming.POSE_SLIDER_RANGE
    pose_names = []
    for p in range(avatar.pose_dirs.shape[2]):
        kb = obj.shape_key_add(name=naming.pose_key(p), from_mix=False)
        _set_key_co(kb, avatar.pose_dirs[:, :, p] + base)
        kb.slider_min, kb.slider_max, kb.value = lo, hi, 0.0
        pose_names.append(kb.name)
    obj.data.shape_keys.use_relative = True
    return pose_names


def _build_armature(context, avatar, name: str, collection) -> tuple[bpy.types.Object, list[str]]:
    arm = bpy.data.armatures.new(name)
    arm_obj = bpy.data.objects.new(name, arm)
    collection.objects.link(arm_obj)
    bone_names = [naming.bone_name(j) for j in avatar.joint_names]
    # Edit bones need edit mode on an object in the view layer.
    view_layer = context.view_layer
    prev_active = view_layer.objects.active
    if prev_active is not None and prev_active.mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    view_layer.objects.active = arm_obj
    bpy.ops.object.mode_set(mode="EDIT")
    try:
        ebones = []
        for j, bname in enumerate(bone_names):
            eb = arm.edit_bones.new(bname)
            head = avatar.joints[j].astype(np.float64)
            eb.head = head
            eb.tail = head + (0.0, naming.BONE_LENGTH, 0.0)
            eb.roll = 0.0
            eb.use_deform = True
            parent = int(avatar.parents[j])
            if parent >= 0:
                eb.parent = ebones[parent]
                eb.use_connect = False
            ebones.append(eb)
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")
        view_layer.objects.active = prev_active
    for pb in arm_obj.pose.bones:
        pb.rotation_mode = naming.BONE_ROTATION_MODE
    arm_obj.rotation_mode = "XYZ"
    arm_obj.rotation_euler = (math.pi / 2, 0.0, 0.0)
    return arm_obj, bone_names


def _add_vertex_groups(obj, avatar, bone_names: list[str]) -> None:
    """Exact LBS weights; vertices sharing a weight value are added in one call."""
    for j, bname in enumerate(bone_names):
        vg = obj.vertex_groups.new(name=bname)
        w = avatar.lbs_weights[:, j]
        nz = np.flatnonzero(w > 0)
        values, inverse = np.unique(w[nz], return_inverse=True)
        if len(values) * 4 < len(nz):
            order = np.argsort(inverse, kind="stable")
            splits = np.cumsum(np.bincount(inverse))[:-1]
            for value, idx in zip(values.tolist(), np.split(nz[order], splits)):
                vg.add(idx.tolist(), value, "REPLACE")
        else:
            add = vg.add
            for i, value in zip(nz.tolist(), w[nz].tolist()):
                add((i,), value, "REPLACE")


def _store_raw(obj, avatar) -> None:
    obj[naming.PROP_AVATAR] = json.dumps(avatar.meta, sort_keys=True)
    obj[naming.PROP_JOINT_NAMES] = list(avatar.joint_names)
    obj[naming.PROP_PARENTS] = [int(p) for p in avatar.parents]
    obj[naming.PROP_JOINT_EXPR_DIRS] = avatar.joint_expr_dirs.astype(np.float64).ravel().tolist()
    obj[naming.PROP_SHAPE_PARAMS] = avatar.shape_params.astype(np.float64).tolist()
    obj[naming.PROP_N_EXPR] = avatar.n_expr
    obj[naming.PROP_ARKIT_NAMES] = list(avatar.arkit_names)


def build_avatar(context, avatar, name: str, attach: Callable | None = None) -> BuiltAvatar:
    """Create the avatar's collection under the scene collection; ``attach(mesh_obj)``
    (the splat node path) runs inside the same all-or-nothing block."""
    with all_or_nothing():
        collection = bpy.data.collections.new(name)
        context.scene.collection.children.link(collection)
        mesh = _build_mesh(avatar, name)
        mesh_obj = bpy.data.objects.new(name, mesh)
        collection.objects.link(mesh_obj)
        arm_obj, bone_names = _build_armature(context, avatar, name + naming.ARMATURE_SUFFIX, collection)
        mesh_obj.parent = arm_obj  # identity local transform: inherits the Y-up -> Z-up rotation
        pose_names = _add_shape_keys(mesh_obj, avatar)
        if pose_names:
            pose_drivers.add_pose_drivers(mesh.shape_keys, arm_obj, bone_names, pose_names)
        _add_vertex_groups(mesh_obj, avatar, bone_names)
        mod = mesh_obj.modifiers.new(naming.ARMATURE_MODIFIER, "ARMATURE")
        mod.object = arm_obj
        mod.use_vertex_groups = True
        mod.use_bone_envelopes = False
        mod.use_deform_preserve_volume = False
        _store_raw(mesh_obj, avatar)
        if attach is not None:
            attach(mesh_obj)
        for obj in context.view_layer.objects:
            obj.select_set(False)
        mesh_obj.select_set(True)
        context.view_layer.objects.active = mesh_obj
        return BuiltAvatar(collection, mesh_obj, arm_obj)
