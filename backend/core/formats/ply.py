"""3D Gaussian splat PLY files: the standard 3DGS layout and LAM's ``offset.ply``.

Files are read and written with ``plyfile`` (numpy only, pure Python; the
add-on bundles its wheel, the backend lists it in ``requirements.txt``); this
module is the 3DGS encoding layer on top. Values cross its API in avatar units
and are encoded/decoded here:

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

Files are written atomically (temporary file in the same folder, then rename),
as binary little-endian float32, the layout every 3DGS viewer reads.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np

from ..atomic_write import atomic_path
from ..errors import BadInputError, LamHeadError

SH_C0 = 0.28209479177387814
OPACITY_EPS = 1e-6

GEOMETRY_PROPS = ("x", "y", "z", "nx", "ny", "nz")
DC_PROPS = ("f_dc_0", "f_dc_1", "f_dc_2")
TAIL_PROPS = ("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
OFFSET_PLY_PROPS = GEOMETRY_PROPS + DC_PROPS + TAIL_PROPS  # the 17 properties of LAM's offset.ply
# f_rest counts for SH degrees 1, 2, 3 (3 channels x ((d + 1)^2 - 1) coefficients).
SH_REST_COUNTS = (9, 24, 45)

PLYFILE_REQUIREMENT = "plyfile==1.1.3"  # bundled with the add-on (wheels/), listed in backend/requirements.txt
_MAX_HEADER_BYTES = 1 << 20


class MissingDependencyError(LamHeadError):
    code = "missing_dependency"


def _plyfile():
    """The plyfile module, or an error that says how to install it (imported on first PLY use, so the
    add-on and the backend start without it)."""
    try:
        import plyfile
    except ImportError:
        import sys

        raise MissingDependencyError(
            f"PLY files need the 'plyfile' package, which is not installed for {sys.executable}: install it with "
            f"'{sys.executable} -m pip install {PLYFILE_REQUIREMENT}' (the backend's requirements.txt lists it; "
            "in Blender it comes with the extension)"
        ) from None
    return plyfile


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


def vertex_dtype(props) -> np.dtype:
    """The little-endian float32 record of one vertex with properties ``props``, in order."""
    return np.dtype([(p, "<f4") for p in props])


def _plydata(data: np.ndarray):
    """A one-element (``vertex``) binary little-endian PlyData of a structured float32 array."""
    plyfile = _plyfile()
    names = tuple(data.dtype.names or ())
    if not names or any(data.dtype[p] != np.dtype("<f4") for p in names):
        raise BadInputError("PLY export: expected a structured array of little-endian float32 fields")
    element = plyfile.PlyElement.describe(np.ascontiguousarray(data), "vertex")
    return plyfile.PlyData([element], text=False, byte_order="<")


def write_vertex_array(path: str | os.PathLike, data: np.ndarray) -> Path:
    """Write a structured array of float32 fields (see :func:`vertex_dtype`) as one ``vertex``
    element, atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    ply_data = _plydata(data)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        ply_data.write(fh)
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
    buf = io.BytesIO()
    _plydata(columns_to_vertex_array(columns)).write(buf)
    return buf.getvalue()


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


def _check_header(path: Path, head: bytes) -> None:
    """Cheap checks plyfile does not make before it reads: the magic line, a bounded header."""
    if head.split(b"\n", 1)[0].rstrip(b"\r") != b"ply":
        raise _bad(path, "the file does not start with 'ply'")
    end = head.find(b"end_header")
    if end < 0:
        if len(head) >= _MAX_HEADER_BYTES:
            raise _bad(path, "the header is larger than 1 MiB")
        raise _bad(path, "the header has no 'end_header' line (truncated file?)")
    try:
        head[:end].decode("ascii")
    except UnicodeDecodeError:
        raise _bad(path, "the header contains non-ASCII bytes") from None


def _header_problem(path: Path, exc: Exception, header: str) -> BadInputError:
    """plyfile's header message -> ours, quoting the header line it names."""
    msg = getattr(exc, "message", None) or str(exc)
    line = getattr(exc, "line", None)
    lines = header.splitlines()
    text = lines[line - 1].strip() if isinstance(line, int) and 0 < line <= len(lines) else ""
    if "understand format" in msg or "expected \"format" in msg or "version" in msg:
        return _bad(path, f"unsupported format line '{text}'")
    if "field type" in msg:
        return _bad(path, f"bad property line '{text}' (unknown type)")
    if "property" in msg:
        return _bad(path, f"bad property line '{text}' ({msg})")
    if "element" in msg or "count" in msg:
        return _bad(path, f"bad element line '{text}' ({msg})")
    if "same name" in msg:
        return _bad(path, "an element repeats a property name")
    return _bad(path, f"bad header line '{text}' ({msg})")


