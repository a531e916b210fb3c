"""Joint FLAME fit over K photos of one person: one shape, per-photo expression, pose and camera.

The model, camera and priors are the single-photo fit's (:mod:`backend.fit.flame_fit`): FLAME at
the landmark triangles, a pinhole 1 m from the origin on +Z per photo with its own focal (weak
log-normal prior), Gaussian priors on expression, neck and jaw. What is shared is the shape:
``betas`` is one vector for all photos and its unit-variance prior is counted once (the photos
are K observations of one head, so the likelihoods multiply and the prior does not). Per photo:
expression, global rotation, neck, jaw, translation and focal.

Eyes stay at rest, as in the single fit: the 68 iBUG landmarks lie on the eyelids, not on the
pupils, so they carry no information about eye rotation.

Optimisation (float64 L-BFGS, as the single fit): a rigid stage per photo (rotation,
translation, focal, from the same centroid/spread initialisation), then one joint stage over
the shared shape and every photo's parameters (K times the single fit's iterations). With one photo the loss, the parameter order
and the schedule are the single fit's, so :func:`fit_flame_joint` on one photo returns what
:func:`backend.fit.flame_fit.fit_flame` returns (tests/test_joint_fit.py checks it bit for bit).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.errors import BadInputError, CancelToken
from .embedding import LandmarkEmbedding
from .flame_fit import (
    CAMERA_DISTANCE,
    FOCAL_INIT,
    JAW_WEIGHT,
    N_SHAPE,
    POOR_FIT_RMS,
    SIGMA_JAW,
    SIGMA_LOG_FOCAL,
    SIGMA_NECK,
    SIGMA_PX,
    FlameArrays,
    FlameFit,
    LandmarkFlame,
    _no_embedding_fit,
    lbfgs_stage,
    project,
    reporter,
    single_threaded,
)

Progress = Callable[[str, float, str], None]
STAGE = "fit"
MAX_VIEWS = 8


@dataclass
class JointFit:
    """The shared shape and one :class:`FlameFit` per photo (in input order; every ``fits[k].betas``
    is ``betas``). ``rms_px``: landmark RMS over all photos (NaN when no fit ran)."""

    betas: np.ndarray
    fits: list[FlameFit]
    rms_px: float
    names: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def fit_flame_joint(
    flame,
    landmarks68: Sequence[np.ndarray],
    image_size: int | Sequence[int],
    embedding: LandmarkEmbedding | None = None,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
    n_shape: int = N_SHAPE,
    n_expr: int | None = None,
    iterations: tuple[int, int] = (50, 400),
    names: Sequence[str] | None = None,
) -> JointFit:
    """Fit one FLAME shape and per-photo expression/pose/camera to K photos' landmarks.

    ``landmarks68``: K arrays (68, 2) in pixels of square images of ``image_size`` (one size for
    all, or one per photo). ``names`` label the photos in messages (default ``photo 1`` ...).
    Without ``embedding`` no fit runs (betas = 0, poses at rest, as the single fit).
    ``iterations``: L-BFGS iterations of each photo's rigid stage and of the joint stage per photo (the joint
    stage gets ``K x iterations[1]``: it has K times the parameters, and with fewer it stops short of the
    single fits' accuracy).
    """
    k = len(landmarks68)
    if k < 1:
        raise BadInputError("the joint FLAME fit needs at least one photo's landmarks")
    if k > MAX_VIEWS:
        raise BadInputError(f"the joint FLAME fit takes at most {MAX_VIEWS} photos, got {k}")
    names = [str(n) for n in names] if names is not None else [f"photo {i + 1}" for i in range(k)]
    if len(names) != k:
        raise BadInputError(f"{len(names)} names for {k} photos")
    sizes = [int(image_size)] * k if np.ndim(image_size) == 0 else [int(s) for s in image_size]  # type: ignore[arg-type]
    if len(sizes) != k or min(sizes) < 1:
        raise BadInputError(f"image_size must be one positive size or one per photo, got {image_size}")
    lms = []
    for name, lm in zip(names, landmarks68):
        a = np.asarray(lm, dtype=np.float64)
        if a.shape != (68, 2) or not np.isfinite(a).all():
            raise BadInputError(f"{name}: the FLAME fit needs 68 finite 2D landmarks, got shape {a.shape}")
        lms.append(a)
    arrays = FlameArrays.from_model(flame, n_shape)
    n_expr_model = arrays.exprdirs.shape[2] if n_expr is None else min(n_expr, arrays.exprdirs.shape[2])
    if embedding is None:
        fits = [_no_embedding_fit(arrays.shapedirs.shape[2], n_expr_model, s) for s in sizes]
        return JointFit(fits[0].betas.copy(), fits, float("nan"), names, list(fits[0].warnings))

    with single_threaded():
        return _fit_joint(arrays, lms, sizes, names, embedding, n_expr_model, iterations, reporter(progress, cancel))


class _ViewParams:
    """One photo's observations and parameters (float64 leaves)."""

    def __init__(self, model: LandmarkFlame, lm: np.ndarray, size: int, embedding: LandmarkEmbedding):
        f64 = dict(dtype=torch.float64)
        self.size = size
        self.obs = torch.as_tensor(lm[embedding.ibug_index], **f64)
        self.w = torch.ones(self.obs.shape[0], **f64)
        self.w[torch.as_tensor(embedding.ibug_index < 17)] = JAW_WEIGHT
        self.sigma = SIGMA_PX * size
        self.expr = torch.zeros(model.n_expr, **f64, requires_grad=True)
        self.rotation = torch.zeros(3, **f64, requires_grad=True)
        self.neck = torch.zeros(3, **f64, requires_grad=True)
        self.jaw = torch.zeros(3, **f64, requires_grad=True)
        self.log_f0 = math.log(FOCAL_INIT * size)
        self.log_f = torch.tensor(self.log_f0, **f64, requires_grad=True)
        # Place the neutral head so its landmarks cover the observed ones (centroid and spread), as the single fit.
        with torch.no_grad():
            z = torch.zeros(3, **f64)
            L0 = model(torch.zeros(model.n_shape, **f64), self.expr, self.rotation, self.neck, self.jaw, z)
            f0 = math.exp(self.log_f0)
            spread_m = torch.sqrt(((L0[:, :2] - L0[:, :2].mean(0)) ** 2).sum(1).mean())
            spread_px = torch.sqrt(((self.obs - self.obs.mean(0)) ** 2).sum(1).mean()).clamp(min=1.0)
            depth = float(f0 * spread_m / spread_px)
            c = self.obs.mean(0) - size / 2.0
            t0 = torch.stack([c[0] * depth / f0 - L0[:, 0].mean(), -c[1] * depth / f0 - L0[:, 1].mean(),
                              CAMERA_DISTANCE - depth - L0[:, 2].mean()])
        self.translation = t0.clone().requires_grad_(True)

    def all(self) -> list[torch.Tensor]:
        return [self.expr, self.rotation, self.neck, self.jaw, self.translation, self.log_f]


