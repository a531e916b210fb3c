"""Torch-free safetensors helpers: header validation with clear errors, streaming writer, FLAME buffers.

Only the safetensors format is read (never pickle). The header is parsed and checked here before any
tensor is touched, so a truncated download or a wrong file gives a message naming the file.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import BadInputError

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FLAME_PREFIX = "renderer.flame_model."
_MAX_HEADER = 100 * 1024 * 1024

_DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_NP_TO_ST = {
    np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL",
}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


def read_header(path: str | Path) -> dict[str, TensorInfo]:
    """Validate a safetensors file's header against its size; return name -> (dtype, shape).

    Raises BadInputError for a missing file, a non-safetensors file, or a truncated one.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"weights file not found: {path}")
    size = path.stat().st_size
    hint = "re-download the model weights (lam-head download / the add-on's setup)"
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise BadInputError(f"{path}: not a safetensors file (only {size} bytes); {hint}")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > _MAX_HEADER:
            raise BadInputError(f"{path}: not a safetensors file (bad header length {n}); {hint}")
        if 8 + n > size:
            raise BadInputError(f"{path}: truncated (header needs {8 + n} bytes, file has {size}); {hint}")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadInputError(f"{path}: not a safetensors file (unreadable header: {exc}); {hint}") from exc
    out: dict[str, TensorInfo] = {}
    data_size = size - 8 - n
    end_max = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = str(info["dtype"]), tuple(int(s) for s in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInputError(f"{path}: malformed header entry for {name!r}; {hint}") from exc
        if dtype not in _DTYPE_SIZE or end - begin != _DTYPE_SIZE[dtype] * int(np.prod(shape, dtype=np.int64)):
            raise BadInputError(f"{path}: tensor {name!r} has inconsistent dtype/shape/offsets; {hint}")
        end_max = max(end_max, end)
        out[name] = TensorInfo(dtype, shape)
    if end_max > data_size:
        raise BadInputError(
            f"{path}: truncated (tensor data needs {end_max} bytes after the header, file has {data_size}); {hint}"
        )
    return out


def write_safetensors_streaming(
    path: str | Path,
    entries: Iterable[tuple[str, tuple[int, ...], np.dtype]],
    produce: Callable[[str, tuple[int, ...], np.dtype], np.ndarray],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a safetensors file one tensor at a time (peak memory: the largest tensor), temp + rename.

    ``entries`` gives name, shape, dtype in file order; ``produce(name, shape, dtype)`` returns each array.
    """
    path = Path(path)
    entries = [(n, tuple(s), np.dtype(d)) for n, s, d in entries]
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, dtype in entries:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": _NP_TO_ST[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for name, shape, dtype in entries:
            arr = np.ascontiguousarray(produce(name, shape, dtype), dtype=dtype.newbyteorder("<"))
            if arr.shape != shape:
                raise ValueError(f"{name}: produced shape {arr.shape}, declared {shape}")
            fh.write(arr.tobytes())
    os.replace(tmp, path)


def read_flame_buffers(weights_dir: str | Path) -> dict[str, np.ndarray] | None:
    """The checkpoint's ``renderer.flame_model.*`` buffers (prefix stripped), or None if it has none.

    Keys as the reference registers them: ``v_template``, ``shapedirs``, ``posedirs``, ``J_regressor``,
    ``parents``, ``lbs_weights``, ``*_up`` subdivided versions, ``faces_up``, ``mask.v.<region>``...
    """
    from safetensors import safe_open

    path = Path(weights_dir) / WEIGHTS_NAME
    names = [k for k in read_header(path) if k.startswith(FLAME_PREFIX)]
    if not names:
        return None
    out = {}
    try:
        with safe_open(str(path), framework="np") as f:
            for k in names:
                out[k[len(FLAME_PREFIX) :]] = f.get_tensor(k)
    except Exception as exc:  # safetensors raises its own error types
        raise BadInputError(f"{path}: cannot read FLAME buffers ({exc})") from exc
    return out
