"""The create job as three stages that can be scheduled separately.

* :func:`prepare_photo` (CPU): decode, detect, matte, FLAME fit, rig -> :class:`PreparedPhoto`;
* :func:`load_network` once, then :func:`infer` (the network) on one photo or a batch of photos;
* :func:`write_photo`: assemble the avatar and write it and its optional PLY / preview / LAM web ZIP.

``create_avatar`` (pipeline.py) is their composition for one photo; ``lam-head batch`` (batch.py)
and its Ray Data form (ray_batch.py) run them over many photos with one network load. Every stage
reports through the pipeline's ``Stages`` (timings, progress, cancellation), so a photo gets the
same stage names, messages and result whichever way it is scheduled.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..core.errors import BadInputError, CancelToken
from ..core.file_hash import sha256_file
from .pipeline import (
    LICENCES,
    ResolvedAssets,
    Stages,
    _load_flame,
    _save_debug,
    _save_fit,
    _write_ply,
    _write_preview,
    arkit_basis_for,
)

Warn = Callable[[str], None]


@dataclass
class RunSettings:
    """What every photo of a run shares: the resolved assets, precision, device and (when LAM web ZIPs
    are written) the template. ``keep_flame``: keep the FLAME model, landmark embedding and ARKit basis
    loaded between photos (batch); ``create`` loads them per photo and frees them before the network."""

    assets: ResolvedAssets
    precision: str = "fp32"
    device: str = "auto"
    lam_template: Any = None  # LamTemplate
    keep_flame: bool = False
    _flame: tuple | None = field(default=None, repr=False)

    @property
    def levels(self) -> int:
        return int(self.assets.config.get("flame_subdivide_num", 1))

    def flame(self) -> tuple[Any, Any]:
        """(FLAME model, landmark embedding or None): loaded now, or the run's copy when ``keep_flame``."""
        if self._flame is not None:
            return self._flame
        from .. import fit as fit_mod
        from .. import flame as flame_mod
        from .. import network

        model = _load_flame(flame_mod, network, self.assets)
        emb = self.assets.landmark_embedding
        loaded = (model, fit_mod.load_landmark_embedding(emb) if emb else None)
        if self.keep_flame:
            self._flame = loaded
        return loaded


@dataclass
class PreparedPhoto:
    """One photo made ready for the network: its 504 x 504 input and its shaped FLAME rig (whose
    template points are the network's query points), with what the avatar's metadata records."""

    source: Path
    sha256: str
    image: np.ndarray  # (504, 504, 3) float32 in [0, 1]
    rig: Any  # RigArrays
    fit_rms_px: float
    arkit_source: str | None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_points(self) -> int:
        return int(self.rig.template.shape[0])


@dataclass
class Outputs:
    """Where one photo's files go (``avatar`` ends in .npz; the others are optional)."""

    avatar: Path
    ply: Path | None = None
    preview: Path | None = None
    lam_zip: Path | None = None


@dataclass
class Network:
    """The loaded network and the device it runs on."""

    model: Any
    device: Any
    notes: list[str] = field(default_factory=list)


def prepare_photo(
    run: RunSettings,
    image: Path,
    stages: Stages,
    warn: Warn,
    *,
    debug_dir: str | os.PathLike | None = None,
    check_rig: Callable[[Any], None] | None = None,
) -> PreparedPhoto:
    """Stages decode, detect (+ matte), fit, rig of one photo. ``check_rig(rig)`` runs last (the LAM web
    ZIP's topology check, before the network's time is spent). Raises LamHeadError subclasses."""
    from .. import fit as fit_mod
    from .. import flame as flame_mod
    from .. import preprocess

    image = Path(image)
    cancel = stages.cancel
    stages.enter("decode", image.name)
    rgb = preprocess.load_image(image)
    image_sha = sha256_file(image)

    stages.enter("detect")
    prepared = preprocess.prepare_portrait(rgb, progress=stages.sub("detect"), cancel=cancel, debug_dir=debug_dir)
    for w in prepared.warnings:
        warn(w)
    if debug_dir is not None:
        _save_debug(Path(debug_dir), prepared)
    del rgb

    stages.enter("fit", "loading FLAME")
    flame_model, embedding = run.flame()
    size = int(prepared.image.shape[0])
    # Every shape and expression component of the FLAME file (300 / 100 for FLAME 2023).
    fitted = fit_mod.fit_flame(flame_model, prepared.landmarks68, size, embedding=embedding,
                               progress=stages.sub("fit"), cancel=cancel, n_shape=flame_model.n_shape,
                               n_expr=flame_model.n_expr)
    for w in fitted.warnings:
        warn(w)
    if debug_dir is not None:
        _save_fit(Path(debug_dir), fitted)

    stages.enter("rig")
    basis, basis_note = arkit_basis_for(flame_mod, flame_model)
    if basis_note:
        warn(basis_note)
    rig = flame_mod.build_rig(flame_model, fitted.betas, levels=run.levels, arkit=basis)
    if check_rig is not None:
        check_rig(rig)
    return PreparedPhoto(image, image_sha, prepared.image, rig, float(fitted.rms_px),
                         None if basis is None else basis.source)


