"""3DGS PLY I/O: round trips, interoperability with plyfile (the reference reader), bad files."""

from __future__ import annotations

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from backend.core.errors import BadInputError
from backend.core.formats import ply

C0 = 0.28209479177387814


def _gaussians(n=257, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return dict(
        xyz=rng.normal(scale=0.1, size=(n, 3)).astype(np.float32),
        rgb=rng.uniform(0, 1, size=(n, 3)).astype(np.float32),
        opacity=rng.uniform(0.01, 0.99, size=n).astype(np.float32),
        scale=rng.uniform(1e-4, 1e-2, size=(n, 3)).astype(np.float32),
        rotation=q.astype(np.float32),
    )


def _plyfile_columns(path):
    v = PlyData.read(str(path))["vertex"]
    return [p.name for p in v.properties], {p.name: np.asarray(v[p.name]) for p in v.properties}


STANDARD = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
TAIL = ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


@pytest.mark.parametrize("with_rest", [False, True])
def test_standard_round_trip_and_plyfile_reads_our_encoding(tmp_path, with_rest):
    g = _gaussians()
    sh_rest = np.random.default_rng(1).normal(size=(257, 45)).astype(np.float32) if with_rest else None
    path = ply.write_3dgs_ply(tmp_path / "a.ply", **g, sh_rest=sh_rest)

    names, cols = _plyfile_columns(path)
    rest = [f"f_rest_{i}" for i in range(45)] if with_rest else []
    assert names == STANDARD + rest + TAIL
    assert path.read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\nelement vertex 257\n")
    assert all(PlyData.read(str(path))["vertex"].data.dtype[p] == np.dtype("<f4") for p in names)
    # Independent encodings (float64 then float32), compared bit-exactly.
    np.testing.assert_array_equal(cols["x"], g["xyz"][:, 0])
    np.testing.assert_array_equal(cols["f_dc_1"], ((g["rgb"][:, 1].astype(np.float64) - 0.5) / C0).astype(np.float32))
    o = g["opacity"].astype(np.float64)
    np.testing.assert_allclose(cols["opacity"], np.log(o / (1 - o)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cols["scale_2"], np.log(g["scale"][:, 2].astype(np.float64)), rtol=1e-7, atol=1e-6)
    np.testing.assert_array_equal(cols["rot_0"], g["rotation"][:, 0])  # w first
    np.testing.assert_array_equal(cols["nx"], 0)
    if with_rest:
        np.testing.assert_array_equal(cols["f_rest_44"], sh_rest[:, 44])

    # Raw columns read back bit-exactly; decoded values to float32 round-off.
    raw = ply.read_ply_columns(path)
    assert list(raw) == names
    for k in names:
        np.testing.assert_array_equal(raw[k], cols[k])
    back = ply.read_3dgs_ply(path)
    np.testing.assert_array_equal(back["xyz"], g["xyz"])
    np.testing.assert_allclose(back["rgb"], g["rgb"], atol=1e-6)
    np.testing.assert_allclose(back["opacity"], g["opacity"], atol=1e-6)
    np.testing.assert_allclose(back["scale"], g["scale"], rtol=1e-6)
    np.testing.assert_allclose(back["rotation"], g["rotation"], atol=1e-7)
    if with_rest:
        np.testing.assert_array_equal(back["sh_rest"], sh_rest)
    else:
        assert back["sh_rest"] is None

    # Re-encoding what we read gives the same file bytes (encoded values are a fixed point).
    again = ply.write_3dgs_ply(tmp_path / "b.ply", back["xyz"], back["rgb"], back["opacity"], back["scale"],
                               g["rotation"], sh_rest=back["sh_rest"])
    raw2 = ply.read_ply_columns(again)
    for k in ("x", "f_dc_0", "f_dc_2", "scale_1", "rot_3"):
        np.testing.assert_array_equal(raw2[k], raw[k])


def test_opacity_extremes_are_clamped_to_finite_logits(tmp_path):
    g = _gaussians(4)
    g["opacity"] = np.array([0.0, 1.0, 0.5, 1e-9], dtype=np.float32)
    path = ply.write_3dgs_ply(tmp_path / "o.ply", **g)
    raw = ply.read_ply_columns(path)["opacity"]
    assert np.isfinite(raw).all()
    lim = np.log((1 - 1e-6) / 1e-6)
    np.testing.assert_allclose(raw, [-lim, lim, 0.0, -lim], rtol=1e-6)
    np.testing.assert_allclose(ply.read_3dgs_ply(path)["opacity"], [1e-6, 1 - 1e-6, 0.5, 1e-6], rtol=1e-5)


def test_offset_ply_layout_and_round_trip(tmp_path):
    g = _gaussians(100, seed=3)
    offset = g["xyz"] * 0.01
    path = ply.write_offset_ply(tmp_path / "offset.ply", offset, g["rgb"], g["opacity"], g["scale"], g["rotation"])
    names, cols = _plyfile_columns(path)
    assert names == STANDARD + TAIL and len(names) == 17
    assert all(PlyData.read(str(path))["vertex"].data.dtype[p] == np.dtype("<f4") for p in names)
    np.testing.assert_array_equal(cols["f_dc_0"], g["rgb"][:, 0])  # plain RGB, not SH
    np.testing.assert_array_equal(cols["x"], offset[:, 0])
    back = ply.read_offset_ply(path)
    np.testing.assert_array_equal(back["offset"], offset)
    np.testing.assert_array_equal(back["rgb"], g["rgb"])
    np.testing.assert_allclose(back["opacity"], g["opacity"], atol=1e-6)
    np.testing.assert_allclose(back["scale"], g["scale"], rtol=1e-6)


@pytest.mark.parametrize("text,byte_order", [(False, "<"), (False, ">"), (True, "=")])
def test_we_read_plyfile_written_files(tmp_path, text, byte_order):
    """Files from another writer: other endianness, ASCII, extra properties, a face element, comments."""
    g = _gaussians(31, seed=5)
    n = 31
    fields = [(p, byte_order + "f4") for p in STANDARD + TAIL] + [("extra", byte_order + "f8")]
    v = np.empty(n, dtype=fields)
    for i, p in enumerate("xyz"):
        v[p] = g["xyz"][:, i]
    for p in ("nx", "ny", "nz"):
        v[p] = 0
    for i in range(3):
        v[f"f_dc_{i}"] = (g["rgb"][:, i] - 0.5) / C0
        v[f"scale_{i}"] = np.log(g["scale"][:, i])
    v["opacity"] = np.log(g["opacity"] / (1 - g["opacity"]))
    for i in range(4):
        v[f"rot_{i}"] = g["rotation"][:, i] * 2.0  # unnormalised, as trainers write them
    v["extra"] = 7.0
    faces = np.array([([0, 1, 2],)], dtype=[("vertex_indices", "i4", (3,))])
    data = PlyData([PlyElement.describe(v, "vertex"), PlyElement.describe(faces, "face")], text=text,
                   byte_order=byte_order, comments=["made by plyfile"])
    path = tmp_path / "theirs.ply"
    data.write(str(path))
    back = ply.read_3dgs_ply(path)
    np.testing.assert_allclose(back["xyz"], g["xyz"], atol=1e-6)
    np.testing.assert_allclose(back["rgb"], g["rgb"], atol=1e-5)
    np.testing.assert_allclose(back["opacity"], g["opacity"], atol=1e-5)
    np.testing.assert_allclose(back["scale"], g["scale"], rtol=1e-5)
    np.testing.assert_allclose(back["rotation"], g["rotation"], atol=1e-6)
    assert ply.read_ply_columns(path)["extra"][0] == 7.0


def _good_file(tmp_path):
    return ply.write_3dgs_ply(tmp_path / "good.ply", **_gaussians(10))


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda b: b"plx" + b[3:], "does not start with 'ply'"),
        (lambda b: b[: b.index(b"end_header")], "no 'end_header'"),
        (lambda b: b[:-5], "truncated"),
        (lambda b: b.replace(b"binary_little_endian", b"binary_middle_endian"), "unsupported format"),
        (lambda b: b.replace(b"property float rot_3", b"property float rot_x"), "missing vertex properties: rot_3"),
        (lambda b: b.replace(b"property float x", b"property quad x"), "bad property line"),
        (lambda b: b.replace(b"element vertex", b"element points"), "no 'vertex' element"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, mutate, needle):
    path = _good_file(tmp_path)
    path.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(BadInputError) as info:
        ply.read_3dgs_ply(path)
    assert needle in str(info.value) and str(path) in str(info.value)


def test_missing_file_and_bad_inputs(tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        ply.read_3dgs_ply(tmp_path / "nope.ply")
    g = _gaussians(5)
    g["scale"][2, 1] = 0
    with pytest.raises(BadInputError, match="positive"):
        ply.write_3dgs_ply(tmp_path / "x.ply", **g)
    g = _gaussians(5)
    g["rgb"] = g["rgb"][:4]
    with pytest.raises(BadInputError, match="'rgb' has shape"):
        ply.write_3dgs_ply(tmp_path / "x.ply", **g)
    g = _gaussians(5)
    g["xyz"][0, 0] = np.nan
    with pytest.raises(BadInputError, match="NaN"):
        ply.write_3dgs_ply(tmp_path / "x.ply", **g)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file


def test_zero_quaternion_is_refused(tmp_path):
    g = _gaussians(5)
    g["rotation"][3] = 0
    path = ply.write_3dgs_ply(tmp_path / "z.ply", **g)
    with pytest.raises(BadInputError, match="vertex 3 has a zero"):
        ply.read_3dgs_ply(path)


def test_missing_plyfile_says_how_to_install_it(tmp_path, monkeypatch):
    import sys

    from backend.core.errors import LamHeadError

    monkeypatch.setitem(sys.modules, "plyfile", None)  # import plyfile -> ImportError
    with pytest.raises(LamHeadError, match=r"'plyfile' package.*pip install plyfile==1\.1\.3") as info:
        ply.write_3dgs_ply(tmp_path / "x.ply", **_gaussians(3))
    assert info.value.code == "missing_dependency"
    assert not list(tmp_path.iterdir())
