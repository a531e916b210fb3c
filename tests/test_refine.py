"""Few-photo refinement on ground truth we construct: a known avatar rendered in 4 poses/views is
the "photos"; a degraded copy refined on them must approach the truth on a held-out view."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from factories.avatar import make_avatar

from backend.core.errors import CancelledError, CancelToken
from backend.core.rig import FlamePose
from backend.create.refine import RefineSettings, View, psnr, refine_avatar
from backend.render import default_head_camera, render_avatar

SIZE = 64


def _truth():
    av = make_avatar(n_points=2500, n_expr=10, seed=3)
    p = av.xyz - av.xyz.mean(0)
    av.rgb = (0.5 + 0.4 * np.stack([np.sin(40 * p[:, 0]), np.sin(35 * p[:, 1] + 1), np.cos(30 * p[:, 2] + 25 * p[:, 0])], 1)).astype(np.float32)
    av.scale = (av.scale * 1.2).astype(np.float32)
    av.opacity = np.clip(av.opacity + 0.3, 0, 0.98).astype(np.float32)
    return av


def _pose(seed: int) -> FlamePose:
    rng = np.random.default_rng(seed)
    pose = FlamePose.zeros(1, 10)
    pose.expr[:] = rng.normal(scale=1.0, size=(1, 10))
    pose.rotation[:] = rng.normal(scale=0.08, size=(1, 3))
    pose.neck[:] = rng.normal(scale=0.05, size=(1, 3))
    pose.jaw[:] = [[abs(rng.normal(scale=0.1)), 0, 0]]
    return pose


def _view(av, seed, azimuth, elevation, name):
    pose = _pose(seed)
    cam = default_head_camera(av.xyz, SIZE, azimuth_deg=azimuth, elevation_deg=elevation)
    out = render_avatar(av, pose, cam, backend="cpu")
    return View(out.rgb, out.alpha, pose, cam, name)


def _degrade(av, seed=0):
    rng = np.random.default_rng(seed)
    d = np.linalg.norm(av.xyz[:, None] - av.xyz[None], axis=2)
    near = np.argsort(d, axis=1)[:, :40]
    rgb = av.rgb[near].mean(1) * 0.85 + 0.05
    return dataclasses.replace(
        av, rgb=rgb.astype(np.float32),
        xyz=(av.xyz + rng.normal(scale=0.002, size=av.xyz.shape)).astype(np.float32),
        opacity=np.clip(av.opacity * rng.uniform(0.5, 1.0, av.n_points), 0.01, 1).astype(np.float32),
        meta={"model": "degraded"})


@pytest.fixture(scope="module")
def scene():
    truth = _truth()
    views = [_view(truth, 10 + k, az, el, f"photo{k}.jpg") for k, (az, el) in enumerate([(-40, 5), (-12, -5), (15, 10), (40, 0)])]
    held = _view(truth, 99, 5, 12, "held-out")
    return truth, views, held


def _held_psnr(av, held):
    out = render_avatar(av, held.pose, held.camera, backend="cpu")
    return psnr(out.rgb, held.photo)


def test_refinement_beats_the_degraded_start_on_a_held_out_view(scene):
    truth, views, held = scene
    start = _degrade(truth)
    before = _held_psnr(start, held)
    t0 = time.perf_counter()
    losses = []
    res = refine_avatar(start, views, RefineSettings(iterations=100, seed=1, render_threads=1),
                        progress=lambda stage, frac, msg: losses.append(msg))
    after = _held_psnr(res.avatar, held)
    print(f"held-out PSNR {before:.2f} -> {after:.2f} dB in {time.perf_counter() - t0:.1f} s")
    assert after >= before + 3.0
    assert after >= 28.0
    r = res.avatar.meta["refinement"]
    assert r["iterations"] == 100 and r["loss_after"] < r["loss_before"]
    assert r["views"] == [v.name for v in views]
    assert len(losses) == 100 and "loss" in losses[0]
    assert np.abs(res.avatar.xyz - res.avatar.template).max() <= 0.1 + 1e-6
    from backend.core.formats.avatar_file import to_arrays
    to_arrays(res.avatar)  # a valid avatar file


def test_deterministic_budget_and_cancel(scene):
    truth, views, _ = scene
    start = _degrade(truth)
    a = refine_avatar(start, views[:2], RefineSettings(iterations=3, seed=5, render_threads=1)).avatar
    b = refine_avatar(start, views[:2], RefineSettings(iterations=3, seed=5, render_threads=1)).avatar
    for k in ("xyz", "rgb", "opacity", "scale", "rotation"):
        assert getattr(a, k).tobytes() == getattr(b, k).tobytes()
    timed = refine_avatar(start, views[:1], RefineSettings(iterations=1000, time_budget_s=0.0))
    assert timed.stats["iterations"] == 0 and timed.stats["stopped"] == "time budget"
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        refine_avatar(start, views[:1], RefineSettings(iterations=5), cancel=token)


def test_unseen_gaussians_keep_the_network_result(scene):
    truth, views, _ = scene
    start = _degrade(truth)
    front = [v for v in views if v.name in ("photo1.jpg", "photo2.jpg")]
    res = refine_avatar(start, front, RefineSettings(iterations=10, seed=0, render_threads=1))
    back = start.xyz[:, 2] < start.xyz[:, 2].min() + 0.03  # the back of the head: no front photo sees it
    assert np.abs(res.avatar.rgb[back] - start.rgb[back]).max() < 0.02
    assert 0 < res.stats["seen_fraction"] < 1
