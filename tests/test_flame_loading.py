"""Loading FLAME: official-structure pickles (restricted), our npz, LAM checkpoint buffers."""

from __future__ import annotations

import os
import pickle
import pickletools
import sys

import numpy as np
import pytest
from factories.flame import (
    Py2Global,
    Py2Object,
    chumpy,
    csc_matrix,
    lam_buffers,
    make_flame_arrays,
    make_flame_model,
    py2_pickle_bytes,
    write_flame_pickle,
    write_synthetic_flame,
)

from backend.core.errors import BadInputError
from backend.flame import FlameModel, faces_from_subdivided, load_flame, load_pickled_npy, restricted_loads
from backend.flame.restricted_pickle import NUMPY_ALLOWED, to_plain


def _assert_model_equals_arrays(m: FlameModel, a: dict, n_shape: int) -> None:
    np.testing.assert_allclose(m.v_template, a["v_template"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(m.shapedirs, a["shapedirs"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(m.posedirs, a["posedirs"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(m.j_regressor, a["J_regressor"], rtol=1e-12)
    np.testing.assert_allclose(m.lbs_weights, a["weights"], rtol=1e-6)
    np.testing.assert_array_equal(m.faces, a["f"].astype(np.int64))
    np.testing.assert_array_equal(m.parents, [-1, 0, 1, 1, 1])
    assert m.n_shape == n_shape and m.n_expr == a["shapedirs"].shape[2] - n_shape
    assert m.joint_names == ("root", "neck", "jaw", "eye_l", "eye_r")


@pytest.mark.parametrize(
    ("sparse_module", "style"),
    [("scipy.sparse.csc", "newobj"), ("scipy.sparse._csc", "newobj"), ("scipy.sparse.csc", "reconstructor")],
)
def test_official_structure_pickle_loads_without_chumpy_or_scipy(tmp_path, sparse_module, style):
    a = make_flame_arrays(400, n_shape=30, n_expr=10, seed=1)
    path = write_flame_pickle(tmp_path / "flame.pkl", a, sparse_module=sparse_module, style=style)
    ops = {(op.name, arg) for op, arg, _ in pickletools.genops(path.read_bytes())}
    # it really is written the Python 2 way
    for name in ("chumpy.ch Ch", "__builtin__ set", f"{sparse_module} csc_matrix", "numpy.core.multiarray _reconstruct", "numpy dtype"):
        assert ("GLOBAL", name) in ops
    assert (("GLOBAL", "copy_reg _reconstructor") in ops) == (style == "reconstructor")
    assert (("NEWOBJ", None) in ops) == (style == "newobj")
    assert any(op == "BINSTRING" for op, _ in ops)
    before = set(sys.modules)
    m = load_flame(path, n_shape=30)
    assert not {k for k in set(sys.modules) - before if k.split(".")[0] in ("chumpy", "scipy")}
    _assert_model_equals_arrays(m, a, 30)


def test_plain_array_pickle_and_realistic_size(tmp_path):
    a = make_flame_arrays(5023, 9976, n_shape=300, n_expr=100)
    m = load_flame(write_flame_pickle(tmp_path / "flame2023.pkl", a, use_chumpy=False))
    assert m.v_template.shape == (5023, 3) and m.faces.shape == (9976, 3) and m.shapedirs.shape == (5023, 3, 400)
    _assert_model_equals_arrays(m, a, 300)


def test_write_synthetic_flame_is_small_and_official(tmp_path):
    m = load_flame(write_synthetic_flame(tmp_path / "f.pkl", n_vertices_hint=500, seed=3))
    assert m.n_vertices == 500 and m.n_shape == 300 and m.n_expr == 100


def test_models_of_other_sizes_load():
    for n in (150, 1000):
        assert make_flame_model(n).n_vertices == n


# ------------------------------------------------------------------ the restricted unpickler


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        (lambda m: pickle.dumps(_Evil(m), protocol=4), "system"),
        (lambda m: pickle.dumps(_Evil(m), protocol=2), "system"),
        (lambda m: pickle.dumps(_Evil(m), protocol=0), "system"),
        (lambda m: py2_pickle_bytes(Py2Global("subprocess", "check_call", ([["touch", str(m)]],))), "subprocess.check_call"),
        (lambda m: py2_pickle_bytes(Py2Global("__builtin__", "eval", (f"open({str(m)!r}, 'w')",))), "__builtin__.eval"),
        (lambda m: py2_pickle_bytes(Py2Global("builtins", "exec", (f"open({str(m)!r}, 'w')",))), "builtins.exec"),
        # hidden inside an otherwise official-looking FLAME dict
        (lambda m: py2_pickle_bytes({"v_template": chumpy(np.zeros((3, 3))), "f": Py2Global("os", "system", (f"touch {m}",))}), "os.system"),
        (lambda m: py2_pickle_bytes({"x": Py2Object("os", "_wrap_close", {})}), "os._wrap_close"),
    ],
)
def test_forbidden_pickles_are_refused_and_run_nothing(tmp_path, payload, named):
    marker = tmp_path / "pwned"
    path = tmp_path / "flame.pkl"
    path.write_bytes(payload(marker))
    with pytest.raises(BadInputError, match=named.replace(".", r"\.")) as err:
        load_flame(path)
    assert "not one of the plain data classes" in str(err.value)
    assert not marker.exists()


def test_reconstructor_only_rebuilds_stand_ins():
    data = py2_pickle_bytes(Py2Object("numpy", "ndarray", None, style="reconstructor"))
    with pytest.raises(BadInputError, match="refused to rebuild"):
        restricted_loads(data)


def test_numpy_only_allow_list_refuses_chumpy():
    with pytest.raises(BadInputError, match="chumpy.ch.Ch"):
        restricted_loads(py2_pickle_bytes(chumpy(np.zeros(3))), NUMPY_ALLOWED)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 32, "is not a FLAME model"),
        (pickle.dumps({"v_template": np.zeros((3, 3))}, protocol=2)[:-20], "not a readable pickle"),
        (pickle.dumps([1, 2, 3], protocol=2), "not a FLAME model dictionary"),
        (pickle.dumps({"v_template": np.zeros((4, 3))}, protocol=2), "missing 'posedirs'"),
        (b"PK\x03\x04garbage", "not a readable .npz"),
        (b"", "is not a FLAME model"),
    ],
)
def test_wrong_or_corrupt_files_give_clear_errors(tmp_path, content, match):
    path = tmp_path / "flame.pkl"
    path.write_bytes(content)
    with pytest.raises(BadInputError, match=match):
        load_flame(path)


def test_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        load_flame(tmp_path / "nope.pkl")


# ------------------------------------------------------------------ structural validation


def _arrays(**changes):
    a = make_flame_arrays(200, n_shape=8, n_expr=4)
    a.update(changes)
    return a


def _bad_weights_sum():
    w = _arrays()["weights"].copy()
    w[7] *= 1.5
    return w


def _nan_template():
    v = _arrays()["v_template"].copy()
    v[3, 1] = np.nan
    return v


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"v_template": np.zeros((200, 2))}, "'v_template' must be V,3"),
        ({"v_template": _nan_template()}, "NaN"),
        ({"shapedirs": np.zeros((199, 3, 12))}, "'shapedirs' must be 200,3,K"),
        ({"shapedirs": np.zeros((200, 3, 8))}, "need more than n_shape=8"),
        ({"posedirs": np.zeros((200, 3, 35))}, "'posedirs' has shape"),
        ({"J_regressor": np.zeros((5, 201))}, "'J_regressor' has shape"),
        ({"weights": np.full((200, 4), 0.25)}, "'weights' has shape"),
        ({"weights": _bad_weights_sum()}, "vertex 7 sums to"),
        ({"weights": np.tile([1.5, -0.5, 0, 0, 0], (200, 1))}, "negative"),
        ({"kintree_table": np.array([[0, 0, 1, 1, 1], [0, 1, 2, 3, 4]])}, "joint 0 must be the root"),
        ({"kintree_table": np.array([[4294967295, 0, 4, 1, 1], [0, 1, 2, 3, 4]])}, "joint 2 has parent 4"),
        ({"kintree_table": np.zeros((3, 5))}, "'kintree_table' must be 2,J"),
        ({"f": np.array([[0, 1, 200]])}, r"face indices must lie in \[0, 200\)"),
        ({"f": np.zeros((0, 3), dtype=np.int64)}, "non-empty F,3"),
        ({"f": np.zeros((4, 3), dtype=np.float32)}, "integer indices"),
        ({"shapedirs": np.full((200, 3, 12), "x")}, "must be numeric"),
    ],
)
def test_each_structural_problem_is_named(changes, match):
    with pytest.raises(BadInputError, match=match):
        FlameModel.from_arrays(_arrays(**changes), n_shape=8)


