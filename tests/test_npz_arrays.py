"""Users' .npz / .npy files (backend/core/formats/npz_arrays.py): the same arrays as ``np.load``, and
every kind of damage refused as one clear error before anything large is allocated or any pickle runs."""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
from factories.avatar import make_avatar

from backend.core.errors import BadInputError
from backend.core.formats.avatar_file import AvatarFileError, load_avatar, save_avatar
from backend.core.formats.npz_arrays import NeedsPickleError, NpzError, read_npz
from backend.flame.restricted_pickle import load_pickled_npy


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "f32": rng.normal(size=(7, 3)).astype(np.float32),
        "f64_fortran": np.asfortranarray(rng.normal(size=(4, 5))),
        "big_endian": np.arange(6, dtype=">i4").reshape(2, 3),
        "meta": np.array('{"a": 1}'),
        "flags": np.array([True, False, True]),
        "empty": np.zeros((0, 3, 2), np.float32),
        "u8": np.arange(10, dtype=np.uint8),
    }


def _members(path) -> tuple[list[zipfile.ZipInfo], dict[str, bytes]]:
    with zipfile.ZipFile(path) as z:
        return z.infolist(), {i.filename: z.read(i) for i in z.infolist()}


def _rezip(path, infos, members, compression=zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", compression) as z:
        for i in infos:
            z.writestr(i.filename, members[i.filename])


@pytest.mark.parametrize("compressed", [False, True])
def test_reads_what_np_load_reads(tmp_path, compressed):
    path = tmp_path / "a.npz"
    (np.savez_compressed if compressed else np.savez)(path, **_arrays())
    got = read_npz(path)
    with np.load(path, allow_pickle=False) as ref:
        assert sorted(got) == sorted(ref.files)
        for k in ref.files:
            assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape
            assert np.array_equal(got[k], ref[k]) and got[k].flags.writeable
    assert got["f64_fortran"].flags.f_contiguous
    assert {k: v.tobytes() for k, v in read_npz(path.read_bytes()).items()} == {k: v.tobytes() for k, v in got.items()}


SHARED_NPZ = sorted((Path(__file__).resolve().parents[1].parent / "shared" / "fixtures").glob("**/*.npz"))


@pytest.mark.skipif(not SHARED_NPZ, reason="no .npz in ../shared/fixtures (shared/ absent)")
@pytest.mark.parametrize("path", SHARED_NPZ, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_shared_fixtures_read_as_np_load_reads_them(path):
    """Files written elsewhere (the official pipeline's golden data), not by our own save path."""
    got = read_npz(path)
    with np.load(path, allow_pickle=False) as ref:
        assert sorted(got) == sorted(ref.files)
        for k in ref.files:
            assert got[k].dtype == ref[k].dtype and np.array_equal(got[k], ref[k]), k


def test_a_header_claiming_terabytes_is_refused_without_allocating(tmp_path):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    path = tmp_path / "a.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", buf.getvalue() + bytes(16))  # np.load would try to allocate 4 TB here
    with pytest.raises(NpzError, match=r"member 'x' is damaged: its header declares 4000000000000 bytes of data, it holds 16"):
        read_npz(path)


@pytest.mark.parametrize("old, new", [
    (b"(3, 3), }", b"(3, 3  }"),  # an unclosed tuple: np.load raises tokenize.TokenError
    (b"(3, 3)", b"(03, 3"),  # the same with a leading zero
    (b"'<f4'", b"'<x9'"),  # no such dtype
    (b"(3, 3)", b"(3, -3)"),  # a negative dimension
])
def test_a_garbled_header_names_the_member(tmp_path, old, new):
    path = tmp_path / "a.npz"
    np.savez(path, xyz=np.zeros((3, 3), np.float32))
    infos, m = _members(path)
    assert old in m["xyz.npy"]
    m["xyz.npy"] = m["xyz.npy"].replace(old, new, 1)
    _rezip(path, infos, m)
    with pytest.raises(NpzError, match=r"not a readable \.npz archive: member 'xyz' has a damaged \.npy header"):
        read_npz(path)


class _Trap:
    def __reduce__(self):
        return (open, ("/nonexistent-dir/pickle-ran", "w"))


def test_object_members_are_refused_and_never_unpickled(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, ok=np.zeros(2), obj=np.array([_Trap()], dtype=object))
    with pytest.raises(NeedsPickleError, match="member 'obj' holds Python objects and needs pickle"):
        read_npz(path)


@pytest.mark.parametrize("where", ["deflate", "crc"])
def test_corrupt_compressed_data_or_crc_is_refused(tmp_path, where):
    path = tmp_path / "a.npz"
    compression = zipfile.ZIP_DEFLATED if where == "deflate" else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression) as z:
        buf = io.BytesIO()
        np.save(buf, np.random.default_rng(1).normal(size=(300, 3)))
        z.writestr("x.npy", buf.getvalue())
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the member's data
    path.write_bytes(bytes(raw))
    with pytest.raises(NpzError, match="not a readable .npz archive"):
        read_npz(path)


