"""Writing LAM web ZIPs (backend/core/formats/lam_zip.py): exact round trips on real ZIPs, avatars
from another frame or identity placed in the template's frame, and refusals that leave no file.

Everything is read from the real files (counts, names, folder): other real ZIPs are used too."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from factories.avatar import make_avatar
from factories.real_zips import copy_real, real_zip_params

from backend.core.errors import BadInputError
from backend.core.formats import ply
from backend.core.formats.avatar_file import Avatar
from backend.core.formats.lam_zip import (
    MAX_OFFSET,
    MEMBERS,
    LamSkin,
    LamTemplate,
    LamZipError,
    parse_skin,
    read_lam_zip,
    read_template,
    write_lam_zip,
)
from backend.core.formats.safe_zip import SafeZip
from backend.flame.arkit_basis import original_vertex_count
from backend.flame.subdivide import add_midpoints, faces_from_subdivided, subdivide_faces

TOL = 1e-6
FLAME_FRAME = np.array([0.0, -1.669, -0.043])  # about the template frame -> FLAME's (LAM_SPEC section 7)


@dataclass
class Real:
    path: Path
    avatar: Avatar
    template: LamTemplate
    members: dict[str, bytes]  # the source ZIP's own files


@pytest.fixture(scope="module", params=real_zip_params())
def real(request, tmp_path_factory) -> Real:
    path = copy_real(request.param, tmp_path_factory.mktemp("real"))
    avatar, template = read_lam_zip(path)
    with SafeZip(path) as z:
        folder = next(p.parent for p in z.files if p.name == "skin.glb")
        members = {m: z.read(folder / m) for m in MEMBERS}
    return Real(path, avatar, template, members)


def _zip_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {PurePosixPath(i.filename).name: zf.read(i) for i in zf.infolist() if not i.is_dir()}


def _assert_skins_equal_but_position(a: LamSkin, b: LamSkin) -> None:
    """Everything the template owns: triangles, morph targets, skin joints, weights, bind matrices,
    and the glTF document apart from POSITION's bounds."""
    np.testing.assert_array_equal(a.faces, b.faces)
    assert a.target_names == b.target_names and a.joint_names == b.joint_names
    np.testing.assert_allclose(a.target_deltas, b.target_deltas, atol=TOL, rtol=0)
    np.testing.assert_allclose(a.inverse_bind, b.inverse_bind, atol=TOL, rtol=0)
    np.testing.assert_allclose(a.weights, b.weights, atol=TOL, rtol=0)
    np.testing.assert_array_equal(a.joint_parents, b.joint_parents)
    ga, gb = json.loads(json.dumps(a.glb.gltf)), json.loads(json.dumps(b.glb.gltf))
    for g in (ga, gb):
        for key in ("min", "max"):
            g["accessors"][a.position_accessor].pop(key, None)
    assert ga == gb
    for s in (a, b):  # POSITION's bounds are the new positions' bounds
        acc = s.glb.gltf["accessors"][s.position_accessor]
        np.testing.assert_array_equal(acc["min"], s.positions.min(axis=0))
        np.testing.assert_array_equal(acc["max"], s.positions.max(axis=0))


def _assert_gaussians_equal(a: Avatar, b: Avatar, shift: np.ndarray | float = 0.0) -> None:
    """b's Gaussians are a's moved by ``shift`` (metres), to 1e-6."""
    np.testing.assert_allclose(b.xyz, a.xyz + shift, atol=TOL, rtol=0)
    np.testing.assert_allclose(b.template, a.template + shift, atol=TOL, rtol=0)
    for key in ("rgb", "opacity", "scale", "rotation"):
        np.testing.assert_allclose(getattr(b, key), getattr(a, key), atol=TOL, rtol=0, err_msg=key)


# ------------------------------------------------------------------------------------- round trips