# ------------------------------------------------------------------ npz and LAM buffers


def test_npz_round_trip(tmp_path):
    m = make_flame_model(300)
    back = load_flame(m.save_npz(tmp_path / "flame.npz"))
    for key in ("v_template", "shapedirs", "posedirs", "j_regressor", "lbs_weights", "parents", "faces"):
        np.testing.assert_array_equal(getattr(back, key), getattr(m, key))
    assert back.n_shape == m.n_shape and back.joint_names == m.joint_names
    assert [p.name for p in tmp_path.iterdir()] == ["flame.npz"]  # no temporary left


@pytest.mark.parametrize("prefix", ["renderer.flame_model.", ""])
def test_lam_buffers_round_trip(prefix):
    m = make_flame_model(500, seed=2)
    bufs = lam_buffers(m, prefix)
    assert f"{prefix}faces" not in bufs and f"{prefix}f" not in bufs
    back = FlameModel.from_arrays(bufs, n_shape=m.n_shape)
    np.testing.assert_array_equal(back.faces, m.faces)  # same faces, order and orientation
    np.testing.assert_allclose(back.posedirs, m.posedirs, atol=1e-9)
    np.testing.assert_allclose(back.v_template, m.v_template)
    np.testing.assert_allclose(back.j_regressor, m.j_regressor, rtol=1e-6)
    np.testing.assert_array_equal(back.parents, m.parents)


