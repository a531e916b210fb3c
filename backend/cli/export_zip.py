"""``lam-head export-zip AVATAR.npz -o NAME.zip [--template ZIP]``: an avatar as a LAM web ZIP.

The ZIP (``NAME/skin.glb``, ``offset.ply``, ``animation.glb``, ``vertex_order.json``) is what the
LAM web player and OpenAvatarChat load. The avatar must be on FLAME's subdivided topology (made
by ``lam-head create`` with FLAME 2023, or imported from a LAM ZIP); skeleton, ARKit shapes and
body animations come from the template ZIP (``--template``, else the one registered with
``lam-head setup --lam-template ZIP``). Nothing is written unless the whole ZIP can be.
"""

from __future__ import annotations

import argparse
import sys

HELP = "avatar file -> LAM web ZIP (LAM web player / OpenAvatarChat)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("avatar", help="avatar file (.npz) made by 'lam-head create' or the Blender add-on")
    parser.add_argument("-o", "--output", required=True, metavar="NAME.zip",
                        help="ZIP to write; NAME also names the avatar's folder inside it")
    parser.add_argument("--template", metavar="ZIP",
                        help="LAM web ZIP whose skeleton, ARKit shapes and animations to use "
                             "(default: the one registered with 'lam-head setup --lam-template ZIP')")
    parser.add_argument("--quiet", action="store_true", help="print only the written path")


def run(args: argparse.Namespace) -> int:
    from ..core.errors import BadInputError
    from ..core.formats.avatar_file import AvatarFileError, load_avatar
    from ..core.formats.lam_zip import check_zip_name
    from ..create.lam_web import export_lam_zip, resolve_template

    check_zip_name(args.output)  # a bad name fails before any reading
    try:
        avatar = load_avatar(args.avatar)
    except AvatarFileError as exc:
        raise BadInputError(str(exc)) from None
    template = resolve_template(args.template)
    path = export_lam_zip(avatar, args.output, template)
    if not args.quiet:
        print(f"{avatar.n_points} Gaussians, template {template.source_name}", file=sys.stderr)
    print(path)
    return 0
