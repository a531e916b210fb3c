"""Importing a real LAM web ZIP into Blender: counts, names, rest positions, ARKit keys, glTF
skinning reproduced exactly, Gaussians turning, template kept, bad ZIPs refused cleanly.

Expected values come from an independent reader (tests/factories/lam_zips.py) and from the
glTF's own node tree and inverse bind matrices; sizes and names are read from each file.
"""

from __future__ import annotations

import importlib
import math

import bpy
import numpy as np
import pytest
from factories import lam_zips
from mathutils import Euler, Matrix, Quaternion
from plyfile import PlyData

from backend.core import rig
from backend.core.formats.lam_zip import read_lam_zip

REAL = lam_zips.real_zips()
pytestmark = pytest.mark.skipif(not REAL, reason=f"no real LAM ZIP in {lam_zips.REAL_DIR}")
TOL = 1e-5


@pytest.fixture(scope="module", params=REAL, ids=lambda p: p.name)
def real(request):
    raw = lam_zips.members(request.param)
    gltf, bin_ = lam_zips.split_glb(raw["skin.glb"])
    prim = gltf["meshes"][0]["primitives"][0]
    ply = lam_zips.read_ply(raw["offset.ply"])
    pos = lam_zips.accessor(gltf, bin_, prim["attributes"]["POSITION"]).astype(np.float64)
    return {
        "path": request.param, "raw": raw, "gltf": gltf, "bin": bin_, "prim": prim,
        "centres": pos + np.stack([ply["x"], ply["y"], ply["z"]], 1),
        "names": list(gltf["meshes"][0]["extras"]["targetNames"]),
    }


def _import(real):
    assert bpy.ops.lam_head.import_lam_zip(filepath=str(real["path"])) == {"FINISHED"}
    mesh_obj = bpy.context.view_layer.objects.active
    return mesh_obj, mesh_obj.parent


