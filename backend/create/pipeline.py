"""Photo -> avatar file: the main job, shared by ``lam-head create`` and ``serve``.

Stages (each timed, each reported through ``progress(stage, fraction, msg)``
with ``fraction`` of that stage): decode, detect, matte (portrait
preparation), fit (FLAME to landmarks), rig (shaped subdivided FLAME rig, the
network's query points), load (weights), network (LAM forward pass), write.
Assets are resolved before any work so a missing one fails at once with the
command that fixes it. Outputs are written atomically; on failure or cancel
nothing this run created is left behind.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.atomic_write import atomic_path
from ..core.errors import BadInputError, CancelToken, LamHeadError, MissingAssetError
from ..setup import assets

log = logging.getLogger("lam_head.pipeline")

Progress = Callable[[str, float, str], None]

# Stage order and share of the whole job (for one overall progress bar).
STAGES: tuple[tuple[str, float], ...] = (
    ("decode", 0.02), ("detect", 0.08), ("matte", 0.08), ("fit", 0.17),
    ("rig", 0.05), ("load", 0.15), ("network", 0.40), ("write", 0.05),
)
_STAGE_START: dict[str, float] = {}
_acc = 0.0
for _name, _w in STAGES:
    _STAGE_START[_name] = _acc
    _acc += _w
_STAGE_WEIGHT = dict(STAGES)
# Callees' own sub-stages: (our stage, start, end) within it, so progress never runs backwards.
SUBSTAGES = {"encoder": ("network", 0.0, 0.45), "transformer": ("network", 0.45, 0.95), "heads": ("network", 0.95, 1.0)}
PRECISIONS = ("fp32", "fast", "bf16", "fp16")

LICENCES = {
    "weights": "LAM-20K weights: CC BY-NC 4.0 (non-commercial)",
    "flame": "FLAME model: see the licence of the FLAME file used",
}


def overall_fraction(stage: str, fraction: float) -> float:
    """Map a stage's own fraction to the whole job's (unknown stages: unchanged)."""
    if stage not in _STAGE_START:
        return min(1.0, max(0.0, fraction))
    f = min(1.0, max(0.0, float(fraction)))
    return min(1.0, (_STAGE_START[stage] + f * _STAGE_WEIGHT[stage]) / _acc)


@dataclass
class CreateResult:
    path: Path
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    ply: Path | None = None
    preview: Path | None = None
    lam_zip: Path | None = None


@dataclass
class ResolvedAssets:
    """Where this run's weights and FLAME come from (decided before any work)."""

    weights_dir: Path
    config: dict
    flame_path: Path | None  # None: FLAME buffers inside the checkpoint
    flame_source: str
    landmark_embedding: Path | None


def resolve_assets(weights: str | os.PathLike | None, flame: str | os.PathLike | None) -> ResolvedAssets:
    """Pick weights and FLAME: explicit paths, else the setup cache, else (FLAME
    only) the buffers in the checkpoint. Raises MissingAssetError with the fix."""
    if weights is not None:
        wdir = Path(weights).expanduser()
        assets.check_weights_dir(wdir)  # BadInputError naming the problem
    else:
        wdir = assets.installed_weights_dir()
        if wdir is None:
            raise MissingAssetError(
                "the LAM-20K weights are not installed; run: lam-head setup --accept-licences "
                "(or, with the files already downloaded: lam-head setup --weights DIR)"
            )
    config = assets.read_config(wdir)
    if flame is not None:
        fpath = Path(flame).expanduser()
        if not fpath.is_file():
            raise BadInputError(f"FLAME file not found: {fpath}")
        source = f"--flame {fpath}"
    else:
        fpath = assets.installed_flame_file()
        source = f"setup cache ({fpath})" if fpath else ""
        if fpath is None:
            if not assets.checkpoint_has_flame(wdir):
                raise MissingAssetError(
                    "no FLAME model: the checkpoint has no renderer.flame_model.* buffers and none is installed; "
                    "run: lam-head setup --accept-licences --lam-assets (or: lam-head setup --flame FILE, "
                    "e.g. FLAME 2023 Open from https://flame.is.tue.mpg.de)"
                )
            source = f"checkpoint buffers ({wdir / assets.WEIGHTS_FILE})"
    return ResolvedAssets(wdir, config, fpath, source, assets.installed_landmark_embedding())


