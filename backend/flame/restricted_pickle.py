"""Load FLAME pickles (and pickled ``.npy`` files) without executing arbitrary code.

A pickle can name any importable callable (``os.system``, ``builtins.eval``...) and
the unpickler calls it. Here the unpickler resolves names only from an allow-list of
plain-data classes and refuses everything else before anything runs.

Allowed names are not enough on their own: numpy applies a pickled dtype state unchecked, so
a plain ``uint32`` can be told it holds object references (its bytes then read as pointers).
The pure-Python unpickler is used so that BUILD on a dtype can be intercepted: only the byte
order is taken, numpy's own item size and flags are kept, structures are refused.

The official FLAME pickles were written by Python 2 with chumpy and scipy objects in
them. Neither library is imported: ``chumpy.ch.Ch`` and ``scipy.sparse`` CSC matrices
are rebuilt as stand-ins that only capture their pickled state, then turned into
plain numpy arrays by :func:`to_plain`.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import BadInputError
from ..core.formats.npz_arrays import NpzError, npy_data, npy_header


class ChumpyStandIn:
    """Pickled state of a ``chumpy.ch.Ch``: the value is the array stored under ``x``."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def to_array(self) -> np.ndarray:
        state = getattr(self, "state", None)
        if not isinstance(state, dict) or "x" not in state:
            raise BadInputError("a chumpy object in the FLAME file has no array under 'x'; the file is not a FLAME model")
        return np.asarray(to_plain(state["x"]))


