"""Exporting an avatar from Blender as a LAM web ZIP: a real ZIP survives import + export
unchanged, the artist's edits (colours, opacities, centres moved in edit mode) reach offset.ply,
and what cannot be a LAM ZIP is refused with the scene and the disk unchanged.

Every expected value comes from the source ZIP through the independent reader in
tests/factories/lam_zips.py (not the backend's lam_zip module).
"""

from __future__ import annotations

import importlib
import json
import zipfile

import bmesh
import bpy
import numpy as np
import pytest
from factories import lam_zips

REAL = lam_zips.real_zips()
pytestmark = pytest.mark.skipif(not REAL, reason=f"no real LAM ZIP in {lam_zips.REAL_DIR}")
XYZ = ("x", "y", "z")


@pytest.fixture(params=REAL, ids=lambda p: p.name)
def real(request):
    return request.param


@pytest.fixture(autouse=True)
def no_registered_template(tmp_path, monkeypatch):
    """An empty asset cache: only what a test registers is there (never the developer's own)."""
    home = tmp_path / "lam_home"
    home.mkdir()
    monkeypatch.setenv("LAM_HEAD_HOME", str(home))
    return home


def _import(path):
    assert bpy.ops.lam_head.import_lam_zip(filepath=str(path)) == {"FINISHED"}
    mesh_obj = bpy.context.view_layer.objects.active
    return mesh_obj, mesh_obj.parent


def _glb(data: bytes) -> dict:
    gltf, bin_ = lam_zips.split_glb(data)
    prim = gltf["meshes"][0]["primitives"][0]
    acc = lambda i: lam_zips.accessor(gltf, bin_, i)  # noqa: E731
    skin = gltf["skins"][0]
    return {
        "gltf": gltf,
        "position": acc(prim["attributes"]["POSITION"]),
        "indices": acc(prim["indices"]).reshape(-1, 3),
        "joints": acc(prim["attributes"]["JOINTS_0"]),
        "weights": acc(prim["attributes"]["WEIGHTS_0"]),
        "targets": [acc(t["POSITION"]) for t in prim["targets"]],
        "target_names": gltf["meshes"][0]["extras"]["targetNames"],
        "ibm": acc(skin["inverseBindMatrices"]),
        "skin_joints": [gltf["nodes"][j]["name"] for j in skin["joints"]],
    }


def _export(tmp_path, name: str = "exported.zip", obj=None) -> dict[str, bytes]:
    if obj is not None:
        bpy.context.view_layer.objects.active = obj
    path = tmp_path / name
    assert bpy.ops.lam_head.export_lam_zip(filepath=str(path)) == {"FINISHED"}
    with zipfile.ZipFile(path) as zf:
        names = [i.filename for i in zf.infolist()]
    stem = path.stem
    assert names == [f"{stem}/"] + [f"{stem}/{m}" for m in ("skin.glb", "offset.ply", "animation.glb",
                                                             "vertex_order.json")]
    return lam_zips.members(path)


def _centres(raw: dict[str, bytes]) -> np.ndarray:
    ply = lam_zips.read_ply(raw["offset.ply"])
    return _glb(raw["skin.glb"])["position"].astype(np.float64) + np.stack([ply[a] for a in XYZ], 1)


@pytest.mark.parametrize("select", ["mesh", "armature"])
def test_import_then_export_gives_back_the_same_zip(lam, real, tmp_path, select):
    src = lam_zips.members(real)
    mesh_obj, arm_obj = _import(real)
    got = _export(tmp_path, obj=mesh_obj if select == "mesh" else arm_obj)
    assert got["animation.glb"] == src["animation.glb"]
    assert got["vertex_order.json"] == src["vertex_order.json"]
    a, b = lam_zips.read_ply(src["offset.ply"]), lam_zips.read_ply(got["offset.ply"])
    assert list(b) == list(a)  # the same 17 properties in the same order
    for prop in a:
        np.testing.assert_allclose(b[prop], a[prop], atol=1e-6, rtol=0, err_msg=prop)
    s, g = _glb(src["skin.glb"]), _glb(got["skin.glb"])
    np.testing.assert_array_equal(g["position"], s["position"])
    np.testing.assert_array_equal(g["indices"], s["indices"])
    np.testing.assert_array_equal(g["joints"], s["joints"])
    np.testing.assert_array_equal(g["weights"], s["weights"])
    np.testing.assert_allclose(g["ibm"], s["ibm"], atol=1e-6, rtol=0)
    assert g["skin_joints"] == s["skin_joints"] and g["target_names"] == s["target_names"]
    assert len(g["targets"]) == len(s["targets"]) == len(s["target_names"])
    for k, (dg, ds) in enumerate(zip(g["targets"], s["targets"])):
        np.testing.assert_allclose(dg, ds, atol=1e-6, rtol=0, err_msg=s["target_names"][k])


