"""Landmark-only FLAME fit: 68 image landmarks -> shape (betas), expression, pose and camera.

What LAM needs from it is the 300 shape parameters (its canonical space); pose,
expression and camera are fitted alongside so the shape does not have to
explain them. Model: FLAME evaluated at the landmark triangles only (the
vertices under the embedded landmarks, joints from the full J_regressor),
linear blend skinning over root/neck/jaw (eyes at rest), no pose correctives
(they move landmarks by well under a millimetre). Camera: pinhole 1 m from
the origin on +Z looking down -Z (the face looks at it), principal point at
the image centre, focal initialised at 1.5 x image size and optimised under a
weak log-normal prior (focal and distance are nearly interchangeable for a
head-sized object). Optimisation: L-BFGS in float64, rigid stage first
(rotation, translation, focal), then everything, with Gaussian priors on
betas and expression (unit variance: FLAME's components are normalised) and
on neck/jaw rotations.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.errors import BadInputError, CancelToken
from .embedding import LandmarkEmbedding

Progress = Callable[[str, float, str], None]
STAGE = "fit"

N_SHAPE = 300
FOCAL_INIT = 1.5  # x image size
CAMERA_DISTANCE = 1.0  # metres, camera on +Z
# Standard deviations of the priors.
SIGMA_PX = 0.005  # landmark noise, x image size (2.5 px at 504)
SIGMA_NECK = 0.1  # rad: neck and global rotation are nearly interchangeable for head landmarks
SIGMA_JAW = 0.2  # rad
SIGMA_LOG_FOCAL = 0.1
JAW_WEIGHT = 0.5  # contour landmarks slide along the silhouette: trust them less
POOR_FIT_RMS = 0.02  # x image size: warn above this


@dataclass
class FlameFit:
    """Fitted FLAME parameters (numpy float32) and camera.

    betas (S,), expr (E,), rotation/neck/jaw/translation (3,) axis-angle / metres; focal in pixels of an
    ``image_size`` square image; rms_px: landmark reprojection RMS in pixels (NaN when no fit ran);
    landmarks_px: (68, 2) fitted landmarks projected (NaN rows where the embedding has none).
    """

    betas: np.ndarray
    expr: np.ndarray
    rotation: np.ndarray
    neck: np.ndarray
    jaw: np.ndarray
    translation: np.ndarray
    focal: float
    rms_px: float
    warnings: list[str] = field(default_factory=list)
    image_size: int = 0
    landmarks_px: np.ndarray | None = None


def _get(obj, *names, required: bool = True):
    for n in names:
        v = obj.get(n) if isinstance(obj, dict) else getattr(obj, n, None)
        if v is not None:
            return v
    if required:
        raise BadInputError(f"the FLAME model object has none of {names}; cannot fit")
    return None


def _np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    if hasattr(a, "toarray"):  # scipy sparse
        return np.asarray(a.toarray())
    return np.asarray(a)


@dataclass
class FlameArrays:
    """The FLAME arrays the fit needs (float64 numpy). template (N,3); shapedirs (N,3,S); exprdirs (N,3,E);
    j_regressor (J,N); weights (N,J); parents (J,); faces (F,3)."""

    template: np.ndarray
    shapedirs: np.ndarray
    exprdirs: np.ndarray
    j_regressor: np.ndarray
    weights: np.ndarray
    parents: np.ndarray
    faces: np.ndarray

    @classmethod
    def from_model(cls, flame, n_shape: int = N_SHAPE) -> FlameArrays:
        """Accepts ``backend.flame.FlameModel`` or anything with FLAME's usual array names
        (template/v_template, shapedirs [+ exprdirs/expr_dirs, else shape+expression stacked],
        J_regressor, lbs_weights/weights, parents/kintree_table, faces)."""
        template = _np(_get(flame, "template", "v_template")).astype(np.float64)
        sd = _np(_get(flame, "shapedirs")).astype(np.float64)
        ed = _get(flame, "exprdirs", "expr_dirs", "expressiondirs", required=False)
        n_model_shape = _get(flame, "n_shape", required=False)
        if ed is None:  # shape and expression stacked in shapedirs, shape first
            n_model_shape = int(n_model_shape if n_model_shape is not None else min(n_shape, sd.shape[2]))
            ed = sd[:, :, n_model_shape:]
        else:
            n_model_shape = int(n_model_shape if n_model_shape is not None else sd.shape[2])
            ed = _np(ed).astype(np.float64)
        sd = sd[:, :, : min(n_shape, n_model_shape)]
        parents = _get(flame, "parents", required=False)
        if parents is None:
            parents = _np(_get(flame, "kintree_table"))[0].astype(np.int64)
            parents = np.where(parents > 2**31, -1, parents)  # uint32 -1 in the official pickles
        return cls(
            template=template,
            shapedirs=sd,
            exprdirs=ed,
            j_regressor=_np(_get(flame, "J_regressor", "j_regressor")).astype(np.float64),
            weights=_np(_get(flame, "lbs_weights", "weights")).astype(np.float64),
            parents=_np(parents).astype(np.int64).reshape(-1),
            faces=_np(_get(flame, "faces", "f")).astype(np.int64),
        )


def axis_angle_to_matrix_t(r: torch.Tensor) -> torch.Tensor:
    """Rodrigues: (..., 3) -> (..., 3, 3), smooth at zero."""
    angle = torch.sqrt((r * r).sum(-1, keepdim=True) + 1e-16)
    k = r / angle
    kx, ky, kz = k.unbind(-1)
    z = torch.zeros_like(kx)
    K = torch.stack([z, -kz, ky, kz, z, -kx, -ky, kx, z], -1).reshape(r.shape[:-1] + (3, 3))
    s = torch.sin(angle)[..., None]
    c = torch.cos(angle)[..., None]
    eye = torch.eye(3, dtype=r.dtype).expand_as(K)
    return eye + s * K + (1 - c) * (K @ K)


class LandmarkFlame(torch.nn.Module):
    """FLAME restricted to the embedded landmarks: params -> (K, 3) landmark positions in metres."""

    def __init__(self, arrays: FlameArrays, emb: LandmarkEmbedding, n_expr: int | None = None):
        super().__init__()
        emb.check_against(arrays.faces.shape[0])
        tri = arrays.faces[emb.faces_idx]  # K,3
        verts, inv = np.unique(tri.reshape(-1), return_inverse=True)
        k = tri.shape[0]
        bary = np.zeros((k, verts.size))
        np.add.at(bary, (np.repeat(np.arange(k), 3), inv), emb.bary.reshape(-1))
        ne = arrays.exprdirs.shape[2] if n_expr is None else min(n_expr, arrays.exprdirs.shape[2])
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64)  # noqa: E731
        self.bary = t(bary)
        self.T = t(arrays.template[verts])
        self.SD = t(arrays.shapedirs[verts])
        self.ED = t(arrays.exprdirs[verts][:, :, :ne])
        self.W = t(arrays.weights[verts])
        jr = arrays.j_regressor
        self.JT = t(jr @ arrays.template)
        self.JSD = t(np.einsum("jn,nds->jds", jr, arrays.shapedirs))
        self.JED = t(np.einsum("jn,nde->jde", jr, arrays.exprdirs[:, :, :ne]))
        self.parents = [int(p) for p in arrays.parents]
        self.n_shape = arrays.shapedirs.shape[2]
        self.n_expr = ne
        self.n_joints = len(self.parents)

    def forward(self, betas, expr, rotation, neck, jaw, translation) -> torch.Tensor:
        v = self.T + self.SD @ betas + self.ED @ expr  # V,3
        J = self.JT + self.JSD @ betas + self.JED @ expr  # J,3
        pose = torch.zeros(self.n_joints, 3, dtype=v.dtype)
        pose = torch.cat([rotation[None], neck[None], jaw[None], pose[3:]], 0)
        R = axis_angle_to_matrix_t(pose)
        gr: list[torch.Tensor] = []
        gt: list[torch.Tensor] = []
        for j, p in enumerate(self.parents):
            if p < 0:
                gr.append(R[j])
                gt.append(J[j])
            else:
                gr.append(gr[p] @ R[j])
                gt.append(gr[p] @ (J[j] - J[p]) + gt[p])
        Gr = torch.stack(gr)  # J,3,3
        At = torch.stack(gt) - (Gr @ J[:, :, None])[..., 0]  # J,3
        Rv = torch.einsum("vj,jab->vab", self.W, Gr)
        tv = self.W @ At
        posed = (Rv @ v[:, :, None])[..., 0] + tv
        return self.bary @ posed + translation


def project(points: torch.Tensor, focal: torch.Tensor, image_size: int) -> torch.Tensor:
    """(K, 3) FLAME-space metres -> (K, 2) pixels (x right, y down) for the camera described above."""
    depth = torch.clamp(CAMERA_DISTANCE - points[:, 2], min=1e-3)
    c = image_size / 2.0
    return torch.stack([focal * points[:, 0] / depth + c, -focal * points[:, 1] / depth + c], -1)


def _no_embedding_fit(n_shape: int, n_expr: int, image_size: int) -> FlameFit:
    z3 = np.zeros(3, np.float32)
    return FlameFit(
        betas=np.zeros(n_shape, np.float32), expr=np.zeros(n_expr, np.float32), rotation=z3.copy(),
        neck=z3.copy(), jaw=z3.copy(), translation=z3.copy(), focal=FOCAL_INIT * image_size, rms_px=float("nan"),
        warnings=["FLAME landmark embedding not installed: no face-shape fit was run, the avatar uses the average "
                  "FLAME head shape (betas = 0). Install the LAM assets (landmark_embedding_with_eyes.npy) for a "
                  "fitted shape"],
        image_size=image_size, landmarks_px=np.full((68, 2), np.nan, np.float32),
    )


def reporter(progress: Callable | None, cancel: CancelToken | None) -> Callable[[float, str], None]:
    """``report(fraction, message)`` for a fit: checks for cancel, then reports the fit stage."""

    def report(f: float, msg: str) -> None:
        if cancel is not None:
            cancel.check()
        if progress is not None:
            progress(STAGE, f, msg)

    return report


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """torch on one thread while fitting: tiny tensors, where thread hand-offs cost 40x the maths
    (worse on busy cores). The previous count is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def lbfgs_stage(params: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor], iters: int,
                report: Callable[[float, str], None], f_from: float, f_to: float, msg: str) -> None:
    """One fitting stage: L-BFGS (strong Wolfe) on ``params``, reporting progress from ``f_from``
    towards ``f_to`` every 10 evaluations (``report`` also checks for cancel). Shared by the
    single-photo and the joint fit, so both optimise exactly alike."""
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)
    calls = [0]

    def closure() -> torch.Tensor:
        calls[0] += 1
        if calls[0] % 10 == 0:
            report(f_from + (f_to - f_from) * min(1.0, calls[0] / (1.5 * iters)), msg)
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)


