"""Midpoint subdivision and build_rig against brute-force constructions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from factories.flame import head_mesh, make_flame_model

from backend.core.errors import BadInputError
from backend.flame import build_rig, plan_subdivision
from backend.flame.subdivide import subdivide_faces


def _brute_force(faces, attrs):
    """Python loops: edges in sorted (min, max) order, midpoints averaged, 4 faces per face.
    ``attrs`` are per-vertex lists/arrays indexed by vertex (first axis)."""
    n = len(attrs[0])
    edges = sorted({(min(a, b), max(a, b)) for f in faces for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0]))})
    index = {e: n + k for k, e in enumerate(edges)}
    out = []
    for attr in attrs:
        rows = [np.asarray(attr[i], dtype=np.float64) for i in range(n)]
        for a, b in edges:
            rows.append((np.asarray(attr[a], np.float64) + np.asarray(attr[b], np.float64)) / 2)
        out.append(np.array(rows))
    new_faces = []
    for a, b, c in faces:
        mab, mbc, mca = index[(min(a, b), max(a, b))], index[(min(b, c), max(b, c))], index[(min(c, a), max(c, a))]
        new_faces += [(a, mab, mca), (b, mbc, mab), (c, mca, mbc), (mab, mbc, mca)]
    return out, new_faces


def _triangle_set(faces):
    """Triangles as a set, each rotated to start at its smallest index (orientation kept)."""
    out = set()
    for f in np.asarray(faces).tolist():
        k = f.index(min(f))
        out.add(tuple(f[k:] + f[:k]))
    return out


def test_one_level_matches_brute_force():
    m = make_flame_model(150, n_shape=6, n_expr=3)
    up = m.subdivided(1)
    (tmpl, sd, pd, w, jr), faces = _brute_force(m.faces.tolist(), [m.v_template, m.shapedirs, m.posedirs, m.lbs_weights, m.j_regressor.T])
    np.testing.assert_allclose(up.v_template, tmpl, atol=1e-7)
    np.testing.assert_allclose(up.shapedirs, sd, atol=1e-9)
    np.testing.assert_allclose(up.posedirs, pd, atol=1e-9)
    np.testing.assert_allclose(up.lbs_weights, w, atol=1e-7)
    np.testing.assert_allclose(up.j_regressor, jr.T, atol=1e-12)
    assert _triangle_set(up.faces) == _triangle_set(faces) and len(up.faces) == len(faces) == 4 * len(m.faces)
    # originals keep their indices; the layout is corner faces of all faces, then centres
    np.testing.assert_array_equal(up.v_template[: m.n_vertices], m.v_template)
    np.testing.assert_array_equal(up.faces[: len(m.faces), 0], m.faces[:, 0])
    assert up.n_shape == m.n_shape and up.joint_names == m.joint_names


def test_two_levels_equal_brute_force_twice():
    m = make_flame_model(140, n_shape=4, n_expr=2, seed=5)
    (t1,), f1 = _brute_force(m.faces.tolist(), [m.v_template])
    (t2,), f2 = _brute_force(f1, [t1])
    up = m.subdivided(2)
    np.testing.assert_allclose(up.v_template, t2, atol=1e-7)
    assert _triangle_set(up.faces) == _triangle_set(f2)


def test_flame_sized_mesh_counts_and_properties():
    m = make_flame_model(5023, 9976, n_shape=4, n_expr=2)
    counts = [(p.n_vertices, p.faces.shape[0]) for p in (plan_subdivision(m.faces, 5023, k) for k in (0, 1, 2))]
    assert counts == [(5023, 9976), (20018, 39904), (79936, 159616)]
    up = m.subdivided(1)
    np.testing.assert_allclose(up.lbs_weights.sum(1), 1.0, atol=1e-5)
    # every new vertex is adjacent to exactly its two endpoints among the originals
    f = up.faces
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e = np.concatenate([e, e[:, ::-1]])
    orig_nbr = e[(e[:, 0] >= 5023) & (e[:, 1] < 5023)]
    assert not ((e[:, 0] < 5023) & (e[:, 1] < 5023)).any()
    _, edges = subdivide_faces(m.faces, 5023)
    for new in (5023, 5024, 13000, 20017):
        assert set(orig_nbr[orig_nbr[:, 0] == new, 1]) == set(edges[new - 5023])
    # children keep their parent's orientation (flat: the normals point the same way)
    tri = up.v_template[f].astype(np.float64)
    child_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    ptri = m.v_template[m.faces].astype(np.float64)
    parent_n = np.tile(np.cross(ptri[:, 1] - ptri[:, 0], ptri[:, 2] - ptri[:, 0]), (4, 1))
    assert (np.einsum("ij,ij->i", child_n, parent_n) > 0).all()


def test_zero_levels_is_identity_and_negative_is_refused():
    m = make_flame_model(100)
    same = m.subdivided(0)
    np.testing.assert_array_equal(same.v_template, m.v_template)
    np.testing.assert_array_equal(same.faces, m.faces)
    with pytest.raises(ValueError, match="levels"):
        m.subdivided(-1)


# ------------------------------------------------------------------ build_rig


def test_build_rig_follows_lam_spec():
    m = make_flame_model(200, n_shape=10, n_expr=6, seed=7)
    rng = np.random.default_rng(0)
    betas = rng.normal(size=7)  # fewer than n_shape: the rest are zero
    r = build_rig(m, betas, levels=1, n_expr=4)
    shaped = m.v_template.astype(np.float64) + np.einsum("vck,k->vc", m.shapedirs[:, :, :7].astype(np.float64), betas)
    (tmpl, ed, pd, w), faces = _brute_force(m.faces.tolist(), [shaped, m.shapedirs[:, :, 10:14], m.posedirs, m.lbs_weights])
    np.testing.assert_allclose(r.template, tmpl, atol=1e-6)
    np.testing.assert_allclose(r.expr_dirs, ed, atol=1e-8)
    np.testing.assert_allclose(r.pose_dirs, pd, atol=1e-8)
    np.testing.assert_allclose(r.lbs_weights, w, atol=1e-7)
    assert _triangle_set(r.faces) == _triangle_set(faces)
    # joints from the ORIGINAL model: J_regressor . (template + shapedirs . [betas, expr])
    np.testing.assert_allclose(r.joints, m.j_regressor @ shaped, atol=1e-6)
    expr = rng.normal(size=4)
    full = np.concatenate([betas, np.zeros(3), expr])
    moved = m.j_regressor @ (m.v_template + np.einsum("vck,k->vc", m.shapedirs[:, :, :14].astype(np.float64), full))
    np.testing.assert_allclose(r.joints + np.einsum("jce,e->jc", r.joint_expr_dirs, expr), moved, atol=1e-6)
    np.testing.assert_array_equal(r.shape_params, betas.astype(np.float32))
    assert r.expr_dirs.dtype == np.float32 and r.faces.dtype == np.int32 and r.parents.tolist() == [-1, 0, 1, 1, 1]
    assert r.n_points == 200 + len({tuple(sorted(e)) for f in m.faces.tolist() for e in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0]))})


def test_build_rig_defaults_and_levels():
    m = make_flame_model(150, n_shape=5, n_expr=3)
    r0 = build_rig(m, np.zeros(5), levels=0)
    np.testing.assert_allclose(r0.template, m.v_template)
    assert r0.expr_dirs.shape == (150, 3, 3)
    assert build_rig(m, np.zeros(5), levels=2).n_points == m.subdivided(2).n_vertices


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"betas": np.zeros(6)}, "6 shape parameters"),
        ({"betas": np.array([np.nan])}, "NaN"),
        ({"betas": np.zeros(5), "n_expr": 4}, "n_expr=4"),
    ],
)
def test_build_rig_refuses_bad_parameters(kwargs, match):
    with pytest.raises(BadInputError, match=match):
        build_rig(make_flame_model(100, n_shape=5, n_expr=3), **kwargs)


def test_head_mesh_exact_sizes():
    v, f = head_mesh(5023, 9976)
    assert v.shape == (5023, 3) and f.shape == (9976, 3) and np.unique(f).size == 5023
    with pytest.raises(ValueError):
        head_mesh(100, 9976)


def test_subdivide_keeps_model_fields():
    m = replace(make_flame_model(100), joint_names=("a", "b", "c", "d", "e"))
    assert m.subdivided(1).joint_names == ("a", "b", "c", "d", "e")