def test_reexport_of_a_real_zip_is_exact(real, tmp_path):
    out = write_lam_zip(tmp_path / "again.zip", real.avatar, real.template)
    with zipfile.ZipFile(out) as zf:
        infos = zf.infolist()
    # exactly the folder (an explicit directory entry, the last and only one) and the 4 files
    assert [i.filename for i in infos] == ["again/"] + [f"again/{m}" for m in MEMBERS]
    assert infos[0].is_dir() and [i.filename for i in infos if i.is_dir()][-1] == "again/"
    got = _zip_members(out)

    cols_a, cols_b = ply.read_ply_columns(real.members["offset.ply"]), ply.read_ply_columns(got["offset.ply"])
    assert list(cols_a) == list(cols_b) == list(ply.OFFSET_PLY_PROPS)
    for p in cols_a:
        assert cols_b[p].dtype == np.float32 and cols_b[p].shape == cols_a[p].shape
        np.testing.assert_allclose(cols_b[p], cols_a[p], atol=TOL, rtol=0, err_msg=p)

    skin_a, skin_b = parse_skin(real.members["skin.glb"]), parse_skin(got["skin.glb"])
    np.testing.assert_allclose(skin_b.positions, skin_a.positions, atol=TOL, rtol=0)
    _assert_skins_equal_but_position(skin_a, skin_b)
    assert got["vertex_order.json"] == real.members["vertex_order.json"]
    assert got["animation.glb"] == real.members["animation.glb"]

    back, template = read_lam_zip(out)
    _assert_gaussians_equal(real.avatar, back)
    assert template.folder == "again"


def test_an_avatar_in_another_frame_lands_in_the_template_frame(real, tmp_path):
    """The real avatar moved to FLAME's frame (as `create` makes avatars) comes back where it was."""
    moved = replace(real.avatar, xyz=real.avatar.xyz + FLAME_FRAME.astype(np.float32),
                    template=real.avatar.template + FLAME_FRAME.astype(np.float32), meta={"model": "test"})
    out = write_lam_zip(tmp_path / "moved.zip", moved, real.template)
    back, _ = read_lam_zip(out)
    _assert_gaussians_equal(real.avatar, back)
    got = _zip_members(out)
    _assert_skins_equal_but_position(parse_skin(real.members["skin.glb"]), parse_skin(got["skin.glb"]))
    order = json.loads(got["vertex_order.json"])
    np.testing.assert_array_equal(order, np.argsort(back.template[:, 2], kind="stable"))
    assert got["animation.glb"] == real.members["animation.glb"]


def _our_identity(real: Real, seed: int = 0) -> Avatar:
    """An avatar built the way `create` builds one: another shaped FLAME mesh (FLAME frame) on the
    template's original triangles, subdivided by our own code, with new Gaussians."""
    rng = np.random.default_rng(seed)
    skin = real.template.skin()
    v = original_vertex_count(skin.faces)
    faces = faces_from_subdivided(skin.faces, v)
    faces_up, edges = subdivide_faces(faces, v)
    np.testing.assert_array_equal(faces_up, skin.faces)  # our subdivision gives LAM's triangle order
    base = skin.positions[:v].astype(np.float64) + FLAME_FRAME
    centre = base.mean(axis=0)
    shaped = centre + (base - centre) * [1.04, 0.97, 1.02] + rng.normal(scale=5e-4, size=base.shape)
    template = add_midpoints(shaped, edges).astype(np.float32)
    n = template.shape[0]
    q = rng.normal(size=(n, 4))
    a = real.avatar
    return replace(
        a, template=template,
        xyz=(template + rng.uniform(-0.9, 0.9, size=(n, 3)) * MAX_OFFSET).astype(np.float32),
        rgb=rng.uniform(0, 1, size=(n, 3)).astype(np.float32),
        opacity=rng.uniform(0.01, 0.99, size=n).astype(np.float32),
        scale=np.exp(rng.uniform(-8, -4.7, size=(n, 3))).astype(np.float32),
        rotation=(q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32),
        faces=faces_up.astype(np.int32), opacity_logit=None, meta={"model": "test identity"},
    )


def test_our_avatar_round_trips_through_a_zip(real, tmp_path):
    ours = _our_identity(real)
    out = write_lam_zip(tmp_path / "ours.zip", ours, real.template)
    back, _ = read_lam_zip(out)
    skin = real.template.skin()
    shift = skin.positions.astype(np.float64).mean(axis=0) - ours.template.astype(np.float64).mean(axis=0)
    _assert_gaussians_equal(ours, back, shift)  # same Gaussians, in the template frame
    np.testing.assert_allclose(back.template.mean(axis=0), skin.positions.mean(axis=0), atol=TOL)
    got = _zip_members(out)
    new_skin = parse_skin(got["skin.glb"])
    _assert_skins_equal_but_position(skin, new_skin)
    np.testing.assert_array_equal(json.loads(got["vertex_order.json"]), np.argsort(new_skin.positions[:, 2], kind="stable"))
    assert got["animation.glb"] == real.members["animation.glb"]
    assert np.abs(back.offset).max() <= MAX_OFFSET