def _fit_joint(arrays: FlameArrays, lms: list[np.ndarray], sizes: list[int], names: list[str],
               embedding: LandmarkEmbedding, n_expr_model: int, iterations: tuple[int, int],
               report: Callable[[float, str], None]) -> JointFit:
    k = len(lms)
    report(0.0, f"fitting FLAME to the landmarks of {k} photo{'s' if k > 1 else ''}")
    model = LandmarkFlame(arrays, embedding, n_expr_model)
    betas = torch.zeros(model.n_shape, dtype=torch.float64, requires_grad=True)
    views = [_ViewParams(model, lm, s, embedding) for lm, s in zip(lms, sizes)]

    def view_loss(v: _ViewParams) -> torch.Tensor:
        pts = model(betas, v.expr, v.rotation, v.neck, v.jaw, v.translation)
        r = project(pts, torch.exp(v.log_f), v.size) - v.obs
        data = (v.w * (r * r).sum(1)).sum() / v.sigma**2
        shape_prior = (betas * betas).sum()
        if k > 1:
            shape_prior = shape_prior / k  # counted once over the K photos
        prior = shape_prior + (v.expr * v.expr).sum()
        prior = prior + (v.neck * v.neck).sum() / SIGMA_NECK**2 + (v.jaw * v.jaw).sum() / SIGMA_JAW**2
        prior = prior + (v.log_f - v.log_f0) ** 2 / SIGMA_LOG_FOCAL**2
        return data + prior

    def total_loss() -> torch.Tensor:
        loss = view_loss(views[0])
        for v in views[1:]:
            loss = loss + view_loss(v)
        return loss

    def run(params: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor], iters: int, f_from: float, f_to: float,
            msg: str) -> None:
        lbfgs_stage(params, loss_fn, iters, report, f_from, f_to, msg)

    rigid_share = 0.25
    for i, v in enumerate(views):  # the photos' rigid stages are independent (shape and expression at zero)
        lo, hi = rigid_share * i / k, rigid_share * (i + 1) / k
        run([v.rotation, v.translation, v.log_f], lambda v=v: view_loss(v), iterations[0], lo, hi,
            "rigid pose and camera" + (f" ({names[i]})" if k > 1 else ""))
    params = [betas] + [p for v in views for p in v.all()]
    run(params, total_loss, iterations[1] * k, rigid_share, 0.95,
        "shape, expression, pose, camera" + (f" (joint over {k} photos)" if k > 1 else ""))

    f32 = lambda t: t.detach().numpy().astype(np.float32)  # noqa: E731
    shared = f32(betas)
    fits: list[FlameFit] = []
    warnings: list[str] = []
    sq, count = 0.0, 0
    with torch.no_grad():
        for name, v in zip(names, views):
            pts = model(betas, v.expr, v.rotation, v.neck, v.jaw, v.translation)
            proj = project(pts, torch.exp(v.log_f), v.size)
            d2 = ((proj - v.obs) ** 2).sum(1)
            rms = float(torch.sqrt(d2.mean()))
            sq, count = sq + float(d2.sum()), count + int(d2.numel())
            out_lm = np.full((68, 2), np.nan, np.float32)
            out_lm[embedding.ibug_index] = proj.numpy()
            w: list[str] = []
            if not math.isfinite(rms) or rms > POOR_FIT_RMS * v.size:
                prefix = f"{name}: " if k > 1 else ""
                w.append(f"{prefix}the FLAME fit matches the face landmarks poorly (RMS {rms:.1f} px of {v.size}); "
                         "the head shape may be off. A frontal, neutral, well-lit photo fits best")
            warnings += w
            fits.append(FlameFit(
                betas=shared.copy(), expr=f32(v.expr), rotation=f32(v.rotation), neck=f32(v.neck), jaw=f32(v.jaw),
                translation=f32(v.translation), focal=float(torch.exp(v.log_f).detach()), rms_px=rms, warnings=w,
                image_size=int(v.size), landmarks_px=out_lm,
            ))
    rms_all = math.sqrt(sq / max(count, 1))
    report(1.0, f"landmark RMS {rms_all:.2f} px" + (f" over {k} photos" if k > 1 else ""))
    return JointFit(shared, fits, rms_all, names, warnings)


def head_turn_deg(fit: FlameFit) -> float:
    """How far the head faces away from the camera, in degrees: the angle between the camera's axis
    (+Z) and the face's forward direction after the global rotation and the neck."""
    from .flame_fit import axis_angle_to_matrix_t

    rot = lambda a: axis_angle_to_matrix_t(torch.as_tensor(np.asarray(a, np.float64)))  # noqa: E731
    fwd_z = float((rot(fit.rotation) @ rot(fit.neck))[2, 2])  # z of the rotated +Z axis
    return float(np.degrees(np.arccos(np.clip(fwd_z, -1.0, 1.0))))


__all__ = ["JointFit", "fit_flame_joint", "head_turn_deg"]
