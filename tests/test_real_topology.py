"""Our FLAME subdivision and ``create`` on the REAL LAM topology (from each real LAM ZIP).

LAM_SPEC section 7: a LAM ZIP's mesh is FLAME subdivided once: vertices 0..V-1 are FLAME's,
then one midpoint per edge; faces in four blocks (corner v0, corner v1, corner v2, centre).
Here the original mesh is recovered from the ZIP independently of our code, a FLAME-format
pickle is written with that real topology (real vertex positions, made-up blendshapes and
weights), and our subdivision and ``create`` must give the ZIP's vertex order and triangles.
"""

from __future__ import annotations

import numpy as np
import pytest
from factories import lam_zips
from factories.checkpoint import make_tiny_weights_dir
from factories.flame import flame_arrays_on_mesh, write_flame_pickle
from factories.images import astronaut
from PIL import Image

from backend.core.formats.avatar_file import load_avatar
from backend.core.formats.lam_zip import read_template
from backend.create.pipeline import create_avatar
from backend.flame import arkit_basis, plan_subdivision

REAL = lam_zips.real_zips()
pytestmark = pytest.mark.skipif(not REAL, reason=f"no real LAM ZIP in {lam_zips.REAL_DIR}")


def recover_original(faces_up: np.ndarray) -> tuple[np.ndarray, int]:
    """The original triangles and vertex count, read off LAM's block layout: block b (< 3)
    holds the corner triangle of corner b, whose first vertex is that original corner."""
    f = len(faces_up) // 4
    faces = np.stack([faces_up[:f, 0], faces_up[f:2 * f, 0], faces_up[2 * f:3 * f, 0]], axis=1)
    return faces, int(faces.max()) + 1


@pytest.fixture(scope="module", params=REAL, ids=lambda p: p.name)
def real(request):
    skin = read_template(request.param).skin()
    faces, v = recover_original(skin.faces)
    return {"path": request.param, "skin": skin, "faces": faces, "v": v}


def test_the_real_mesh_is_flame_subdivided_once_by_our_subdivision(real):
    skin, faces, v = real["skin"], real["faces"], real["v"]
    plan = plan_subdivision(faces, v, 1)
    assert plan.n_vertices == skin.n_vertices and len(plan.faces) == len(skin.faces) == 4 * len(faces)
    np.testing.assert_array_equal(plan.faces, skin.faces)  # same triangles, order and winding
    # same vertex order: every midpoint of ours sits where the ZIP's vertex of that index is
    np.testing.assert_allclose(plan.apply(skin.positions[:v].astype(np.float64)), skin.positions, atol=1e-6)
    assert v == arkit_basis.original_vertex_count(skin.faces)


@pytest.fixture(scope="module")
def created(real, tmp_path_factory):
    root = tmp_path_factory.mktemp("realtopo")
    # FLAME's frame: the ZIP's head sits on a body rig about 1.67 m up; any translation will do
    shift = real["skin"].positions[: real["v"]].astype(np.float64).mean(axis=0)
    flame = write_flame_pickle(root / "flame_real_topology.pkl",
                               flame_arrays_on_mesh(real["skin"].positions[: real["v"]] - shift, real["faces"], seed=3))
    photo = root / "astronaut.jpg"
    Image.fromarray(astronaut()).save(photo, quality=92)
    weights = make_tiny_weights_dir(root, config_overrides={"shape_param_dim": 10, "expr_param_dim": 10})
    out = root / "avatar.npz"
    res = create_avatar(photo, out, weights=weights, flame=flame)
    return {"avatar": load_avatar(out), "shift": shift, "warnings": res.warnings}


def test_create_on_the_real_topology_gives_the_zips_vertices_and_triangles(real, created):
    avatar, skin = created["avatar"], real["skin"]
    assert avatar.n_points == skin.n_vertices
    np.testing.assert_array_equal(avatar.faces, skin.faces)
    # no landmark embedding here: the average head, i.e. the real mesh itself, subdivided by us
    np.testing.assert_allclose(avatar.template + created["shift"], skin.positions, atol=2e-6)
    assert avatar.n_expr == 100 and avatar.shape_params.size == 300  # whatever the config's 10/10 say


def test_avatars_on_flame_topology_get_the_arkit_basis_subdivided(real, created):
    avatar, skin = created["avatar"], real["skin"]
    basis = arkit_basis.bundled()
    assert avatar.arkit_names == basis.names == skin.target_names
    want = plan_subdivision(real["faces"], real["v"], 1).apply(basis.dirs)
    np.testing.assert_allclose(avatar.arkit_dirs, want, atol=1e-6)
    # and that is the ZIP's own morph targets (midpoints average their parents to ~1e-6)
    np.testing.assert_allclose(avatar.arkit_dirs, skin.target_deltas, atol=1e-5)
    assert not any("ARKit" in w for w in created["warnings"])
