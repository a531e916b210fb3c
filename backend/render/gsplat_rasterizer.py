"""gsplat (CUDA) behind the same inputs/outputs as the CPU rasterizer.

torch and gsplat are imported lazily: this module must import (and
``gsplat_status`` must answer) on machines with neither. The call uses gsplat's
documented ``gsplat.rasterization`` API with the settings our CPU renderer
reproduces: pinhole camera, ``eps2d=0.3``, ``rasterize_mode="classic"``,
``render_mode="RGB+ED"``, no background (we composite it ourselves, so the
premultiplied colour and alpha are what both backends return), quaternions
wxyz, scales as standard deviations, opacities in [0, 1].
"""

from __future__ import annotations

import importlib.util
import inspect
from functools import lru_cache

import numpy as np

from .camera import PinholeCamera
from .cpu_rasterizer import EPS2D, TILE, RasterResult


@lru_cache(maxsize=1)
def gsplat_status() -> tuple[bool, str]:
    """(usable, reason): gsplat needs torch with CUDA and the gsplat package."""
    if importlib.util.find_spec("torch") is None:
        return False, "torch is not installed"
    if importlib.util.find_spec("gsplat") is None:
        return False, "gsplat is not installed (pip install gsplat)"
    try:
        import torch
    except Exception as exc:  # a broken torch install: report it, do not crash
        return False, f"torch failed to import ({type(exc).__name__}: {exc})"
    if not torch.cuda.is_available():
        return False, "no CUDA device available to torch"
    try:
        import gsplat
    except Exception as exc:
        return False, f"gsplat failed to import ({type(exc).__name__}: {exc})"
    if not hasattr(gsplat, "rasterization"):
        return False, f"gsplat {getattr(gsplat, '__version__', '?')} is too old (needs gsplat.rasterization, gsplat >= 1.0)"
    return True, "gsplat on " + torch.cuda.get_device_name(0)


def _tensor(x, device, torch):
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.float32).contiguous()
    return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=device)


def rasterization_kwargs(means, quats_wxyz, scales, opacities, colors, camera: PinholeCamera, eps2d: float = EPS2D) -> dict:
    """The arguments of ``gsplat.rasterization`` in our conventions: torch tensors on one device (means N,3;
    quats N,4 wxyz; scales N,3 standard deviations; opacities N in [0, 1]; colors N,3), the camera as a
    world-to-camera ``viewmats`` 1,4,4 and pinhole ``Ks`` 1,3,3 in the means' dtype."""
    import torch

    dev, dt = means.device, means.dtype
    return dict(
        means=means, quats=quats_wxyz, scales=scales, opacities=opacities.reshape(-1), colors=colors,
        viewmats=torch.as_tensor(np.asarray(camera.world_to_camera, np.float64), device=dev, dtype=dt)[None],
        Ks=torch.as_tensor(np.asarray(camera.K, np.float64), device=dev, dtype=dt)[None],
        width=int(camera.width), height=int(camera.height), near_plane=float(camera.near), far_plane=float(camera.far),
        radius_clip=0.0, eps2d=float(eps2d), packed=True, tile_size=TILE, backgrounds=None,
        render_mode="RGB+ED", rasterize_mode="classic", camera_model="pinhole",
    )


def rasterize(kwargs: dict):
    """``gsplat.rasterization(**kwargs)`` -> (render H,W,4: premultiplied RGB + expected depth, alpha H,W,
    visible Gaussian count or -1), after checking this gsplat version takes every argument."""
    import gsplat

    accepted = inspect.signature(gsplat.rasterization).parameters
    dropped = [k for k in kwargs if k not in accepted]
    if any(k not in ("camera_model", "radius_clip") for k in dropped):  # those two only repeat the defaults
        raise RuntimeError(f"this gsplat version does not accept {dropped}; install gsplat >= 1.3")
    render, alphas, meta = gsplat.rasterization(**{k: v for k, v in kwargs.items() if k in accepted})
    ids = meta.get("gaussian_ids") if isinstance(meta, dict) else None  # packed mode: one entry per visible Gaussian
    return render[0], alphas[0, ..., 0], (int(ids.numel()) if ids is not None else -1)


def rasterize_gsplat(
    means,
    quats_wxyz,
    scales,
    opacities,
    colors,
    *,
    world_to_camera: np.ndarray,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    width: int,
    height: int,
    near: float,
    far: float,
    eps2d: float = EPS2D,
    device: str = "cuda",
) -> RasterResult:
    """Render with ``gsplat.rasterization``. Inputs: numpy arrays or torch tensors
    (means N,3; quats N,4 wxyz; scales N,3; opacities N; colors N,3). Returns
    premultiplied colour, alpha and expected depth as float32 numpy arrays."""
    import torch

    dev = torch.device(device)
    camera = PinholeCamera(int(width), int(height), fx, fy, cx, cy, world_to_camera, near=near, far=far)
    tensors = [_tensor(x, dev, torch) for x in (means, quats_wxyz, scales, opacities, colors)]
    with torch.no_grad():
        render, alpha, n_visible = rasterize(rasterization_kwargs(*tensors, camera, eps2d))
    render, alpha = render.float().cpu().numpy(), alpha.float().cpu().numpy()
    return RasterResult(
        np.ascontiguousarray(render[..., :3], dtype=np.float32),
        np.ascontiguousarray(alpha, dtype=np.float32),
        np.ascontiguousarray(render[..., 3], dtype=np.float32),
        n_visible,
    )