def _register_template(home, path) -> None:
    """What ``lam-head setup --lam-template`` records (the manifest entry the add-on reads)."""
    (home / "assets.json").write_text(json.dumps({"lam_template": {"path": str(path)}}))


def test_without_a_stored_template_the_registered_one_is_used(lam, real, tmp_path, no_registered_template):
    src = lam_zips.members(real)
    mesh_obj, _ = _import(real)
    bpy.data.texts.remove(mesh_obj["lam_template_text"])
    del mesh_obj["lam_template_text"]  # as an avatar made by `create` (no template of its own)
    _refused(tmp_path, "no LAM template for")
    _register_template(no_registered_template, real)
    got = _export(tmp_path)
    assert got["skin.glb"] == src["skin.glb"] and got["animation.glb"] == src["animation.glb"]
    np.testing.assert_allclose(_centres(got), _centres(src), atol=1e-6, rtol=0)


def _point_attr(mesh, name: str, width: int) -> np.ndarray:
    attr = mesh.attributes[name]
    out = np.empty(len(mesh.vertices) * width, np.float32)
    attr.data.foreach_get("value" if attr.data_type == "FLOAT" else "vector", out)
    return out.reshape(-1, width) if width > 1 else out


def _set_point_attr(mesh, name: str, values: np.ndarray) -> None:
    attr = mesh.attributes[name]
    attr.data.foreach_set("value" if attr.data_type == "FLOAT" else "vector", values.astype(np.float32).ravel())


def test_edits_to_the_gaussians_reach_offset_ply(lam, real, tmp_path):
    src = lam_zips.members(real)
    want_centres = _centres(src)
    want = lam_zips.read_ply(src["offset.ply"])
    mesh_obj, _ = _import(real)
    me = mesh_obj.data
    n = len(me.vertices)
    rng = np.random.default_rng(7)
    recoloured = rng.choice(n, 50, replace=False)
    rgb = _point_attr(me, "lam_rgb", 3)
    rgb[recoloured] = rng.uniform(0.0, 1.0, (50, 3))
    _set_point_attr(me, "lam_rgb", rgb)
    faded = rng.choice(n, 40, replace=False)
    opacity = _point_attr(me, "lam_opacity", 1)
    opacity[faded] = rng.uniform(0.05, 0.95, 40)
    _set_point_attr(me, "lam_opacity", opacity)
    # three points moved on the basis key directly, three in edit mode (exported while still in it)
    basis = me.shape_keys.key_blocks["Basis"]
    moved_key, moved_edit = [11, 5000, 15000], [123, 7777, n - 1]
    step = np.array([0.001, -0.001, 0.001])
    for i in moved_key:
        basis.data[i].co = np.array(basis.data[i].co) + step
    bpy.ops.object.mode_set(mode="EDIT")
    bm = bmesh.from_edit_mesh(me)
    bm.verts.ensure_lookup_table()
    for i in moved_edit:
        bm.verts[i].co.x += 0.001
    bmesh.update_edit_mesh(me)
    got = lam_zips.read_ply(_export(tmp_path)["offset.ply"])
    assert mesh_obj.mode == "EDIT"  # the export does not throw the artist out of edit mode

    want_centres[moved_key] += step
    want_centres[moved_edit, 0] += 0.001
    np.testing.assert_allclose(_centres(_export(tmp_path, "again.zip")), want_centres, atol=1e-6, rtol=0)
    pos = _glb(src["skin.glb"])["position"].astype(np.float64)
    np.testing.assert_allclose(np.stack([got[a] for a in XYZ], 1), want_centres - pos, atol=1e-6, rtol=0)
    want_rgb = np.stack([want[f"f_dc_{c}"] for c in range(3)], 1)
    want_rgb[recoloured] = rgb[recoloured]
    np.testing.assert_array_equal(np.stack([got[f"f_dc_{c}"] for c in range(3)], 1), want_rgb)
    want_logit = want["opacity"].astype(np.float64)
    o = opacity[faded].astype(np.float64)
    want_logit[faded] = np.log(o / (1 - o))
    np.testing.assert_allclose(got["opacity"], want_logit, atol=1e-5, rtol=0)
    untouched = np.setdiff1d(np.arange(n), faded)
    np.testing.assert_array_equal(got["opacity"][untouched], want["opacity"][untouched])  # the file's own logits
    for prop in ("scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"):
        np.testing.assert_allclose(got[prop], want[prop], atol=1e-6, rtol=0, err_msg=prop)


