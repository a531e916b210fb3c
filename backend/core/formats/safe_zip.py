"""Reading ZIP archives from users safely: checked names, junk skipped, bounded inflation.

Used for LAM web ZIPs and zipped motion folders. Every member name is checked first
(:func:`~.archive_paths.safe_member_path`: one zip-slip name refuses the archive); macOS and
Windows junk (``__MACOSX/``, ``.DS_Store``, ``._*`` AppleDouble files, ``Thumbs.db``) is ignored;
a member is inflated in chunks and refused as soon as it passes ``max_member_bytes``, whatever
size its header declares (a zip bomb never gets to allocate its output).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from ..errors import BadInputError
from .archive_paths import safe_member_path

DEFAULT_MAX_MEMBER_BYTES = 512 << 20  # 512 MiB: a 80K-point LAM skin.glb is about 15 MB
_CHUNK = 1 << 20
# What zipfile raises on damaged bytes (a broken download): a corrupt deflate stream is a zlib.error.
_DAMAGE = (zipfile.BadZipFile, zlib.error, NotImplementedError, ValueError, OSError, EOFError)


def is_junk(path: PurePosixPath) -> bool:
    """Files operating systems add to archives: never part of what the archive carries."""
    return (
        (bool(path.parts) and path.parts[0] == "__MACOSX")
        or path.name in (".DS_Store", "Thumbs.db", "desktop.ini")
        or path.name.startswith("._")
    )


class SafeZip:
    """An opened ZIP: ``files`` maps each non-junk file to its entry, ``dirs`` lists the
    explicit directory entries (in archive order). Use as a context manager."""

    def __init__(self, path: str | os.PathLike, what: str = "archive", max_member_bytes: int | None = None):
        self.path = Path(path)
        self.what = what
        self.max_member_bytes = int(DEFAULT_MAX_MEMBER_BYTES if max_member_bytes is None else max_member_bytes)
        if not self.path.is_file():
            raise BadInputError(f"{what} not found: {self.path}")
        try:
            self._zip = zipfile.ZipFile(self.path)
        except _DAMAGE as exc:
            raise BadInputError(f"{self.path}: not a ZIP archive ({exc}); expected a {what}") from None
        self.files: dict[PurePosixPath, zipfile.ZipInfo] = {}
        self.dirs: list[PurePosixPath] = []
        try:
            for info in self._zip.infolist():
                rel = safe_member_path(info.filename)
                if is_junk(rel) or rel == PurePosixPath("."):
                    continue
                if info.is_dir():
                    self.dirs.append(rel)
                elif rel in self.files:
                    raise BadInputError(f"{self.path}: the member {str(rel)!r} appears twice; refusing an ambiguous {what}")
                else:
                    self.files[rel] = info
        except BaseException:
            self._zip.close()
            raise

    def __enter__(self) -> SafeZip:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    def read(self, member: PurePosixPath) -> bytes:
        """The member's bytes, inflated at most to ``max_member_bytes``."""
        info = self.files[member]
        limit = self.max_member_bytes
        if info.flag_bits & 0x1:
            raise BadInputError(f"{self.path}: {member} is encrypted; export the {self.what} without a password")
        if info.file_size > limit:
            raise BadInputError(f"{self.path}: {member} would inflate to {info.file_size} bytes, more than the "
                                f"{limit >> 20} MiB allowed for one member; refusing it")
        parts, total = [], 0
        try:
            with self._zip.open(info) as fh:
                while chunk := fh.read(_CHUNK):
                    total += len(chunk)
                    if total > limit:
                        raise BadInputError(f"{self.path}: {member} inflates past {limit >> 20} MiB (its header said "
                                            f"{info.file_size} bytes); refusing a zip bomb")
                    parts.append(chunk)
        except _DAMAGE as exc:
            raise BadInputError(f"{self.path}: {member} cannot be read ({exc}); the {self.what} is damaged") from None
        return b"".join(parts)
