"""Renderer speed: CPU (numba) frames/s for a 20018-Gaussian head at 512x512, JIT cost,
and animate+render throughput (CPU here; gsplat when CUDA and gsplat are present).

    .venv/bin/python bench/bench_render.py [--frames 40] [--size 512] [--points 20018]

Prints figures only (no assertions). The head is tests/factories/avatar.py's synthetic
avatar framed like a LAM render (camera 1 m in front on +Z, head filling the frame).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402

_COLD = """
import sys, time
sys.path[:0] = [{root!r}, {tests!r}]
t0 = time.perf_counter()
from backend.render import default_head_camera, render_gaussians
from factories.avatar import make_avatar
a = make_avatar(2000)
cam = default_head_camera(a.xyz, 64)
t1 = time.perf_counter()
render_gaussians(a.xyz, a.rotation, a.scale, a.opacity, a.rgb, cam, backend="cpu")
print(time.perf_counter() - t1)
"""


def first_call_seconds(cache_dir: str | None) -> float:
    """First render in a fresh process; cache_dir=None uses the normal numba cache."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    code = _COLD.format(root=str(ROOT), tests=str(ROOT / "tests"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--points", type=int, default=20018)
    args = ap.parse_args()

    import numba
    from factories.avatar import make_avatar

    from backend.core import rig
    from backend.render import default_head_camera, iter_render_avatar, render_gaussians
    from backend.render.gsplat_rasterizer import gsplat_status

    print(f"machine: {os.cpu_count()} CPU cores, numba {numba.__version__}, {numba.get_num_threads()} threads "
          f"(layer {numba.config.THREADING_LAYER}); load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as empty:
        cold = first_call_seconds(empty)
    warm = first_call_seconds(None)
    print(f"first call, cold numba cache (compile):      {cold:6.2f} s")
    print(f"first call, warm numba cache (cache=True):   {warm:6.2f} s")

    avatar = make_avatar(args.points, n_expr=100, seed=0)
    cam = default_head_camera(avatar.xyz, args.size)
    g = (avatar.xyz, avatar.rotation, avatar.scale, avatar.opacity, avatar.rgb)
    out = render_gaussians(*g, cam, backend="cpu")  # warm-up in this process
    times, cpu_times = [], []
    for k in range(args.frames):
        c = default_head_camera(avatar.xyz, args.size, azimuth_deg=360.0 * k / args.frames)
        t, p = time.perf_counter(), time.process_time()
        render_gaussians(*g, c, backend="cpu")
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - p)
    t, cpu = np.array(times), np.array(cpu_times)
    print(f"CPU render, {args.points} Gaussians, {args.size}x{args.size}, turntable of {args.frames} frames: "
          f"{1 / t.mean():6.1f} frames/s wall (mean {t.mean() * 1e3:.1f} ms, median {np.median(t) * 1e3:.1f} ms, "
          f"best {t.min() * 1e3:.1f} ms; goal >= 20); coverage {out.alpha.mean():.2f}")
    n_threads = numba.get_num_threads()
    numba.set_num_threads(1)
    one = []
    for k in range(min(10, args.frames)):
        c = default_head_camera(avatar.xyz, args.size, azimuth_deg=360.0 * k / args.frames)
        p = time.process_time()
        render_gaussians(*g, c, backend="cpu")
        one.append(time.process_time() - p)
    numba.set_num_threads(n_threads)
    one_ms = float(np.median(one)) * 1e3
    print(f"  CPU time per frame: {cpu.mean() * 1e3:.1f} ms over {n_threads} threads; single thread {one_ms:.1f} ms "
          f"(= {1e3 / one_ms:.1f} frames/s per free core; contention-free estimate on {n_threads} cores "
          f"<= {n_threads * 1e3 / one_ms:.1f} frames/s)")

    # animate + render: rig evaluation (numpy, rotated Gaussians) then the CPU renderer
    rng = np.random.default_rng(0)
    n = max(8, args.frames // 2)
    pose = rig.FlamePose.zeros(n, avatar.n_expr)
    pose.expr[:] = rng.normal(scale=0.5, size=pose.expr.shape)
    pose.jaw[:, 0] = np.linspace(0, 0.3, n)
    pose.rotation[:, 1] = np.linspace(-0.4, 0.4, n)
    t0 = time.perf_counter()
    for _ in iter_render_avatar(avatar, pose, cam, backend="cpu"):
        pass
    dt = time.perf_counter() - t0
    print(f"CPU animate+render (rig mode, rotated Gaussians), {n} frames: {n / dt:6.1f} frames/s")

    ok, why = gsplat_status()
    if not ok:
        print(f"gsplat animate+render: not measured: no CUDA ({why})")
        return
    import torch

    from backend.render import rig_torch
    from backend.render.gsplat_rasterizer import rasterize_gsplat

    dev = torch.device("cuda")
    trig = rig_torch.TorchRig.from_avatar(avatar, dev, torch.float32)
    tpose = rig_torch.TorchPose.from_numpy(pose, dev, torch.float32)
    q0 = torch.as_tensor(avatar.rotation, device=dev)
    kw = dict(world_to_camera=cam.world_to_camera, fx=cam.fx, fy=cam.fy, cx=cam.cx, cy=cam.cy,
              width=cam.width, height=cam.height, near=cam.near, far=cam.far)
    for _rep in range(2):  # the first pass warms up CUDA
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            d = rig_torch.evaluate(trig, tpose, mode="rig", with_rotations=True)
            quats = rig_torch.rotate_gaussians(q0, d.point_rotations)
            for f in range(n):
                rasterize_gsplat(d.positions[f], quats[f], avatar.scale, avatar.opacity, avatar.rgb, **kw)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    print(f"gsplat animate+render ({torch.cuda.get_device_name(0)}), {n} frames incl. copy back: {n / dt:6.1f} frames/s")


if __name__ == "__main__":
    main()