def _read_plydata(path: Path, fh, plyfile):
    """PlyData of an open binary file ``fh`` (memory-mapped binary elements), our messages on errors."""
    head = fh.read(1 << 16)
    if b"end_header" not in head and len(head) == 1 << 16:  # a long header (many comments): read up to the limit
        head += fh.read(_MAX_HEADER_BYTES - len(head))
    _check_header(path, head)
    fh.seek(0)
    header = head[: head.find(b"end_header")].decode("ascii")
    try:
        return plyfile.PlyData.read(fh, mmap="c")
    except plyfile.PlyHeaderParseError as exc:
        raise _header_problem(path, exc, header) from None
    except plyfile.PlyElementParseError as exc:
        element = getattr(getattr(exc, "element", None), "name", "?")
        if exc.message == "early end-of-file":
            count = getattr(getattr(exc, "element", None), "count", "?")
            raise _bad(path, f"truncated: element '{element}' declares {count} rows, the data ends at row {exc.row}") from None
        raise _bad(path, f"element '{element}': {exc}") from None
    except ValueError as exc:  # plyfile's checks of names and types (e.g. a repeated property name)
        if "same name" in str(exc):
            raise _bad(path, "an element repeats a property name") from None
        raise _bad(path, str(exc)) from None


def read_ply_columns(source: str | os.PathLike | bytes, name: str | None = None) -> dict[str, np.ndarray]:
    """The ``vertex`` element's scalar properties as exact float32 columns (raw, undecoded).

    ``source``: a path, or the file's bytes (``name`` then labels messages, e.g. a ZIP member).
    Read with plyfile: binary (either endianness) and ASCII files as written by any PLY writer.
    Raises :class:`BadInputError` for a bad header or truncated data.
    """
    plyfile = _plyfile()
    if isinstance(source, (bytes, bytearray, memoryview)):
        # plyfile reads binary data fast only from a real file (memory map); bytes go to an unnamed temp file.
        path = Path(name or "PLY data")
        opened = tempfile.TemporaryFile()
        opened.write(source)
        opened.seek(0)
    else:
        path = Path(source)
        if not path.is_file():
            raise BadInputError(f"{path}: PLY file not found")
        opened = open(path, "rb")
    with opened as fh:
        data = _read_plydata(path, fh, plyfile)
        try:
            vertex = data["vertex"]
        except KeyError:
            raise _bad(path, "the file has no 'vertex' element") from None
        if any(isinstance(p, plyfile.PlyListProperty) for p in vertex.properties):
            raise _bad(path, "the 'vertex' element has list properties; a splat PLY has only scalar properties")
        names = [p.name for p in vertex.properties]
        table = vertex.data.view(np.ndarray)  # plain views: no memmap subclass overhead per column
        cols = {p: table[p].astype(np.float32) for p in names}  # copies: the memory map is released with ``data``
        del table, vertex, data
    return cols


def _require(path: Path, cols: dict, props: tuple[str, ...]) -> None:
    missing = [p for p in props if p not in cols]
    if missing:
        raise _bad(path, f"missing vertex properties: {', '.join(missing)}")


def _stack(cols: dict, props) -> np.ndarray:
    return np.stack([cols[p] for p in props], axis=1)


def _decode_common(path: Path, cols: dict) -> dict[str, np.ndarray]:
    _require(path, cols, ("x", "y", "z") + DC_PROPS + TAIL_PROPS)
    rot = np.stack([cols[p] for p in ("rot_0", "rot_1", "rot_2", "rot_3")], axis=1, dtype=np.float64)
    # |q| summed in np.linalg.norm's order (bit-identical), column-wise: 4x faster than a length-4 reduce per row
    c = [rot[:, i] for i in range(4)]
    norm = np.sqrt(((c[0] * c[0] + c[1] * c[1]) + c[2] * c[2]) + c[3] * c[3])
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
