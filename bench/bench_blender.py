"""Blender add-on figures: avatar import time, per-frame evaluation, memory.

    .venv/bin/python bench/bench_blender.py [--points 20018 79936] [--frames 60]

Runs headless bpy with hermetic user folders, installs the extension zip built
from this checkout, imports synthetic avatars (E = 100 expression keys + 36
pose correctives) and plays an animation with 10 keyed expression channels and
keyed jaw / neck / eye / head bones (pose-corrective drivers active).
Also imports each real LAM web ZIP in ../shared/fixtures/real (``--lam-zip`` for others) and
times it next to the ``.npz`` import. Per-frame time = ``scene.frame_set`` (depsgraph evaluation: drivers, shape
keys, armature, splat nodes) + reading the evaluated mesh, median of the frames.
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
from factories.avatar import make_avatar  # noqa: E402

from backend import devenv  # noqa: E402
from backend.core.formats.avatar_file import save_avatar  # noqa: E402

ADDON = "bl_ext.user_default.lam_head"


def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def install() -> None:
    zip_path = devenv.build_extension(_USER / "dist", python=sys.executable, log=lambda _m: None)
    assert bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default", enable_on_install=True) == {"FINISHED"}


def animate(mesh_obj, arm_obj, frames: int, rng) -> None:
    keys = mesh_obj.data.shape_keys.key_blocks
    for f in range(1, frames + 1, 5):
        for i in range(10):
            kb = keys[f"expr_{i:03d}"]
            kb.value = float(rng.uniform(-2, 2))
            kb.keyframe_insert("value", frame=f)
        for name in ("root", "neck", "jaw", "eye_L", "eye_R"):
            pb = arm_obj.pose.bones[name]
            pb.rotation_euler = rng.normal(scale=0.2, size=3).tolist()
            pb.keyframe_insert("rotation_euler", frame=f)
    bpy.context.scene.frame_start, bpy.context.scene.frame_end = 1, frames


def per_frame_ms(mesh_obj, frames: int) -> tuple[float, float]:
    """(median wall ms, median CPU ms of this process: all its threads, less sensitive to other load)."""
    scene = bpy.context.scene
    times, cpu = [], []
    n = len(mesh_obj.data.vertices)
    for f in range(1, frames + 1):
        t, c = time.perf_counter(), time.process_time()
        scene.frame_set(f)
        dg = bpy.context.evaluated_depsgraph_get()
        me = mesh_obj.evaluated_get(dg).data
        if len(me.vertices) >= n:
            me.vertices.foreach_get("co", np.empty(len(me.vertices) * 3, dtype=np.float32))
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return 1000 * statistics.median(times), 1000 * statistics.median(cpu)


def flame_like(avatar):
    """Keep each point's two largest LBS weights (renormalised) and snap them to 1/64 steps:
    FLAME's weights are sparse and repeat values, unlike the factory's dense random ones."""
    w = avatar.lbs_weights
    keep = np.argsort(w, axis=1)[:, -2:]
    sparse = np.zeros_like(w)
    np.put_along_axis(sparse, keep, np.take_along_axis(w, keep, axis=1), axis=1)
    sparse = np.round(sparse / sparse.sum(axis=1, keepdims=True) * 64) / 64
    sparse[np.arange(len(w)), keep[:, -1]] += 1 - sparse.sum(axis=1)  # rows sum to 1 exactly
    avatar.lbs_weights = sparse.astype(np.float32)
    return avatar


def bench(n_points: int, frames: int, tmp: Path, weights: str) -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    import addon_utils

    addon_utils.enable(ADDON, default_set=True)
    n_faces = 2 * n_points - 100  # about what subdivided FLAME has
    avatar = make_avatar(n_points=n_points, n_expr=100, seed=0, n_faces=n_faces)
    if weights == "flame-like":
        avatar = flame_like(avatar)
    path = save_avatar(tmp / f"avatar_{n_points}.npz", avatar)
    rss0 = rss_mb()
    t = time.perf_counter()
    assert bpy.ops.lam_head.import_avatar(filepath=str(path)) == {"FINISHED"}
    t_import = time.perf_counter() - t
    rss1 = rss_mb()
    mesh_obj = bpy.context.active_object
    arm_obj = mesh_obj.parent
    animate(mesh_obj, arm_obj, frames, np.random.default_rng(0))
    full = per_frame_ms(mesh_obj, frames)
    others = [m for m in mesh_obj.modifiers if m.type != "ARMATURE"]
    for m in others:
        m.show_viewport = False
    rig_only = per_frame_ms(mesh_obj, frames)
    print(f"{n_points:6d} points, E=100, {weights:10s} LBS weights: import {t_import:6.3f} s | per frame (wall / CPU): "
          f"rig {rig_only[0]:6.2f} / {rig_only[1]:6.2f} ms, rig + splat nodes {full[0]:6.2f} / {full[1]:6.2f} ms | "
          f"RSS {rss0:7.1f} -> {rss1:7.1f} MB (+{rss1 - rss0:.1f})", flush=True)


def bench_lam_zip(path: Path, repeats: int = 3) -> None:
    """Import time of a real LAM web ZIP (read + checks + build, best of ``repeats``)."""
    best = float("inf")
    for _ in range(repeats):
        bpy.ops.wm.read_factory_settings(use_empty=True)
        import addon_utils

        addon_utils.enable(ADDON, default_set=True)
        rss0 = rss_mb()
        t = time.perf_counter()
        assert bpy.ops.lam_head.import_lam_zip(filepath=str(path)) == {"FINISHED"}
        best = min(best, time.perf_counter() - t)
        rss1 = rss_mb()
    n = len(bpy.context.active_object.data.vertices)
    print(f"LAM web ZIP {path.name}: {n} points, {len(bpy.context.active_object.data.shape_keys.key_blocks) - 1} "
          f"ARKit keys: import {best:6.3f} s (best of {repeats}) | RSS +{rss1 - rss0:.1f} MB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, nargs="+", default=[20018, 79936])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--weights", nargs="+", default=["flame-like", "dense"], choices=["flame-like", "dense"])
    ap.add_argument("--lam-zip", nargs="*", type=Path, default=None, help="LAM web ZIPs (default: the real fixtures)")
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"Blender {bpy.app.version_string}, {os.cpu_count()} CPU threads, load average {load:.1f} at start")
    install()
    from factories.lam_zips import real_zips

    for path in real_zips() if args.lam_zip is None else args.lam_zip:
        bench_lam_zip(path)
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.points:
            for weights in args.weights:
                bench(n, args.frames, Path(tmp), weights)


if __name__ == "__main__":
    main()
