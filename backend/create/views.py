"""Several photos of one person -> one avatar (``lam-head create --views a.jpg b.jpg ...``; issue 15).

Order, so that a bad photo costs nothing:

1. every photo is checked and prepared (decode, detect, matte) - a bad one is refused by its name
   before the FLAME fit or the network;
2. one joint FLAME fit (:mod:`backend.fit.joint_fit`): shared shape, per-photo expression, pose, camera;
3. the rig is built with the shared shape; the network runs once, on the most frontal photo (the
   smallest fitted head turn away from the camera: LAM is trained on frontal-ish portraits, and a
   turned face hides half of what it must predict);
4. the avatar is refined on all photos (:func:`backend.create.refine.refine_avatar`): each photo inside
   its matte, posed with its fitted expression/pose and seen through its fitted camera;
5. written as an ordinary avatar file (and the optional PLY / preview / LAM web ZIP) whose ``meta``
   records the photos (with each one's fitted expression, pose and camera), which one fed the network and
   why, and the refinement.

One photo is not this path: ``lam-head create PHOTO`` (``create_avatar``) is unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import BadInputError, CancelledError, CancelToken, LamHeadError
from ..core.file_hash import sha256_file
from .pipeline import (
    SUBSTAGES,
    CreateResult,
    LamWebExport,
    Progress,
    Stages,
    WarningLog,
    arkit_basis_for,
    checked_output,
    resolve_assets,
)

log = logging.getLogger("lam_head.views")

MIN_VIEWS, MAX_VIEWS = 2, 4
DEFAULT_REFINE_ITERATIONS = 100  # CPU: 4 views at 252 px, 20018 Gaussians: ~0.25 s an iteration on 2 cores
DEFAULT_REFINE_SIZE = 252  # px: half the 504 network input (exact 2x2 averaging)

# Stage order and share of the whole job for one progress bar.
VIEW_STAGES: tuple[tuple[str, float], ...] = (
    ("prepare", 0.15), ("fit", 0.10), ("rig", 0.02), ("load", 0.08), ("network", 0.15), ("refine", 0.45),
    ("write", 0.05),
)
_START: dict[str, float] = {}
_acc = 0.0
for _n, _w in VIEW_STAGES:
    _START[_n] = _acc
    _acc += _w
_WEIGHT = dict(VIEW_STAGES)


def views_overall_fraction(stage: str, fraction: float) -> float:
    """A stage's own fraction -> the whole few-photo job's (unknown stages: unchanged)."""
    f = min(1.0, max(0.0, float(fraction)))
    if stage not in _START:
        return f
    return min(1.0, (_START[stage] + f * _WEIGHT[stage]) / _acc)


@dataclass
class ViewsResult(CreateResult):
    """:class:`CreateResult` plus which photo fed the network (and why) and the refinement stats."""

    network_photo: str = ""
    network_reason: str = ""
    refinement: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Photo:
    path: Path
    sha256: str
    image: np.ndarray  # 504,504,3 float32 on white
    alpha: np.ndarray  # 504,504
    landmarks68: np.ndarray


def _named(name: str, exc: LamHeadError) -> LamHeadError:
    """``exc`` with the photo's name in front (same class) unless the message already names it."""
    msg = str(exc)
    if name in msg:
        return exc
    try:
        return type(exc)(f"{name}: {msg}")
    except TypeError:
        return BadInputError(f"{name}: {msg}")


def _check_paths(images: Sequence[str | os.PathLike]) -> list[Path]:
    paths = [Path(p).expanduser() for p in images]
    if not MIN_VIEWS <= len(paths) <= MAX_VIEWS:
        raise BadInputError(f"--views takes {MIN_VIEWS} to {MAX_VIEWS} photos, got {len(paths)} "
                            "(for one photo: lam-head create PHOTO -o avatar.npz)")
    seen: dict[Path, str] = {}
    for p in paths:
        if not p.is_file():
            raise BadInputError(f"photo not found: {p}")
        key = p.resolve()
        if key in seen:
            raise BadInputError(f"{p.name} is given twice (as {seen[key]} and {p}); give each photo once")
        seen[key] = str(p)
    return paths


def choose_network_photo(turns_deg: Sequence[float], rms_px: Sequence[float], names: Sequence[str]) -> tuple[int, str]:
    """Index of the photo the network should see, and why (in words). The most frontal one (smallest
    fitted head turn); ties (within 1 deg) go to the better landmark fit, then to the earlier photo."""
    if not all(math.isfinite(t) for t in turns_deg) or not all(math.isfinite(r) for r in rms_px):
        return 0, (f"{names[0]}: no landmark fit ran (no FLAME landmark embedding), so the photos' head turns are "
                   "unknown; the first photo is used")
    order = sorted(range(len(names)), key=lambda i: (round(turns_deg[i]), rms_px[i], i))
    best = order[0]
    others = ", ".join(f"{names[i]} {turns_deg[i]:.0f} deg" for i in range(len(names)) if i != best)
    return best, (f"{names[best]} is the most frontal: head turned {turns_deg[best]:.0f} deg from the camera "
                  f"(others: {others}); LAM predicts best from a frontal face")


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    out = F.interpolate(t, size=(size, size), mode="area")[0]
    return (out[0] if a.ndim == 2 else out.permute(1, 2, 0)).numpy().copy()


