"""Safe extraction of downloaded tar archives (LAM's asset archive).

Every member is checked before anything is written; one bad member refuses the
whole archive: no absolute paths or drive letters, no ``..`` components, no
device files or FIFOs, and links only when their target stays inside the
destination (links are then not materialised: only regular files and
directories are written, each via a temporary file and a rename). Member names
are checked by :mod:`backend.core.formats.archive_paths`, shared with the ZIP readers.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

from ..core.atomic_write import atomic_path
from ..core.errors import BadInputError, CancelToken
from ..core.formats.archive_paths import UnsafeArchiveError, safe_member_path

__all__ = ["UnsafeArchiveError", "check_members", "safe_extract"]

# What tarfile and its decompressors raise on a truncated or corrupt archive.
_DAMAGE = (tarfile.TarError, EOFError, zlib.error)


def check_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Validate every member; return them (in archive order)."""
    members = tar.getmembers()
    for m in members:
        rel = safe_member_path(m.name)
        if m.issym() or m.islnk():
            target = m.linkname
            if target.startswith("/") or "\\" in target:
                raise UnsafeArchiveError(f"archive member {m.name!r}: link to absolute path {target!r}")
            base = posixpath.dirname(str(rel)) if m.issym() else ""
            resolved = posixpath.normpath(posixpath.join(base, target))
            if resolved == ".." or resolved.startswith("../"):
                raise UnsafeArchiveError(f"archive member {m.name!r}: link {target!r} points outside the archive")
        elif not (m.isfile() or m.isdir()):
            raise UnsafeArchiveError(f"archive member {m.name!r}: special file (device or FIFO) refused")
    return members


def safe_extract(
    archive: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    progress: Callable[[str, float, str], None] | None = None,
    cancel: CancelToken | None = None,
) -> list[Path]:
    """Extract regular files and directories of ``archive`` under ``dest``.

    Returns the written files. Raises UnsafeArchiveError (nothing written) or
    BadInputError for an unreadable, truncated or corrupt archive.
    """
    dest = Path(dest).resolve()
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise BadInputError(f"{archive}: not a readable tar archive ({exc})") from None
    written: list[Path] = []
    try:
        with tar:
            _extract(tar, dest, written, progress, cancel)
    except _DAMAGE as exc:  # truncated or corrupt; the files written so far are whole (each was renamed in place)
        raise BadInputError(f"{archive}: the archive is damaged ({type(exc).__name__}: {exc}); "
                            "download it again") from None
    return written


def _extract(tar: tarfile.TarFile, dest: Path, written: list[Path],
             progress: Callable[[str, float, str], None] | None, cancel: CancelToken | None) -> None:
    members = check_members(tar)
    files = [m for m in members if m.isfile()]
    total = sum(m.size for m in files) or 1
    done = 0
    for m in members:
        rel = safe_member_path(m.name)
        target = (dest / rel).resolve()
        if target != dest and dest not in target.parents:  # belt and braces (symlinked dest subdirs)
            raise UnsafeArchiveError(f"archive member {m.name!r} would land outside {dest}")
        if m.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        if not m.isfile():
            continue  # in-bounds links are checked but not materialised
        if cancel is not None:
            cancel.check()
        src = tar.extractfile(m)
        assert src is not None
        with atomic_path(target) as tmp, src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        written.append(target)
        done += m.size
        if progress is not None:
            progress("extract", done / total, str(rel))
