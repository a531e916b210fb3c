"""``lam-head export-zip`` and ``lam-head create --lam-zip``: an avatar file becomes a LAM web ZIP
with the template given or registered; every refusal is one line and leaves no file."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from factories.avatar import make_avatar
from factories.checkpoint import make_tiny_weights_dir
from factories.flame import flame_arrays_on_mesh, write_flame_pickle, write_synthetic_flame
from factories.images import astronaut
from factories.real_zips import copy_real, real_zip_params
from PIL import Image

from backend import cli
from backend.core.errors import MissingAssetError
from backend.core.formats.avatar_file import load_avatar, save_avatar
from backend.core.formats.lam_zip import MEMBERS, read_lam_zip
from backend.create.pipeline import create_avatar
from backend.flame.arkit_basis import original_vertex_count
from backend.flame.subdivide import faces_from_subdivided

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-6
FLAME_FRAME = np.array([0.0, -1.669, -0.043])  # about the template frame -> FLAME's (LAM_SPEC section 7)


@pytest.fixture(autouse=True)
def empty_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LAM_HEAD_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module", params=real_zip_params())
def real(request, tmp_path_factory):
    """(the real ZIP's copy, its avatar saved as our avatar file)."""
    folder = tmp_path_factory.mktemp("real")
    path = copy_real(request.param, folder)
    avatar, _ = read_lam_zip(path)
    return path, save_avatar(folder / "imported.npz", avatar)


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_export_zip_of_an_imported_avatar_gives_back_the_real_zip(real, tmp_path, capsys):
    zip_path, npz = real
    out = tmp_path / "web" / "again.zip"
    assert cli.main(["export-zip", str(npz), "-o", str(out), "--template", str(zip_path)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    got, src = _members(out), _members(zip_path)
    folder = read_lam_zip(zip_path)[1].folder
    assert list(got) == ["again/"] + [f"again/{m}" for m in MEMBERS]
    for m in ("skin.glb", "animation.glb", "vertex_order.json"):  # the same mesh: the template's bytes
        assert got[f"again/{m}"] == src[f"{folder}/{m}"], m
    back, before = read_lam_zip(out)[0], load_avatar(npz)
    for key in ("xyz", "rgb", "opacity", "scale", "rotation"):
        np.testing.assert_allclose(getattr(back, key), getattr(before, key), atol=TOL, rtol=0, err_msg=key)


def test_export_zip_uses_the_registered_template(real, tmp_path, capsys):
    zip_path, npz = real
    out = tmp_path / "a.zip"
    assert cli.main(["export-zip", str(npz), "-o", str(out)]) == 1
    line = _error_line(capsys)
    assert line.startswith("lam-head export-zip: error:") and "--template ZIP" in line
    assert "lam-head setup --lam-template ZIP" in line and not out.exists()
    assert cli.main(["setup", "--lam-template", str(zip_path)]) == 0
    capsys.readouterr()
    assert cli.main(["export-zip", str(npz), "-o", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    np.testing.assert_allclose(read_lam_zip(out)[0].xyz, load_avatar(npz).xyz, atol=TOL, rtol=0)


def test_export_zip_runs_as_a_command(real, tmp_path):
    zip_path, npz = real
    out = tmp_path / "cmd.zip"
    env = {**os.environ, "LAM_HEAD_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "backend", "export-zip", str(npz), "-o", str(out), "--template", str(zip_path)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out) and "Gaussians, template" in r.stderr and out.is_file()


@pytest.mark.parametrize("case, match", [
    ("topology", "FLAME's subdivided topology"),
    ("not_npz", "not a readable .npz archive"),
    ("missing", "file not found"),
    ("bad_name", "must end in .zip"),
    ("bad_template", "no skin.glb inside"),
])
def test_export_zip_refusals_are_one_line_and_leave_nothing(real, tmp_path, capsys, case, match):
    zip_path, npz = real
    out, template = tmp_path / "out" / "a.zip", zip_path
    if case == "topology":
        npz = save_avatar(tmp_path / "small.npz", make_avatar(n_points=300))
    elif case == "not_npz":
        npz = tmp_path / "photo.npz"
        npz.write_bytes(b"\xff\xd8 not an avatar")
    elif case == "missing":
        npz = tmp_path / "nope.npz"
    elif case == "bad_name":
        out = tmp_path / "out" / "a.glb"
    elif case == "bad_template":
        template = tmp_path / "t.zip"
        with zipfile.ZipFile(template, "w") as zf:
            zf.writestr("x/readme.txt", "no avatar here")
    assert cli.main(["export-zip", str(npz), "-o", str(out), "--template", str(template)]) == 1
    line = _error_line(capsys)
    assert line.startswith("lam-head export-zip: error:") and match in line, line
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- create --lam-zip


@pytest.fixture(scope="module")
def kit(tmp_path_factory, real):
    """Tiny weights, the astronaut, and a synthetic FLAME on the real ZIP's original mesh (FLAME's
    topology, made-up blendshapes) placed in FLAME's frame, so `create` makes a FLAME-topology avatar."""
    root = tmp_path_factory.mktemp("kit")
    photo = root / "astronaut.jpg"
    Image.fromarray(astronaut()).save(photo, quality=92)
    avatar, template = read_lam_zip(real[0])
    faces_up = template.skin().faces
    v = original_vertex_count(faces_up)
    mesh = avatar.template[:v].astype(np.float64) + FLAME_FRAME
    flame = write_flame_pickle(root / "flame_real_mesh.pkl", flame_arrays_on_mesh(mesh, faces_from_subdivided(faces_up, v)))
    return {"photo": photo, "weights": make_tiny_weights_dir(root), "flame": flame,
            "other_flame": write_synthetic_flame(root / "flame_other.pkl"), "zip": real[0]}


def test_create_writes_the_avatar_and_the_zip_at_once(kit, tmp_path, capsys):
    assert cli.main(["setup", "--lam-template", str(kit["zip"])]) == 0
    capsys.readouterr()
    out, web = tmp_path / "a.npz", tmp_path / "web" / "head.zip"
    assert cli.main(["create", str(kit["photo"]), "-o", str(out), "--weights", str(kit["weights"]), "--flame",
                     str(kit["flame"]), "--lam-zip", str(web), "--quiet", "--precision", "fast"]) == 0
    assert capsys.readouterr().out.split() == [str(out), str(web)]
    avatar = load_avatar(out)
    back, template = read_lam_zip(web)
    assert template.folder == "head"
    skin = template.skin()
    shift = skin.positions.astype(np.float64).mean(0) - avatar.template.astype(np.float64).mean(0)
    np.testing.assert_allclose(back.xyz, avatar.xyz + shift, atol=TOL, rtol=0)  # in the template frame
    np.testing.assert_allclose(back.template, avatar.template + shift, atol=TOL, rtol=0)
    for key in ("rgb", "opacity", "scale", "rotation"):
        np.testing.assert_allclose(getattr(back, key), getattr(avatar, key), atol=TOL, rtol=0, err_msg=key)
    np.testing.assert_allclose(shift, -FLAME_FRAME, atol=0.01)  # FLAME's frame -> the body rig's, up to the shape


def test_create_refuses_a_zip_for_another_topology_before_the_network(kit, tmp_path):
    assert cli.main(["setup", "--lam-template", str(kit["zip"])]) == 0
    out, ply, web = tmp_path / "a.npz", tmp_path / "a.ply", tmp_path / "head.zip"
    seen: list[str] = []
    with pytest.raises(Exception, match="--lam-zip head.zip: .*FLAME 2023's mesh") as ei:
        create_avatar(kit["photo"], out, weights=kit["weights"], flame=kit["other_flame"], ply=ply, lam_zip=web,
                      progress=lambda stage, f, m="": seen.append(stage))
    assert ei.value.code == "bad_input" and "network" not in seen
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_create_without_a_template_says_how_to_get_one_before_any_work(kit, tmp_path):
    seen: list[str] = []
    with pytest.raises(MissingAssetError, match="lam-head setup --lam-template ZIP"):
        create_avatar(kit["photo"], tmp_path / "a.npz", weights=kit["weights"], flame=kit["flame"],
                      lam_zip=tmp_path / "head.zip", progress=lambda stage, f, m="": seen.append(stage))
    assert seen == [] and not list(tmp_path.glob("*.*"))


def test_create_refuses_a_bad_zip_name_at_once(kit, tmp_path):
    with pytest.raises(Exception, match="must end in .zip"):
        create_avatar(kit["photo"], tmp_path / "a.npz", weights=kit["weights"], flame=kit["flame"],
                      lam_zip=tmp_path / "head.npz")


def test_a_failing_zip_leaves_no_file_from_create(kit, tmp_path, monkeypatch):
    """The ZIP is written before the avatar file; when it fails, nothing of the run remains."""
    from backend.core.formats import lam_zip

    assert cli.main(["setup", "--lam-template", str(kit["zip"])]) == 0

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lam_zip, "write_lam_zip", full_disk)
    out, ply, web = tmp_path / "o" / "a.npz", tmp_path / "o" / "a.ply", tmp_path / "o" / "head.zip"
    with pytest.raises(Exception, match="cannot write .*head.zip: No space left"):
        create_avatar(kit["photo"], out, weights=kit["weights"], flame=kit["flame"], ply=ply, lam_zip=web)
    assert not out.exists() and not ply.exists() and not web.exists()
