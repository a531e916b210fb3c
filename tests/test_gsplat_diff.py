"""Differentiable gsplat rendering (backend/render/gsplat_diff.py), the CUDA path of the refinement.

With a GPU and gsplat: its images and gradients are compared with our exact CPU renderer's (which is itself
checked against finite differences in test_diff_render.py). Everywhere: the adapter's plumbing (argument
mapping, background compositing, the weight probe, gradients flowing back through it) is checked against a
stand-in with gsplat's documented ``rasterization`` signature computed by our differentiable CPU renderer."""

from __future__ import annotations

import dataclasses
import sys
import types

import numpy as np
import pytest
import torch
from test_diff_render import _scene, _t

from backend.render import default_head_camera, gsplat_diff
from backend.render import diff_render as dr
from backend.render.cpu_rasterizer import EPS2D
from backend.render.gsplat_rasterizer import gsplat_status, rasterization_kwargs

_OK, _WHY = gsplat_status()
needs_gsplat = pytest.mark.skipif(not _OK, reason=f"gsplat renderer unavailable: {_WHY}")


def stand_in_gsplat(calls: list | None = None) -> types.SimpleNamespace:
    """gsplat's ``rasterization`` (v1.x signature, premultiplied RGB+ED, alphas C,H,W,1) computed on the CPU by
    :func:`diff_render.render` with no background, differentiable like the real one."""
    from backend.render.camera import PinholeCamera

    def rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane=0.01,
                      far_plane=1e10, radius_clip=0.0, eps2d=0.3, sh_degree=None, packed=True, tile_size=16,
                      backgrounds=None, render_mode="RGB", sparse_grad=False, absgrad=False,
                      rasterize_mode="classic", channel_chunk=32, distributed=False, camera_model="pinhole"):
        if calls is not None:
            calls.append(dict(render_mode=render_mode, backgrounds=backgrounds, eps2d=eps2d, opacities=opacities.shape))
        assert viewmats.shape == (1, 4, 4) and Ks.shape == (1, 3, 3) and render_mode == "RGB+ED"
        assert opacities.ndim == 1 and rasterize_mode == "classic" and backgrounds is None
        k = Ks[0].detach().double().numpy()
        cam = PinholeCamera(width, height, k[0, 0], k[1, 1], k[0, 2], k[1, 2], viewmats[0].detach().double().numpy(),
                            near=near_plane, far=far_plane)
        out = dr.render(means, quats, scales, opacities, colors, cam, None, eps2d=eps2d)
        render = torch.cat([out.rgb, out.depth[..., None].to(out.rgb.dtype)], dim=-1)[None]
        return render, out.alpha[None, ..., None], {"gaussian_ids": torch.arange(out.n_visible)}

    return types.SimpleNamespace(rasterization=rasterization, __version__="stand-in")


def _grads(fn, scene, cam, background, dtype=torch.float32, device="cpu"):
    args = [t.to(device).detach().requires_grad_(True) for t in _t(scene, dtype)]
    out = fn(*args, cam, background, with_weight=True)
    g_img = torch.linspace(-1, 1, out.rgb.numel(), dtype=out.rgb.dtype, device=out.rgb.device).reshape(out.rgb.shape)
    ((out.rgb * g_img).sum() + out.alpha.sum()).backward()
    return out, [a.grad.detach().cpu().double() for a in args]


@pytest.mark.skipif(_OK, reason="real gsplat present: the CUDA comparison below covers it")
@pytest.mark.parametrize("background", [(1.0, 1.0, 1.0), (0.2, 0.5, 0.9), None])
def test_plumbing_equals_the_cpu_renderer_through_a_stand_in(monkeypatch, background):
    calls: list = []
    monkeypatch.setitem(sys.modules, "gsplat", stand_in_gsplat(calls))
    scene = _scene(60, seed=3)
    cam = default_head_camera(scene[0], (40, 32), azimuth_deg=15)
    got, g_got = _grads(gsplat_diff.render, scene, cam, background)
    ref, g_ref = _grads(dr.render, scene, cam, background)
    torch.testing.assert_close(got.rgb, ref.rgb, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.alpha, ref.alpha, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.weight, ref.weight, atol=1e-5, rtol=1e-5)
    assert (got.weight > 0).sum() > 10 and got.n_visible == ref.n_visible
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert calls[0]["backgrounds"] is None, "the background is composited outside gsplat"


