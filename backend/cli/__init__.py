"""``lam-head``: the backend's command line.

Each subcommand lives in ``backend/cli/<name>.py`` (``-`` in a name becomes ``_``) with ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; they are imported lazily so
``lam-head --help`` stays fast and a missing heavy dependency only affects the
command that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..core.errors import LamHeadError

COMMANDS = {
    "create": "photo -> avatar file (the main job)",
    "batch": "many photos -> one avatar folder each (one network load; --ray for a Ray cluster)",
    "render": "render an avatar (turntable or motion) to PNG frames / MP4",
    "export-zip": "avatar file -> LAM web ZIP (LAM web player / OpenAvatarChat)",
    "setup": "fetch or register the model assets (LAM weights, FLAME)",
    "doctor": "report which assets and devices are available",
    "serve": "JSON-lines server on stdin/stdout (used by the Blender add-on)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lam-head", description="LAM Head backend.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        p.set_defaults(_module=f"{__package__}.{name.replace('-', '_')}")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Let each command add its own arguments first (so `lam-head CMD --help` lists them too).
    known, _ = parser.parse_known_args([a for a in argv if a not in ("-h", "--help")])
    if not getattr(known, "command", None):
        parser.print_help()
        return 0 if any(a in ("-h", "--help") for a in argv) else 2
    module = importlib.import_module(known._module)
    sub_parser = parser._subparsers._group_actions[0].choices[known.command]  # noqa: SLF001
    module.add_arguments(sub_parser)
    args = parser.parse_args(argv)
    try:
        return int(module.run(args) or 0)
    except LamHeadError as exc:
        if args.debug:
            raise
        print(f"lam-head {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lam-head {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal bug: one line unless --debug
        if args.debug:
            raise
        print(f"lam-head {args.command}: internal error: {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
