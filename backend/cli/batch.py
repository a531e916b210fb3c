"""``lam-head batch INPUTS... -o OUTDIR``: many photos -> one avatar folder each, one network load.

Exit status: 0 every photo has its avatar (made now or by an earlier run); 1 the run could not start
(missing weights or FLAME, no photos, bad option); 2 bad command line; 3 the run finished but some
photos failed (each with its message in OUTDIR/summary.json and summary.csv); 130 interrupted (Ctrl-C):
no half-written file is left and a rerun resumes.
"""

from __future__ import annotations

import argparse
import sys

HELP = "many photos -> one avatar folder each (one network load; --ray for a Ray cluster)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "Each photo's files go to OUTDIR/<name>/<name>.npz (+ .ply, .png, .zip). A photo already done (same\n"
        "photo bytes, every requested file there) is skipped: rerun the same command to resume.\n"
        "Exit status: 0 all photos done; 1 the run could not start; 2 bad command line;\n"
        "3 some photos failed (see OUTDIR/summary.json); 130 interrupted (nothing half-written)."
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="photo files, folders of photos, or .txt files listing one photo path per line")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the avatars and the summary")
    parser.add_argument("--ply", action="store_true", help="also write each avatar's canonical Gaussians as a 3DGS PLY")
    parser.add_argument("--preview", action="store_true", help="also write a preview render (PNG) of each avatar")
    parser.add_argument("--lam-zip", action="store_true",
                        help="also write a LAM web ZIP per avatar (template registered by 'lam-head setup --lam-template ZIP')")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fast", "bf16", "fp16"),
                        help="network precision (as for create)")
    parser.add_argument("--weights", metavar="DIR", help="weights folder (config.json + model.safetensors) instead of the installed one")
    parser.add_argument("--flame", metavar="FILE", help="FLAME model (official .pkl or .npz) instead of the installed one")
    parser.add_argument("--force", action="store_true", help="redo photos that are already done")
    parser.add_argument("--batch-size", type=int, default=1, metavar="N",
                        help="photos per network forward (default 1, which gives exactly what create gives; more: "
                             "faster on a GPU with memory to spare, results within ~1e-5 of create, not bit-identical)")
    parser.add_argument("--prefetch", type=int, default=1, metavar="N",
                        help="photos prepared ahead while the network runs (default 1; 0: one stage after the other)")
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="run the stages with Ray Data (pip install 'lam-head-blender[cluster]'): no ADDRESS "
                             "starts a local Ray or joins RAY_ADDRESS; 'auto' joins the cluster started on this "
                             "machine with 'ray start'; or ray://HEAD:10001 (write --ray=ADDRESS, or --ray after the INPUTs)")
    parser.add_argument("--ray-actors", type=int, default=None, metavar="N",
                        help="network actors with --ray (default: one per GPU, or one CPU actor without GPUs)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def run(args: argparse.Namespace) -> int:
    from ..create.batch import EXIT_INTERRUPTED, BatchOptions, BatchProgress, make_plan, run_batch

    options = BatchOptions(weights=args.weights, flame=args.flame, precision=args.precision, device=args.device,
                           ply=args.ply, preview=args.preview, lam_zip=args.lam_zip, force=args.force,
                           prefetch=args.prefetch, batch_size=args.batch_size)
    if args.ray is not None:
        from ..create.ray_batch import require_ray

        require_ray()  # a one-line message when the extra is not installed, before any work
    plan = make_plan(args.inputs, args.output, options)
    progress = None if args.quiet else BatchProgress(len(plan.items))
    try:
        if args.ray is not None:
            from ..create.ray_batch import run_ray_batch

            report = run_ray_batch(plan, address=args.ray or None, actors=args.ray_actors, progress=progress)
        else:
            report = run_batch(args.inputs, args.output, options, progress=progress, plan=plan)
    except KeyboardInterrupt:
        if progress is not None:
            progress.close()
        print(f"lam-head batch: interrupted; finished photos are listed in {plan.outdir / 'summary.json'}; "
              "run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if progress is not None:
        progress.close()
    c = report.counts
    print(f"{c['created']} created, {c['skipped']} skipped (already done), {c['failed']} failed of {c['total']} "
          f"in {report.seconds:.1f}s; summary: {plan.outdir / 'summary.json'}", file=sys.stderr)
    for r in report.summary.results:
        if r.status == "failed":
            print(f"failed: {r.source}: {r.message}", file=sys.stderr)
    print(plan.outdir)
    return report.exit_status
