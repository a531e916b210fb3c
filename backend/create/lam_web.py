"""Avatar -> LAM web ZIP (OpenAvatarChat / the LAM web player), for ``lam-head export-zip`` and
``lam-head create --lam-zip``.

The writer is :mod:`backend.core.formats.lam_zip`; this adds what the commands share: which
template ZIP to use (the one given, else the one registered with ``lam-head setup
--lam-template``, else a message saying how to get one) and one error type for the user.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import BadInputError, MissingAssetError
from ..core.formats.avatar_file import Avatar
from ..core.formats.lam_zip import LamTemplate, read_template, write_lam_zip
from ..setup import assets


def resolve_template(template: str | os.PathLike | None = None) -> LamTemplate:
    """The template ZIP's parts: ``template`` when given, else the registered one.
    Raises MissingAssetError (none registered) or BadInputError (not a LAM web ZIP)."""
    if template is not None:
        return read_template(Path(template).expanduser())
    registered = assets.installed_lam_template()
    if registered is None:
        raise MissingAssetError(
            "a LAM web ZIP needs a template (the skeleton, ARKit shapes and animations of any LAM avatar ZIP): "
            f"pass --template ZIP, or register one once with: {assets.FIX_LAM_TEMPLATE}")
    return read_template(registered)


def export_lam_zip(avatar: Avatar, output: str | os.PathLike, template: LamTemplate) -> Path:
    """Write ``output`` (``<name>.zip``) atomically; a file-system failure becomes a message."""
    output = Path(output).expanduser()
    try:
        return write_lam_zip(output, avatar, template)
    except OSError as exc:
        raise BadInputError(f"cannot write {output}: {exc.strerror or exc}; choose another output folder") from None
