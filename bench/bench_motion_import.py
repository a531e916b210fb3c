"""Motion import in Blender: a 60 s capture at 60 fps onto a 20K-point avatar, and playback cost.

    .venv/bin/python bench/bench_motion_import.py [--seconds 60] [--rate 60] [--points 20018]

Imports a generated Live Link Face CSV and an ARKit JSON of the same length (all 52 channels,
head and eye angles) with ``bpy.ops.lam_head.import_motion`` (read + plan + bulk keyframes) onto
a synthetic avatar with 100 FLAME expression keys, 51 ARKit keys and the FLAME armature, then
times ``scene.frame_set`` + reading the evaluated mesh per frame with the take playing (median).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from factories.blender_user_dirs import isolate_blender_user_dirs  # noqa: E402

_USER = isolate_blender_user_dirs("lam-head-bench-")

import bpy  # noqa: E402
import numpy as np  # noqa: E402
from factories import live_link  # noqa: E402
from factories.avatar import make_avatar  # noqa: E402

from backend import devenv  # noqa: E402
from backend.core.formats.arkit_track import ARKIT_NAMES  # noqa: E402
from backend.core.formats.avatar_file import save_avatar  # noqa: E402

ADDON = "bl_ext.user_default.lam_head"


def fresh_avatar(path: Path) -> bpy.types.Object:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    import addon_utils

    addon_utils.enable(ADDON, default_set=True)
    assert bpy.ops.lam_head.import_avatar(filepath=str(path)) == {"FINISHED"}
    return bpy.context.active_object


def per_frame_ms(mesh_obj, frames: int) -> float:
    scene = bpy.context.scene
    times = []
    for f in range(1, frames + 1):
        t = time.perf_counter()
        scene.frame_set(f)
        me = mesh_obj.evaluated_get(bpy.context.evaluated_depsgraph_get()).data
        me.vertices.foreach_get("co", np.empty(len(me.vertices) * 3, dtype=np.float32))
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=int, default=60)
    ap.add_argument("--points", type=int, default=20018)
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"Blender {bpy.app.version_string}, {os.cpu_count()} CPU threads, load average {load:.1f} at start")
    zip_path = devenv.build_extension(_USER / "dist", python=sys.executable, log=lambda _m: None)
    assert bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default",
                                                    enable_on_install=True) == {"FINISHED"}
    n = int(args.seconds * args.rate)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        av = make_avatar(n_points=args.points, n_expr=100, seed=0, n_faces=2 * args.points - 100)
        av.arkit_names = ARKIT_NAMES[:-1]
        av.arkit_dirs = np.random.default_rng(1).normal(scale=1e-3, size=(av.n_points, 3, 51)).astype(np.float32)
        avatar = save_avatar(tmp / "avatar.npz", av)
        weights, head, eyes = live_link.random_track(n, seed=3)
        files = {"Live Link Face CSV": live_link.live_link_csv(tmp / "take.csv", weights, head, eyes, rate=args.rate),
                 "ARKit JSON": live_link.arkit_json(tmp / "take.json", weights, fps=args.rate)}
        for what, path in files.items():
            mesh_obj = fresh_avatar(avatar)
            scene = bpy.context.scene
            scene.render.fps, scene.render.fps_base = args.rate, 1.0
            t = time.perf_counter()
            assert bpy.ops.lam_head.import_motion(filepath=str(path)) == {"FINISHED"}
            took = time.perf_counter() - t
            print(f"{what}: {args.seconds:.0f} s at {args.rate} fps ({n} rows, {path.stat().st_size / 1e6:.1f} MB) "
                  f"imported in {took:.2f} s onto {av.n_points} points", flush=True)
        for mod in mesh_obj.modifiers:
            mod.show_viewport = mod.type == "ARMATURE"
        print(f"per frame, 51 ARKit + 100 FLAME keys + armature, take playing: "
              f"{per_frame_ms(mesh_obj, min(n, 120)):.2f} ms (median, rig only)", flush=True)
        for mod in mesh_obj.modifiers:
            mod.show_viewport = True
        print(f"  with the splat node path: {per_frame_ms(mesh_obj, min(n, 120)):.2f} ms", flush=True)


if __name__ == "__main__":
    main()
