"""Differentiable splat rendering with gsplat (CUDA): :func:`diff_render.render`'s contract on a GPU.

gsplat's ``rasterization`` is differentiable w.r.t. means, quaternions, scales, opacities and colours
(its own CUDA backward), so the refinement of issue 15 can use it unchanged where a GPU is present.
The call uses the settings the forward adapter (:mod:`gsplat_rasterizer`) uses and the CPU renderers
reproduce: pinhole camera, ``eps2d=0.3``, classic rasterisation, quaternions wxyz, scales as standard
deviations, no background inside gsplat (it returns premultiplied colour; the background is composited
here exactly as :mod:`diff_render` does: ``rgb + (1 - alpha) * background``).

``weight`` (each Gaussian's summed compositing weight alpha*T over the image) is the gradient of the
summed red channel w.r.t. the colours of a white copy: one more forward and backward pass, only when asked.

gsplat and CUDA are needed at call time only; this module imports without them.
"""

from __future__ import annotations

import numpy as np
import torch

from .camera import PinholeCamera
from .cpu_rasterizer import EPS2D
from .diff_render import DiffRenderOutput
from .gsplat_rasterizer import rasterization_kwargs, rasterize


def _rasterize(means, quats, scales, opacities, colors, camera: PinholeCamera, eps2d: float):
    return rasterize(rasterization_kwargs(means, quats, scales, opacities, colors, camera, eps2d))


def render(
    means: torch.Tensor,
    quats_wxyz: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    camera: PinholeCamera,
    background=(1.0, 1.0, 1.0),
    *,
    eps2d: float = EPS2D,
    with_weight: bool = False,
) -> DiffRenderOutput:
    """Render N Gaussians differentiably with gsplat (means N,3 world; quats N,4 wxyz; scales N,3 standard
    deviations; opacities N in [0,1]; colors N,3; all on one CUDA device). ``background``: RGB triple or
    None (premultiplied colour). rgb H,W,3 and alpha H,W carry gradients; depth H,W is the expected depth
    (with gradient as gsplat gives it); ``weight`` N is filled only with ``with_weight``."""
    out, alpha, n_visible = _rasterize(means, quats_wxyz, scales, opacities, colors, camera, eps2d)
    rgb, depth = out[..., :3], out[..., 3]
    if background is not None:
        bg = torch.as_tensor(np.asarray(background, np.float32).reshape(3), device=rgb.device, dtype=rgb.dtype)
        rgb = rgb + (1.0 - alpha)[..., None] * bg
    weight = torch.zeros(means.shape[0], device=means.device, dtype=means.dtype)
    if with_weight:
        with torch.enable_grad():
            probe = torch.ones_like(colors, requires_grad=True)
            args = [t.detach() for t in (means, quats_wxyz, scales, opacities)]
            red = _rasterize(*args, probe, camera, eps2d)[0][..., 0].sum()
            weight = torch.autograd.grad(red, probe)[0][:, 0].detach()
    return DiffRenderOutput(rgb, alpha, depth, weight, n_visible)
