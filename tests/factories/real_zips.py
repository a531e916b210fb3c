"""pytest helpers over the real LAM web ZIPs of :mod:`factories.lam_zips`: one parameter per ZIP
(so every real avatar dropped into the fixtures is tested) and private copies to write beside."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .lam_zips import REAL_DIR, real_zips

REAL_ZIPS = real_zips()


def real_zip_params() -> list:
    """One parameter per real ZIP, or one skipped entry saying where they were looked for."""
    if not REAL_ZIPS:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no real LAM ZIP in {REAL_DIR}"))]
    return [pytest.param(p, id=p.stem) for p in REAL_ZIPS]


def copy_real(path: Path, folder: Path) -> Path:
    """A private copy (the fixtures are read-only and shared)."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(path, folder / path.name))
