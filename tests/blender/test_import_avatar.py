"""Importing an avatar file builds the documented Blender data, all or nothing."""

from __future__ import annotations

import math

import bpy
import numpy as np
import pytest
from factories.avatar import make_avatar

from backend.core.formats.avatar_file import load_avatar, save_avatar

BONES = ["root", "neck", "jaw", "eye_L", "eye_R"]


def _all_ids() -> dict[str, set[str]]:
    names = ("objects", "meshes", "armatures", "collections", "materials", "node_groups", "images", "actions", "shape_keys")
    return {n: {i.name for i in getattr(bpy.data, n)} for n in names}


def _attr(mesh, name: str, width: int) -> np.ndarray:
    a = mesh.attributes[name]
    field = "value" if a.data_type in ("FLOAT", "QUATERNION") else "vector"
    out = np.empty(len(mesh.vertices) * width, dtype=np.float32)
    a.data.foreach_get(field, out)
    return out.reshape(-1, width) if width > 1 else out


def test_import_builds_rigged_point_mesh(lam, avatar_file):
    path = avatar_file(n_points=400, n_expr=7, seed=3)
    av = load_avatar(path)
    assert bpy.ops.lam_head.import_avatar(filepath=str(path)) == {"FINISHED"}

    obj = bpy.context.view_layer.objects.active
    assert obj is not None and obj.type == "MESH" and obj.name == "avatar"
    col = bpy.data.collections["avatar"]
    assert set(col.objects) >= {obj, obj.parent}
    arm_obj = obj.parent
    assert arm_obj.type == "ARMATURE"
    mods = [m for m in obj.modifiers if m.type == "ARMATURE"]
    assert len(mods) == 1 and mods[0].object == arm_obj and mods[0].use_vertex_groups

    me = obj.data
    co = np.empty(len(me.vertices) * 3, dtype=np.float32)
    me.vertices.foreach_get("co", co)
    np.testing.assert_array_equal(co.reshape(-1, 3), av.xyz)
    got_faces = np.array([tuple(p.vertices) for p in me.polygons], dtype=np.int32)
    np.testing.assert_array_equal(got_faces, av.faces)

    lam_naming = lam.naming
    np.testing.assert_array_equal(_attr(me, lam_naming.ATTR_RGB, 3), av.rgb)
    np.testing.assert_array_equal(_attr(me, lam_naming.ATTR_OPACITY, 1), av.opacity)
    np.testing.assert_array_equal(_attr(me, lam_naming.ATTR_SCALE, 3), av.scale)
    assert me.attributes[lam_naming.ATTR_ROTATION].data_type == "QUATERNION"
    np.testing.assert_array_equal(_attr(me, lam_naming.ATTR_ROTATION, 4), av.rotation)
    np.testing.assert_array_equal(_attr(me, lam_naming.ATTR_TEMPLATE, 3), av.template)
    for j, joint in enumerate(av.joint_names):
        np.testing.assert_array_equal(_attr(me, lam_naming.ATTR_LBS_PREFIX + joint, 1), av.lbs_weights[:, j])

    # Vertex groups carry the exact LBS weights.
    w = np.zeros((len(me.vertices), len(BONES)), dtype=np.float32)
    gi = {g.index: BONES.index(g.name) for g in obj.vertex_groups}
    for v in me.vertices:
        for g in v.groups:
            w[v.index, gi[g.group]] = g.weight
    np.testing.assert_array_equal(w, av.lbs_weights)

    # Shape keys: Basis + E expression keys at 0 + 36 driven pose correctives.
    keys = me.shape_keys.key_blocks
    names = [k.name for k in keys]
    assert names[0] == "Basis"
    assert names[1:8] == [f"expr_{i:03d}" for i in range(7)]
    assert names[8:] == [f"pose_{i:02d}" for i in range(36)]
    assert all(k.value == 0.0 for k in keys[1:])
    assert keys["expr_000"].slider_min <= -3 and keys["expr_000"].slider_max >= 3
    kco = np.empty(len(me.vertices) * 3, dtype=np.float32)
    keys["expr_004"].data.foreach_get("co", kco)
    np.testing.assert_allclose(kco.reshape(-1, 3) - av.xyz, av.expr_dirs[:, :, 4], atol=1e-7)
    drivers = {d.data_path: d.driver for d in me.shape_keys.animation_data.drivers}
    assert len(drivers) == 36
    assert all(d.is_simple_expression and d.is_valid for d in drivers.values())

    # Armature: bones at the joints, identity rest orientation, +90 deg about X on the object.
    arm = arm_obj.data
    assert [b.name for b in arm.bones] == BONES
    for j, b in enumerate(arm.bones):
        np.testing.assert_allclose(np.array(b.head_local), av.joints[j], atol=1e-7)
        np.testing.assert_allclose(np.array(b.matrix_local)[:3, :3], np.eye(3), atol=1e-6)
        parent = av.parents[j]
        assert (b.parent.name if b.parent else None) == (BONES[parent] if parent >= 0 else None)
    np.testing.assert_allclose(np.array(obj.matrix_world)[:3, :3], [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-6)
    assert math.isclose(arm_obj.rotation_euler.x, math.pi / 2, rel_tol=1e-7)
    assert np.allclose(np.array(obj.matrix_basis), np.eye(4)), "the rotation must sit on the armature, not baked"
    # Raw values for export
    np.testing.assert_allclose(np.array(obj[lam_naming.PROP_JOINT_EXPR_DIRS]).reshape(av.joint_expr_dirs.shape), av.joint_expr_dirs)


@pytest.mark.parametrize(
    "corrupt, key",
    [
        (lambda a: a.pop("xyz"), "xyz"),
        (lambda a: a.__setitem__("opacity", a["opacity"] * 5), "opacity"),
        (lambda a: a.__setitem__("lbs_weights", a["lbs_weights"][:, :4]), "lbs_weights"),
    ],
)
def test_bad_avatar_file_leaves_scene_unchanged(lam, avatar_file, tmp_path, corrupt, key):
    good = np.load(avatar_file())
    arrays = {k: good[k] for k in good.files}
    corrupt(arrays)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    before = _all_ids()
    with pytest.raises(RuntimeError, match=f"key '{key}'"):
        bpy.ops.lam_head.import_avatar(filepath=str(bad))
    assert _all_ids() == before


def test_not_an_npz_is_refused(lam, tmp_path):
    bad = tmp_path / "photo.npz"
    bad.write_bytes(b"not a zip at all")
    before = _all_ids()
    with pytest.raises(RuntimeError, match="invalid avatar file"):
        bpy.ops.lam_head.import_avatar(filepath=str(bad))
    assert _all_ids() == before


def test_failure_midway_rolls_back_everything(lam, avatar_file, monkeypatch):
    """A failure after most data exists (here in the splat node path) leaves nothing behind."""
    import importlib

    splat = importlib.import_module(lam.__name__ + ".splat")

    def boom(obj):
        bpy.data.node_groups.new("half made", "GeometryNodeTree")
        raise RuntimeError("splat failure injected by the test")

    monkeypatch.setattr(splat, "attach", boom)
    before = _all_ids()
    with pytest.raises(RuntimeError, match="injected"):
        bpy.ops.lam_head.import_avatar(filepath=str(avatar_file()))
    assert _all_ids() == before


def test_large_avatar_imports(lam, tmp_path):
    path = save_avatar(tmp_path / "big.npz", make_avatar(n_points=20018, n_expr=100, seed=1, n_faces=4000))
    assert bpy.ops.lam_head.import_avatar(filepath=str(path)) == {"FINISHED"}
    obj = bpy.context.active_object
    assert len(obj.data.vertices) == 20018
    assert len(obj.data.shape_keys.key_blocks) == 1 + 100 + 36


def test_read_back_is_lossless(lam, avatar_file):
    """Everything export needs is in the Blender data: reading it back gives the file's avatar."""
    import importlib
    from dataclasses import fields

    path = avatar_file(n_points=300, n_expr=9, seed=4)
    original = load_avatar(path)
    assert bpy.ops.lam_head.import_avatar(filepath=str(path)) == {"FINISHED"}
    read = importlib.import_module(lam.__name__ + ".read_avatar").read_avatar(bpy.context.active_object)
    for f in fields(original):
        a, b = getattr(original, f.name), getattr(read, f.name)
        if f.name in ("expr_dirs", "pose_dirs"):  # stored as absolute key positions: float32 rounding
            np.testing.assert_allclose(b, a, atol=2e-8, err_msg=f.name)
        elif isinstance(a, np.ndarray):
            np.testing.assert_array_equal(b, a, err_msg=f.name)
        else:
            assert a == b, f.name


def test_import_while_another_object_is_in_edit_mode(lam, avatar_file):
    me = bpy.data.meshes.new("other")
    me.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [], [(0, 1, 2)])
    other = bpy.data.objects.new("other", me)
    bpy.context.scene.collection.objects.link(other)
    bpy.context.view_layer.objects.active = other
    bpy.ops.object.mode_set(mode="EDIT")
    assert bpy.ops.lam_head.import_avatar(filepath=str(avatar_file(n_points=100))) == {"FINISHED"}
    assert bpy.context.mode == "OBJECT" and bpy.context.active_object.name == "avatar"
    assert lam.controls.find_avatar(bpy.context.active_object) is not None
