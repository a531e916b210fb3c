"""``lam-head create PHOTO -o avatar.npz``: photo -> avatar file (the main job)."""

from __future__ import annotations

import argparse
import re
import sys
import time

HELP = "photo -> avatar file (the main job)"


def _message_kind(message: str) -> str:
    """The message with its numbers blanked: ``encoder 3/24`` and ``encoder 4/24`` are the same kind."""
    return re.sub(r"\d+(\.\d+)?", "#", message)


class ProgressBar:
    """One line on stderr: ``[#####-----]  45% stage  message`` (plain lines when not a terminal)."""

    def __init__(self, label: str = "", stream=None, width: int = 30):
        self.stream = stream or sys.stderr
        self.label = label
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_stage: str | None = None
        self._last_t = 0.0
        self._shown = False
        self._next_step = 0.0
        self._last_kind = ""

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        now = time.monotonic()
        frac = min(1.0, max(0.0, float(fraction)))
        if self.tty:
            if now - self._last_t < 0.1 and stage == self._last_stage and frac < 1.0:
                return
            filled = int(round(frac * self.width))
            text = f"\r[{'#' * filled}{'-' * (self.width - filled)}] {frac * 100:5.1f}% {stage:<8} {message}"[:120]
            self.stream.write(text.ljust(100))
            self._shown = True
        else:
            # Not a terminal (a log, the add-on reading stderr): a line per stage, per 5 % and per new kind of
            # message (a one-off note such as a calibration, not a counter that merely moved on).
            kind = _message_kind(message)
            if stage == self._last_stage and frac < self._next_step and kind == self._last_kind:
                return
            self.stream.write(f"{self.label + ': ' if self.label else ''}{stage} {frac * 100:.0f}% {message}".rstrip() + "\n")
            self._next_step = (int(frac * 20) + 1) / 20
            self._last_kind = kind
        self.stream.flush()
        self._last_stage, self._last_t = stage, now

    def done(self) -> None:
        if self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()
        self._shown = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("photo", nargs="?", help="portrait photo (JPEG/PNG); or --sample")
    parser.add_argument("--sample", action="store_true",
                        help="use the sample portrait that ships with lam-head (NASA, public domain) instead of a photo")
    parser.add_argument("-o", "--output", required=True, help="avatar file to write (.npz)")
    parser.add_argument("--ply", help="also write the canonical Gaussians as a standard 3DGS PLY")
    parser.add_argument("--preview", help="also write a preview render (PNG)")
    parser.add_argument("--lam-zip", metavar="NAME.zip",
                        help="also write a LAM web ZIP (LAM web player / OpenAvatarChat), with the template registered "
                             "by 'lam-head setup --lam-template ZIP'")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fast", "bf16", "fp16"),
                        help="network precision (fp32 default; fast: bf16, about 1.5x faster on CPU, centres within ~0.5 mm of fp32)")
    parser.add_argument("--weights", metavar="DIR", help="weights folder (config.json + model.safetensors) instead of the installed one")
    parser.add_argument("--flame", metavar="FILE", help="FLAME model (official .pkl or .npz) instead of the installed one")
    parser.add_argument("--debug-dir", metavar="DIR", help="save the prepared network input and the FLAME fit here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or timings")
    parser.add_argument("--views", nargs="+", metavar="PHOTO",
                        help="2 to 4 photos of one person (different views and expressions) instead of PHOTO: one joint "
                             "FLAME fit, the network on the most frontal photo, then the avatar refined on all of them")
    parser.add_argument("--refine-iterations", type=int, metavar="N", default=None,
                        help="with --views: refinement iterations (default 100: about a minute on 2 CPU cores for 4 photos)")
    parser.add_argument("--refine-seconds", type=float, metavar="S", default=None,
                        help="with --views: stop refining after S seconds (checked between iterations)")
    parser.add_argument("--refine-size", type=int, metavar="PX", default=None,
                        help="with --views: the photos' size in the refinement, 16 to 1024 pixels (default 252: half the "
                             "network input; smaller is faster and blurrier)")
    parser.add_argument("--seed", type=int, default=0, help="with --views: the refinement's seed (default 0)")
    from ..network.attention_choice import KERNEL_NAMES

    parser.add_argument("--attention", metavar="KERNEL", choices=("auto", *KERNEL_NAMES), default=None,
                        help="attention kernel for bf16 on CPU (--precision fast): auto (default: the one measured "
                             f"fastest on this machine, see lam-head doctor; env LAM_HEAD_ATTENTION) or {', '.join(KERNEL_NAMES)}")
    from ..network.linear_choice import OPTION_NAMES

    parser.add_argument("--linears", metavar="DTYPE", choices=("auto", *OPTION_NAMES), default=None,
                        help="linear layers' GEMMs for bf16 on CPU (--precision fast): auto (default: the faster on this "
                             f"machine, see lam-head doctor; env LAM_HEAD_LINEARS) or {', '.join(OPTION_NAMES)}")
    parser.add_argument("--refine-threads", metavar="R,T", type=_thread_split, default=None,
                        help="with --views: R numba threads for the renderer and T torch threads while refining; auto "
                             "(default: the split measured fastest on this machine, see lam-head doctor; "
                             "env LAM_HEAD_REFINE_THREADS)")


