"""glTF 2.0 binary files (``.glb``): the container, typed accessors (sparse ones too), writing back.

Numpy + stdlib only (the add-on reads LAM's ``skin.glb`` with it). Only what a skinned mesh with
morph targets needs: one JSON chunk, one BIN chunk as buffer 0, accessors of every component
type with strides, normalisation and sparse substitution. Every offset and count taken from the
file is checked against the data actually present before any array is made, so a corrupt or
hostile file fails with a message, never with a giant allocation or an out-of-bounds read.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

from ..errors import BadInputError

MAGIC = b"glTF"
_JSON_CHUNK = 0x4E4F534A
_BIN_CHUNK = 0x004E4942
COMPONENT_TYPES = {
    5120: np.dtype("<i1"), 5121: np.dtype("<u1"), 5122: np.dtype("<i2"),
    5123: np.dtype("<u2"), 5125: np.dtype("<u4"), 5126: np.dtype("<f4"),
}
TYPE_WIDTHS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
# Largest element count accepted for an accessor that has no data to bound it (a sparse
# accessor without a bufferView starts as zeros of this many elements).
MAX_ACCESSOR_COUNT = 1 << 24


class GlbError(BadInputError):
    """A file that is not a usable glTF binary; the message names the file and the part."""


@dataclass
class Glb:
    """A parsed ``.glb``: the glTF JSON document and the BIN chunk (buffer 0)."""

    gltf: dict
    bin: bytes
    name: str = "glb"

    def fail(self, problem: str) -> GlbError:
        return GlbError(f"{self.name}: {problem}")

    def _item(self, kind: str, index) -> dict:
        items = self.gltf.get(kind)
        if not isinstance(index, int) or isinstance(index, bool) or not isinstance(items, list) or not 0 <= index < len(items):
            raise self.fail(f"{kind}[{index!r}] does not exist")
        item = items[index]
        if not isinstance(item, dict):
            raise self.fail(f"{kind}[{index}] is not a JSON object")
        return item

    def buffer_view(self, index: int) -> tuple[int, int, int | None]:
        """(byte offset in BIN, byte length, byte stride or None) of bufferView ``index``."""
        view = self._item("bufferViews", index)
        if view.get("buffer", 0) != 0:
            raise self.fail(f"bufferViews[{index}] uses buffer {view.get('buffer')}; only the GLB's own BIN chunk is supported")
        offset, length, stride = view.get("byteOffset", 0), view.get("byteLength"), view.get("byteStride")
        if not all(isinstance(v, int) and v >= 0 for v in (offset, length)) or (stride is not None and not (isinstance(stride, int) and stride > 0)):
            raise self.fail(f"bufferViews[{index}] has a bad byteOffset/byteLength/byteStride")
        if offset + length > len(self.bin):
            raise self.fail(f"bufferViews[{index}] ends at byte {offset + length}, past the {len(self.bin)}-byte BIN chunk (truncated file?)")
        return offset, length, stride

    def _read_view(self, view_index: int, extra_offset: int, dtype: np.dtype, count: int, width: int,
                   what: str) -> np.ndarray:
        view_off, view_len, stride = self.buffer_view(view_index)
        elem = dtype.itemsize * width
        stride = stride or elem
        if not isinstance(extra_offset, int) or extra_offset < 0 or stride < elem:
            raise self.fail(f"{what}: bad byteOffset or a byteStride smaller than one element")
        need = extra_offset + (stride * (count - 1) + elem if count else 0)
        if need > view_len:
            raise self.fail(f"{what}: {count} elements need {need} bytes, its bufferView holds {view_len}")
        if count == 0:
            return np.zeros((0, width), dtype)
        raw = np.frombuffer(self.bin, dtype=np.uint8, count=need, offset=view_off)
        rows = np.lib.stride_tricks.as_strided(raw[extra_offset:], shape=(count, elem), strides=(stride, 1))
        return np.ascontiguousarray(rows).view(dtype).reshape(count, width)

    def accessor(self, index: int) -> np.ndarray:
        """Accessor ``index`` as a (count, width) array of its component type (float32 when
        normalised), with sparse values substituted."""
        acc = self._item("accessors", index)
        what = f"accessors[{index}]"
        dtype = COMPONENT_TYPES.get(acc.get("componentType"))
        width = TYPE_WIDTHS.get(acc.get("type"))
        count = acc.get("count")
        if dtype is None or width is None:
            raise self.fail(f"{what} has an unknown componentType/type ({acc.get('componentType')}, {acc.get('type')})")
        if not isinstance(count, int) or not 0 <= count <= MAX_ACCESSOR_COUNT:
            raise self.fail(f"{what} has a bad element count {count!r}")
        if width in (4, 9) and acc.get("type", "").startswith("MAT") and dtype.itemsize < 4:
            raise self.fail(f"{what}: small-integer matrices (column padding) are not supported")
        if "bufferView" in acc:
            out = self._read_view(acc["bufferView"], acc.get("byteOffset", 0), dtype, count, width, what)
        else:
            out = np.zeros((count, width), dtype)
        sparse = acc.get("sparse")
        if sparse is not None:
            out = np.array(out)  # writable
            n = sparse.get("count") if isinstance(sparse, dict) else None
            idx_spec, val_spec = (sparse.get("indices"), sparse.get("values")) if isinstance(sparse, dict) else (None, None)
            if not isinstance(n, int) or not 0 < n <= count or not isinstance(idx_spec, dict) or not isinstance(val_spec, dict):
                raise self.fail(f"{what}: malformed sparse section")
            idx_type = COMPONENT_TYPES.get(idx_spec.get("componentType"))
            if idx_type is None or idx_type.kind != "u":
                raise self.fail(f"{what}: sparse indices must be unsigned integers")
            idx = self._read_view(idx_spec.get("bufferView"), idx_spec.get("byteOffset", 0), idx_type, n, 1,
                                  f"{what} sparse indices")[:, 0]
            vals = self._read_view(val_spec.get("bufferView"), val_spec.get("byteOffset", 0), dtype, n, width,
                                   f"{what} sparse values")
            if idx.size and int(idx.max()) >= count:
                raise self.fail(f"{what}: a sparse index ({int(idx.max())}) is beyond the {count} elements")
            out[idx.astype(np.int64)] = vals
        if acc.get("normalized") and dtype.kind in "iu":
            info = np.iinfo(dtype)
            out = np.maximum(out.astype(np.float32) / info.max, -1.0).astype(np.float32)
        return out

    def with_accessor_data(self, index: int, values: np.ndarray) -> Glb:
        """A copy with dense accessor ``index`` overwritten by ``values`` (same shape and type)
        in place in BIN, its ``min``/``max`` updated. Refuses accessors whose bytes are shared,
        strided or sparse: changing them in place would change other data too."""
        acc = self._item("accessors", index)
        what = f"accessors[{index}]"
        current = self.accessor(index)
        values = np.asarray(values)
        if values.shape != current.shape:
            raise self.fail(f"{what}: new data has shape {values.shape}, the accessor holds {current.shape}")
        if "sparse" in acc or "bufferView" not in acc or acc.get("normalized"):
            raise self.fail(f"{what} is sparse, normalised or has no bufferView; it cannot be replaced in place")
        view = acc["bufferView"]
        users = [i for i, a in enumerate(self.gltf.get("accessors", [])) if isinstance(a, dict) and a.get("bufferView") == view]
        offset, _, stride = self.buffer_view(view)
        dtype = COMPONENT_TYPES[acc["componentType"]]
        if users != [index] or (stride not in (None, dtype.itemsize * values.shape[1])):
            raise self.fail(f"{what} shares or strides its bufferView; it cannot be replaced in place")
        data = np.ascontiguousarray(values, dtype=dtype).tobytes()
        start = offset + acc.get("byteOffset", 0)
        new_bin = self.bin[:start] + data + self.bin[start + len(data):]
        gltf = json.loads(json.dumps(self.gltf))  # deep copy of plain JSON
        new_acc = gltf["accessors"][index]
        if "min" in acc or "max" in acc:
            cast = (lambda v: float(v)) if dtype.kind == "f" else (lambda v: int(v))
            new_acc["min"] = [cast(v) for v in values.min(axis=0)] if len(values) else []
            new_acc["max"] = [cast(v) for v in values.max(axis=0)] if len(values) else []
        return Glb(gltf, new_bin, self.name)

    def to_bytes(self) -> bytes:
        """The ``.glb`` file: header, JSON chunk (space-padded), BIN chunk (zero-padded)."""
        js = json.dumps(self.gltf, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        js += b" " * (-len(js) % 4)
        chunks = struct.pack("<II", len(js), _JSON_CHUNK) + js
        if self.bin:
            bin_ = self.bin + b"\0" * (-len(self.bin) % 4)
            chunks += struct.pack("<II", len(bin_), _BIN_CHUNK) + bin_
        return struct.pack("<4sII", MAGIC, 2, 12 + len(chunks)) + chunks


def read_glb(data: bytes, name: str = "glb") -> Glb:
    """Parse a ``.glb`` byte string; raises :class:`GlbError` naming ``name`` and the problem."""
    if len(data) < 20 or data[:4] != MAGIC:
        raise GlbError(f"{name}: not a glTF binary file (no 'glTF' header)")
    _, version, length = struct.unpack_from("<4sII", data)
    if version != 2:
        raise GlbError(f"{name}: glTF version {version}; only glTF 2.0 is supported")
    if length != len(data):
        raise GlbError(f"{name}: the header says {length} bytes, the file has {len(data)} (truncated or padded file)")
    offset, json_bytes, bin_bytes = 12, None, b""
    while offset + 8 <= length:
        size, kind = struct.unpack_from("<II", data, offset)
        body = data[offset + 8: offset + 8 + size]
        if len(body) != size:
            raise GlbError(f"{name}: a chunk runs past the end of the file (truncated file)")
        if json_bytes is None:
            if kind != _JSON_CHUNK:
                raise GlbError(f"{name}: the first chunk is not JSON")
            json_bytes = body
        elif kind == _BIN_CHUNK and not bin_bytes:
            bin_bytes = body
        offset += 8 + size
    if json_bytes is None:
        raise GlbError(f"{name}: no JSON chunk")
    try:
        gltf = json.loads(json_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise GlbError(f"{name}: the JSON chunk is not valid JSON ({exc})") from None
    if not isinstance(gltf, dict):
        raise GlbError(f"{name}: the JSON chunk is not a glTF document")
    buffers = gltf.get("buffers") or []
    if buffers and isinstance(buffers[0], dict) and "uri" in buffers[0]:
        raise GlbError(f"{name}: buffer 0 refers to external data ({buffers[0]['uri']!r}); expected the data inside the file")
    if buffers and isinstance(buffers[0], dict) and isinstance(buffers[0].get("byteLength"), int) \
            and buffers[0]["byteLength"] > len(bin_bytes):
        raise GlbError(f"{name}: buffer 0 declares {buffers[0]['byteLength']} bytes, the BIN chunk has {len(bin_bytes)} (truncated file)")
    return Glb(gltf, bytes(bin_bytes), name)