def _co(mesh_obj) -> np.ndarray:
    me = mesh_obj.data
    out = np.empty(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", out)
    return out.reshape(-1, 3)


def _deformation_only(mesh_obj) -> None:
    for mod in mesh_obj.modifiers:
        mod.show_viewport = mod.type == "ARMATURE"


def test_import_builds_the_documented_data(lam, real):
    mesh_obj, arm_obj = _import(real)
    assert mesh_obj.type == "MESH" and arm_obj.type == "ARMATURE"
    assert set(bpy.data.collections[mesh_obj.users_collection[0].name].objects) >= {mesh_obj, arm_obj}
    me = mesh_obj.data
    assert len(me.vertices) == len(real["centres"])
    np.testing.assert_allclose(_co(mesh_obj), real["centres"], atol=1e-6)  # POSITION + offset, Y up data
    faces = lam_zips.accessor(real["gltf"], real["bin"], real["prim"]["indices"]).reshape(-1, 3)
    np.testing.assert_array_equal(np.array([tuple(p.vertices) for p in me.polygons]), faces)
    # the object carries the Y-up -> Z-up turn, the data stays in the file's frame
    turn = np.array(arm_obj.matrix_world) - np.array(Matrix.Rotation(math.pi / 2, 4, "X"))
    assert np.abs(turn).max() < 1e-6
    assert mesh_obj.matrix_parent_inverse == Matrix.Identity(4) and mesh_obj.matrix_basis == Matrix.Identity(4)
    # 51 ARKit keys named as the glTF targets, all at 0, and nothing FLAME-specific
    keys = [kb.name for kb in me.shape_keys.key_blocks]
    assert keys == ["Basis", *real["names"]]
    assert all(kb.value == 0.0 for kb in me.shape_keys.key_blocks[1:])
    # bones named as in the glTF: the weighted joints and their ancestors
    skin = real["gltf"]["skins"][0]
    gltf_names = [real["gltf"]["nodes"][j]["name"] for j in skin["joints"]]
    bones = [b.name for b in arm_obj.data.bones]
    assert set(bones) <= set(gltf_names) and {"head", "neckUpper", "neckLower"} <= set(bones)
    assert {vg.name for vg in mesh_obj.vertex_groups} == set(bones)
    # splat node path attached, one bone input per bone of this skeleton
    splat = importlib.import_module(f"{lam.__name__}.splat")
    mod = splat.find_modifier(mesh_obj)
    inputs = list(splat.nodes.bone_inputs(mod.node_group))  # the weighted bones: the others turn nothing
    assert mod is not None and set(inputs) <= set(bones) and {"head", "neckUpper", "neckLower"} <= set(inputs)
    assert "hip" not in inputs
    assert mesh_obj.modifiers[-1] == mod


def test_vertex_groups_equal_joints_0_and_weights_0(lam, real):
    mesh_obj, arm_obj = _import(real)
    skin = real["gltf"]["skins"][0]
    gltf_names = [real["gltf"]["nodes"][j]["name"] for j in skin["joints"]]
    jv = lam_zips.accessor(real["gltf"], real["bin"], real["prim"]["attributes"]["JOINTS_0"]).astype(int)
    wv = lam_zips.accessor(real["gltf"], real["bin"], real["prim"]["attributes"]["WEIGHTS_0"]).astype(np.float64)
    want = np.zeros((len(jv), len(gltf_names)))
    for c in range(4):
        want[np.arange(len(jv)), jv[:, c]] += wv[:, c]
    got = lam.ops_export.vertex_group_weights(mesh_obj, gltf_names)
    np.testing.assert_allclose(got, want, atol=1e-7)


def test_an_arkit_key_moves_the_points_by_the_glb_morph_delta(lam, real):
    mesh_obj, _ = _import(real)
    _deformation_only(mesh_obj)
    rest = lam.controls.evaluated_positions(mesh_obj).copy()
    for name in ("jawOpen", "eyeBlinkLeft", real["names"][-1]):
        k = real["names"].index(name)
        delta = lam_zips.accessor(real["gltf"], real["bin"], real["prim"]["targets"][k]["POSITION"])
        kb = mesh_obj.data.shape_keys.key_blocks[name]
        kb.value = 0.7
        bpy.context.view_layer.update()
        got = lam.controls.evaluated_positions(mesh_obj) - rest
        kb.value = 0.0
        assert np.abs(got - 0.7 * delta).max() <= 1e-6, name
        assert np.abs(delta).max() > 1e-4  # the target really moves something


# ---------------------------------------------------------------- skinning, as glTF defines it


def _local(node) -> np.ndarray:
    if "matrix" in node:
        return np.array(node["matrix"], np.float64).reshape(4, 4).T
    t = np.eye(4)
    t[:3, 3] = node.get("translation", (0, 0, 0))
    x, y, z, w = node.get("rotation", (0, 0, 0, 1))
    r = np.eye(4)
    r[:3, :3] = rig.quaternion_to_matrix(np.array([w, x, y, z], np.float64))
    s = np.diag([*node.get("scale", (1, 1, 1)), 1.0])
    return t @ r @ s


def _worlds(gltf, local_of) -> dict[int, np.ndarray]:
    nodes = gltf["nodes"]
    parent = {c: i for i, n in enumerate(nodes) for c in n.get("children", [])}
    out: dict[int, np.ndarray] = {}

    def world(i):
        if i not in out:
            out[i] = (world(parent[i]) if i in parent else np.eye(4)) @ local_of(i)
        return out[i]

    for i in range(len(nodes)):
        world(i)
    return out


def _gltf_skinning(real, points: np.ndarray, bone_rotations: dict[str, np.ndarray]) -> np.ndarray:
    """Skin ``points`` as a glTF viewer would: joint worlds from the node tree with each named
    joint's local rotation changed so its world-space turn about the joint is the given 3x3,
    times the inverse bind matrices, blended with JOINTS_0/WEIGHTS_0."""
    gltf, bin_ = real["gltf"], real["bin"]
    skin = gltf["skins"][0]
    ibm = lam_zips.accessor(gltf, bin_, skin["inverseBindMatrices"]).reshape(-1, 4, 4).transpose(0, 2, 1)
    rest = _worlds(gltf, lambda i: _local(gltf["nodes"][i]))
    for g, node in enumerate(skin["joints"]):  # rest pose = bind pose
        assert np.abs(rest[node] @ ibm[g] - np.eye(4)).max() < 1e-4
    by_name = {gltf["nodes"][n]["name"]: n for n in skin["joints"]}
    turn = {}
    for name, r in bone_rotations.items():
        a = rest[by_name[name]][:3, :3]
        d = np.eye(4)
        d[:3, :3] = np.linalg.inv(a) @ r @ a  # the same turn, in the joint's own (scaled) frame
        turn[by_name[name]] = d
    posed = _worlds(gltf, lambda i: _local(gltf["nodes"][i]) @ turn.get(i, np.eye(4)))
    mats = np.stack([posed[n] @ ibm[g] for g, n in enumerate(skin["joints"])])
    jv = lam_zips.accessor(gltf, bin_, real["prim"]["attributes"]["JOINTS_0"]).astype(int)
    wv = lam_zips.accessor(gltf, bin_, real["prim"]["attributes"]["WEIGHTS_0"]).astype(np.float64)
    hom = np.concatenate([points, np.ones((len(points), 1))], 1)
    out = np.zeros((len(points), 4))
    for c in range(4):
        out += wv[:, c:c + 1] * np.einsum("nij,nj->ni", mats[jv[:, c]], hom)
    return out[:, :3] / wv.sum(1, keepdims=True)


@pytest.mark.parametrize("mode", ["XYZ", "QUATERNION"])
def test_bone_rotations_deform_exactly_as_gltf_skinning(lam, real, mode):
    mesh_obj, arm_obj = _import(real)
    _deformation_only(mesh_obj)
    turns = {"neckLower": (0.15, -0.1, 0.05), "neckUpper": (0.2, 0.3, -0.1), "head": (-0.25, 0.4, 0.2),
             "chestUpper": (0.05, 0.0, 0.08)}
    want_r = {}
    for name, angles in turns.items():
        pb = arm_obj.pose.bones[name]
        e = Euler(angles, "XYZ")
        pb.rotation_mode = mode
        if mode == "QUATERNION":
            pb.rotation_quaternion = e.to_quaternion()
        else:
            pb.rotation_euler = e
        want_r[name] = np.array(e.to_matrix())
    bpy.context.view_layer.update()
    got = lam.controls.evaluated_positions(mesh_obj)
    want = _gltf_skinning(real, real["centres"], want_r)
    assert np.abs(got - want).max() <= TOL
    assert np.abs(want - real["centres"]).max() > 0.05  # the pose moved the head by centimetres


def test_gaussians_turn_with_the_rig_in_the_exported_sequence(lam, real, tmp_path):
    mesh_obj, arm_obj = _import(real)
    head = arm_obj.pose.bones["head"]
    head.rotation_mode = "QUATERNION"
    head.rotation_quaternion = Quaternion((0.0, 1.0, 0.0), 0.5)
    out = tmp_path / "seq"
    assert bpy.ops.lam_head.export_splat_sequence(directory=str(out), frame_start=1, frame_end=1) == {"FINISHED"}
    v = PlyData.read(str(out / "frame_000001.ply"))["vertex"]
    q = np.stack([v[f"rot_{i}"] for i in range(4)], 1)
    avatar, _ = read_lam_zip(real["path"])
    w_head = avatar.lbs_weights[:, avatar.joint_names.index("head")]
    only_head = w_head > 0.999999
    want = rig.quaternion_multiply(np.array([math.cos(0.25), 0.0, math.sin(0.25), 0.0]), avatar.rotation[only_head])
    want *= np.sign(want[:, :1] + 1e-12)
    got = q[only_head] * np.sign(q[only_head, :1] + 1e-12)
    assert only_head.sum() > len(w_head) // 2 and np.abs(got - want).max() < 1e-4
    xyz = np.stack([v["x"], v["y"], v["z"]], 1)
    want_xyz = _gltf_skinning(real, real["centres"], {"head": np.array(Quaternion((0.0, 1.0, 0.0), 0.5).to_matrix())})
    assert np.abs(xyz - want_xyz).max() <= TOL


def test_the_template_parts_are_kept_with_the_object(lam, real):
    mesh_obj, _ = _import(real)
    store = importlib.import_module(f"{lam.__name__}.template_store")
    tpl = store.load_template(mesh_obj)
    assert tpl.skin_glb == real["raw"]["skin.glb"] and tpl.animation_glb == real["raw"]["animation.glb"]
    assert tpl.vertex_order_json == real["raw"]["vertex_order.json"] and tpl.source_name == real["path"].name
    read_back = importlib.import_module(f"{lam.__name__}.read_avatar").read_avatar(mesh_obj)  # what an export would start from
    avatar, _ = read_lam_zip(real["path"])
    np.testing.assert_allclose(read_back.xyz, avatar.xyz, atol=1e-7)
    np.testing.assert_array_equal(read_back.opacity_logit, avatar.opacity_logit)
    np.testing.assert_allclose(read_back.arkit_dirs, avatar.arkit_dirs, atol=1e-6)
    assert read_back.arkit_names == avatar.arkit_names and read_back.joint_names == avatar.joint_names


def _ids() -> dict[str, set[str]]:
    names = ("objects", "meshes", "armatures", "collections", "materials", "node_groups", "texts", "actions")
    return {n: {i.name for i in getattr(bpy.data, n)} for n in names}


def test_bad_zips_are_refused_and_the_scene_is_unchanged(lam, real, tmp_path):
    not_zip = tmp_path / "photo.zip"
    not_zip.write_bytes(b"\xff\xd8\xff\xe0 not a zip")
    slip = lam_zips.rewrite(real["path"], tmp_path / "slip.zip", extra={"../../evil.py": b"import os"})
    short = lam_zips.rewrite(real["path"], tmp_path / "short.zip", drop=("offset.ply",))
    before = _ids()
    for path, match in ((not_zip, "not a ZIP archive"), (slip, "'..' in the path"), (short, "lacks offset.ply")):
        with pytest.raises(RuntimeError, match=match):
            bpy.ops.lam_head.import_lam_zip(filepath=str(path))
        assert _ids() == before


def test_a_failure_while_building_leaves_nothing_behind(lam, real, monkeypatch):
    ops_import = importlib.import_module(f"{lam.__name__}.ops_import")

    def broken(*_a, **_k):
        raise RuntimeError("splat failure injected by the test")

    monkeypatch.setattr(ops_import, "_attach_splats", broken)
    before = _ids()
    with pytest.raises(RuntimeError, match="injected"):
        bpy.ops.lam_head.import_lam_zip(filepath=str(real["path"]))
    assert _ids() == before


def test_the_zip_can_be_dropped_on_the_viewport(lam):
    handlers = [c for c in bpy.types.FileHandler.__subclasses__() if getattr(c, "bl_import_operator", "") ==
                "lam_head.import_lam_zip"] if hasattr(bpy.types, "FileHandler") else []
    assert handlers and handlers[0].bl_file_extensions == ".zip"