def test_the_inflated_total_is_bounded(tmp_path):
    path = tmp_path / "a.npz"
    np.savez_compressed(path, a=np.zeros(1 << 16), b=np.zeros(1 << 16))
    assert set(read_npz(path, max_bytes=2 << 20)) == {"a", "b"}
    with pytest.raises(NpzError, match="member 'b' would inflate to .* allowed in all"):
        read_npz(path, max_bytes=(1 << 19) + 1024)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(NpzError, match="file not found"):
        read_npz(tmp_path / "nope.npz")
    jpeg = tmp_path / "photo.npz"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0 a photo")
    with pytest.raises(NpzError, match="no ZIP header"):
        read_npz(jpeg)
    with pytest.raises(NpzError, match="not a readable .npz archive"):
        read_npz(b"PK\x03\x04 and then nothing")


def test_every_damaged_copy_of_an_avatar_is_refused_with_a_message(tmp_path):
    """Random byte damage to an avatar file (raw, and inside re-zipped members): loading either
    succeeds with a valid avatar or raises AvatarFileError; nothing else escapes."""
    good = save_avatar(tmp_path / "good.npz", make_avatar(120, 3))
    raw = good.read_bytes()
    infos, m = _members(good)
    rng = random.Random(7)
    refused = 0
    for it in range(300):
        if it % 3 == 0:
            d = bytearray(raw)
            for _ in range(rng.randint(1, 8)):
                d[rng.randrange(len(d))] = rng.randrange(256)
            data = bytes(d[: rng.randrange(len(d))] if rng.random() < 0.3 else d)
        else:
            name = rng.choice(sorted(m))
            d = bytearray(m[name])
            for _ in range(rng.randint(1, 4)):
                d[rng.randrange(min(len(d), 128))] = rng.randrange(256)  # mostly the .npy header
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as z:
                for i in infos:
                    z.writestr(i.filename, bytes(d) if i.filename == name else m[i.filename])
            data = buf.getvalue()
        p = tmp_path / "damaged.npz"
        p.write_bytes(data)
        try:
            load_avatar(p)
        except AvatarFileError as exc:
            assert str(p) in str(exc)
            refused += 1
    assert refused > 150  # most damage is caught, and none of it as a raw numpy/zipfile error


def test_a_damaged_npy_is_refused_by_the_restricted_reader(tmp_path):
    p = tmp_path / "emb.npy"
    buf = io.BytesIO()
    np.save(buf, np.arange(12, dtype=np.float32).reshape(3, 4))
    good = buf.getvalue()
    p.write_bytes(good)
    assert np.array_equal(load_pickled_npy(p), np.arange(12, dtype=np.float32).reshape(3, 4))
    p.write_bytes(good[:-8])  # truncated download
    with pytest.raises(BadInputError, match=r"declares 48 bytes of data, it holds 40; it is not a valid \.npy"):
        load_pickled_npy(p)
    p.write_bytes(good.replace(b"'shape': (3, 4)", b"'shape': (3, 4 "))
    with pytest.raises(BadInputError, match=r"has a damaged \.npy header"):
        load_pickled_npy(p)
