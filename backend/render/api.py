"""One rendering entry point for both backends, and avatar rendering through the rig.

``render_gaussians`` takes Gaussians + a :class:`PinholeCamera` and returns RGB,
alpha and depth from either the CPU renderer (numba) or gsplat (CUDA);
``backend="auto"`` picks gsplat when torch with CUDA and gsplat import, else the
CPU, and the result says which (``RenderOutput.backend``, and one log line).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..core.errors import BadInputError, MissingAssetError
from .camera import PinholeCamera

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "gsplat")
WHITE = (1.0, 1.0, 1.0)


@dataclass
class RenderOutput:
    """rgb H,W,3 float32 (composited on ``background``; premultiplied when the
    background is transparent, i.e. None), alpha H,W in [0,1], depth H,W (expected
    camera z of the visible splats, 0 where nothing is drawn), backend used."""

    rgb: np.ndarray
    alpha: np.ndarray
    depth: np.ndarray
    backend: str
    background: tuple[float, float, float] | None
    n_visible: int = -1

    def rgba_straight(self) -> np.ndarray:
        """H,W,4 straight (un-premultiplied) RGBA for transparent PNGs."""
        rgb = self.rgb
        if self.background is not None:  # undo the compositing first
            rgb = rgb - (1.0 - self.alpha[..., None]) * np.asarray(self.background, np.float32)
        a = self.alpha[..., None]
        straight = np.where(a > 0, rgb / np.maximum(a, 1e-12), 0.0)
        return np.concatenate([np.clip(straight, 0, 1), np.clip(a, 0, 1)], axis=-1).astype(np.float32)


_announced: set[str] = set()


def select_backend(backend: str = "auto") -> str:
    """'cpu' or 'gsplat'. 'gsplat' when asked for and unusable is an error naming why."""
    from .gsplat_rasterizer import gsplat_status

    if backend not in BACKENDS:
        raise BadInputError(f"unknown renderer '{backend}'; choose one of {', '.join(BACKENDS)}")
    if backend == "cpu":
        chosen, why = "cpu", "requested"
    else:
        ok, reason = gsplat_status()
        if backend == "gsplat" and not ok:
            raise MissingAssetError(f"the gsplat renderer is not usable here: {reason}. Use --renderer cpu (or auto).")
        chosen, why = ("gsplat", reason) if ok else ("cpu", f"gsplat unavailable: {reason}")
    if chosen + why not in _announced:
        _announced.add(chosen + why)
        log.info("renderer: %s (%s)", chosen, why)
    return chosen


def _check_inputs(means, quats, scales, opacities, colors) -> int:
    shapes = {"means": (means, 3), "quats_wxyz": (quats, 4), "scales": (scales, 3), "colors": (colors, 3)}
    n = np.shape(means)[0] if np.ndim(means) == 2 else -1
    for name, (arr, width) in shapes.items():
        if np.ndim(arr) != 2 or np.shape(arr) != (n, width):
            raise BadInputError(f"render_gaussians: {name} must have shape (N, {width}) with N = {n}, got {np.shape(arr)}")
    if np.shape(opacities) not in ((n,), (n, 1)):
        raise BadInputError(f"render_gaussians: opacities must have shape (N,) with N = {n}, got {np.shape(opacities)}")
    for name, arr in (("means", means), ("quats_wxyz", quats), ("scales", scales), ("opacities", opacities), ("colors", colors)):
        if not np.isfinite(np.asarray(arr, dtype=np.float64)).all():
            raise BadInputError(f"render_gaussians: {name} contains NaN or infinite values")
    return n


def _background(background) -> tuple[float, float, float] | None:
    if background is None:
        return None
    bg = tuple(float(x) for x in np.broadcast_to(np.asarray(background, dtype=np.float64), (3,)))
    return bg  # type: ignore[return-value]


def render_gaussians(
    means,
    quats_wxyz,
    scales,
    opacities,
    colors,
    camera: PinholeCamera,
    background: Sequence[float] | None = WHITE,
    backend: str = "auto",
) -> RenderOutput:
    """Render N Gaussians (means N,3 world; quats_wxyz N,4; scales N,3 standard
    deviations; opacities N in [0,1]; colors N,3) seen by ``camera``.

    ``background`` = RGB triple (default white) or None for transparent (then rgb
    is premultiplied: rgb_on_white == rgb_transparent + (1 - alpha))."""
    if not isinstance(camera, PinholeCamera):
        raise BadInputError(f"render_gaussians: camera must be a PinholeCamera, got {type(camera).__name__}")
    chosen = select_backend(backend)
    bg = _background(background)
    kw = dict(world_to_camera=camera.world_to_camera, fx=camera.fx, fy=camera.fy, cx=camera.cx, cy=camera.cy,
              width=camera.width, height=camera.height, near=camera.near, far=camera.far)
    if chosen == "gsplat":
        from .gsplat_rasterizer import rasterize_gsplat

        res = rasterize_gsplat(means, quats_wxyz, scales, opacities, colors, **kw)
        rgb = res.color
        if bg is not None:  # gsplat returns premultiplied colour: composite here
            rgb = rgb + (1.0 - res.alpha[..., None]) * np.asarray(bg, dtype=np.float32)
    else:
        from .cpu_rasterizer import rasterize_cpu

        _check_inputs(means, quats_wxyz, scales, opacities, colors)
        res = rasterize_cpu(means, quats_wxyz, scales, opacities, colors, background=bg, **kw)
        rgb = res.color
    return RenderOutput(rgb.astype(np.float32, copy=False), res.alpha, res.depth, chosen, bg, res.n_visible)


# ---------------------------------------------------------------- avatars


def slice_pose(pose, start: int, stop: int):
    """Frames [start, stop) of a batched FlamePose (every array field sliced on axis 0)."""
    changes = {f.name: getattr(pose, f.name)[start:stop] for f in dataclasses.fields(pose)
               if isinstance(getattr(pose, f.name), np.ndarray)}
    return dataclasses.replace(pose, **changes)


def _pose_frames(pose) -> int:
    return int(np.asarray(pose.expr).shape[0])


def deform_avatar(avatar, pose, *, mode: str = "rig", rotate_gaussians: bool = True, pose_correctives: bool = False):
    """(positions B,N,3, quaternions B,N,4 wxyz) of the avatar's Gaussians under ``pose``
    (a batched FlamePose; None = rest pose, B = 1)."""
    from ..core import rig

    if pose is None:
        pose = rig.FlamePose.zeros(1, avatar.n_expr)
    deformed = rig.evaluate(avatar, pose, mode=mode, pose_correctives=pose_correctives, with_rotations=rotate_gaussians)
    positions = np.asarray(deformed.positions, dtype=np.float32)
    if rotate_gaussians:
        quats = np.asarray(rig.rotate_gaussians(avatar.rotation, deformed.point_rotations), dtype=np.float32)
    else:
        quats = np.broadcast_to(avatar.rotation, positions.shape[:2] + (4,))
    return positions, quats


def render_avatar(
    avatar,
    pose,
    camera: PinholeCamera,
    *,
    mode: str = "rig",
    rotate_gaussians: bool = True,
    pose_correctives: bool = False,
    background: Sequence[float] | None = WHITE,
    backend: str = "auto",
) -> RenderOutput:
    """Render one frame: ``pose`` is a FlamePose with batch size 1 (or None for the
    rest pose). mode "rig" (Blender's) or "lam" (official LAM animation); with
    ``rotate_gaussians`` each Gaussian follows its local deformation (DESIGN.md)."""
    if pose is not None and _pose_frames(pose) != 1:
        raise BadInputError(f"render_avatar renders one frame; got a pose batch of {_pose_frames(pose)} (use iter_render_avatar)")
    return next(iter_render_avatar(avatar, pose, camera, mode=mode, rotate_gaussians=rotate_gaussians,
                                   pose_correctives=pose_correctives, background=background, backend=backend))


def iter_render_avatar(
    avatar,
    poses,
    cameras: PinholeCamera | Iterable[PinholeCamera],
    *,
    n_frames: int | None = None,
    mode: str = "rig",
    rotate_gaussians: bool = True,
    pose_correctives: bool = False,
    background: Sequence[float] | None = WHITE,
    backend: str = "auto",
    chunk: int = 16,
) -> Iterator[RenderOutput]:
    """Render a sequence lazily. ``poses``: batched FlamePose (B frames) or None (rest
    pose for every frame); ``cameras``: one camera for all frames or one per frame.
    The number of frames is B, else ``n_frames``, else the number of cameras."""
    chosen = select_backend(backend)
    cams = [cameras] if isinstance(cameras, PinholeCamera) else list(cameras)
    if not cams:
        raise BadInputError("no camera given")
    if poses is not None:
        total = _pose_frames(poses)
    elif n_frames is not None:
        total = int(n_frames)
    else:
        total = len(cams)
    if len(cams) not in (1, total):
        raise BadInputError(f"{len(cams)} cameras for {total} frames: give one camera or one per frame")
    static = None
    if poses is None:  # the rest pose is the same for every frame: deform once
        static = deform_avatar(avatar, None, mode=mode, rotate_gaussians=rotate_gaussians, pose_correctives=pose_correctives)
    for start in range(0, total, chunk):
        stop = min(total, start + chunk)
        if static is None:
            pos, quat = deform_avatar(avatar, slice_pose(poses, start, stop), mode=mode,
                                      rotate_gaussians=rotate_gaussians, pose_correctives=pose_correctives)
        for f in range(start, stop):
            p, q = (static[0][0], static[1][0]) if static is not None else (pos[f - start], quat[f - start])
            cam = cams[0] if len(cams) == 1 else cams[f]
            yield render_gaussians(p, q, avatar.scale, avatar.opacity, avatar.rgb, cam, background, chosen)