class Stages:
    """Times stages and forwards progress; ``enter`` closes the previous stage."""

    def __init__(self, progress: Progress | None, cancel: CancelToken):
        self.progress = progress
        self.cancel = cancel
        self.timings: dict[str, float] = {}
        self._stage: str | None = None
        self._t0 = 0.0

    def enter(self, stage: str, message: str = "") -> None:
        self.close()
        self.cancel.check()
        self._stage, self._t0 = stage, time.perf_counter()
        self.report(stage, 0.0, message)

    def close(self) -> None:
        if self._stage is not None:
            self.timings[self._stage] = self.timings.get(self._stage, 0.0) + time.perf_counter() - self._t0
            self.report(self._stage, 1.0, "")
            self._stage = None

    def report(self, stage: str, fraction: float, message: str = "") -> None:
        if self.progress is not None:
            self.progress(stage, fraction, message)

    def sub(self, default_stage: str) -> Progress:
        """A progress callback for a callee; its own stage names switch our stage
        when they are ours (so e.g. detect/matte inside preparation are timed)."""

        def cb(stage: str, fraction: float, message: str = "") -> None:
            self.cancel.check()
            if stage in SUBSTAGES:
                stage, lo, hi = SUBSTAGES[stage]
                fraction = lo + (hi - lo) * min(1.0, max(0.0, float(fraction)))
            name = stage if stage in _STAGE_WEIGHT else default_stage
            if name != self._stage and name in _STAGE_WEIGHT and _STAGE_START[name] > _STAGE_START.get(self._stage or "", -1):
                self.enter(name, message)
            self.report(self._stage or name, fraction, message)

        return cb


def checked_output(output: str | os.PathLike, precision: str) -> Path:
    """The avatar file's path, after the checks every create run makes before any work."""
    output = Path(output).expanduser()
    if output.suffix.lower() != ".npz":
        raise BadInputError(f"the avatar file must end in .npz: {output}")
    if precision not in PRECISIONS:
        raise BadInputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return output


class WarningLog:
    """Collects a run's warnings once each (``messages``), logs them and passes them on."""

    def __init__(self, on_warning: Callable[[str], None] | None = None):
        self.messages: list[str] = []
        self._on_warning = on_warning

    def __call__(self, msg: str) -> None:
        if msg not in self.messages:
            self.messages.append(msg)
            log.info("warning: %s", msg)
            if self._on_warning is not None:
                self._on_warning(msg)


def create_avatar(
    image: str | os.PathLike,
    output: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    flame: str | os.PathLike | None = None,
    device: str = "auto",
    precision: str = "fp32",
    ply: str | os.PathLike | None = None,
    preview: str | os.PathLike | None = None,
    lam_zip: str | os.PathLike | None = None,
    debug_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    on_warning: Callable[[str], None] | None = None,
    cancel: CancelToken | None = None,
) -> CreateResult:
    """Run the whole job; write ``output`` (``.npz``) and optional PLY / preview PNG / LAM web ZIP
    (``lam_zip``, with the template registered by ``lam-head setup --lam-template``).

    Raises LamHeadError subclasses (BadInputError, NoFaceError,
    MissingAssetError, CancelledError) with a message saying what to do.
    """
    cancel = cancel or CancelToken()
    image, output = Path(image).expanduser(), checked_output(output, precision)
    if not image.is_file():
        raise BadInputError(f"photo not found: {image}")
    warn = WarningLog(on_warning)
    warnings = warn.messages

    res = resolve_assets(weights, flame)
    web = LamWebExport.prepare(lam_zip)
    note_ignored_component_counts(res.config)

    # The stages (stages.py), composed for one photo; lam-head batch schedules the same ones.
    from .stages import Outputs, RunSettings, infer, load_network, prepare_photo, write_photo

    run = RunSettings(res, precision, device, None if web is None else web.template)
    stages = Stages(progress, cancel)
    created: list[Path] = []
    try:
        photo = prepare_photo(run, image, stages, warn, debug_dir=debug_dir,
                              check_rig=None if web is None else web.check_rig)
        _return_freed_memory()  # the FLAME model, photo and detectors are gone: before the network's multi-GB peak

        stages.enter("load", res.weights_dir.name)
        net = load_network(run)
        for note in net.notes:
            log.info("weights: %s", note)

        stages.enter("network", f"{photo.n_points} points on {net.device}")
        pred = infer(net, [photo], precision, progress=stages.sub("network"), cancel=cancel)[0]
        dev = net.device
        del net

        stages.enter("write")
        outputs = Outputs(output, None if ply is None else Path(ply), None if preview is None else Path(preview),
                          None if web is None else web.path)
        written_preview = write_photo(run, photo, pred, str(dev), outputs, warn, cancel, created)
        stages.close()
    except BaseException:
        for p in created:
            p.unlink(missing_ok=True)
        raise
    return CreateResult(output, stages.timings, warnings,
                        Path(ply) if ply is not None else None,
                        written_preview,
                        None if web is None else web.path)


