"""Reading numpy ``.npz`` archives and ``.npy`` headers that users hand us, as arrays only.

``np.load`` never unpickles with ``allow_pickle=False``, but on a damaged file it raises whatever its
parsers meet (``SyntaxError`` and ``tokenize.TokenError`` from a garbled header, ``zlib.error``,
``TypeError`` for a bad dtype, ``MemoryError`` when a header claims terabytes) and it allocates
the shape a header declares before reading a byte of data. Here every member's header is checked
against the member's size first, and any damage becomes one :class:`NpzError` naming the member,
which each caller turns into its own message (avatar, FLAME, motion, ...).
"""

from __future__ import annotations

import io
import math
import os
import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npy_format

DEFAULT_MAX_BYTES = 4 << 30  # all members inflated: 4 GiB, several times the largest avatar we write
# What numpy's header parsing and zipfile's inflating raise on damaged bytes.
_DAMAGE = (ValueError, TypeError, SyntaxError, tokenize.TokenError, EOFError, OSError,
           zipfile.BadZipFile, zlib.error, NotImplementedError)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_CHUNK = 1 << 18


class NpzError(ValueError):
    """A file that is not a readable array archive; ``problem`` says why in words a user can act on
    (from :func:`npy_header` and :func:`npy_data` a predicate: "has a damaged .npy header (...)")."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


class NeedsPickleError(NpzError):
    """An object array: loading it would run pickle, which we never do for users' files."""


def npy_header(fh: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the ``.npy`` stream at ``fh`` (left at the start of the data)."""
    try:
        version = npy_format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(fh)
        elif version == (3, 0):  # utf-8 field names; numpy has no public reader for it
            shape, fortran, dtype = npy_format._read_array_header(fh, version)  # noqa: SLF001
        else:
            raise NpzError(f"has an unsupported .npy version {version}")
    except NpzError:
        raise
    except _DAMAGE as exc:
        raise NpzError(f"has a damaged .npy header ({type(exc).__name__}: {exc})") from None
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise NpzError(f"has a damaged .npy header (shape {shape})")
    return tuple(shape), bool(fortran), dtype


def read_npz(source: str | os.PathLike | bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, np.ndarray]:
    """Every ``<key>.npy`` member of an ``.npz`` (a path or its bytes) as a writable array, keyed as
    ``np.load`` keys them. Raises :class:`NpzError`: not a ZIP, a member that needs pickle, a header
    whose shape disagrees with the member's size, corrupt compressed data or CRC, more than
    ``max_bytes`` in all. Members that are not ``.npy`` files are ignored."""
    if isinstance(source, (bytes, bytearray)):
        head, opener = bytes(source[:4]), lambda: io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise NpzError("file not found")
        with path.open("rb") as fh:
            head = fh.read(4)
        opener = lambda: path.open("rb")  # noqa: E731
    if head not in _ZIP_MAGIC:  # np.load would take anything else for a .npy or a pickle
        raise NpzError("not a readable .npz archive (no ZIP header)")
    arrays: dict[str, np.ndarray] = {}
    budget = int(max_bytes)
    try:
        with opener() as raw, zipfile.ZipFile(raw) as z:
            for info in z.infolist():
                if info.is_dir() or not info.filename.endswith(".npy"):
                    continue
                key = info.filename[: -len(".npy")]
                if info.flag_bits & 0x1:
                    raise _damaged(key, "is encrypted")
                if info.file_size > budget:
                    raise _damaged(key, f"would inflate to {info.file_size} bytes, more than the "
                                        f"{max_bytes >> 20} MiB allowed in all")
                budget -= info.file_size
                arrays[key] = _member(z, info, key)
    except NpzError:
        raise
    except _DAMAGE as exc:
        raise NpzError(f"not a readable .npz archive ({type(exc).__name__}: {exc})") from None
    return arrays


def _damaged(key: str, detail: str) -> NpzError:
    return NpzError(f"not a readable .npz archive: member '{key}' {detail}")


def npy_data(fh: BinaryIO, shape: tuple[int, ...], fortran: bool, dtype: np.dtype, available: int) -> np.ndarray:
    """The array whose header :func:`npy_header` just read, as a writable array. ``available``: the bytes
    left in the stream; they must be exactly the data the header declares (checked before allocating)."""
    if dtype.hasobject:
        raise NeedsPickleError("holds Python objects and needs pickle to load: refused")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != available:
        raise NpzError(f"is damaged: its header declares {nbytes} bytes of data, it holds {available}")
    try:
        flat = np.empty(math.prod(shape), dtype=dtype)  # the size was checked above
        out, done = memoryview(flat.view(np.uint8)), 0
        while done < nbytes:  # in chunks, as np.load does: one large zip read concatenates its pieces
            chunk = fh.read(min(_CHUNK, nbytes - done))
            if not chunk:
                raise NpzError("is damaged: it ends early")
            out[done:done + len(chunk)] = chunk
            done += len(chunk)
        if fh.read(1):  # reading to the end checks a zip member's CRC
            raise NpzError("is damaged: it holds more than its header declares")
        return flat.reshape(shape, order="F" if fortran else "C")
    except _DAMAGE as exc:
        raise NpzError(f"is damaged ({type(exc).__name__}: {exc})") from None


def _member(z: zipfile.ZipFile, info: zipfile.ZipInfo, key: str) -> np.ndarray:
    with z.open(info) as fh:
        try:
            shape, fortran, dtype = npy_header(fh)
            return npy_data(fh, shape, fortran, dtype, info.file_size - fh.tell())
        except NeedsPickleError as exc:
            raise NeedsPickleError(f"member '{key}' {exc.problem}") from None
        except NpzError as exc:
            raise _damaged(key, exc.problem) from None
