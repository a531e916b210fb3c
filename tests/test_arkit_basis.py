"""The ARKit basis on FLAME's original vertices (backend/flame/arkit_basis.py): derived from
real LAM ZIPs, bundled, registered with ``lam-head setup --lam-template``, and refused cleanly."""

from __future__ import annotations

import numpy as np
import pytest
from factories import lam_zips
from factories.checkpoint import make_tiny_weights_dir
from factories.flame import write_synthetic_flame
from factories.images import astronaut
from PIL import Image

from backend.core.errors import BadInputError
from backend.core.formats.avatar_file import load_avatar
from backend.core.formats.lam_zip import LamZipError, read_template
from backend.create.pipeline import create_avatar
from backend.flame import arkit_basis, plan_subdivision
from backend.setup import assets

REAL = lam_zips.real_zips()
needs_real = pytest.mark.skipif(not REAL, reason=f"no real LAM ZIP in {lam_zips.REAL_DIR}")


@pytest.fixture(autouse=True)
def empty_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LAM_HEAD_HOME", str(tmp_path / "home"))


@needs_real
@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_every_real_zip_gives_the_bundled_basis(path):
    basis, bundled = arkit_basis.from_template(read_template(path)), arkit_basis.bundled()
    assert basis.names == bundled.names
    np.testing.assert_array_equal(basis.faces, bundled.faces)
    np.testing.assert_allclose(basis.dirs, bundled.dirs, atol=1e-6)  # identity independent (LAM_SPEC 7)


@needs_real
@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_the_zip_targets_are_the_basis_subdivided_once(path):
    skin = read_template(path).skin()
    basis = arkit_basis.from_template(read_template(path))
    up = plan_subdivision(basis.faces, basis.n_vertices, 1).apply(basis.dirs.astype(np.float64))
    np.testing.assert_allclose(up, skin.target_deltas, atol=1e-5)


def test_a_mesh_of_another_topology_is_named_as_the_reason():
    basis = arkit_basis.bundled()
    why = basis.mismatch(basis.faces[:-1], basis.n_vertices)
    assert why is not None and "not the topology" in why
    assert basis.mismatch(basis.faces, basis.n_vertices) is None


def test_a_mesh_of_the_same_size_but_other_triangles_says_so():
    basis = arkit_basis.bundled()
    faces = basis.faces.copy()
    faces[[0, 5]] = faces[[0, 5], ::-1]  # two triangles wound the other way: same counts, another mesh
    why = basis.mismatch(faces, basis.n_vertices)
    assert why is not None and "2 of its triangles" in why and "another topology" in why


def test_an_avatar_not_on_flame_topology_gets_no_arkit_keys_and_a_note(tmp_path):
    photo = tmp_path / "a.jpg"
    Image.fromarray(astronaut()).save(photo)
    out = tmp_path / "a.npz"
    res = create_avatar(photo, out, weights=make_tiny_weights_dir(tmp_path), flame=write_synthetic_flame(tmp_path / "f.pkl"))
    avatar = load_avatar(out)
    assert avatar.arkit_dirs is None and avatar.meta["arkit_basis"] is None
    assert any("no ARKit shape keys" in w and "FLAME 2023" in w for w in res.warnings)


@needs_real
def test_setup_registers_a_template_and_doctor_reports_it(tmp_path):
    before = {s["name"]: s for s in assets.status()}["lam_template"]
    assert not before["present"] and "--lam-template" in before["fix"]
    lines = assets.run_setup(lam_template=REAL[0])
    assert any("51 ARKit targets" in line or "ARKit targets" in line for line in lines)
    after = {s["name"]: s for s in assets.status()}["lam_template"]
    assert after["present"] and "sha256" in after["verified"]
    basis = assets.installed_arkit_basis()
    assert basis.source.startswith(REAL[0].name)
    np.testing.assert_allclose(basis.dirs, arkit_basis.bundled().dirs, atol=1e-6)


def test_setup_refuses_a_file_that_is_not_a_lam_zip(tmp_path):
    bad = tmp_path / "x.zip"
    bad.write_bytes(b"nope")
    with pytest.raises(BadInputError, match="not a ZIP"):
        assets.run_setup(lam_template=bad)
    assert not {s["name"]: s for s in assets.status()}["lam_template"]["present"]


@needs_real
def test_a_damaged_stored_basis_says_to_register_again(tmp_path):
    assets.run_setup(lam_template=REAL[0])
    stored = assets.home() / "lam_template" / "arkit_basis.npz"
    stored.write_bytes(b"garbage")
    with pytest.raises(BadInputError, match="--lam-template ZIP again"):
        assets.installed_arkit_basis()


def test_recovering_faces_refuses_a_mesh_that_is_no_subdivision():
    faces = arkit_basis.bundled().faces
    up = plan_subdivision(faces, int(faces.max()) + 1, 1).faces.copy()
    up[[0, 1]] = up[[1, 0]]  # still the same triangles: fine
    arkit_basis.original_vertex_count(up)
    with pytest.raises((BadInputError, LamZipError)):
        from backend.flame import faces_from_subdivided

        faces_from_subdivided(up[:, [0, 0, 1]], int(faces.max()) + 1)
