"""Photometric refinement of an avatar from a few photos (the few-photo path of issue 15).

Given an avatar (the avatar file contract) and K views (a photo H,W,3 float in [0,1], its matte
H,W in [0,1], the photo's FLAME pose and camera), the canonical Gaussians (colour, opacity,
offset from the template, scale, rotation) are optimised with Adam so that the avatar, posed
through our torch rig (mode "rig", Gaussian rotations following R(A) as everywhere else) and
drawn by the differentiable CPU renderer (:mod:`backend.render.diff_render`, white background),
renders like each photo inside its matte:

* photometric loss per view, as 3DGS: ``0.8 L1 + 0.2 D-SSIM`` where L1 is the mean absolute
  error over the matte and D-SSIM = (1 - SSIM) / 2 of the matted images (11x11 Gaussian window,
  sigma 1.5, the usual C1/C2);
* ``offset_bound``: LAM's bound on offsets (``|xyz - template| <= 0.1 m`` per axis) as a steep
  penalty on the excess, and a hard clamp on the result;
* ``prior``: an L2 pull of every parameter to the network's initial value, weighted per Gaussian:
  ``prior_weight`` everywhere plus ``unseen_weight`` on Gaussians that no view sees (their summed
  compositing weight over all views at the start is below ``seen_threshold``), so the network's
  result stays where no photo constrains it.

Parametrisation: rgb raw (clamped to [0,1] when drawn and stored), opacity as a logit, scale as
its log, rotation as an unnormalised quaternion, offset in metres. Deterministic for a given
seed: every step uses every view in a fixed order and the renderer's backward sums per-chunk
buffers in a fixed order. Stops at ``iterations`` or ``time_budget_s`` (checked between steps),
raises :class:`CancelledError` through ``cancel``.

Renderer: ``settings.renderer`` "cpu" (the numba renderer above) or "gsplat" (its CUDA backward through
:mod:`backend.render.gsplat_diff`; every tensor lives on ``settings.device``, "cuda" by default); "auto"
takes gsplat when it is usable (:func:`gsplat_rasterizer.gsplat_status`), else the CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import BadInputError, CancelToken
from ..core.formats.avatar_file import Avatar
from ..core.rig import FlamePose
from ..render import diff_render
from ..render.camera import PinholeCamera
from ..render.rig_torch import TorchPose, TorchRig, evaluate, matrix_to_quaternion, quaternion_multiply

Progress = Callable[[str, float, str], None]
STAGE = "refine"
OFFSET_BOUND = 0.1  # metres per axis (LAM's offset clamp)
WHITE = (1.0, 1.0, 1.0)


@dataclass
class View:
    """One photo: rgb H,W,3 float in [0,1]; matte H,W in [0,1]; pose a FlamePose with batch 1;
    the camera that took it (its size must equal the photo's)."""

    photo: np.ndarray
    matte: np.ndarray
    pose: FlamePose
    camera: PinholeCamera
    name: str = ""


@dataclass
class RefineSettings:
    iterations: int = 300
    time_budget_s: float | None = None
    seed: int = 0
    lr_rgb: float = 0.01
    lr_opacity: float = 0.05
    lr_offset: float = 2e-4
    lr_scale: float = 0.005
    lr_rotation: float = 0.001
    ssim_weight: float = 0.2
    offset_bound: float = OFFSET_BOUND
    bound_weight: float = 1e4
    prior_weight: float = 1e-4
    unseen_weight: float = 1.0
    seen_threshold: float = 0.5  # summed weight alpha*T over all views, in pixels
    tile: int = 16
    renderer: str = "cpu"  # "cpu", "gsplat" or "auto" (gsplat when usable)
    device: str | None = None  # torch device of the gsplat path (None: "cuda"); the CPU renderer runs on the CPU
    # numba threads for the renderer and torch threads while refining; None: with the CPU renderer the split
    # measured fastest on this machine (thread_choice.py); before any measurement, for small problems and with
    # gsplat numba on every core and torch on one (torch's pool spinning against numba's cost 7x on 2 cores,
    # 64 px, 2500 Gaussians: 2.35 -> 0.33 s/iter)
    render_threads: int | None = None
    torch_threads: int | None = None


@dataclass
class RefineResult:
    avatar: Avatar
    stats: dict[str, Any] = field(default_factory=dict)


def _gauss_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, window: torch.Tensor | None = None) -> torch.Tensor:
    """Mean SSIM of two H,W,3 images in [0,1] (Wang et al. 2004: Gaussian 11x11 window, sigma 1.5,
    C1 = 0.01^2, C2 = 0.03^2; 'same' padding with zeros)."""
    if window is None:
        window = _gauss_window(dtype=a.dtype)
    x = a.permute(2, 0, 1)[None]
    y = b.permute(2, 0, 1)[None]
    pad = window.shape[-1] // 2
    conv = lambda t: F.conv2d(t, window, padding=pad, groups=3)  # noqa: E731
    mx, my = conv(x), conv(y)
    sxx = conv(x * x) - mx * mx
    syy = conv(y * y) - my * my
    sxy = conv(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean()


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB of images in [0,1] (over ``mask`` when given)."""
    d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    if mask is not None:
        m = np.broadcast_to(np.asarray(mask, np.float64)[..., None] if d.ndim == 3 else mask, d.shape)
        mse = float((d * m).sum() / max(m.sum(), 1e-12))
    else:
        mse = float(d.mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-20))


def _check_views(avatar: Avatar, views: Sequence[View]) -> None:
    if not views:
        raise BadInputError("refinement needs at least one view")
    for k, v in enumerate(views):
        name = v.name or f"view {k + 1}"
        photo = np.asarray(v.photo)
        if photo.ndim != 3 or photo.shape[2] != 3:
            raise BadInputError(f"{name}: the photo must be H,W,3, got shape {photo.shape}")
        if photo.shape[:2] != (v.camera.height, v.camera.width):
            raise BadInputError(f"{name}: the photo is {photo.shape[1]}x{photo.shape[0]} but its camera is "
                                f"{v.camera.width}x{v.camera.height}")
        if np.asarray(v.matte).shape != photo.shape[:2]:
            raise BadInputError(f"{name}: the matte must be H,W like the photo, got {np.asarray(v.matte).shape}")
        if not (np.isfinite(photo).all() and np.isfinite(v.matte).all()):
            raise BadInputError(f"{name}: the photo or matte contains NaN or infinite values")
        if v.pose.batch_size != 1:
            raise BadInputError(f"{name}: the pose must be one frame, got {v.pose.batch_size}")
    if avatar.n_joints != 5:
        raise BadInputError("refinement needs an avatar with FLAME's five joints (made by create)")


def refine_avatar(
    avatar: Avatar,
    views: Sequence[View],
    settings: RefineSettings | None = None,
    *,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
) -> RefineResult:
    """Refine ``avatar``'s canonical Gaussians on ``views``; returns the refined avatar (its meta
    gains ``refinement``: iterations, loss before/after, views, seconds, stop reason) and stats."""
    s = settings or RefineSettings()
    _check_views(avatar, views)
    s = dataclasses.replace(s, renderer=choose_renderer(s.renderer))
    import numba

    render, torch_side = thread_split(s, avatar.n_points, progress)
    threads, torch_threads = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(render)
    torch.set_num_threads(torch_side)
    try:
        result = _refine(avatar, views, s, progress, cancel)
    finally:
        numba.set_num_threads(threads)
        torch.set_num_threads(torch_threads)
    result.stats["threads"] = result.avatar.meta["refinement"]["threads"] = [render, torch_side]
    return result


def thread_split(s: RefineSettings, n_points: int, progress: Progress | None = None) -> tuple[int, int]:
    """(numba threads, torch threads) for a refinement: the settings' where set; else, with the CPU renderer, this
    machine's measured split (measured first for a full-size avatar on a new machine: a few seconds); else the
    default split (numba on every core, torch on one)."""
    import numba

    from . import thread_choice

    render, torch_side = s.render_threads, s.torch_threads
    if render is None or torch_side is None:
        if s.renderer == "cpu":
            note = None if progress is None else (lambda msg: progress(STAGE, 0.0, msg))
            thread_choice.ensure_choice(n_points, progress=note)
            chosen = thread_choice.current_split()
        else:
            chosen = thread_choice.split_of(thread_choice.default_split())
        render = chosen[0] if render is None else render
        torch_side = chosen[1] if torch_side is None else torch_side
    return max(1, min(int(render), numba.config.NUMBA_NUM_THREADS)), max(1, int(torch_side))


RENDERERS = ("cpu", "gsplat", "auto")


def choose_renderer(renderer: str) -> str:
    """"cpu" or "gsplat" for a setting; asking for gsplat where it cannot run is an error naming why."""
    from ..render.gsplat_rasterizer import gsplat_status

    if renderer not in RENDERERS:
        raise BadInputError(f"refinement renderer must be one of {', '.join(RENDERERS)}, got {renderer!r}")
    if renderer == "cpu":
        return "cpu"
    ok, why = gsplat_status()
    if renderer == "gsplat" and not ok:
        raise BadInputError(f"the gsplat refinement renderer is not usable here: {why}; use the CPU renderer")
    return "gsplat" if ok else "cpu"


def _refine(avatar: Avatar, views: Sequence[View], s: RefineSettings, progress: Progress | None,
            cancel: CancelToken | None) -> RefineResult:
    torch.manual_seed(s.seed)
    t_start = time.perf_counter()
    dt = torch.float32
    dev = torch.device(s.device or "cuda") if s.renderer == "gsplat" else torch.device("cpu")
    f = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32), device=dev)  # noqa: E731
    if s.renderer == "gsplat":
        from ..render import gsplat_diff

        draw = gsplat_diff.render
    else:
        draw = functools.partial(diff_render.render, tile=s.tile)

    rig = TorchRig.from_avatar(avatar, device=dev)
    template = f(avatar.template)
    init = {
        "rgb": f(avatar.rgb).clone(),
        "opacity": torch.logit(f(avatar.opacity).clamp(1e-4, 1 - 1e-4)),
        "offset": f(avatar.xyz) - template,
        "scale": torch.log(f(avatar.scale).clamp_min(1e-8)),
        "rotation": f(avatar.rotation) / f(avatar.rotation).norm(dim=1, keepdim=True),
    }
    params = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    lrs = {"rgb": s.lr_rgb, "opacity": s.lr_opacity, "offset": s.lr_offset, "scale": s.lr_scale, "rotation": s.lr_rotation}
    opt = torch.optim.Adam([{"params": [params[k]], "lr": lrs[k], "name": k} for k in params], eps=1e-15)
    prior_scale = {"rgb": 1.0, "opacity": 1.0, "offset": 1.0 / 0.01, "scale": 1.0, "rotation": 1.0}  # offset in cm

    # per view: pose tensors and the rotation quaternions R(A) (they depend on the pose only)
    poses, rot_q, photos, mattes = [], [], [], []
    with torch.no_grad():
        for v in views:
            pose = TorchPose.from_numpy(v.pose.checked(avatar.n_expr), device=dev)
            poses.append(pose)
            deformed = evaluate(rig, pose, with_rotations=True)
            rot_q.append(matrix_to_quaternion(deformed.point_rotations[0]))
            photos.append(f(v.photo))
            mattes.append(f(v.matte)[..., None])
    window = _gauss_window(dtype=dt).to(dev)

    def posed(k: int):
        xyz = template + params["offset"]
        pos = evaluate(dataclasses.replace(rig, points=xyz), poses[k]).positions[0]
        q = params["rotation"] / params["rotation"].norm(dim=1, keepdim=True)
        quat = quaternion_multiply(rot_q[k], q)
        return pos, quat, torch.exp(params["scale"]), torch.sigmoid(params["opacity"]), params["rgb"].clamp(0, 1)

    def photo_loss(k: int, with_weight: bool = False):
        out = draw(*posed(k), views[k].camera, WHITE, with_weight=with_weight)
        m = mattes[k]
        l1 = (m * (out.rgb - photos[k]).abs()).sum() / (3 * m.sum().clamp_min(1e-8))
        d_ssim = (1 - ssim(out.rgb * m, photos[k] * m, window)) / 2
        return (1 - s.ssim_weight) * l1 + s.ssim_weight * d_ssim, out

    # which Gaussians any view sees (at the start): the prior holds the others
    seen_w = torch.zeros(avatar.n_points, device=dev)
    loss0 = 0.0
    with torch.no_grad():
        for k in range(len(views)):
            lk, out = photo_loss(k, with_weight=True)
            loss0 += float(lk) / len(views)
            seen_w += out.weight
    seen = seen_w > s.seen_threshold
    w_prior = s.prior_weight + s.unseen_weight * (~seen).to(dt)

    def regular() -> torch.Tensor:
        off = params["offset"]
        bound = torch.relu(off.abs() - s.offset_bound).pow(2).sum()
        prior = sum(((params[k] - init[k]) * prior_scale[k]).pow(2).reshape(avatar.n_points, -1).sum(1) for k in params)
        return s.bound_weight * bound + (w_prior * prior).sum() / avatar.n_points

    history: list[float] = []
    stop = "iterations"
    it = 0
    for it in range(1, s.iterations + 1):
        if cancel is not None:
            cancel.check()
        if s.time_budget_s is not None and time.perf_counter() - t_start > s.time_budget_s:
            stop, it = "time budget", it - 1
            break
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for k in range(len(views)):  # one view at a time: one autograd graph alive
            lk, _ = photo_loss(k)
            (lk / len(views)).backward()
            total += float(lk.detach()) / len(views)
        reg = regular()
        reg.backward()
        opt.step()
        history.append(total)
        if progress is not None:
            progress(STAGE, it / s.iterations, f"iteration {it}/{s.iterations}: loss {total:.5f}")

    with torch.no_grad():
        loss1 = sum(float(photo_loss(k)[0]) for k in range(len(views))) / len(views)
        offset = params["offset"].clamp(-s.offset_bound, s.offset_bound)
        q = params["rotation"] / params["rotation"].norm(dim=1, keepdim=True)
        q = torch.where(q[:, :1] < 0, -q, q)
        out = {
            "xyz": (template + offset).cpu().numpy(),
            "rgb": params["rgb"].clamp(0, 1).cpu().numpy(),
            "opacity": torch.sigmoid(params["opacity"]).cpu().numpy(),
            "scale": torch.exp(params["scale"]).cpu().numpy(),
            "rotation": q.cpu().numpy(),
        }
    seconds = time.perf_counter() - t_start
    stats = {
        "iterations": it,
        "loss_before": loss0,
        "loss_after": loss1,
        "stopped": stop,
        "seconds": round(seconds, 3),
        "seed": s.seed,
        "renderer": s.renderer if s.renderer == "cpu" else f"gsplat ({dev})",
        "views": [v.name or f"view {k + 1}" for k, v in enumerate(views)],
        "seen_fraction": float(seen.float().mean()),
        "loss": "0.8 L1 + 0.2 D-SSIM inside the matte" if s.ssim_weight == 0.2 else f"L1 + {s.ssim_weight} D-SSIM",
    }
    meta = dict(avatar.meta)
    meta["refinement"] = stats
    refined = dataclasses.replace(avatar, **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()},
                                  meta=meta, opacity_logit=None)
    return RefineResult(refined, {**stats, "loss_history": history})
