"""3D Gaussian splat PLY files: the standard 3DGS layout and LAM's ``offset.ply``.

Numpy + stdlib only (the Blender add-on writes PLY sequences with it; no
plyfile at run time). Values cross this module's API in avatar units and are
encoded/decoded here:

================  =======================  ==========================================
avatar value      standard 3DGS property   encoding
================  =======================  ==========================================
xyz (N,3) m       x y z                    as is
rgb (N,3) [0,1]   f_dc_0..2                (rgb - 0.5) / C0, C0 = 0.28209479177387814
sh_rest (N,M)     f_rest_0..M-1            as is (file order, channel-major)
opacity (N,)      opacity                  logit(clip(opacity, 1e-6, 1 - 1e-6))
scale (N,3) sigma scale_0..2               ln(sigma)
rotation (N,4)    rot_0..3                 as is, w x y z
================  =======================  ==========================================

LAM's ``offset.ply`` (LAM_SPEC.md section 5) has the same 17 properties as a
standard file without ``f_rest`` but stores the *offset* from the shaped
canonical vertex in ``x y z`` and plain RGB in ``f_dc``.

Opacity 0 and 1 have no finite logit: they are clamped to ``OPACITY_EPS`` =
1e-6 and ``1 - OPACITY_EPS`` (logit +-13.8155), so they read back as 1e-6 and
0.999999. Every other encoded value is written as float32 and reads back
bit-exactly (see :func:`read_ply_columns`).

Files are written atomically (temporary file in the same folder, then rename).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ..atomic_write import atomic_path
from ..errors import BadInputError

SH_C0 = 0.28209479177387814
OPACITY_EPS = 1e-6

GEOMETRY_PROPS = ("x", "y", "z", "nx", "ny", "nz")
DC_PROPS = ("f_dc_0", "f_dc_1", "f_dc_2")
TAIL_PROPS = ("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
OFFSET_PLY_PROPS = GEOMETRY_PROPS + DC_PROPS + TAIL_PROPS  # the 17 properties of LAM's offset.ply
# f_rest counts for SH degrees 1, 2, 3 (3 channels x ((d + 1)^2 - 1) coefficients).
SH_REST_COUNTS = (9, 24, 45)

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": None}
_MAX_HEADER_BYTES = 1 << 20


# ----------------------------------------------------------------------------- encodings


def rgb_to_sh_dc(rgb: np.ndarray) -> np.ndarray:
    """N,3 colour in [0,1] -> N,3 degree-0 SH coefficients (float32)."""
    return ((np.asarray(rgb, dtype=np.float64) - 0.5) / SH_C0).astype(np.float32)


def sh_dc_to_rgb(f_dc: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_sh_dc`; not clipped (files may hold colours outside [0,1])."""
    return (np.asarray(f_dc, dtype=np.float64) * SH_C0 + 0.5).astype(np.float32)


def opacity_to_logit(opacity: np.ndarray) -> np.ndarray:
    """N opacities in [0,1] -> logits (float32); 0 and 1 clamp to +-logit(1 - 1e-6)."""
    o = np.clip(np.asarray(opacity, dtype=np.float64), OPACITY_EPS, 1.0 - OPACITY_EPS)
    return (np.log(o) - np.log1p(-o)).astype(np.float32)


def logit_to_opacity(logit: np.ndarray) -> np.ndarray:
    """Sigmoid, computed without overflow for large |logit|."""
    x = np.asarray(logit, dtype=np.float64)
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


def scale_to_log(scale: np.ndarray) -> np.ndarray:
    s = np.asarray(scale, dtype=np.float64)
    if s.size and not (s > 0).all():
        raise BadInputError("Gaussian scales must be positive standard deviations (found a value <= 0 or NaN)")
    return np.log(s).astype(np.float32)


# ----------------------------------------------------------------------------- writing


def _check_rows(name: str, a, n: int | None, width: int | None) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiu":
        raise BadInputError(f"PLY export: '{name}' must be numeric, got dtype {arr.dtype}")
    want_ndim = 1 if width is None else 2
    if arr.ndim != want_ndim or (width is not None and arr.shape[1] != width) or (n is not None and arr.shape[0] != n):
        shape = f"({n if n is not None else 'N'}{'' if width is None else f', {width}'})"
        raise BadInputError(f"PLY export: '{name}' has shape {arr.shape}, expected {shape}")
    if not np.isfinite(arr).all():
        raise BadInputError(f"PLY export: '{name}' contains NaN or infinite values")
    return arr


