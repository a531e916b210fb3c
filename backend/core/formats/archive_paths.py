"""Member names of archives (tar, zip) checked before anything is read or written.

One rule for every archive the product opens (LAM's asset tar, LAM web ZIPs, motion ZIPs):
a member name must be a relative POSIX path with no ``..``, no drive letter, no backslash
and no NUL. One bad name refuses the whole archive.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from ..errors import BadInputError


class UnsafeArchiveError(BadInputError):
    code = "unsafe_archive"


def safe_member_path(name: str) -> PurePosixPath:
    """A member name as a safe relative path (``.`` for the archive root), or UnsafeArchiveError."""
    if "\\" in name or "\0" in name:
        raise UnsafeArchiveError(f"archive member {name!r}: backslashes or NUL in the path")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"archive member {name!r}: absolute path")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeArchiveError(f"archive member {name!r}: '..' in the path")
    if not parts:
        return PurePosixPath(".")
    return PurePosixPath(*parts)