def fit_flame(
    flame,
    landmarks68: np.ndarray,
    image_size: int,
    embedding: LandmarkEmbedding | None = None,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
    n_shape: int = N_SHAPE,
    n_expr: int | None = None,
    iterations: tuple[int, int] = (50, 400),
) -> FlameFit:
    """Fit FLAME to ``landmarks68`` (68, 2) pixels of an ``image_size`` square image.

    Without ``embedding`` no fit runs: betas = 0 and a warning (see :func:`_no_embedding_fit`).
    ``iterations``: L-BFGS iterations of the rigid and the full stage.
    """
    lm = np.asarray(landmarks68, dtype=np.float64)
    if lm.shape != (68, 2) or not np.isfinite(lm).all():
        raise BadInputError(f"fit_flame needs 68 finite 2D landmarks, got shape {lm.shape}")
    arrays = FlameArrays.from_model(flame, n_shape)
    n_expr_model = arrays.exprdirs.shape[2] if n_expr is None else min(n_expr, arrays.exprdirs.shape[2])
    if embedding is None:
        return _no_embedding_fit(arrays.shapedirs.shape[2], n_expr_model, image_size)

    with single_threaded():
        return _fit(arrays, lm, image_size, embedding, n_expr_model, iterations, reporter(progress, cancel))