def _header(n: int, props: tuple[str, ...]) -> bytes:
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    lines += [f"property float {p}" for p in props]
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


def vertex_dtype(props) -> np.dtype:
    """The little-endian float32 record of one vertex with properties ``props``, in order."""
    return np.dtype([(p, "<f4") for p in props])


def write_vertex_array(path: str | os.PathLike, data: np.ndarray) -> Path:
    """Write a structured array of float32 fields (see :func:`vertex_dtype`) as one ``vertex``
    element, atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    names = tuple(data.dtype.names or ())
    if not names or any(data.dtype[p] != np.dtype("<f4") for p in names):
        raise BadInputError("PLY export: expected a structured array of little-endian float32 fields")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(_header(int(data.shape[0]), names))
        fh.write(np.ascontiguousarray(data).data)
    return path


def columns_to_vertex_array(columns: dict[str, np.ndarray]) -> np.ndarray:
    """property name -> (N,) arrays, to a structured float32 array in ``columns`` order."""
    names = tuple(columns)
    if not names:
        raise BadInputError("PLY export: no properties to write")
    n = int(np.asarray(columns[names[0]]).shape[0])
    data = np.empty(n, dtype=vertex_dtype(names))
    for p in names:
        col = np.asarray(columns[p])
        if col.shape != (n,):
            raise BadInputError(f"PLY export: property '{p}' has shape {col.shape}, expected ({n},)")
        data[p] = col
    return data


def columns_to_bytes(columns: dict[str, np.ndarray]) -> bytes:
    """The whole PLY file (header + data) for ``columns``, in memory (e.g. a ZIP member)."""
    data = columns_to_vertex_array(columns)
    return _header(int(data.shape[0]), tuple(data.dtype.names)) + np.ascontiguousarray(data).tobytes()


def write_ply_columns(path: str | os.PathLike, columns: dict[str, np.ndarray]) -> Path:
    """Write one ``vertex`` element of float32 properties, in ``columns`` order, atomically.

    ``columns``: property name -> (N,) array. The building block of the typed writers.
    """
    return write_vertex_array(path, columns_to_vertex_array(columns))


def encode_3dgs(xyz, rgb, opacity, scale, rotation, sh_rest=None) -> dict[str, np.ndarray]:
    """Avatar-unit arrays -> the standard 3DGS property columns (float32), in file order.

    Shapes: xyz N,3; rgb N,3; opacity N; scale N,3 (sigma > 0); rotation N,4 wxyz;
    sh_rest None or N,M with M in (9, 24, 45), file order (channel-major).
    """
    xyz = _check_rows("xyz", xyz, None, 3)
    n = xyz.shape[0]
    rgb = _check_rows("rgb", rgb, n, 3)
    opacity = _check_rows("opacity", opacity, n, None)
    scale = _check_rows("scale", scale, n, 3)
    rotation = _check_rows("rotation", rotation, n, 4)
    cols: dict[str, np.ndarray] = {}
    for i, p in enumerate("xyz"):
        cols[p] = xyz[:, i].astype(np.float32)
    zeros = np.zeros(n, dtype=np.float32)
    cols.update(nx=zeros, ny=zeros, nz=zeros)
    dc = rgb_to_sh_dc(rgb)
    for i in range(3):
        cols[f"f_dc_{i}"] = dc[:, i]
    if sh_rest is not None:
        sh_rest = np.asarray(sh_rest)
        if sh_rest.ndim != 2 or sh_rest.shape[0] != n or sh_rest.shape[1] not in SH_REST_COUNTS:
            raise BadInputError(f"PLY export: 'sh_rest' has shape {sh_rest.shape}, expected ({n}, M) with M in {SH_REST_COUNTS}")
        sh_rest = _check_rows("sh_rest", sh_rest, n, sh_rest.shape[1]).astype(np.float32)
        for i in range(sh_rest.shape[1]):
            cols[f"f_rest_{i}"] = sh_rest[:, i]
    cols["opacity"] = opacity_to_logit(opacity)
    log_s = scale_to_log(scale)
    for i in range(3):
        cols[f"scale_{i}"] = log_s[:, i]
    for i in range(4):
        cols[f"rot_{i}"] = rotation[:, i].astype(np.float32)
    return cols


def write_3dgs_ply(path: str | os.PathLike, xyz, rgb, opacity, scale, rotation, sh_rest=None) -> Path:
    """Write a standard 3DGS PLY (what splat viewers read). See :func:`encode_3dgs` for shapes."""
    return write_ply_columns(path, encode_3dgs(xyz, rgb, opacity, scale, rotation, sh_rest))


def encode_offset(offset, rgb, opacity, scale, rotation) -> dict[str, np.ndarray]:
    """Avatar-unit arrays -> LAM ``offset.ply`` columns (17 float32 properties)."""
    offset = _check_rows("offset", offset, None, 3)
    n = offset.shape[0]
    rgb = _check_rows("rgb", rgb, n, 3)
    cols = encode_3dgs(offset, np.full((n, 3), 0.5), opacity, scale, rotation)
    for i in range(3):
        cols[f"f_dc_{i}"] = rgb[:, i].astype(np.float32)
    return cols


def write_offset_ply(path: str | os.PathLike, offset, rgb, opacity, scale, rotation) -> Path:
    """Write LAM's ``offset.ply``: xyz = offset from the shaped canonical vertex, f_dc = RGB in [0,1]."""
    return write_ply_columns(path, encode_offset(offset, rgb, opacity, scale, rotation))


