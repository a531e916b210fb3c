"""Write files so that readers never see half of one: temporary name, then rename.

Every writer in the project (avatar files, PLY frames, PNGs, manifests,
extracted archives) goes through :func:`atomic_path`, so a failed or cancelled
write leaves the previous file (or nothing) and no temporary behind.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` when the
    block succeeds, delete it when the block raises.

    The temporary keeps the final suffix (writers such as PIL and imageio pick
    the format from it) and is created by the caller with ordinary permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.part{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