def test_lam_buffers_from_npz_and_safetensors(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="safetensors not installed")
    m = make_flame_model(300, seed=4)
    bufs = lam_buffers(m)
    np.savez(tmp_path / "buffers.npz", **bufs, n_shape=np.array(m.n_shape))
    np.testing.assert_array_equal(load_flame(tmp_path / "buffers.npz").faces, m.faces)
    other = {"encoder.model.cls_token": np.zeros((1, 1, 8), np.float32)}
    safetensors_numpy.save_file({**bufs, **other}, str(tmp_path / "model.safetensors"))
    back = load_flame(tmp_path, n_shape=m.n_shape)  # a weights folder
    np.testing.assert_array_equal(back.faces, m.faces)
    np.testing.assert_allclose(back.shapedirs, m.shapedirs)


def test_faces_derivation_refuses_what_is_not_a_midpoint_subdivision():
    m = make_flame_model(200)
    faces_up = lam_buffers(m, "")["faces_up"]
    with pytest.raises(BadInputError, match="two original vertices"):
        faces_from_subdivided(np.concatenate([faces_up[:-4], [[0, 1, 250]] * 4]), m.n_vertices)
    # new vertices renumbered out of the sorted edge order
    perm = np.arange(faces_up.max() + 1)
    perm[[m.n_vertices, m.n_vertices + 1]] = perm[[m.n_vertices + 1, m.n_vertices]]
    with pytest.raises(BadInputError, match="sorted"):
        faces_from_subdivided(perm[faces_up], m.n_vertices)
    with pytest.raises(BadInputError, match="new"):
        faces_from_subdivided(m.faces[:4], m.n_vertices)


# ------------------------------------------------------------------ pickled .npy (landmark embedding)


def test_load_pickled_npy_dict_of_arrays(tmp_path):
    emb = {"lmk_face_idx": np.arange(68, dtype=np.int64), "lmk_b_coords": np.full((68, 3), 1 / 3), "full_lmk_faces_idx": np.zeros((1, 105), np.int64)}
    np.save(tmp_path / "landmark_embedding_with_eyes.npy", emb, allow_pickle=True)
    got = load_pickled_npy(tmp_path / "landmark_embedding_with_eyes.npy")
    assert set(got) == set(emb)
    for k in emb:
        np.testing.assert_array_equal(got[k], emb[k])