# ----------------------------------------------------------------------------- reading


def _bad(path: Path, problem: str) -> BadInputError:
    return BadInputError(f"{path}: not a usable Gaussian splat PLY: {problem}")


def _parse_header(path: Path, fh) -> tuple[str, list[tuple[str, int, list]], int]:
    """Returns (format, [(element, count, [(prop, dtype | ('list', count_dt, item_dt))])], header bytes)."""
    magic = fh.readline()
    if magic.rstrip(b"\r\n") != b"ply":
        raise _bad(path, "the file does not start with 'ply'")
    fmt = None
    elements: list[tuple[str, int, list]] = []
    size = len(magic)
    while True:
        line = fh.readline()
        size += len(line)
        if not line:
            raise _bad(path, "the header has no 'end_header' line (truncated file?)")
        if size > _MAX_HEADER_BYTES:
            raise _bad(path, "the header is larger than 1 MiB")
        try:
            words = line.decode("ascii").split()
        except UnicodeDecodeError:
            raise _bad(path, "the header contains non-ASCII bytes") from None
        if not words or words[0] in ("comment", "obj_info"):
            continue
        key = words[0]
        if key == "end_header":
            break
        if key == "format":
            if len(words) != 3 or words[1] not in _FORMATS:
                raise _bad(path, f"unsupported format line '{line.decode().strip()}'")
            fmt = words[1]
        elif key == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise _bad(path, f"bad element line '{line.decode().strip()}'")
            elements.append((words[1], int(words[2]), []))
        elif key == "property":
            if not elements:
                raise _bad(path, "a property appears before any element")
            if len(words) == 3 and words[1] in _PLY_TYPES:
                elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
            elif len(words) == 5 and words[1] == "list" and words[2] in _PLY_TYPES and words[3] in _PLY_TYPES:
                elements[-1][2].append((words[4], ("list", _PLY_TYPES[words[2]], _PLY_TYPES[words[3]])))
            else:
                raise _bad(path, f"bad property line '{line.decode().strip()}'")
        else:
            raise _bad(path, f"unknown header keyword '{key}'")
    if fmt is None:
        raise _bad(path, "the header has no 'format' line")
    return fmt, elements, size


