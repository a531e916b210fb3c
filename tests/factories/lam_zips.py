"""Real LAM web ZIPs for tests: where they are, an independent reader, and damaged variants.

The reader here is deliberately separate from ``backend.core.formats`` (plain ``struct``
and ``json`` for the glTF, ``plyfile`` for the PLY), so tests compare two implementations.
Every number comes from the file: other real ZIPs must pass the same tests.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np

REAL_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "real"
MEMBERS = ("skin.glb", "offset.ply", "animation.glb", "vertex_order.json")


def real_zips() -> list[Path]:
    """Every real LAM web ZIP in the shared fixtures (more may be dropped in)."""
    return sorted(REAL_DIR.glob("*.zip"))


def members(path: str | os.PathLike) -> dict[str, bytes]:
    """The four avatar members by their base name (junk and folder name ignored)."""
    out = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            parts = info.filename.split("/")
            if info.is_dir() or parts[0] == "__MACOSX" or parts[-1].startswith("."):
                continue
            if parts[-1] in MEMBERS:
                out[parts[-1]] = zf.read(info)
    return out


def split_glb(data: bytes) -> tuple[dict, bytes]:
    magic, version, length = struct.unpack_from("<4sII", data)
    assert magic == b"glTF" and version == 2 and length == len(data)
    jlen, _ = struct.unpack_from("<II", data, 12)
    gltf = json.loads(data[20:20 + jlen])
    blen, _ = struct.unpack_from("<II", data, 20 + jlen)
    return gltf, data[28 + jlen:28 + jlen + blen]


def join_glb(gltf: dict, bin_: bytes) -> bytes:
    js = json.dumps(gltf).encode()
    js += b" " * (-len(js) % 4)
    bin_ += b"\0" * (-len(bin_) % 4)
    body = struct.pack("<II", len(js), 0x4E4F534A) + js + struct.pack("<II", len(bin_), 0x004E4942) + bin_
    return struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body


_DTYPES = {5121: "u1", 5123: "<u2", 5125: "<u4", 5126: "<f4", 5120: "i1", 5122: "<i2"}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}


def _view(gltf: dict, bin_: bytes, view: int, offset: int, dtype: str, count: int) -> np.ndarray:
    bv = gltf["bufferViews"][view]
    start = bv.get("byteOffset", 0) + offset
    return np.frombuffer(bin_, dtype=dtype, count=count, offset=start)


def accessor(gltf: dict, bin_: bytes, index: int) -> np.ndarray:
    """Accessor ``index`` as count x width (dense or sparse, tightly packed views only)."""
    acc = gltf["accessors"][index]
    dtype, width, count = _DTYPES[acc["componentType"]], _WIDTH[acc["type"]], acc["count"]
    if "bufferView" in acc:
        bv = gltf["bufferViews"][acc["bufferView"]]
        assert bv.get("byteStride", np.dtype(dtype).itemsize * width) == np.dtype(dtype).itemsize * width
        out = _view(gltf, bin_, acc["bufferView"], acc.get("byteOffset", 0), dtype, count * width).reshape(count, width).copy()
    else:
        out = np.zeros((count, width), dtype=dtype)
    if "sparse" in acc:
        sp = acc["sparse"]
        idx = _view(gltf, bin_, sp["indices"]["bufferView"], sp["indices"].get("byteOffset", 0),
                    _DTYPES[sp["indices"]["componentType"]], sp["count"])
        vals = _view(gltf, bin_, sp["values"]["bufferView"], sp["values"].get("byteOffset", 0), dtype, sp["count"] * width)
        out[idx.astype(np.int64)] = vals.reshape(-1, width)
    return out


def rewrite(src: str | os.PathLike, dest: str | os.PathLike, folder: str | None = None,
            replace: dict[str, bytes] | None = None, drop: tuple[str, ...] = (), extra: dict[str, bytes] | None = None,
            junk: bool = False) -> Path:
    """A copy of a LAM ZIP with its folder renamed, members replaced or dropped, extra entries
    added (raw names, e.g. zip-slip ones) and macOS junk added."""
    got = members(src)
    with zipfile.ZipFile(src) as zf:
        old = next(i.filename.split("/")[0] for i in zf.infolist() if i.filename.endswith("skin.glb")
                   and not i.filename.startswith("__MACOSX"))
    folder = old if folder is None else folder
    prefix = f"{folder}/" if folder else ""
    dest = Path(dest)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zf:  # stored: fast to write in tests
        if folder:
            zf.writestr(zipfile.ZipInfo(prefix), b"")
        for name in MEMBERS:
            if name in drop:
                continue
            zf.writestr(prefix + name, (replace or {}).get(name, got[name]))
        for name, data in (extra or {}).items():
            zf.writestr(zipfile.ZipInfo(name), data)
        if junk:
            zf.writestr(f"__MACOSX/{prefix}._skin.glb", b"\0\5\26\7 junk")
            zf.writestr(f"{prefix}.DS_Store", b"Bud1 junk")
    return dest


def ply_bytes(columns: dict[str, np.ndarray]) -> bytes:
    """A binary little-endian PLY of float32 columns (an independent writer)."""
    n = len(next(iter(columns.values())))
    head = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    head += [f"property float {k}" for k in columns] + ["end_header"]
    data = np.stack([np.asarray(v, "<f4") for v in columns.values()], axis=1)
    return ("\n".join(head) + "\n").encode() + data.tobytes()


def read_ply(data: bytes) -> dict[str, np.ndarray]:
    from plyfile import PlyData

    v = PlyData.read(io.BytesIO(data))["vertex"]
    return {p.name: np.asarray(v[p.name]) for p in v.properties}
