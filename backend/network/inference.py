"""Run the LAM network on one image: numpy in, numpy out, with progress, cancellation and precision modes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.errors import BadInputError, CancelToken
from .model import LamModel

Progress = Callable[..., None]  # progress(stage, fraction, message="")
PRECISIONS = ("fp32", "fast", "bf16", "fp16")


@dataclass
class GaussianPrediction:
    """One Gaussian per query point (float32, N rows, row i = query point i).

    xyz N,3 centres (query + offset, metres); offset N,3; rgb N,3 in [0,1]; opacity N in [0,1];
    scale N,3 standard deviations in metres; rotation N,4 unit quaternion wxyz.
    """

    xyz: np.ndarray
    offset: np.ndarray
    rgb: np.ndarray
    opacity: np.ndarray
    scale: np.ndarray
    rotation: np.ndarray


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision mode; None means plain float32.

    "fast": bfloat16 autocast on CPU too, where attention runs the exact kernel measured fastest on this CPU
    (attention_choice.py: PyTorch's bf16 SDPA or explicit bf16 GEMMs, depending on the CPU), the linear layers
    run as bf16 or fp32 GEMMs, whichever this CPU runs faster (linear_choice.py; outputs bf16 either way), and
    the point embedding stays float32 (point_embed.py). Figures at 20018 points on random LAM-20K weights: see
    bench/bench_network.py. On CUDA: bfloat16 where supported (training was bf16), else float16; on Apple
    MPS float16.
    """
    if precision not in PRECISIONS:
        raise BadInputError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16


def _check_inputs(model: LamModel, image: np.ndarray, query_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise BadInputError(f"image must be H x W x 3 RGB, got shape {image.shape}")
    p = model.config.dino.patch_size
    if image.shape[0] % p or image.shape[1] % p:
        raise BadInputError(f"image size {image.shape[1]}x{image.shape[0]} is not a multiple of {p} (LAM expects 504x504)")
    if not np.issubdtype(image.dtype, np.floating):
        raise BadInputError(f"image must be float in [0, 1], got dtype {image.dtype}")
    image = image.astype(np.float32)
    if not np.isfinite(image).all() or image.min() < -1e-3 or image.max() > 1 + 1e-3:
        raise BadInputError("image values must be finite and in [0, 1] (not normalised, not 0..255)")
    pts = np.asarray(query_points, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise BadInputError(f"query_points must be N x 3 with N >= 1, got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise BadInputError("query_points contain NaN or infinity")
    return image, pts


def predict(
    model: LamModel,
    image: np.ndarray,
    query_points: np.ndarray,
    precision: str = "fp32",
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
    capture: Callable[[str, torch.Tensor], None] | None = None,
) -> GaussianPrediction:
    """image H,W,3 float in [0,1] (504x504, composited on white); query_points N,3 (metres) -> Gaussians.

    progress(stage, fraction, message) is called after each encoder block ("encoder"), each transformer
    block ("transformer") and the heads ("heads"); cancel.check() runs between blocks.
    """
    return predict_batch(model, [image], [query_points], precision, progress, cancel, capture)[0]


def predict_batch(
    model: LamModel,
    images: Sequence[np.ndarray],
    query_points: Sequence[np.ndarray],
    precision: str = "fp32",
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
    capture: Callable[[str, torch.Tensor], None] | None = None,
) -> list[GaussianPrediction]:
    """B photos in one forward: images B x (H,W,3), query_points B x (N,3) with the same N -> B
    predictions. B = 1 is :func:`predict` exactly; larger batches agree with it to float rounding
    (about 1e-6), not bit for bit."""
    pairs = [_check_inputs(model, i, p) for i, p in zip(images, query_points, strict=True)]
    if not pairs or len({len(p) for _, p in pairs}) != 1:
        raise BadInputError("a network batch needs at least one photo, all with the same number of query points")
    device = next(model.parameters()).device
    dtype = autocast_dtype(device, precision)

    def on_block(stage: str, done: int, total: int) -> None:
        if cancel is not None:
            cancel.check()
        if progress is not None:
            progress(stage, done / total, f"{stage} {done}/{total}")

    if cancel is not None:
        cancel.check()
    linears: Any = contextlib.nullcontext()
    if dtype == torch.bfloat16 and device.type == "cpu":
        from . import attention_choice, linear_choice
        from .linears import linears_as

        # Full-size problems time the attention kernels and the linears once per machine (cached), before the
        # forward; the attention kernel is read per call (attention.py), the linears' option applies here.
        note = None if progress is None else (lambda msg: progress("encoder", 0.0, msg))
        attention_choice.ensure_choice(len(pairs[0][1]), progress=note)
        linear_choice.ensure_choice(len(pairs[0][1]), progress=note)
        linears = linears_as(model, linear_choice.current())
    img = torch.from_numpy(np.stack([np.ascontiguousarray(i.transpose(2, 0, 1)) for i, _ in pairs])).to(device)
    q = torch.from_numpy(np.stack([p for _, p in pairs])).to(device)
    amp: Any = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.inference_mode(), amp, linears:
        out = model(img, q, capture=capture, on_block=on_block)
    arr = {k: v.float().cpu().numpy().astype(np.float32) for k, v in out.items()}
    return [GaussianPrediction(xyz=arr["xyz"][b], offset=arr["offset"][b], rgb=arr["rgb"][b],
                               opacity=arr["opacity"][b, :, 0], scale=arr["scaling"][b], rotation=arr["rotation"][b])
            for b in range(len(pairs))]


def predict_from_betas(
    model: LamModel,
    flame: Any,
    betas: np.ndarray,
    image: np.ndarray,
    precision: str = "fp32",
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
) -> tuple[GaussianPrediction, Any]:
    """Query points = the shaped canonical subdivided FLAME template (zero pose/expression); returns
    (prediction, RigArrays). Subdivision levels come from the config's ``flame_subdivide_num``."""
    from ..flame import build_rig

    rig = build_rig(flame, np.asarray(betas, dtype=np.float32), levels=model.config.flame_subdivide_num)
    if progress is not None:
        progress("flame", 1.0, f"{len(rig.template)} query points")
    return predict(model, image, rig.template, precision=precision, progress=progress, cancel=cancel), rig
