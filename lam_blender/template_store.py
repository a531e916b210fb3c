"""Keep a LAM web ZIP's template parts with the avatar imported from it, inside the .blend.

A later ZIP export needs what the avatar's Gaussians do not carry: the ZIP's ``skin.glb``
(skeleton, skin weights, morph targets), ``animation.glb`` and ``vertex_order.json``. They are
packed (:meth:`LamTemplate.pack`, a small deflated ZIP) and stored base64-encoded in a Text
datablock, so they are saved with the .blend and travel with it; the mesh object names the text.
"""

from __future__ import annotations

import base64
import binascii

import bpy

from . import naming
from .core import lam_zip

_HEADER = "# LAM web ZIP template (base64 of a ZIP; written by the LAM Head add-on, do not edit)\n"


def store_template(mesh_obj: bpy.types.Object, template: lam_zip.LamTemplate) -> bpy.types.Text:
    """Store ``template`` in a new Text datablock named after the avatar and link it to ``mesh_obj``."""
    text = bpy.data.texts.new(f"{mesh_obj.name}.lam_template")
    text.from_string(_HEADER + base64.encodebytes(template.pack()).decode("ascii"))  # 76-char lines
    text.use_fake_user = True  # nothing else references a Text: keep it when the file is saved
    mesh_obj[naming.PROP_LAM_TEMPLATE] = text.name
    return text


def load_template(mesh_obj: bpy.types.Object) -> lam_zip.LamTemplate | None:
    """The template stored with ``mesh_obj`` (None for avatars not imported from a LAM ZIP).
    Raises :class:`lam_zip.LamZipError` when the text was deleted or edited."""
    name = mesh_obj.get(naming.PROP_LAM_TEMPLATE)
    if not name:
        return None
    text = bpy.data.texts.get(name)
    if text is None:
        raise lam_zip.LamZipError(f"the LAM template text '{name}' of '{mesh_obj.name}' is missing; re-import the LAM ZIP")
    body = text.as_string()
    if body.startswith(_HEADER):
        body = body[len(_HEADER):]
    try:
        data = base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise lam_zip.LamZipError(f"the LAM template text '{name}' was edited; re-import the LAM ZIP") from None
    return lam_zip.LamTemplate.unpack(data)