def _fit(arrays: FlameArrays, lm: np.ndarray, image_size: int, embedding: LandmarkEmbedding, n_expr_model: int,
         iterations: tuple[int, int], report: Callable[[float, str], None]) -> FlameFit:
    report(0.0, "fitting FLAME to the landmarks")
    model = LandmarkFlame(arrays, embedding, n_expr_model)
    obs = torch.as_tensor(lm[embedding.ibug_index], dtype=torch.float64)
    w = torch.ones(obs.shape[0], dtype=torch.float64)
    w[torch.as_tensor(embedding.ibug_index < 17)] = JAW_WEIGHT
    sigma = SIGMA_PX * image_size
    f64 = dict(dtype=torch.float64)
    betas = torch.zeros(model.n_shape, **f64, requires_grad=True)
    expr = torch.zeros(model.n_expr, **f64, requires_grad=True)
    rotation = torch.zeros(3, **f64, requires_grad=True)
    neck = torch.zeros(3, **f64, requires_grad=True)
    jaw = torch.zeros(3, **f64, requires_grad=True)
    log_f0 = math.log(FOCAL_INIT * image_size)
    log_f = torch.tensor(log_f0, **f64, requires_grad=True)

    # Place the neutral head so its landmarks cover the observed ones (centroid and spread).
    with torch.no_grad():
        L0 = model(betas, expr, rotation, neck, jaw, torch.zeros(3, **f64))
        f0 = math.exp(log_f0)
        spread_m = torch.sqrt(((L0[:, :2] - L0[:, :2].mean(0)) ** 2).sum(1).mean())
        spread_px = torch.sqrt(((obs - obs.mean(0)) ** 2).sum(1).mean()).clamp(min=1.0)
        depth = float(f0 * spread_m / spread_px)
        c = obs.mean(0) - image_size / 2.0
        t0 = torch.stack([c[0] * depth / f0 - L0[:, 0].mean(), -c[1] * depth / f0 - L0[:, 1].mean(),
                          CAMERA_DISTANCE - depth - L0[:, 2].mean()])
    translation = t0.clone().requires_grad_(True)

    def loss_fn() -> torch.Tensor:
        pts = model(betas, expr, rotation, neck, jaw, translation)
        r = project(pts, torch.exp(log_f), image_size) - obs
        data = (w * (r * r).sum(1)).sum() / sigma**2
        prior = (betas * betas).sum() + (expr * expr).sum()
        prior = prior + (neck * neck).sum() / SIGMA_NECK**2 + (jaw * jaw).sum() / SIGMA_JAW**2
        prior = prior + (log_f - log_f0) ** 2 / SIGMA_LOG_FOCAL**2
        return data + prior

    def run(params: list[torch.Tensor], iters: int, f_from: float, f_to: float, msg: str) -> None:
        lbfgs_stage(params, loss_fn, iters, report, f_from, f_to, msg)

    run([rotation, translation, log_f], iterations[0], 0.0, 0.25, "rigid pose and camera")
    run([betas, expr, rotation, neck, jaw, translation, log_f], iterations[1], 0.25, 0.95,
        "shape, expression, pose, camera")

    with torch.no_grad():
        pts = model(betas, expr, rotation, neck, jaw, translation)
        proj = project(pts, torch.exp(log_f), image_size)
        rms = float(torch.sqrt(((proj - obs) ** 2).sum(1).mean()))
    out_lm = np.full((68, 2), np.nan, np.float32)
    out_lm[embedding.ibug_index] = proj.numpy()
    warnings: list[str] = []
    if not math.isfinite(rms) or rms > POOR_FIT_RMS * image_size:
        warnings.append(f"the FLAME fit matches the face landmarks poorly (RMS {rms:.1f} px of {image_size}); "
                        "the head shape may be off. A frontal, neutral, well-lit photo fits best")
    report(1.0, f"landmark RMS {rms:.2f} px")
    f32 = lambda t: t.detach().numpy().astype(np.float32)  # noqa: E731
    return FlameFit(
        betas=f32(betas), expr=f32(expr), rotation=f32(rotation), neck=f32(neck), jaw=f32(jaw),
        translation=f32(translation), focal=float(torch.exp(log_f).detach()), rms_px=rms, warnings=warnings,
        image_size=int(image_size), landmarks_px=out_lm,
    )