def _thread_split(value: str) -> str:
    """argparse type of --refine-threads: ``auto`` or a valid ``R,T`` (a clear usage error otherwise)."""
    from ..core.errors import BadInputError
    from ..create.thread_choice import CHOICE

    try:
        return CHOICE.check_name(value) or "auto"
    except BadInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def set_cpu_overrides(args: argparse.Namespace) -> None:
    """This run's per-machine CPU choices from the command line (None or auto: the measured ones, see doctor)."""
    from ..create import thread_choice
    from ..network import attention_choice, linear_choice

    attention_choice.set_override(getattr(args, "attention", None))
    linear_choice.set_override(getattr(args, "linears", None))
    thread_choice.set_override(getattr(args, "refine_threads", None))


def _photo(args: argparse.Namespace) -> str:
    from ..core.errors import BadInputError
    from ..setup.assets import SAMPLE_PORTRAIT

    if args.sample and args.photo:
        raise BadInputError("give either a photo or --sample, not both")
    if args.sample:
        return str(SAMPLE_PORTRAIT)
    if not args.photo:
        raise BadInputError("no photo given: lam-head create PHOTO -o avatar.npz (or --sample for the shipped sample portrait)")
    return args.photo


def run(args: argparse.Namespace) -> int:
    set_cpu_overrides(args)
    if getattr(args, "views", None):
        from .create_views import run_views

        return run_views(args, ProgressBar)
    from ..create.pipeline import STAGES, create_avatar, overall_fraction

    photo = _photo(args)
    bar = None if args.quiet else ProgressBar()
    progress = None if bar is None else (lambda stage, f, msg="": bar(stage, overall_fraction(stage, f), msg))
    try:
        result = create_avatar(
            photo, args.output, weights=args.weights, flame=args.flame, device=args.device,
            precision=args.precision, ply=args.ply, preview=args.preview, lam_zip=args.lam_zip, debug_dir=args.debug_dir,
            progress=progress, on_warning=lambda m: print(f"warning: {m}", file=sys.stderr),
        )
    finally:
        if bar is not None:
            bar.done()
    if not args.quiet:
        order = [s for s, _ in STAGES]
        parts = [f"{k} {v:.2f}s" for k, v in sorted(result.timings.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)]
        print(f"timings: {', '.join(parts)}; total {sum(result.timings.values()):.2f}s", file=sys.stderr)
    print(result.path)
    for extra in (result.ply, result.preview, result.lam_zip):
        if extra is not None:
            print(extra)
    return 0