def test_load_pickled_npy_plain_array_and_refusals(tmp_path):
    np.save(tmp_path / "plain.npy", np.arange(5.0))
    np.testing.assert_array_equal(load_pickled_npy(tmp_path / "plain.npy"), np.arange(5.0))
    marker = tmp_path / "pwned"
    evil = np.empty((), dtype=object)
    evil[()] = _Evil(marker)
    np.save(tmp_path / "evil.npy", evil, allow_pickle=True)
    with pytest.raises(BadInputError, match="system"):
        load_pickled_npy(tmp_path / "evil.npy")
    assert not marker.exists()
    (tmp_path / "bad.npy").write_bytes(b"not numpy at all")
    with pytest.raises(BadInputError, match="not a valid .npy"):
        load_pickled_npy(tmp_path / "bad.npy")
    with pytest.raises(BadInputError, match="not found"):
        load_pickled_npy(tmp_path / "missing.npy")


def test_restricted_loads_reads_python3_numpy_pickles():
    obj = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float64(2.5), "t": {1, 2}}
    for proto in (2, 3, 4):
        got = restricted_loads(pickle.dumps(obj, protocol=proto), NUMPY_ALLOWED)
        np.testing.assert_array_equal(got["a"], obj["a"])
        assert got["s"] == 2.5 and got["t"] == {1, 2}


class _Reduces:
    """Pickles as whatever ``__reduce__`` tuple it is given (to write states numpy itself never writes)."""

    def __init__(self, *reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


def test_dtype_states_are_checked_not_applied():
    """numpy applies a pickled dtype state unchecked (an item size or flags that disagree with the type
    corrupt memory); the restricted reader takes only the byte order and refuses the rest."""
    be = np.arange(6, dtype=">i4").reshape(2, 3)
    b2 = be[::-1].copy()
    assert b2.dtype is be.dtype  # one dtype object: the pickle memoises it, the second array gets it by reference
    for proto in (2, 4):
        got = restricted_loads(pickle.dumps({"a": be, "b": b2}, protocol=proto), NUMPY_ALLOWED)
        np.testing.assert_array_equal(got["a"], be)  # the byte order applied (numpy then swaps to native)
        np.testing.assert_array_equal(got["b"], b2)
    # object flags on a plain uint32 (numpy would treat its bytes as references): the type's own flags are kept
    flagged = _Reduces(np.dtype, ("u4", False, True), (3, "<", None, None, None, -1, -1, 63))
    got = restricted_loads(pickle.dumps(flagged, protocol=2), NUMPY_ALLOWED)
    assert got == np.dtype("u4") and got.flags == np.dtype("u4").flags == 0
    lying = _Reduces(np.dtype, ("f4", False, True), (3, "<", None, None, None, 8, 8, 0))  # a 4-byte type, 8-byte items
    with pytest.raises(BadInputError, match=r"refused a float32 dtype state"):
        restricted_loads(pickle.dumps(lying, protocol=2), NUMPY_ALLOWED)
    with pytest.raises(BadInputError, match=r"refused dtype 'V8'"):
        restricted_loads(pickle.dumps(np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]), protocol=2), NUMPY_ALLOWED)
    with pytest.raises(BadInputError, match=r"refused dtype \[\('a', 'f4'\)\]"):
        restricted_loads(pickle.dumps(_Reduces(np.dtype, ([("a", "f4")],)), protocol=2), NUMPY_ALLOWED)


def test_an_inconsistent_sparse_matrix_is_refused(tmp_path):
    a = make_flame_arrays()
    path = write_flame_pickle(tmp_path / "flame.pkl", a)
    good = load_flame(path)
    np.testing.assert_allclose(good.j_regressor, a["J_regressor"], rtol=1e-12)
    bad = csc_matrix(a["J_regressor"])
    indptr = bad.state["indptr"].copy()
    indptr[1], indptr[2] = indptr[2], indptr[1]  # a column with a negative count
    assert (np.diff(indptr) < 0).any() and indptr[-1] == bad.state["data"].size
    bad.state["indptr"] = indptr
    with pytest.raises(BadInputError, match="sparse .CSC. matrix in the FLAME file is inconsistent"):
        to_plain(restricted_loads(py2_pickle_bytes({"J_regressor": bad})))