@dataclass
class LamWebExport:
    """``lam_zip``: checked before any work (name, template), topology checked once the rig
    exists, the ZIP written (atomically) with the other outputs."""

    path: Path
    template: Any  # LamTemplate

    @classmethod
    def prepare(cls, lam_zip: str | os.PathLike | None) -> LamWebExport | None:
        if lam_zip is None:
            return None
        from ..core.formats.lam_zip import check_zip_name
        from .lam_web import resolve_template

        path = Path(lam_zip).expanduser()
        check_zip_name(path)
        return cls(path, resolve_template())

    def check_rig(self, rig) -> None:
        from ..core.formats.lam_zip import LamZipError, check_topology

        try:
            check_topology(rig.n_points, rig.faces, self.template.skin())
        except LamZipError as exc:
            raise LamZipError(f"--lam-zip {self.path.name}: {exc} (use FLAME 2023's mesh)") from None

    def write(self, avatar) -> Path:
        from ..core.formats.lam_zip import write_lam_zip

        return write_lam_zip(self.path, avatar, self.template)  # atomic; OSError handled by the caller


def note_ignored_component_counts(config: dict) -> None:
    """LAM_SPEC section 2: the official renderer builds FLAME with 300 shape and 100 expression
    components whatever ``shape_param_dim`` / ``expr_param_dim`` say (10 / 10 in the released
    LAM-20K config), so those fields are never used for FLAME here either."""
    fields = {k: config[k] for k in ("shape_param_dim", "expr_param_dim") if k in config}
    if fields:
        log.info("config %s ignored: FLAME keeps all its shape and expression components, as in LAM's renderer",
                 ", ".join(f"{k}={v}" for k, v in fields.items()))


def arkit_basis_for(flame_mod: Any, flame_model) -> tuple[Any, str | None]:
    """The ARKit basis for this FLAME (registered LAM template, else the bundled one) and a note
    for the user when the avatar gets no ARKit keys."""
    try:
        basis = assets.installed_arkit_basis()
    except LamHeadError as exc:
        return None, f"no ARKit shape keys: {exc}"
    why = basis.mismatch(flame_model.faces, flame_model.n_vertices)
    if why is not None:
        return None, f"no ARKit shape keys: {why} (ARKit controls need FLAME 2023's mesh)"
    return basis, None


def _load_flame(flame_mod: Any, network: Any, res: ResolvedAssets):
    n_shape = flame_mod.FLAME_SHAPE_COMPONENTS
    if res.flame_path is not None:
        return flame_mod.load_flame(res.flame_path, n_shape=n_shape)
    buffers = network.read_flame_buffers(res.weights_dir)
    if not buffers:
        raise MissingAssetError(
            "the checkpoint has no usable FLAME buffers; run: lam-head setup --accept-licences --lam-assets "
            "(or: lam-head setup --flame FILE)"
        )
    return flame_mod.FlameModel.from_arrays(buffers, n_shape=n_shape)  # LAM buffer names are understood


def _return_freed_memory() -> None:
    """Give heap freed by decoding, detection and the fit back to the OS: glibc keeps
    it otherwise, and it would add to the network's peak RSS."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc (macOS, Windows): nothing to trim, the peak is only a little higher


def _write_ply(path: Path, avatar) -> Path:
    from ..core.formats import ply as ply_mod

    ply_mod.write_3dgs_ply(path, avatar.xyz, avatar.rgb, avatar.opacity, avatar.scale, avatar.rotation)  # atomic itself
    return path


def _write_preview(path: Path, avatar, warn: Callable[[str], None]) -> Path | None:
    try:
        from ..core.rig import FlamePose
        from ..render import default_head_camera, render_avatar
    except ImportError as exc:
        warn(f"preview skipped: the renderer is not available ({exc})")
        return None
    from PIL import Image

    cam = default_head_camera(avatar.xyz, 512)
    out = render_avatar(avatar, FlamePose.zeros(1, avatar.n_expr), cam, background=(1.0, 1.0, 1.0))
    rgb = out.rgb[0] if getattr(out.rgb, "ndim", 3) == 4 else out.rgb
    import numpy as np

    img = Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def _save_debug(folder: Path, prepared) -> None:
    """The network's exact input (crop/matte/landmark PNGs come from preprocess itself)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "input_504.npy", np.asarray(prepared.image, dtype=np.float32))
    np.save(folder / "landmarks68.npy", np.asarray(prepared.landmarks68, dtype=np.float32))
    np.save(folder / "landmarks478.npy", np.asarray(prepared.landmarks478, dtype=np.float32))
    (folder / "prepare.json").write_text(json.dumps({
        "warnings": list(prepared.warnings), "head_crop": list(prepared.head_crop),
        "input_crop": list(prepared.input_crop), "timings": prepared.timings}, indent=1))


def _save_fit(folder: Path, fitted) -> None:
    import numpy as np

    arrays = {k: np.asarray(getattr(fitted, k)) for k in ("betas", "expr", "rotation", "neck", "jaw", "translation", "focal", "rms_px")
              if getattr(fitted, k, None) is not None}
    np.savez(folder / "flame_fit.npz", **arrays)


__all__ = ["CreateResult", "create_avatar", "overall_fraction", "resolve_assets", "STAGES", "LamHeadError"]
