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
    parser.add_argument("--calibrate", action="store_true",
                        help="measure every per-machine CPU choice now (attention kernel, bf16 or fp32 linears, the "
                             "refinement's thread split; about 10 s on 2 quiet cores) and cache them")
    parser.add_argument("--calibrate-attention", action="store_true",
                        help="measure only the CPU fast-mode attention kernels now (a few seconds) and cache the fastest")


def collect_report() -> dict[str, Any]:
    """Assets (present / missing + the command that fixes it) and the runtime."""
    from .. import __version__
    from ..setup import assets, hub

    items = assets.status()
    report: dict[str, Any] = {
        "ready": all(a["present"] for a in items if a["required"]),
        "home": str(assets.home()),
        "assets": items,
        "licences": dict(assets.LICENCES),
        # where downloads would come from (the token's value is never reported, only whether one is set)
        "hub": {"endpoint": hub.endpoint(), "offline": hub.offline(), "token": hub.token() is not None,
                "cache": str(hub.cache_dir())},
        "version": __version__,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "packages": {name: importlib.util.find_spec(name) is not None
                     for name in ("numpy", "safetensors", "plyfile", "mediapipe", "skimage", "PIL", "smplx", "numba", "gsplat")},
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
        report.update(_choice_reports())
    except ImportError as exc:
        report.update(torch=None, cuda=False, mps=False, device=None, torch_error=str(exc))
        report["ready"] = False
    return report


#: report key -> module whose describe()/format_description() show that per-machine CPU choice
CHOICE_REPORTS = {
    "attention": "backend.network.attention_choice",
    "linears": "backend.network.linear_choice",
    "refine_threads": "backend.create.thread_choice",
}


def _choice_reports() -> dict[str, Any]:
    """Every per-machine CPU choice: the cached choice and its measured rates (never measures here)."""
    out: dict[str, Any] = {}
    for key, module in CHOICE_REPORTS.items():
        try:
            out[key] = importlib.import_module(module).describe()
        except Exception as exc:  # noqa: BLE001 - a report line must not break the doctor
            out[key] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def format_report(report: dict[str, Any]) -> str:
    lines = [f"lam-head {report['version']}  python {report['python']} ({report['python_executable']})"]
    if report.get("torch"):
        dev = report["device"] + (f" ({report['cuda_device']})" if report.get("cuda_device") else "")
        lines.append(f"torch {report['torch']}  device: {dev}  threads: {report.get('threads')}")
        for key, module in CHOICE_REPORTS.items():
            info = report.get(key)
            if info and "error" in info:
                lines.append(f"{key.replace('_', ' ')} choice: could not be read ({info['error']})")
            elif info:
                lines.extend(importlib.import_module(module).format_description(info))
    else:
        lines.append(f"torch: NOT INSTALLED ({report.get('torch_error', '')}); install the backend environment")
    missing_pk = [k for k, v in report["packages"].items() if not v]
    if missing_pk:
        lines.append("packages not found: " + ", ".join(missing_pk))
    lines.append(f"asset folder: {report['home']}")
    h = report.get("hub") or {}
    if h:
        lines.append(f"hub: {h['endpoint']}" + ("  (HF_TOKEN set)" if h.get("token") else "")
                     + ("  OFFLINE (HF_HUB_OFFLINE): nothing is downloaded" if h.get("offline") else "")
                     + f"; Hugging Face cache: {h['cache']}")
    for a in report["assets"]:
        tag = "ok     " if a["present"] else ("MISSING" if a["required"] else "absent ")
        line = f"  [{tag}] {a['name']}: {a['detail']}"
        if a["present"]:
            line += f"\n            {a['path']}"
            if a.get("source"):
                line += f"\n            source ({a.get('source_kind') or 'unknown'}): {a['source']}"
            if a.get("verified"):
                line += f"\n            verified: {a['verified']}"
        else:
            line += f"\n            to get it, run: {a['fix']}"
        lines.append(line)
    lines.append("ready to create avatars" if report["ready"] else "NOT ready: see MISSING above")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    calibrate = list(CHOICE_REPORTS) if getattr(args, "calibrate", False) else []
    if getattr(args, "calibrate_attention", False) and "attention" not in calibrate:
        calibrate.append("attention")
    for key in calibrate:
        print(f"measuring the {key.replace('_', ' ')} choice on this CPU ...", file=sys.stderr, flush=True)
        importlib.import_module(CHOICE_REPORTS[key]).ensure_choice(force=True)
    report = collect_report()
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0 if report["ready"] else 1
