"""Reading LAM web ZIPs (backend/core/formats/lam_zip.py) on every real ZIP in the fixtures,
checked against an independent reader (tests/factories/lam_zips.py), and every bad input."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from factories import lam_zips

from backend.core.errors import BadInputError
from backend.core.formats import safe_zip
from backend.core.formats.archive_paths import UnsafeArchiveError
from backend.core.formats.lam_zip import LamTemplate, LamZipError, read_lam_zip, skeleton

REAL = lam_zips.real_zips()
pytestmark = pytest.mark.skipif(not REAL, reason=f"no real LAM ZIP in {lam_zips.REAL_DIR}")


@pytest.fixture(scope="module", params=REAL, ids=lambda p: p.name)
def real(request):
    path = request.param
    raw = lam_zips.members(path)
    gltf, bin_ = lam_zips.split_glb(raw["skin.glb"])
    avatar, template = read_lam_zip(path)
    return {"path": path, "raw": raw, "gltf": gltf, "bin": bin_, "avatar": avatar, "template": template}


def _prim(gltf):
    return gltf["meshes"][0]["primitives"][0]


def test_counts_and_names_come_from_the_file(real):
    gltf, bin_, av = real["gltf"], real["bin"], real["avatar"]
    prim = _prim(gltf)
    pos = lam_zips.accessor(gltf, bin_, prim["attributes"]["POSITION"])
    idx = lam_zips.accessor(gltf, bin_, prim["indices"]).reshape(-1, 3)
    assert av.n_points == len(pos) and av.faces.shape == idx.shape
    np.testing.assert_array_equal(av.faces, idx)
    assert av.arkit_names == tuple(gltf["meshes"][0]["extras"]["targetNames"])
    assert av.n_arkit == len(prim["targets"]) and av.n_expr == 0 and not av.has_pose_correctives
    assert av.meta["source"] == "LAM web ZIP" and av.meta["source_file"] == real["path"].name


def test_centres_are_position_plus_offset_and_attributes_decode_per_spec(real):
    gltf, bin_, av = real["gltf"], real["bin"], real["avatar"]
    pos = lam_zips.accessor(gltf, bin_, _prim(gltf)["attributes"]["POSITION"]).astype(np.float64)
    ply = lam_zips.read_ply(real["raw"]["offset.ply"])
    off = np.stack([ply["x"], ply["y"], ply["z"]], 1).astype(np.float64)
    np.testing.assert_allclose(av.template, pos, atol=0)
    np.testing.assert_allclose(av.xyz, pos + off, atol=1e-6)
    np.testing.assert_allclose(av.offset, off, atol=1e-6)
    # f_dc is RGB in [0, 1] (not SH), opacity a logit, scale ln(sigma), rotation wxyz
    np.testing.assert_array_equal(av.rgb, np.stack([ply[f"f_dc_{i}"] for i in range(3)], 1))
    np.testing.assert_allclose(av.opacity, 1 / (1 + np.exp(-ply["opacity"].astype(np.float64))), atol=1e-6)
    np.testing.assert_array_equal(av.opacity_logit, ply["opacity"])
    np.testing.assert_allclose(av.scale, np.exp(np.stack([ply[f"scale_{i}"] for i in range(3)], 1).astype(np.float64)),
                               rtol=1e-6)
    q = np.stack([ply[f"rot_{i}"] for i in range(4)], 1).astype(np.float64)
    np.testing.assert_allclose(av.rotation, q / np.linalg.norm(q, axis=1, keepdims=True), atol=1e-6)


def test_morph_targets_equal_the_glb_deltas(real):
    gltf, bin_, av = real["gltf"], real["bin"], real["avatar"]
    for k, target in enumerate(_prim(gltf)["targets"]):
        np.testing.assert_array_equal(av.arkit_dirs[:, :, k], lam_zips.accessor(gltf, bin_, target["POSITION"]))
    jaw = av.arkit_names.index("jawOpen")
    assert np.abs(av.arkit_dirs[:, :, jaw]).max() > 0.01  # a real target moves the jaw by centimetres


def test_skeleton_keeps_weighted_joints_and_ancestors_with_exact_weights(real):
    gltf, bin_, av = real["gltf"], real["bin"], real["avatar"]
    prim, skin = _prim(gltf), gltf["skins"][0]
    names = [gltf["nodes"][j]["name"] for j in skin["joints"]]
    dense = np.zeros((av.n_points, len(names)))
    s = 0
    while f"JOINTS_{s}" in prim["attributes"]:
        jv = lam_zips.accessor(gltf, bin_, prim["attributes"][f"JOINTS_{s}"]).astype(int)
        wv = lam_zips.accessor(gltf, bin_, prim["attributes"][f"WEIGHTS_{s}"]).astype(np.float64)
        for c in range(4):
            dense[np.arange(av.n_points), jv[:, c]] += wv[:, c]
        s += 1
    carried = {names[j] for j in np.flatnonzero(dense.max(0) > 0)}
    assert carried <= set(av.joint_names)
    parent_node = {c: i for i, n in enumerate(gltf["nodes"]) for c in n.get("children", [])}
    for j, name in enumerate(av.joint_names):  # every kept joint's parent is its nearest joint ancestor
        node = skin["joints"][names.index(name)]
        up = parent_node.get(node)
        while up is not None and gltf["nodes"][up]["name"] not in av.joint_names:
            up = parent_node.get(up)
        want = -1 if up is None else av.joint_names.index(gltf["nodes"][up]["name"])
        assert av.parents[j] == want and want < j
        np.testing.assert_allclose(av.lbs_weights[:, j], dense[:, names.index(name)], atol=1e-7)
    assert (av.parents == -1).sum() == 1
    # rest joints are the bind pose: the inverse of each inverse bind matrix
    ibm = lam_zips.accessor(gltf, bin_, skin["inverseBindMatrices"]).reshape(-1, 4, 4).transpose(0, 2, 1)
    for j, name in enumerate(av.joint_names):
        np.testing.assert_allclose(av.joints[j], np.linalg.inv(ibm[names.index(name)])[:3, 3], atol=1e-6)


def test_skeleton_helper_agrees_with_the_avatar(real):
    kept, parents, rest = skeleton(real["template"].skin())
    np.testing.assert_array_equal(parents, real["avatar"].parents)
    np.testing.assert_array_equal(rest, real["avatar"].joints)


def test_template_keeps_the_parts_byte_for_byte_and_packs(real):
    tpl, raw = real["template"], real["raw"]
    assert tpl.skin_glb == raw["skin.glb"] and tpl.animation_glb == raw["animation.glb"]
    assert tpl.vertex_order_json == raw["vertex_order.json"]
    back = LamTemplate.unpack(tpl.pack())
    assert back == tpl
    with pytest.raises(LamZipError, match="damaged"):
        LamTemplate.unpack(b"not a zip")


def test_junk_and_any_folder_name_are_accepted(real, tmp_path):
    for folder in ("some other name", ""):
        path = lam_zips.rewrite(real["path"], tmp_path / "renamed.zip", folder=folder, junk=True)
        avatar, template = read_lam_zip(path)
        assert template.folder == (folder or "renamed")
        np.testing.assert_array_equal(avatar.xyz, real["avatar"].xyz)


# ---------------------------------------------------------------------------------- refusals


def _raises(path, exc, match):
    with pytest.raises(exc, match=match) as info:
        read_lam_zip(path)
    assert "Traceback" not in str(info.value)


def test_not_a_zip(tmp_path):
    bad = tmp_path / "photo.zip"
    bad.write_bytes(b"\xff\xd8\xff\xe0 a JPEG, renamed")
    _raises(bad, BadInputError, "not a ZIP archive")
    _raises(tmp_path / "missing.zip", BadInputError, "not found")


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/evil", "p2/../../evil", "C:/evil", "a\\..\\evil"])
def test_zip_slip_names_refuse_the_archive(real, tmp_path, name):
    path = lam_zips.rewrite(real["path"], tmp_path / "slip.zip", extra={name: b"x"})
    _raises(path, UnsafeArchiveError, "archive member")


@pytest.mark.parametrize("member", lam_zips.MEMBERS)
def test_missing_member(real, tmp_path, member):
    if member == "skin.glb":
        _raises(lam_zips.rewrite(real["path"], tmp_path / "m.zip", drop=(member,)), LamZipError, "no skin.glb inside")
    else:
        _raises(lam_zips.rewrite(real["path"], tmp_path / "m.zip", drop=(member,)), LamZipError, f"lacks {member}")


def _skin_variant(real, edit):
    gltf = json.loads(json.dumps(real["gltf"]))
    edit(gltf)
    return lam_zips.join_glb(gltf, real["bin"])


@pytest.mark.parametrize("edit, match", [
    (lambda g: g["meshes"][0]["primitives"][0].pop("targets"), "no morph targets"),
    (lambda g: g["meshes"][0].pop("extras"), "not named"),
    (lambda g: [n.pop("skin", None) for n in g["nodes"]], "not skinned"),
    (lambda g: g["meshes"][0]["primitives"][0]["attributes"].pop("JOINTS_0"), "lacks JOINTS_0"),
    (lambda g: g["meshes"][0]["primitives"][0].update(mode=0), "not triangles"),
    (lambda g: g["meshes"].append(g["meshes"][0]), "expected one mesh"),
])
def test_a_glb_that_is_not_a_skinned_mesh_with_morph_targets(real, tmp_path, edit, match):
    path = lam_zips.rewrite(real["path"], tmp_path / "g.zip", replace={"skin.glb": _skin_variant(real, edit)})
    _raises(path, LamZipError, match)


def test_a_truncated_or_foreign_glb(real, tmp_path):
    cut = lam_zips.rewrite(real["path"], tmp_path / "t.zip", replace={"skin.glb": real["raw"]["skin.glb"][:-1000]})
    _raises(cut, LamZipError, "truncated")
    foreign = lam_zips.rewrite(real["path"], tmp_path / "f.zip", replace={"skin.glb": b"PK\3\4 not a glb at all...."})
    _raises(foreign, LamZipError, "not a glTF binary")


def _ply_variant(real, edit):
    cols = {k: v.copy() for k, v in lam_zips.read_ply(real["raw"]["offset.ply"]).items()}
    cols = edit(cols) or cols
    return lam_zips.ply_bytes(cols)


@pytest.mark.parametrize("edit, match", [
    (lambda c: {k: v[:-1] for k, v in c.items()}, "rows, but skin.glb has"),
    (lambda c: {k: np.concatenate([v, v[:5]]) for k, v in c.items()}, "rows, but skin.glb has"),
    (lambda c: c["x"].__setitem__(7, np.nan), "NaN or infinite"),
    (lambda c: c["scale_1"].__setitem__(3, np.inf), "NaN or infinite"),
    (lambda c: (c.pop("opacity"), None)[1], "missing properties opacity"),
    (lambda c: c["f_dc_0"].__setitem__(0, -1.5), "outside \\[0, 1\\]"),
    (lambda c: [c[f"rot_{i}"].__setitem__(2, 0.0) for i in range(4)] and None, "zero rotation"),
    # flipped exponent bits: values no avatar tool writes, refused as damage
    (lambda c: c["y"].__setitem__(11, 3.2e23), r"1 Gaussian\(s\) more than 1 m from the vertex \(worst: Gaussian 11, "),
    (lambda c: c["z"].__setitem__(5, -1.03), r"Gaussian 5, 1.03 m\); LAM's offsets stay within 0.1 m: the file is damaged"),
    (lambda c: c["scale_2"].__setitem__(9, 88.0), r"with a scale over 1 m \(worst: Gaussian 9"),
])
def test_bad_offset_ply(real, tmp_path, edit, match):
    path = lam_zips.rewrite(real["path"], tmp_path / "p.zip", replace={"offset.ply": _ply_variant(real, edit)})
    _raises(path, LamZipError, match)


def test_nan_in_a_morph_target(real, tmp_path):
    gltf, bin_ = real["gltf"], bytearray(real["bin"])
    acc = gltf["accessors"][_prim(gltf)["attributes"]["POSITION"]]
    start = gltf["bufferViews"][acc["bufferView"]].get("byteOffset", 0) + acc.get("byteOffset", 0)
    bin_[start:start + 4] = np.float32(np.nan).tobytes()
    path = lam_zips.rewrite(real["path"], tmp_path / "n.zip", replace={"skin.glb": lam_zips.join_glb(gltf, bytes(bin_))})
    _raises(path, LamZipError, "NaN or infinite")


def test_a_vertex_far_from_the_body_is_damage(real, tmp_path):
    gltf, bin_ = real["gltf"], bytearray(real["bin"])
    acc = gltf["accessors"][_prim(gltf)["attributes"]["POSITION"]]
    start = gltf["bufferViews"][acc["bufferView"]].get("byteOffset", 0) + acc.get("byteOffset", 0)
    bin_[start + 12 * 4 + 4:start + 12 * 4 + 8] = np.float32(-2.5e30).tobytes()  # vertex 4, y
    path = lam_zips.rewrite(real["path"], tmp_path / "n.zip", replace={"skin.glb": lam_zips.join_glb(gltf, bytes(bin_))})
    _raises(path, LamZipError, r"skin.glb: 1 vertex\(s\) more than 100 m from the origin \(worst: vertex 4, 2.5e\+30 m\)")


def test_a_broken_download_is_refused_by_name(real, tmp_path):
    """Bytes damaged inside a deflated member (a bad download): zipfile raises zlib.error, reported as
    the member that cannot be read."""
    raw = bytearray(real["path"].read_bytes())
    with zipfile.ZipFile(real["path"]) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("offset.ply") and "__MACOSX" not in i.filename)
    assert info.compress_type == zipfile.ZIP_DEFLATED
    name_len, extra_len = np.frombuffer(bytes(raw[info.header_offset + 26:info.header_offset + 30]), "<u2")
    data_at = info.header_offset + 30 + int(name_len) + int(extra_len)  # the local header's own lengths
    raw[data_at] = 0b111  # a final block of the reserved type 3: invalid deflate data (zlib.error)
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(bytes(raw))
    _raises(damaged, BadInputError, r"offset.ply cannot be read \(.*\); the LAM web ZIP is damaged")


def test_vertex_order_must_be_a_permutation(real, tmp_path):
    n = real["avatar"].n_points
    for bad in (b"[1, 2", json.dumps(list(range(n - 1))).encode(), json.dumps([0] * n).encode()):
        path = lam_zips.rewrite(real["path"], tmp_path / "v.zip", replace={"vertex_order.json": bad})
        _raises(path, LamZipError, "vertex_order.json")


def test_a_member_huge_when_decompressed_is_refused_before_inflating(real, tmp_path, monkeypatch):
    monkeypatch.setattr(safe_zip, "DEFAULT_MAX_MEMBER_BYTES", 8 << 20)
    bomb = lam_zips.rewrite(real["path"], tmp_path / "b.zip", replace={"offset.ply": b"\0" * (9 << 20)})
    _raises(bomb, BadInputError, "would inflate to")
    # a header that lies about the size: inflation stops at the limit all the same
    lying = tmp_path / "lying.zip"
    with zipfile.ZipFile(bomb) as src, zipfile.ZipFile(lying, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
    raw = bytearray(lying.read_bytes())
    with zipfile.ZipFile(lying) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("offset.ply"))
    name = info.filename.encode()
    for sig, size_at in ((b"PK\3\4", 22), (b"PK\1\2", 24)):  # local header and central directory entry
        pos = raw.find(sig)
        while pos >= 0:
            name_at = pos + (30 if sig == b"PK\3\4" else 46)
            if raw[name_at:name_at + len(name)] == name:
                raw[pos + size_at:pos + size_at + 4] = (1000).to_bytes(4, "little")
            pos = raw.find(sig, pos + 4)
    lying.write_bytes(bytes(raw))
    _raises(lying, BadInputError, "inflates past|damaged")
