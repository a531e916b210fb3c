"""``lam-head setup``: fetch or register the model assets (LAM weights, FLAME).

Without file options it gets LAM-20K (and with ``--lam-assets`` LAM's asset
archive with FLAME): from a Hugging Face cache snapshot when there is one, else
downloaded from the endpoint (``--origin``, ``$LAM_HEAD_ORIGIN``, ``$HF_ENDPOINT``)
after the licences are accepted. ``--from-lam-repo DIR`` / ``--weights DIR`` /
``--flame FILE`` / ``--landmark-embedding FILE`` / ``--lam-template ZIP``
register local files instead (no download).
"""

from __future__ import annotations

import argparse
import sys

HELP = "fetch or register the model assets (LAM weights, FLAME)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accept-licences", action="store_true",
                        help="accept the licences of what is downloaded (CC BY-NC 4.0 weights; FLAME licence) without asking")
    parser.add_argument("--lam-assets", action="store_true",
                        help="also download LAM's asset archive (FLAME 2023, landmark embedding; FLAME licence)")
    parser.add_argument("--from-lam-repo", metavar="DIR",
                        help="use the assets of an official LAM repository checkout (model_zoo/..., in place, verified)")
    parser.add_argument("--weights", metavar="DIR", help="register a local folder with config.json + model.safetensors")
    parser.add_argument("--flame", metavar="FILE", help="register a local FLAME model (.pkl, e.g. FLAME 2023 Open)")
    parser.add_argument("--landmark-embedding", metavar="FILE", help="register a local landmark_embedding_with_eyes.npy")
    parser.add_argument("--lam-template", metavar="ZIP",
                        help="register a LAM web avatar ZIP as the template of exported ZIPs and the ARKit basis source")
    parser.add_argument("--origin", default=None,
                        help="download endpoint (default $LAM_HEAD_ORIGIN, else $HF_ENDPOINT, else https://huggingface.co); "
                             "$HF_TOKEN is sent to it, $HF_HUB_OFFLINE=1 forbids downloads")
    parser.add_argument("--force", action="store_true", help="download again even if present")


def _prompt(texts: list[str]) -> bool:
    """Show the licences; ask on a terminal (no terminal: not accepted)."""
    for t in texts:
        print(f"* {t}", file=sys.stderr)
    if not sys.stdin.isatty():
        return False
    answer = input("Do you accept these licences? Type 'yes' to continue: ").strip().lower()
    return answer in ("yes", "y")


def run(args: argparse.Namespace) -> int:
    from ..setup import assets
    from .create import ProgressBar

    bar = ProgressBar("download")
    print(f"asset folder: {assets.home()}", file=sys.stderr)
    try:
        lines = assets.run_setup(
            accept_licences=args.accept_licences, lam_assets=args.lam_assets, weights=args.weights,
            flame=args.flame, landmark_embedding=args.landmark_embedding, lam_template=args.lam_template,
            from_lam_repo=args.from_lam_repo, origin=args.origin, force=args.force,
            confirm=_prompt, progress=bar,
        )
    finally:
        bar.done()
    for line in lines:
        print(line)
    for a in assets.status():
        if a["required"] and not a["present"]:
            print(f"still missing: {a['name']} ({a['detail']}); run: {a['fix']}")
    return 0
