"""``lam-head create --views a.jpg b.jpg [c.jpg d.jpg] -o avatar.npz``: several photos -> one avatar."""

from __future__ import annotations

import argparse
import sys


def run_views(args: argparse.Namespace, progress_bar: type) -> int:
    from ..core.errors import BadInputError
    from ..create.views import (
        DEFAULT_REFINE_ITERATIONS,
        DEFAULT_REFINE_SIZE,
        VIEW_STAGES,
        create_from_views,
        views_overall_fraction,
    )

    if args.photo or args.sample:
        raise BadInputError("give either a photo (or --sample) or --views PHOTO PHOTO ..., not both")
    if args.debug_dir:
        raise BadInputError("--debug-dir is not supported with --views")
    bar = None if args.quiet else progress_bar()
    progress = None if bar is None else (lambda stage, f, msg="": bar(stage, views_overall_fraction(stage, f), msg))
    iterations = DEFAULT_REFINE_ITERATIONS if args.refine_iterations is None else args.refine_iterations
    size = DEFAULT_REFINE_SIZE if args.refine_size is None else args.refine_size
    try:
        result = create_from_views(
            args.views, args.output, weights=args.weights, flame=args.flame, device=args.device,
            precision=args.precision, ply=args.ply, preview=args.preview, lam_zip=args.lam_zip,
            refine_iterations=iterations, refine_seconds=args.refine_seconds, refine_size=size, seed=args.seed,
            progress=progress, on_warning=lambda m: print(f"warning: {m}", file=sys.stderr),
        )
    finally:
        if bar is not None:
            bar.done()
    r = result.refinement
    if not args.quiet:
        order = [s for s, _ in VIEW_STAGES]
        parts = [f"{k} {v:.2f}s" for k, v in sorted(result.timings.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)]
        print(f"network input: {result.network_reason}", file=sys.stderr)
        print(f"refinement: {r.get('iterations')} iterations ({r.get('stopped')}), loss {r.get('loss_before', 0):.4f} -> "
              f"{r.get('loss_after', 0):.4f}", file=sys.stderr)
        print(f"timings: {', '.join(parts)}; total {sum(result.timings.values()):.2f}s", file=sys.stderr)
    print(result.path)
    for extra in (result.ply, result.preview, result.lam_zip):
        if extra is not None:
            print(extra)
    return 0