def fit_camera(focal: float, image_size: int, size: int):
    """The FLAME fit's camera (pinhole at (0, 0, 1 m) looking down -Z, principal point at the centre,
    ``focal`` in pixels of ``image_size``) as a :class:`PinholeCamera` of ``size`` x ``size`` pixels."""
    from ..fit.flame_fit import CAMERA_DISTANCE
    from ..render.camera import PinholeCamera

    w2c = np.array([[1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, -1.0, CAMERA_DISTANCE], [0, 0, 0, 1.0]])
    f = float(focal) * size / image_size
    return PinholeCamera(size, size, f, f, size / 2.0, size / 2.0, w2c)


def fit_pose(fit, n_expr: int):
    """A FlamePose (batch 1) from a FlameFit: its expression (first ``n_expr``), rotation, neck, jaw,
    translation; eyes at rest."""
    from ..core.rig import FlamePose

    pose = FlamePose.zeros(1, n_expr)
    e = np.asarray(fit.expr, np.float32)[:n_expr]
    pose.expr[0, : e.size] = e
    for k in ("rotation", "neck", "jaw", "translation"):
        getattr(pose, k)[0] = np.asarray(getattr(fit, k), np.float32)
    return pose


def fit_record(fit) -> dict[str, Any]:
    """A photo's fitted FLAME pose, expression and camera for the avatar's ``meta`` (JSON): with them the
    refinement's views can be rebuilt and the fit checked against the photo (:func:`fit_pose`,
    :func:`fit_camera`); the shared shape is the avatar's ``shape_params``."""
    r = lambda a: [round(float(x), 6) for x in np.asarray(a).reshape(-1)]  # noqa: E731
    return {"expr": r(fit.expr), "rotation": r(fit.rotation), "neck": r(fit.neck), "jaw": r(fit.jaw),
            "translation": r(fit.translation), "focal_px": round(float(fit.focal), 4), "image_px": int(fit.image_size)}