def test_edited_gaussians_are_carried_through(real, tmp_path):
    a = real.avatar
    edited = replace(a, rgb=np.clip(a.rgb[:, ::-1] * 0.9, 0, 1).astype(np.float32),
                     opacity=np.where(np.arange(a.n_points) % 2, a.opacity, 0.25).astype(np.float32),
                     xyz=a.template + a.offset * np.float32(0.5))  # moved towards their vertices
    back, _ = read_lam_zip(write_lam_zip(tmp_path / "edited.zip", edited, real.template))
    _assert_gaussians_equal(edited, back)
    np.testing.assert_allclose(back.opacity_logit[1::2], a.opacity_logit[1::2], atol=0)  # unedited logits kept


# ------------------------------------------------------------------------------------- refusals


def _refused(tmp_path: Path, avatar, template, name: str = "bad.zip", match: str = "") -> LamZipError:
    out = tmp_path / "out" / name
    with pytest.raises(BadInputError, match=match) as ei:
        write_lam_zip(out, avatar, template)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing, not even a temporary
    return ei.value


def test_wrong_topology_is_refused(real, tmp_path):
    err = _refused(tmp_path, make_avatar(n_points=500), real.template, match="FLAME's subdivided topology")
    assert f"{real.avatar.n_points}" in str(err) and "500 points" in str(err)
    flipped = replace(real.avatar, faces=real.avatar.faces[:, [0, 2, 1]].copy())
    assert "in another order" in str(_refused(tmp_path, flipped, real.template, match="topology"))


def test_offsets_beyond_what_the_player_expects_are_refused(real, tmp_path):
    xyz = real.avatar.xyz.copy()
    xyz[[3, 7]] += np.float32([0.0, 0.15, 0.0])
    err = _refused(tmp_path, replace(real.avatar, xyz=xyz), real.template, match="more than 10 cm")
    assert str(err).startswith("2 Gaussians")


def test_an_invalid_avatar_is_refused(real, tmp_path):
    xyz = real.avatar.xyz.copy()
    xyz[0, 0] = np.nan
    _refused(tmp_path, replace(real.avatar, xyz=xyz), real.template, match="cannot export this avatar.*xyz")


@pytest.mark.parametrize("name, match", [
    ("avatar.npz", "must end in .zip"), ("avatar.ZIP", "lower case"), (".hidden.zip", "cannot name the avatar folder"),
    ("__MACOSX.zip", "cannot name"), ("a\x01b.zip", r"contains '\\x01'"), (" x.zip", "cannot name"),
])
def test_bad_output_names_are_refused(real, tmp_path, name, match):
    _refused(tmp_path, real.avatar, real.template, name=name, match=match)


def test_bad_folder_name_is_refused(real, tmp_path):
    with pytest.raises(LamZipError, match="contains '/'"):
        write_lam_zip(tmp_path / "a.zip", real.avatar, real.template, name="a/b")
    assert not (tmp_path / "a.zip").exists()


def test_missing_or_wrong_template_is_refused(tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        read_template(tmp_path / "nope.zip")
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("notes/readme.txt", "hello")
    with pytest.raises(LamZipError, match="no skin.glb inside"):
        read_template(other)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(real, tmp_path, monkeypatch):
    out = tmp_path / "keep.zip"
    out.write_bytes(b"previous export")
    calls = []

    def failing_writestr(self, info, data, *args, **kwargs):
        calls.append(info)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return original(self, info, data, *args, **kwargs)

    original = zipfile.ZipFile.writestr
    monkeypatch.setattr(zipfile.ZipFile, "writestr", failing_writestr)
    with pytest.raises(OSError, match="No space"):
        write_lam_zip(out, real.avatar, real.template)
    assert out.read_bytes() == b"previous export" and [p.name for p in tmp_path.iterdir()] == ["keep.zip"]
