"""Differentiable CPU splat renderer: forward equals the numba renderer, gradients equal finite
differences (float64) and the independent pure-autograd form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.render import default_head_camera, render_gaussians
from backend.render import diff_render as dr


def _scene(n: int, seed: int = 0, opacity=(0.2, 0.95)):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=0.05, size=(n, 3))
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    scales = rng.uniform(0.004, 0.015, size=(n, 3))
    opac = rng.uniform(*opacity, size=n)
    rgb = rng.uniform(0.0, 1.0, size=(n, 3))
    return means, q, scales, opac, rgb


def _t(arrays, dtype, grad=False):
    return [torch.tensor(np.asarray(a), dtype=dtype, requires_grad=grad) for a in arrays]


@pytest.mark.parametrize("background", [(1.0, 1.0, 1.0), (0.2, 0.5, 0.9), None])
@pytest.mark.parametrize("fn", [dr.render, dr.render_torch])
def test_forward_matches_cpu_renderer(background, fn):
    scene = _scene(400, seed=1)
    cam = default_head_camera(scene[0], (72, 64), azimuth_deg=25, elevation_deg=10)
    ref = render_gaussians(*scene, cam, background=background, backend="cpu")
    with torch.no_grad():
        out = fn(*_t(scene, torch.float32), cam, background)
    assert np.abs(out.rgb.numpy() - ref.rgb).max() < 1e-4
    assert np.abs(out.alpha.numpy() - ref.alpha).max() < 1e-4
    covered = ref.alpha > 0.01
    assert np.abs(out.depth.numpy() - ref.depth)[covered].max() < 1e-4
    assert out.n_visible == ref.n_visible


def test_forward_with_saturated_opacity_and_early_stop():
    """Opacities near 1 (the 0.999 clamp) and deep stacks (the T <= 1e-4 stop)."""
    scene = _scene(300, seed=2, opacity=(0.9, 1.0))
    cam = default_head_camera(scene[0], 48)
    ref = render_gaussians(*scene, cam, backend="cpu")
    with torch.no_grad():
        out = dr.render(*_t(scene, torch.float32), cam)
    assert np.abs(out.rgb.numpy() - ref.rgb).max() < 1e-4


def test_gradients_match_finite_differences():
    scene = _scene(12, seed=3)
    cam = default_head_camera(scene[0], 20, azimuth_deg=10)
    rng = np.random.default_rng(4)
    w_rgb = torch.tensor(rng.normal(size=(20, 20, 3)))
    w_a = torch.tensor(rng.normal(size=(20, 20)))

    def f(means, quats, scales, opac, rgb):
        out = dr.render(means, quats, scales, opac, rgb, cam, (0.3, 0.6, 0.9))
        return (out.rgb * w_rgb).sum() + (out.alpha * w_a).sum()

    inputs = tuple(_t(scene, torch.float64, grad=True))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-7, atol=1e-5, rtol=1e-4)


def test_gradients_match_pure_autograd_form():
    scene = _scene(300, seed=5)
    cam = default_head_camera(scene[0], 48, azimuth_deg=-20)
    rng = np.random.default_rng(6)
    w_rgb = torch.tensor(rng.normal(size=(48, 48, 3)))
    w_a = torch.tensor(rng.normal(size=(48, 48)))
    grads = []
    for fn in (dr.render, dr.render_torch):
        inputs = _t(scene, torch.float64, grad=True)
        out = fn(*inputs, cam, None)
        ((out.rgb * w_rgb).sum() + (out.alpha * w_a).sum()).backward()
        grads.append([x.grad for x in inputs])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)


def test_weight_counts_what_is_seen():
    scene = list(_scene(50, seed=7))
    scene[0][0] = [3.0, 0.0, 0.0]  # far to the side: never drawn
    cam = default_head_camera(np.asarray(scene[0])[1:], 32)
    out = dr.render(*_t(scene, torch.float32), cam, with_weight=True)
    assert out.weight[0] == 0
    assert (out.weight > 0).sum() > 10


def _render_and_grads(fn, scene, cam, background, **kw):
    inputs = _t(scene, torch.float64, grad=True)
    out = fn(*inputs, cam, background, **kw)
    rng = np.random.default_rng(10)
    h, w = out.alpha.shape
    loss = (out.rgb * torch.tensor(rng.normal(size=(h, w, 3)))).sum() + (out.alpha * torch.tensor(rng.normal(size=(h, w)))).sum()
    loss.backward()
    return out, [x.grad for x in inputs]


@pytest.mark.parametrize("tile", [8, 12, 16, 32])
def test_kernel_paths_match_pure_autograd_form(tile):
    """The numba kernels' code paths against the pure-autograd form in float64: tiles that are not a
    multiple of the 8-pixel lane blocks (padded rows) or span several, partial tiles at the image
    edges, Gaussians clamped at alpha 0.999 (opacity 1) and pixels that stop early (T <= 1e-4)."""
    scene = list(_scene(300, seed=9, opacity=(0.6, 1.0)))
    scene[3][::4] = 1.0
    scene[2][::4] *= 4
    cam = default_head_camera(scene[0], (45, 37), azimuth_deg=-15, elevation_deg=5)
    a, ga = _render_and_grads(dr.render, scene, cam, (0.2, 0.5, 0.9), tile=tile, with_weight=True)
    b, gb = _render_and_grads(dr.render_torch, scene, cam, (0.2, 0.5, 0.9))
    assert (a.alpha > 1 - 1e-3).sum() > 100  # deep stacks: early stops
    assert np.abs(a.rgb.detach().numpy() - b.rgb.detach().numpy()).max() < 1e-12
    assert np.abs(a.alpha.detach().numpy() - b.alpha.detach().numpy()).max() < 1e-12
    assert torch.allclose(a.weight, b.weight, rtol=1e-12, atol=1e-12)
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, rtol=0, atol=1e-9 * float(y.abs().max()))


def test_ill_conditioned_conics_match_pure_autograd_form():
    """Needle-like Gaussians with a tiny eps2d: conics too ill-conditioned for the kernels' ellipse
    extents, which then visit every pixel of the tile (agreement limited by that conditioning)."""
    scene = list(_scene(200, seed=8, opacity=(0.5, 1.0)))
    scene[2][:100, 0] = 1e-7
    scene[2][:100, 2] = 1e-7
    cam = default_head_camera(scene[0], (40, 33), azimuth_deg=15)
    x = _t(scene, torch.float64)
    u, v, conic, _, z = dr.project(*x[:3], cam, 1e-9)
    par = dr._pack(*(t.numpy() for t in (u, v, conic, x[3], x[4], z)))
    assert (par[:, dr._PEXTY] == 1e9).sum() > 50  # the fallback is taken
    a, ga = _render_and_grads(dr.render, scene, cam, None, tile=12, eps2d=1e-9)
    b, gb = _render_and_grads(dr.render_torch, scene, cam, None, eps2d=1e-9)
    assert np.abs(a.rgb.detach().numpy() - b.rgb.detach().numpy()).max() < 1e-10
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, rtol=0, atol=1e-8 * float(y.abs().max()))