def create_from_views(
    images: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    flame: str | os.PathLike | None = None,
    device: str = "auto",
    precision: str = "fp32",
    ply: str | os.PathLike | None = None,
    preview: str | os.PathLike | None = None,
    lam_zip: str | os.PathLike | None = None,
    refine_iterations: int = DEFAULT_REFINE_ITERATIONS,
    refine_seconds: float | None = None,
    refine_size: int = DEFAULT_REFINE_SIZE,
    seed: int = 0,
    progress: Progress | None = None,
    on_warning: Callable[[str], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    cancel: CancelToken | None = None,
) -> ViewsResult:
    """2-4 photos of one person -> one avatar file (see the module docstring).

    Raises LamHeadError subclasses; a problem with one photo names it. On failure or cancel nothing
    this run created is left behind.
    """
    from .refine import RefineSettings, View, refine_avatar
    from .stages import Outputs, PreparedPhoto, RunSettings, infer, load_network, write_photo

    cancel = cancel or CancelToken()
    output = checked_output(output, precision)
    if int(refine_iterations) < 0:
        raise BadInputError(f"--refine-iterations must be 0 or more, got {refine_iterations}")
    if not 16 <= int(refine_size) <= 1024:
        raise BadInputError(f"--refine-size must be 16 to 1024 pixels, got {refine_size}")
    paths = _check_paths(images)
    names = [p.name for p in paths]
    warn = WarningLog(on_warning)
    warnings = warn.messages

    res = resolve_assets(weights, flame)
    web = LamWebExport.prepare(lam_zip)
    run = RunSettings(res, precision, device, None if web is None else web.template, keep_flame=True)
    stages = Stages(progress, cancel)
    created: list[Path] = []
    try:
        photos = _prepare_all(paths, stages, warn)

        from .. import flame as flame_mod
        from ..fit.joint_fit import fit_flame_joint, head_turn_deg

        stages.enter("fit", "loading FLAME")
        flame_model, embedding = run.flame()
        size = int(photos[0].image.shape[0])
        joint = fit_flame_joint(
            flame_model, [p.landmarks68 for p in photos], size, embedding=embedding,
            progress=lambda s, f, m="": stages.report("fit", f, m), cancel=cancel,
            n_shape=flame_model.n_shape, n_expr=flame_model.n_expr, names=names)
        for w in joint.warnings:
            warn(w)
        has_fit = math.isfinite(joint.rms_px)
        turns = [head_turn_deg(f) if has_fit else float("nan") for f in joint.fits]
        best, reason = choose_network_photo(turns, [f.rms_px for f in joint.fits], names)
        note = f"network input: {reason}"
        log.info(note)
        if on_note is not None:
            on_note(note)

        stages.enter("rig")
        basis, basis_note = arkit_basis_for(flame_mod, flame_model)
        if basis_note:
            warn(basis_note)
        rig = flame_mod.build_rig(flame_model, joint.betas, levels=run.levels, arkit=basis)
        if web is not None:
            web.check_rig(rig)
        chosen = PreparedPhoto(photos[best].path, photos[best].sha256, photos[best].image, rig,
                               float(joint.fits[best].rms_px), None if basis is None else basis.source)

        stages.enter("load", res.weights_dir.name)
        net = load_network(run)
        for n in net.notes:
            log.info("weights: %s", n)
        stages.enter("network", f"{chosen.n_points} points on {net.device} ({names[best]})")
        pred = infer(net, [chosen], precision, progress=lambda s, f, m="": _network_progress(stages, s, f, m),
                     cancel=cancel)[0]
        dev = net.device
        del net, flame_model

        views = [View(_resize(p.image, refine_size), _resize(p.alpha, refine_size), fit_pose(f, rig.expr_dirs.shape[2]),
                      fit_camera(f.focal, size, refine_size), p.path.name) for p, f in zip(photos, joint.fits)]
        # the network's device decides the refinement's: on CUDA gsplat's backward where gsplat is installed
        # (the CPU renderer otherwise, said in the meta's refinement.renderer), on the CPU our exact renderer
        on_cuda = str(dev).startswith("cuda")
        settings = RefineSettings(iterations=int(refine_iterations), time_budget_s=refine_seconds, seed=int(seed),
                                  renderer="auto" if on_cuda else "cpu", device=str(dev) if on_cuda else None)
        refinement: dict[str, Any] = {}

        def refine(avatar):
            stages.enter("refine", f"{len(views)} views, {settings.iterations} iterations at {refine_size} px")
            out = refine_avatar(avatar, views, settings, progress=lambda s, f, m="": stages.report("refine", f, m),
                                cancel=cancel)
            refinement.update(out.avatar.meta["refinement"])
            refinement["size_px"] = int(refine_size)
            meta = dict(out.avatar.meta)
            meta["refinement"] = dict(refinement)
            meta["views"] = {
                "photos": [{"name": n, "sha256": p.sha256, "fit_rms_px": None if not has_fit else float(f.rms_px),
                            "head_turn_deg": None if not has_fit else round(float(t), 2),
                            "fit": fit_record(f) if has_fit else None}
                           for n, p, f, t in zip(names, photos, joint.fits, turns)],
                "network_photo": names[best],
                "network_reason": reason,
                "joint_fit_rms_px": None if not has_fit else float(joint.rms_px),
            }
            stages.enter("write")
            return dataclasses.replace(out.avatar, meta=meta)

        outputs = Outputs(output, None if ply is None else Path(ply), None if preview is None else Path(preview),
                          None if web is None else web.path)
        written_preview = write_photo(run, chosen, pred, str(dev), outputs, warn, cancel, created, transform=refine)
        stages.close()
    except BaseException:
        for p in created:
            p.unlink(missing_ok=True)
        raise
    return ViewsResult(output, stages.timings, warnings, None if ply is None else Path(ply), written_preview,
                       None if web is None else web.path, network_photo=names[best], network_reason=reason,
                       refinement=refinement)


def _network_progress(stages: Stages, stage: str, fraction: float, message: str = "") -> None:
    """The network's sub-stages (encoder, transformer, heads) as fractions of our ``network`` stage."""
    stages.cancel.check()
    _, lo, hi = SUBSTAGES.get(stage, ("network", 0.0, 1.0))
    stages.report("network", lo + (hi - lo) * min(1.0, max(0.0, float(fraction))), message)


def _prepare_all(paths: list[Path], stages: Stages, warn: Callable[[str], None]) -> list[_Photo]:
    """Decode, detect and matte every photo (stage ``prepare``); the first bad one is refused by name."""
    from .. import preprocess

    out: list[_Photo] = []
    k = len(paths)
    stages.enter("prepare", f"{k} photos")
    for i, path in enumerate(paths):
        name = path.name
        stages.report("prepare", i / k, name)
        try:
            rgb = preprocess.load_image(path)
            prepared = preprocess.prepare_portrait(
                rgb, progress=lambda s, f, m="", i=i, name=name: stages.report("prepare", i / k, f"{name}: {m}" if m else name),
                cancel=stages.cancel)
        except CancelledError:
            raise
        except LamHeadError as exc:
            raise _named(name, exc) from None
        for w in prepared.warnings:
            warn(f"{name}: {w}")
        out.append(_Photo(path, sha256_file(path), np.asarray(prepared.image, np.float32),
                          np.asarray(prepared.alpha, np.float32), np.asarray(prepared.landmarks68, np.float64)))
        del rgb, prepared
    stages.report("prepare", 1.0, "")
    return out


__all__ = ["DEFAULT_REFINE_ITERATIONS", "DEFAULT_REFINE_SIZE", "VIEW_STAGES", "ViewsResult", "choose_network_photo",
           "create_from_views", "fit_camera", "fit_pose", "fit_record", "views_overall_fraction"]