def test_the_menu_offers_the_export(lam):
    ops = importlib.import_module(f"{lam.__name__}.ops_export_lam_zip")
    assert ops._menu_export in bpy.types.TOPBAR_MT_file_export._dyn_ui_initialize()


# ------------------------------------------------------------------------------------ refusals


def _ids() -> dict[str, set[str]]:
    names = ("objects", "meshes", "armatures", "collections", "materials", "node_groups", "texts", "actions")
    return {n: {i.name for i in getattr(bpy.data, n)} for n in names}


def _refused(tmp_path, match: str, name: str = "refused.zip") -> None:
    before, files = _ids(), sorted(tmp_path.rglob("*"))
    with pytest.raises(RuntimeError, match=match):
        bpy.ops.lam_head.export_lam_zip(filepath=str(tmp_path / name))
    assert _ids() == before and sorted(tmp_path.rglob("*")) == files


def test_no_avatar_selected_is_refused(lam, real, tmp_path):
    _import(real)
    bpy.context.view_layer.objects.active = None
    _refused(tmp_path, "no active object is a LAM Head avatar")
    bpy.ops.mesh.primitive_cube_add()
    _refused(tmp_path, "'Cube' is not a LAM Head avatar")


def test_an_avatar_of_another_topology_is_refused(lam, real, tmp_path, avatar_file, no_registered_template):
    from backend.setup import assets

    _register_template(no_registered_template, real)
    assert assets.installed_lam_template() == real
    assert bpy.ops.lam_head.import_avatar(filepath=str(avatar_file(n_points=500))) == {"FINISHED"}
    _refused(tmp_path, "only avatars on FLAME's subdivided topology")


def test_no_template_is_refused(lam, tmp_path, avatar_file):
    assert bpy.ops.lam_head.import_avatar(filepath=str(avatar_file(n_points=500))) == {"FINISHED"}
    _refused(tmp_path, "no LAM template for .*lam-head setup --lam-template ZIP")


def test_a_deleted_template_text_is_refused(lam, real, tmp_path):
    mesh_obj, _ = _import(real)
    bpy.data.texts.remove(mesh_obj["lam_template_text"])
    _refused(tmp_path, "re-import the LAM ZIP")


def test_an_offset_beyond_the_players_range_is_refused(lam, real, tmp_path):
    mesh_obj, _ = _import(real)
    basis = mesh_obj.data.shape_keys.key_blocks["Basis"]
    basis.data[42].co.y += 0.2
    _refused(tmp_path, "1 Gaussians lie more than 10 cm")
    basis.data[42].co.y -= 0.2
    bpy.ops.object.mode_set(mode="EDIT")  # the same move made in edit mode, refused in edit mode
    bm = bmesh.from_edit_mesh(mesh_obj.data)
    bm.verts.ensure_lookup_table()
    bm.verts[42].co.y += 0.2
    bmesh.update_edit_mesh(mesh_obj.data)
    _refused(tmp_path, "1 Gaussians lie more than 10 cm")
    assert mesh_obj.mode == "EDIT"


def test_a_failed_export_keeps_an_existing_file(lam, real, tmp_path):
    mesh_obj, _ = _import(real)
    target = tmp_path / "keep.zip"
    target.write_bytes(b"the artist's earlier export")
    mesh_obj.data.shape_keys.key_blocks["Basis"].data[0].co.z -= 0.2
    _refused(tmp_path, "more than 10 cm", name="keep.zip")
    assert target.read_bytes() == b"the artist's earlier export"
