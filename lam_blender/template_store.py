"""Keep a LAM web ZIP's template parts with the avatar imported from it, inside the .blend.

A later ZIP export needs what the avatar's Gaussians do not carry: the ZIP's ``skin.glb``
(skeleton, skin weights, morph targets), ``animation.glb`` and ``vertex_order.json``. They are
packed (:meth:`LamTemplate.pack`, a small deflated ZIP) and stored base64-encoded in a Text
datablock, so they are saved with the .blend and travel with it.

The mesh object holds the text as an ID pointer property, which counts as a user: the text is saved
while an avatar uses it (duplicates share it, a renamed text stays linked) and is dropped like any
orphan once the avatar is deleted, instead of a fake user keeping megabytes in the file forever.
Files from earlier versions name the text in a string property; that still reads.
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
    text.use_fake_user = False  # Blender gives new texts one; the object's pointer is the user instead
    mesh_obj[naming.PROP_LAM_TEMPLATE] = text
    return text


def load_template(mesh_obj: bpy.types.Object) -> lam_zip.LamTemplate | None:
    """The template stored with ``mesh_obj`` (None for avatars not imported from a LAM ZIP).
    Raises :class:`lam_zip.LamZipError` when the text was deleted or edited."""
    if naming.PROP_LAM_TEMPLATE not in mesh_obj:
        return None
    stored = mesh_obj[naming.PROP_LAM_TEMPLATE]  # None once the text was deleted
    if isinstance(stored, str):  # a name: files written before the pointer
        text, name = bpy.data.texts.get(stored), stored
    else:
        text, name = stored, getattr(stored, "name", "")
    if not isinstance(text, bpy.types.Text):
        raise lam_zip.LamZipError(f"the LAM template text{f' {name!r}' if name else ''} of '{mesh_obj.name}' is "
                                  f"missing; re-import the LAM ZIP")
    body = text.as_string()
    if body.startswith(_HEADER):
        body = body[len(_HEADER):]
    try:
        data = base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise lam_zip.LamZipError(f"the LAM template text '{name}' was edited; re-import the LAM ZIP") from None
    return lam_zip.LamTemplate.unpack(data)
