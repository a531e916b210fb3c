"""``lam-head serve``: JSON-lines server on stdin/stdout for the Blender add-on."""

from __future__ import annotations

import argparse
import logging
import os
import sys

HELP = "JSON-lines server on stdin/stdout (used by the Blender add-on)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="what goes to stderr (default INFO)")


def protocol_stream():
    """Keep the real stdout for protocol lines only.

    Anything else that writes to stdout (a library's print, a C extension
    writing to fd 1) lands on stderr instead: fd 1 becomes a copy of fd 2 and
    ``sys.stdout`` is ``sys.stderr``. Returns a text stream on the original fd.
    """
    sys.stdout.flush()
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(proto_fd, "w", encoding="utf-8", newline="\n", buffering=1)


def run(args: argparse.Namespace) -> int:
    from ..server import Server

    out = protocol_stream()
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("lam_head.server").info("lam-head serve ready (pid %d)", os.getpid())
    code = Server(sys.stdin.buffer, out).serve_forever()
    # Exit at once: the stdin reader thread may still be blocked in a read, and
    # interpreter shutdown with a daemon thread holding stdin's lock aborts.
    logging.shutdown()
    for stream in (out, sys.stderr, sys.__stderr__):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