def _gsplat_reference():
    """gsplat's pure-PyTorch reference implementation (its own test oracle; runs on the CPU)."""
    try:
        from gsplat.cuda import _torch_impl
    except ImportError as exc:
        pytest.skip(f"gsplat is not installed ({exc}): tests/requirements.txt installs it for this CPU check")
    return _torch_impl


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_adapter_arguments_project_as_gsplats_own_reference_does(dtype):
    """Exactly the arguments the CUDA adapter hands ``gsplat.rasterization``, fed to gsplat's reference
    projection, give our projection's 2D means, conics and depths, with the same gradients: quaternion order,
    scales as standard deviations, the world-to-camera view matrix, K, eps2d and the field-of-view clamp
    follow gsplat's own maths, checked without a GPU."""
    ref = _gsplat_reference()
    means, quats, scales, opac, rgb = _scene(300, seed=21)
    means = means.copy()
    means[:25] *= 10.0  # far off to the sides: the Jacobian's field-of-view clamp acts on these
    cam = default_head_camera(means[25:], (80, 64), azimuth_deg=30, elevation_deg=-10)
    args = _t((means, quats, scales, opac, rgb), dtype, grad=True)
    kw = rasterization_kwargs(*args, cam, EPS2D)
    covars, _ = ref._quat_scale_to_covar_preci(kw["quats"], kw["scales"], compute_preci=False)
    _, means2d, depths, conics, _ = ref._fully_fused_projection(
        kw["means"], covars, kw["viewmats"], kw["Ks"], kw["width"], kw["height"], eps2d=kw["eps2d"],
        near_plane=kw["near_plane"], far_plane=kw["far_plane"], camera_model=kw["camera_model"])
    u, v, conic, _, z = dr.project(*args[:3], cam, eps2d=EPS2D)
    ours = (torch.stack([u, v], -1), conic, z)
    theirs = (means2d[0], conics[0], depths[0])
    off_view = (u < 0) | (u > cam.width) | (v < 0) | (v > cam.height)
    assert int(off_view.sum()) >= 10, "the scene must exercise the clamp"
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-4)
    for name, a, b in zip(("means2d", "conics", "depths"), ours, theirs):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"{name}: {m}")
    weights = [torch.linspace(-1, 1, t.numel(), dtype=dtype).reshape(t.shape) for t in theirs]
    g_ours = torch.autograd.grad(sum((a * w).sum() for a, w in zip(ours, weights)), args[:3])
    g_theirs = torch.autograd.grad(sum((b * w).sum() for b, w in zip(theirs, weights)), args[:3])
    for name, a, b in zip(("means", "quats", "scales"), g_ours, g_theirs):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"d/d{name}: {m}")


@pytest.mark.cuda
@needs_gsplat
@pytest.mark.parametrize("background", [(1.0, 1.0, 1.0), None])
def test_gsplat_gradients_agree_with_the_exact_cpu_gradients(background):
    scene = _scene(400, seed=11)
    cam = default_head_camera(scene[0], 64, azimuth_deg=20, elevation_deg=5)
    gpu, g_gpu = _grads(gsplat_diff.render, scene, cam, background, device="cuda")
    cpu, g_cpu = _grads(dr.render, scene, cam, background)
    assert float((gpu.rgb.cpu() - cpu.rgb).abs().mean()) < 2e-3
    assert float((gpu.alpha.cpu() - cpu.alpha).abs().mean()) < 2e-3
    for name, a, b in zip(("means", "quats", "scales", "opacities", "colors"), g_gpu, g_cpu):
        cos = float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-30))
        assert cos > 0.99, f"{name}: gsplat's gradient points elsewhere than the exact one (cosine {cos:.4f})"
        assert 0.9 < float(a.norm() / b.norm()) < 1.1, name
    seen_cpu, seen_gpu = cpu.weight > 0.05, gpu.weight.cpu() > 0.05
    assert float((seen_cpu == seen_gpu).float().mean()) > 0.98