def read_ply_columns(source: str | os.PathLike | bytes, name: str | None = None) -> dict[str, np.ndarray]:
    """The ``vertex`` element's scalar properties as exact float32 columns (raw, undecoded).

    ``source``: a path, or the file's bytes (``name`` then labels messages, e.g. a ZIP member).
    Reads binary (either endianness) and ASCII files as written by any PLY
    writer, as long as elements before ``vertex`` have no list properties.
    Raises :class:`BadInputError` for a bad header or truncated data.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        path, opened = Path(name or "PLY data"), io.BytesIO(bytes(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise BadInputError(f"{path}: PLY file not found")
        opened = open(path, "rb")
    with opened as fh:
        fmt, elements, header_size = _parse_header(path, fh)
        endian = _FORMATS[fmt]
        skip = 0
        for name, count, props in elements:
            if name == "vertex":
                vertex_count, vertex_props = count, props
                break
            if any(isinstance(dt, tuple) for _, dt in props):
                raise _bad(path, f"element '{name}' before 'vertex' has list properties; unsupported")
            skip += count * sum(np.dtype(dt).itemsize for _, dt in props) if endian else count
        else:
            raise _bad(path, "the file has no 'vertex' element")
        if any(isinstance(dt, tuple) for _, dt in vertex_props):
            raise _bad(path, "the 'vertex' element has list properties; a splat PLY has only scalar properties")
        names = [p for p, _ in vertex_props]
        if len(set(names)) != len(names):
            raise _bad(path, "the 'vertex' element repeats a property name")
        if endian is None:  # ascii
            text = fh.read().decode("ascii", errors="replace").split("\n")
            rows = [r for r in text if r.strip()][skip : skip + vertex_count]
            if len(rows) < vertex_count:
                raise _bad(path, f"truncated: {vertex_count} vertices declared, {len(rows)} found")
            try:
                table = np.array([r.split() for r in rows], dtype=np.float64) if rows else np.zeros((0, len(names)))
            except ValueError:
                raise _bad(path, "the ASCII vertex data is not a table of numbers") from None
            if table.ndim != 2 or table.shape[1] != len(names):
                raise _bad(path, f"the ASCII vertex rows do not have {len(names)} values each")
            return {p: table[:, i].astype(np.float32) for i, p in enumerate(names)}
        dtype = np.dtype([(p, endian + dt) for p, dt in vertex_props])
        need = vertex_count * dtype.itemsize
        fh.seek(header_size + skip)
        raw = fh.read(need)
    if len(raw) < need:
        raise _bad(path, f"truncated: {vertex_count} vertices declared ({need} bytes of data), only {len(raw)} bytes present")
    data = np.frombuffer(raw, dtype=dtype, count=vertex_count)
    return {p: data[p].astype(np.float32) for p in names}


def _require(path: Path, cols: dict, props: tuple[str, ...]) -> None:
    missing = [p for p in props if p not in cols]
    if missing:
        raise _bad(path, f"missing vertex properties: {', '.join(missing)}")


def _stack(cols: dict, props) -> np.ndarray:
    return np.stack([cols[p] for p in props], axis=1)


def _decode_common(path: Path, cols: dict) -> dict[str, np.ndarray]:
    _require(path, cols, ("x", "y", "z") + DC_PROPS + TAIL_PROPS)
    rot = _stack(cols, ("rot_0", "rot_1", "rot_2", "rot_3")).astype(np.float64)
    norm = np.linalg.norm(rot, axis=1)
    if (norm == 0).any() or not np.isfinite(norm).all():
        bad = int(np.argmax((norm == 0) | ~np.isfinite(norm)))
        raise _bad(path, f"vertex {bad} has a zero or non-finite rotation quaternion")
    return {
        "xyz": _stack(cols, "xyz"),
        "opacity": logit_to_opacity(cols["opacity"]),
        "scale": np.exp(_stack(cols, ("scale_0", "scale_1", "scale_2")).astype(np.float64)).astype(np.float32),
        "rotation": (rot / norm[:, None]).astype(np.float32),
    }


def read_3dgs_ply(path: str | os.PathLike) -> dict[str, np.ndarray | None]:
    """Read a standard 3DGS PLY into avatar units.

    Returns ``xyz`` N,3; ``rgb`` N,3 (from f_dc, not clipped); ``opacity`` N (sigmoid);
    ``scale`` N,3 (exp); ``rotation`` N,4 wxyz (normalised); ``sh_rest`` N,M or None;
    ``normals`` N,3 or None.
    """
    path = Path(path)
    cols = read_ply_columns(path)
    out: dict[str, np.ndarray | None] = dict(_decode_common(path, cols))
    out["rgb"] = sh_dc_to_rgb(_stack(cols, DC_PROPS))
    n_rest = 0
    while f"f_rest_{n_rest}" in cols:
        n_rest += 1
    if n_rest and n_rest not in SH_REST_COUNTS:
        raise _bad(path, f"{n_rest} f_rest properties; expected one of {SH_REST_COUNTS}")
    out["sh_rest"] = _stack(cols, [f"f_rest_{i}" for i in range(n_rest)]) if n_rest else None
    out["normals"] = _stack(cols, ("nx", "ny", "nz")) if all(p in cols for p in ("nx", "ny", "nz")) else None
    return out


def read_offset_ply(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read LAM's ``offset.ply``: ``offset`` N,3, ``rgb`` N,3, ``opacity`` N, ``scale`` N,3, ``rotation`` N,4."""
    path = Path(path)
    cols = read_ply_columns(path)
    out = _decode_common(path, cols)
    return {"offset": out.pop("xyz"), "rgb": _stack(cols, DC_PROPS), **out}