def load_network(run: RunSettings) -> Network:
    """The network on the run's device (the caller times it as stage ``load``)."""
    from .. import network

    dev = network.select_device(run.device)
    model, report = network.load_lam(run.assets.weights_dir, device=dev)
    return Network(model, dev, list(report.notes))


def infer(
    net: Network,
    photos: Sequence[PreparedPhoto],
    precision: str,
    *,
    progress: Callable[..., None] | None = None,
    cancel: CancelToken | None = None,
) -> list[Any]:
    """The network on ``photos`` -> one GaussianPrediction each. One photo runs exactly as ``create``
    does; several (same number of query points) run as one batch of the network."""
    from .. import network

    if len(photos) == 1:
        p = photos[0]
        return [network.predict(net.model, p.image, p.rig.template, precision=precision, progress=progress, cancel=cancel)]
    return network.predict_batch(net.model, [p.image for p in photos], [p.rig.template for p in photos], precision,
                                 progress=progress, cancel=cancel)


def write_photo(
    run: RunSettings,
    photo: PreparedPhoto,
    pred: Any,
    device: str,
    outputs: Outputs,
    warn: Warn,
    cancel: CancelToken,
    created: list[Path],
    transform: Callable[[Any], Any] | None = None,
) -> Path | None:
    """Assemble the avatar and write the optional files, then the avatar file last (each atomically);
    every path written is appended to ``created`` (the caller deletes them on failure or cancel).
    ``transform(avatar) -> avatar`` runs between assembly and writing (the few-photo refinement).
    Returns the preview's path when one was written."""
    from ..core.formats import avatar_file
    from ..core.formats.lam_zip import write_lam_zip
    from .assemble import assemble_avatar

    res, rig = run.assets, photo.rig
    meta = {
        "model": res.config.get("model_name") or res.weights_dir.name,
        "weights_dir": str(res.weights_dir),
        "flame_source": res.flame_source,
        "source_image": photo.source.name,
        "source_image_sha256": photo.sha256,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backend_version": __version__,
        "device": str(device),
        "precision": run.precision,
        "fit_rms_px": None if math.isnan(photo.fit_rms_px) else float(photo.fit_rms_px),  # NaN: no fit ran
        "flame_components": {"shape": int(rig.shape_params.size), "expression": int(rig.expr_dirs.shape[2])},
        "arkit_basis": photo.arkit_source,
        "licences": LICENCES,
    }
    avatar = assemble_avatar(rig, pred.xyz, pred.rgb, pred.opacity, pred.scale, pred.rotation, meta)
    if transform is not None:
        avatar = transform(avatar)
    avatar_file.to_arrays(avatar)  # validate before anything is written
    preview = None
    target = outputs.avatar
    try:
        if outputs.ply is not None:
            cancel.check()
            target = Path(outputs.ply)
            _tracked(target, created, lambda: _write_ply(target, avatar))
        if outputs.preview is not None:
            cancel.check()
            target = Path(outputs.preview)
            preview = _tracked(target, created, lambda: _write_preview(target, avatar, warn))
        if outputs.lam_zip is not None:
            cancel.check()
            target = Path(outputs.lam_zip)
            _tracked(target, created, lambda: write_lam_zip(target, avatar, run.lam_template))  # atomic itself
        cancel.check()
        target = outputs.avatar
        _tracked(target, created, lambda: avatar_file.save_avatar(target, avatar) and target)
    except OSError as exc:
        raise BadInputError(f"cannot write {target}: {exc.strerror or exc}; choose another output folder") from None
    return preview


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns)


def _tracked(path: Path, created: list[Path], write: Callable[[], Path | None]) -> Path | None:
    """Run one atomic ``write`` of ``path`` and add what it wrote to ``created``. Interrupted after its
    rename (Ctrl-C arrives anywhere), the new file is removed here, a file that was there before is kept."""
    before = _identity(path)
    try:
        out = write()
    except BaseException:
        if _identity(path) not in (None, before):
            path.unlink(missing_ok=True)
        raise
    if out is not None:
        created.append(Path(out))
    return out


__all__ = ["Network", "Outputs", "PreparedPhoto", "RunSettings", "infer", "load_network",
           "prepare_photo", "write_photo"]