# ------------------------------------------------------------------ the refinement on the gsplat path
def _refine_kit():
    from factories.avatar import make_avatar

    from backend.core.rig import FlamePose
    from backend.create.refine import View
    from backend.render import render_avatar

    truth = make_avatar(n_points=300, n_expr=4, seed=5)
    start = dataclasses.replace(truth, rgb=np.clip(truth.rgb * 0.6 + 0.2, 0, 1).astype(np.float32))
    views = []
    for k, az in enumerate((-20.0, 15.0)):
        pose = FlamePose.zeros(1, 4)
        cam = default_head_camera(truth.xyz, 32, azimuth_deg=az)
        img = render_avatar(truth, pose, cam, background=(1, 1, 1))
        views.append(View(img.rgb, img.alpha, pose, cam, name=f"v{k}"))
    return start, views


def test_refinement_on_the_gsplat_path_equals_the_cpu_path_through_the_stand_in(monkeypatch):
    """Same seed, same views: the gsplat branch (stand-in on the CPU) gives the CPU branch's avatar."""
    import backend.render.gsplat_rasterizer as gr
    from backend.create.refine import RefineSettings, refine_avatar

    start, views = _refine_kit()
    monkeypatch.setitem(sys.modules, "gsplat", stand_in_gsplat())
    monkeypatch.setattr(gr, "gsplat_status", lambda: (True, "stand-in"))
    cpu = refine_avatar(start, views, RefineSettings(iterations=4, renderer="cpu"))
    gpu = refine_avatar(start, views, RefineSettings(iterations=4, renderer="gsplat", device="cpu"))
    assert gpu.stats["renderer"].startswith("gsplat") and cpu.stats["renderer"] == "cpu"
    assert gpu.stats["loss_after"] < gpu.stats["loss_before"]
    for name in ("xyz", "rgb", "opacity", "scale", "rotation"):
        np.testing.assert_allclose(getattr(gpu.avatar, name), getattr(cpu.avatar, name), atol=1e-5, err_msg=name)
    assert refine_avatar(start, views, RefineSettings(iterations=0, renderer="auto", device="cpu")).stats["renderer"] != "cpu"


@pytest.mark.skipif(_OK, reason="gsplat usable here")
def test_asking_for_gsplat_where_it_cannot_run_says_why():
    from backend.core.errors import BadInputError
    from backend.create.refine import RefineSettings, refine_avatar

    start, views = _refine_kit()
    with pytest.raises(BadInputError, match="gsplat refinement renderer is not usable here"):
        refine_avatar(start, views, RefineSettings(iterations=1, renderer="gsplat"))
    assert refine_avatar(start, views, RefineSettings(iterations=0, renderer="auto")).stats["renderer"] == "cpu"


@pytest.mark.cuda
@needs_gsplat
def test_refinement_on_cuda_lowers_the_loss_like_the_cpu():
    from backend.create.refine import RefineSettings, refine_avatar

    start, views = _refine_kit()
    cpu = refine_avatar(start, views, RefineSettings(iterations=20, renderer="cpu")).stats
    gpu = refine_avatar(start, views, RefineSettings(iterations=20, renderer="gsplat")).stats
    assert gpu["loss_after"] < 0.7 * gpu["loss_before"]
    assert gpu["loss_after"] < 1.5 * cpu["loss_after"]