class CscMatrixStandIn:
    """Pickled state of a ``scipy.sparse`` CSC matrix (``data``, ``indices``, ``indptr``, shape)."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def to_array(self) -> np.ndarray:
        st = getattr(self, "state", None)
        if not isinstance(st, dict):
            raise BadInputError("a sparse matrix in the FLAME file has no readable state")
        try:
            shape = tuple(int(s) for s in st.get("_shape", st.get("shape")))
            data = np.asarray(st["data"], dtype=np.float64)
            indices = np.asarray(st["indices"], dtype=np.int64)
            indptr = np.asarray(st["indptr"], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInputError(f"a sparse matrix in the FLAME file is incomplete ({exc})") from None
        if len(shape) != 2 or min(shape) < 0:
            raise BadInputError(f"a sparse (CSC) matrix in the FLAME file has the shape {shape}")
        rows, cols = shape
        if (indptr.shape != (cols + 1,) or indices.shape != data.shape or indptr[0] != 0 or indptr[-1] != data.size
                or (np.diff(indptr) < 0).any()):
            raise BadInputError("a sparse (CSC) matrix in the FLAME file is inconsistent")
        if data.size and (indices.min() < 0 or indices.max() >= rows):
            raise BadInputError("a sparse (CSC) matrix in the FLAME file has row indices out of range")
        dense = np.zeros(shape, dtype=np.float64)
        col = np.repeat(np.arange(cols), np.diff(indptr))
        np.add.at(dense, (indices, col), data)  # duplicates add up, as in scipy
        return dense


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """``copy_reg._reconstructor`` restricted to our stand-ins on ``object``."""
    if cls not in (ChumpyStandIn, CscMatrixStandIn) or base is not object or state is not None:
        raise BadInputError(f"refused to rebuild {getattr(cls, '__name__', cls)!r} from a pickle")
    return object.__new__(cls)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes; text codecs only."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1", "utf-8", "utf8", "ascii"):
        raise BadInputError(f"refused codec {encoding!r} in a pickle")
    return text.encode(encoding)


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """``numpy.dtype`` as pickles call it, for plain (non-structured) type codes only."""
    if not isinstance(spec, str):
        raise BadInputError(f"refused dtype {spec!r} in a pickle (only plain type codes are read)")
    try:
        dt = np.dtype(spec)
    except TypeError as exc:
        raise BadInputError(f"refused dtype {spec!r} in a pickle ({exc})") from None
    if dt.fields is not None or dt.subdtype is not None or dt.kind not in "biufcSUO":
        raise BadInputError(f"refused dtype {spec!r} in a pickle (only plain numbers, strings and objects)")
    return dt


def _dtype_from_state(dt: np.dtype, state: Any) -> np.dtype:
    """What ``dt.__setstate__(state)`` would leave, without calling it: numpy applies such states
    unchecked (an item size or flags that disagree with the type corrupt memory). Only the byte
    order is taken; a structure, a subarray or another item size is refused."""
    if not (isinstance(state, tuple) and len(state) >= 6 and state[1] in ("<", ">", "|", "=")
            and all(x is None for x in state[2:5]) and state[5] in (-1, dt.itemsize)):
        raise BadInputError(f"refused a {dt} dtype state {state!r} in a pickle (not a plain type's)")
    return dt if state[1] in ("|", "=") or dt.byteorder == "|" else dt.newbyteorder(state[1])


def _numpy_reconstruct(subtype: type, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise BadInputError(f"refused array subclass {subtype!r} in a pickle")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _numpy_scalar(dtype: np.dtype, data: Any = None) -> Any:
    return np.core.multiarray.scalar(dtype, data) if data is not None else np.core.multiarray.scalar(dtype)


# Plain numpy data: arrays, dtypes, scalars (numpy 1 and numpy 2 module names).
NUMPY_ALLOWED: dict[tuple[str, str], Any] = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    NUMPY_ALLOWED[(_mod, "_reconstruct")] = _numpy_reconstruct
    NUMPY_ALLOWED[(_mod, "scalar")] = _numpy_scalar
NUMPY_ALLOWED.update(
    {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _numpy_dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("copy_reg", "_reconstructor"): _reconstructor,
        ("copyreg", "_reconstructor"): _reconstructor,
        ("__builtin__", "object"): object,
        ("builtins", "object"): object,
        ("__builtin__", "set"): set,
        ("builtins", "set"): set,
        ("__builtin__", "frozenset"): frozenset,
        ("builtins", "frozenset"): frozenset,
    }
)

# What the official FLAME pickles name (Python 2, chumpy, scipy.sparse), on top of numpy.
FLAME_ALLOWED: dict[tuple[str, str], Any] = {
    **NUMPY_ALLOWED,
    ("chumpy.ch", "Ch"): ChumpyStandIn,
    ("scipy.sparse.csc", "csc_matrix"): CscMatrixStandIn,
    ("scipy.sparse._csc", "csc_matrix"): CscMatrixStandIn,
    ("scipy.sparse", "csc_matrix"): CscMatrixStandIn,
}


class _RestrictedUnpickler(pickle._Unpickler):  # noqa: SLF001  the pure-Python unpickler: its BUILD can be checked
    dispatch = dict(pickle._Unpickler.dispatch)  # noqa: SLF001

    def __init__(self, fh: Any, allowed: Mapping[tuple[str, str], Any], what: str):
        super().__init__(fh, encoding="latin1")
        self._allowed = allowed
        self._what = what

    def load_build(self) -> None:
        inst = self.stack[-2]
        if not isinstance(inst, np.dtype):
            return super().load_build()
        dt = _dtype_from_state(inst, self.stack.pop())
        if dt is not inst:  # a byte order: the memo must hand out the same dtype as the stack
            self.stack[-1] = dt
            self.memo.update({k: dt for k, v in self.memo.items() if v is inst})

    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise BadInputError(
                f"refused to load {self._what}: it names '{module}.{name}', which is not one of the plain data "
                "classes a FLAME/numpy file may contain (a pickle can run code, so nothing else is accepted); "
                "use the original file from the FLAME website or LAM's assets"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise BadInputError(f"refused to load {self._what}: it uses persistent ids, which plain data files do not")


def restricted_loads(data: bytes, allowed: Mapping[tuple[str, str], Any] | None = None, what: str = "the file") -> Any:
    """Unpickle ``data`` resolving only ``allowed`` (``(module, name) -> object``; default
    :data:`FLAME_ALLOWED`). Python 2 strings are read as latin-1. Raises BadInputError for a
    forbidden name or a corrupt pickle. The result may hold stand-ins: see :func:`to_plain`."""
    unpickler = _RestrictedUnpickler(io.BytesIO(data), FLAME_ALLOWED if allowed is None else allowed, what)
    try:
        return unpickler.load()
    except BadInputError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError, MemoryError,
            OverflowError, RecursionError, struct.error) as exc:  # UnicodeError is a ValueError
        raise BadInputError(f"{what} is not a readable pickle ({type(exc).__name__}: {exc}); the file may be truncated or corrupt") from None


def to_plain(obj: Any) -> Any:
    """Replace stand-ins by numpy arrays, recursively through dicts, lists and tuples."""
    if isinstance(obj, (ChumpyStandIn, CscMatrixStandIn)):
        return obj.to_array()
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def load_pickled_npy(path: str | os.PathLike) -> Any:
    """Read a ``.npy`` file that may hold a pickled object (e.g. LAM's
    ``landmark_embedding_with_eyes.npy``, a dict of arrays) through the restricted unpickler.

    Returns the object for a 0-d object array (``np.save`` of a dict), the array otherwise.
    """
    path = Path(path)
    what = f"'{path}'"
    try:
        with path.open("rb") as fh:
            shape, fortran, dtype = npy_header(fh)
            if not dtype.hasobject:
                return npy_data(fh, shape, fortran, dtype, path.stat().st_size - fh.tell())
            payload = fh.read()
    except FileNotFoundError:
        raise BadInputError(f"{what} not found") from None
    except NpzError as exc:
        raise BadInputError(f"{what} {exc.problem}; it is not a valid .npy file") from None
    except OSError as exc:
        raise BadInputError(f"{what} cannot be read ({exc})") from None
    arr = restricted_loads(payload, NUMPY_ALLOWED, what)
    if not isinstance(arr, np.ndarray):
        raise BadInputError(f"{what}: the pickled payload is a {type(arr).__name__}, not an array")
    if arr.shape == () and arr.dtype.hasobject:
        return arr.item()
    return arr
