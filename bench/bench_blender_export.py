"""Splat figures in Blender: sequence export speed and the node path's viewport cost.

    .venv/bin/python bench/bench_blender_export.py [--points 20018] [--frames 60] [--faces 40000]

Headless bpy with hermetic user folders, the extension zip built from this
checkout, a synthetic avatar (E = 100 expression keys + 36 pose correctives,
random faces over the points) animated with keyed expressions and jaw/neck.

* export: frames/s (wall clock) and CPU ms per frame (robust under contention),
  set-up and canonical.ply included, before (the evaluated mesh read every frame)
  and after (the fast path: Blender evaluates animation, NLA, drivers and bones but
  not the mesh; shape-key mix + skinning in numpy), back to back, 4 runs each
  in ABBA order; each output is deleted at once so disk write-back does
  not skew later runs. Then the operator itself, and the split of one fast frame.
* viewport: median ``scene.frame_set`` time per frame (depsgraph evaluation:
  drivers, shape keys, armature [, splat nodes]) with the splat modifier on vs off.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from factories.blender_user_dirs import isolate_blender_user_dirs  # noqa: E402

_USER = isolate_blender_user_dirs("lam-head-bench-export-")

import bpy  # noqa: E402
import numpy as np  # noqa: E402
from factories.avatar import make_avatar  # noqa: E402

from backend import devenv  # noqa: E402
from backend.core import splat_frames  # noqa: E402
from backend.core.formats import ply  # noqa: E402
from backend.core.formats.avatar_file import save_avatar  # noqa: E402


def install() -> None:
    zip_path = devenv.build_extension(_USER / "dist", python=sys.executable, log=lambda _m: None)
    res = bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default", enable_on_install=True)
    assert res == {"FINISHED"}, res


def animate(mesh_obj, arm_obj, frames: int, rng) -> None:
    keys = [k for k in mesh_obj.data.shape_keys.key_blocks if k.name.startswith("expr_")][:10]
    for f in range(1, frames + 1, 5):
        for k in keys:
            k.value = float(rng.uniform(-1.5, 1.5))
            k.keyframe_insert("value", frame=f)
        for name in ("jaw", "neck"):
            pb = arm_obj.pose.bones[name]
            pb.rotation_euler = tuple(rng.normal(scale=0.15, size=3))
            pb.keyframe_insert("rotation_euler", frame=f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=20018)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--faces", type=int, default=40000)
    args = p.parse_args()

    install()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    import addon_utils

    addon_utils.enable("bl_ext.user_default.lam_head", default_set=True)
    tmp = Path(tempfile.mkdtemp(prefix="lam-head-bench-export-data-"))
    avatar = make_avatar(n_points=args.points, n_expr=100, n_faces=args.faces, seed=0)
    path = save_avatar(tmp / "avatar.npz", avatar)
    assert bpy.ops.lam_head.import_avatar(filepath=str(path)) == {"FINISHED"}
    mesh_obj = bpy.context.view_layer.objects.active
    arm_obj = mesh_obj.parent
    animate(mesh_obj, arm_obj, args.frames, np.random.default_rng(0))
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 1, args.frames
    print(f"avatar: {args.points} points, {len(mesh_obj.data.polygons)} faces, "
          f"{len(mesh_obj.data.shape_keys.key_blocks) - 1} shape keys, {args.frames} frames; bpy {bpy.app.version_string}")

    from importlib import import_module

    ops_export = import_module("bl_ext.user_default.lam_head.lam_blender.ops_export")

    def export(out: Path, fast: bool) -> tuple[float, float]:
        """(frames/s wall clock, CPU ms per frame) of one export."""
        job = ops_export.SplatSequenceExport(scene, mesh_obj, out, 1, args.frames)
        job.use_fast_path = fast
        t0, c0 = time.perf_counter(), time.process_time()
        job.run()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        assert job.fast == fast, job.fast_blocker
        shutil.rmtree(out)  # before the page cache writes it back: keeps disk I/O out of later runs
        return args.frames / dt, 1e3 * dc / args.frames

    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for fast in (False, True, True, False, False, True, True, False):  # ABBA: drift hits both alike
        results[fast].append(export(tmp / "seq", fast))
    for fast, name in ((False, "before (evaluated mesh)"), (True, "after (fast path)")):
        fps, cpu = zip(*results[fast])
        print(f"export {name:24s}: median {statistics.median(fps):.1f} frames/s (runs: "
              f"{', '.join(f'{f:.0f}' for f in fps)}), CPU median {statistics.median(cpu):.2f} ms/frame; incl. set-up")
    out = tmp / "seq_op"
    t0 = time.perf_counter()
    assert bpy.ops.lam_head.export_splat_sequence(directory=str(out), frame_start=1, frame_end=args.frames) \
        == {"FINISHED"}
    op_fps = args.frames / (time.perf_counter() - t0)
    size_mb = sum(f.stat().st_size for f in out.glob("frame_*.ply")) / args.frames / 2**20
    shutil.rmtree(out)
    print(f"operator (after): {op_fps:.1f} frames/s; {size_mb:.2f} MB per frame")

    # Split of one fast frame's time.
    job = ops_export.SplatSequenceExport(scene, mesh_obj, tmp / "split", 1, args.frames, write_canonical=False)
    t = time.perf_counter()
    job.begin()
    t_setup = time.perf_counter() - t
    t_eval, t_mix, t_math, t_write = [], [], [], []
    try:
        assert job.fast, job.fast_blocker
        kbs = mesh_obj.data.shape_keys.key_blocks
        for f in range(1, args.frames + 1):
            t = time.perf_counter()
            scene.frame_set(f)
            t1 = time.perf_counter()
            kbs.foreach_get("value", job._values)
            kbs.foreach_get("mute", job._mute)
            job._values[job._mute] = 0.0
            points = job._blend(job._values)
            t2 = time.perf_counter()
            data = job._writer.frame_skinned(points, job.bone_matrices())
            t3 = time.perf_counter()
            ply.write_vertex_array(tmp / "split" / splat_frames.frame_filename(f), data)
            t4 = time.perf_counter()
            for xs, v in ((t_eval, t1 - t), (t_mix, t2 - t1), (t_math, t3 - t2), (t_write, t4 - t3)):
                xs.append(v)
    finally:
        job.end()
        shutil.rmtree(tmp / "split", ignore_errors=True)
    med = lambda xs: 1e3 * statistics.median(xs)  # noqa: E731
    print(f"fast split (median ms/frame): frame_set (animation, drivers, bones; no mesh) {med(t_eval):.2f}, "
          f"shape-key mix {med(t_mix):.2f}, skinning + R(A) rotations + columns {med(t_math):.2f}, "
          f"PLY write {med(t_write):.2f}; one-off set-up (key and vertex-group reads, first-frame check) "
          f"{1e3 * t_setup:.0f} ms")

    # Viewport cost of the node path: depsgraph evaluation per frame with the modifier on / off.
    mod = mesh_obj.modifiers["LAM Splats"]
    splat = import_module("bl_ext.user_default.lam_head.lam_blender.splat")
    for shown, follow in ((True, True), (True, False), (False, True), (True, True), (True, False), (False, True)):
        mod.show_viewport = shown
        splat.set_inputs(mod, **{"Follow Deformation": follow})
        scene.frame_set(1)
        times = []
        for f in range(2, args.frames + 1):
            t = time.perf_counter()
            scene.frame_set(f)
            times.append(time.perf_counter() - t)
        label = ("with splat nodes, rotations follow" if follow else "with splat nodes, static rotations") if shown \
            else "without splat nodes"
        print(f"viewport frame_set {label:36s}: median {med(times):.2f} ms/frame")
    print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs when the run ended)")


if __name__ == "__main__":
    main()
