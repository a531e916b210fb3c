"""``lam-head doctor``: which assets and devices are available, and how to fix what is missing."""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
from typing import Any

HELP = "report which assets and devices are available"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def collect_report() -> dict[str, Any]:
    """Assets (present / missing + the command that fixes it) and the runtime."""
    from .. import __version__
    from ..setup import assets

    items = assets.status()
    report: dict[str, Any] = {
        "ready": all(a["present"] for a in items if a["required"]),
        "home": str(assets.home()),
        "assets": items,
        "licences": dict(assets.LICENCES),
        "version": __version__,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "packages": {name: importlib.util.find_spec(name) is not None
                     for name in ("numpy", "safetensors", "mediapipe", "skimage", "PIL", "smplx", "numba", "gsplat")},
    }
    try:
        import torch

        report["torch"] = torch.__version__
        report["cuda"] = torch.cuda.is_available()
        report["cuda_device"] = torch.cuda.get_device_name(0) if report["cuda"] else None
        mps = getattr(torch.backends, "mps", None)
        report["mps"] = bool(mps is not None and mps.is_available())
        report["device"] = "cuda" if report["cuda"] else ("mps" if report["mps"] else "cpu")
        report["threads"] = torch.get_num_threads()
    except ImportError as exc:
        report.update(torch=None, cuda=False, mps=False, device=None, torch_error=str(exc))
        report["ready"] = False
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"lam-head {report['version']}  python {report['python']} ({report['python_executable']})"]
    if report.get("torch"):
        dev = report["device"] + (f" ({report['cuda_device']})" if report.get("cuda_device") else "")
        lines.append(f"torch {report['torch']}  device: {dev}  threads: {report.get('threads')}")
    else:
        lines.append(f"torch: NOT INSTALLED ({report.get('torch_error', '')}); install the backend environment")
    missing_pk = [k for k, v in report["packages"].items() if not v]
    if missing_pk:
        lines.append("packages not found: " + ", ".join(missing_pk))
    lines.append(f"asset folder: {report['home']}")
    for a in report["assets"]:
        tag = "ok     " if a["present"] else ("MISSING" if a["required"] else "absent ")
        line = f"  [{tag}] {a['name']}: {a['detail']}"
        if a["present"]:
            line += f"\n            {a['path']}" + (f"  (from {a['source']})" if a.get("source") else "")
            if a.get("verified"):
                line += f"\n            verified: {a['verified']}"
        else:
            line += f"\n            to get it, run: {a['fix']}"
        lines.append(line)
    lines.append("ready to create avatars" if report["ready"] else "NOT ready: see MISSING above")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = collect_report()
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0 if report["ready"] else 1
