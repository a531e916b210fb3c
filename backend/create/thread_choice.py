"""How refinement splits the CPU between numba (the renderer) and torch (rig, projection, loss, Adam): measured.

One refinement iteration alternates torch work (rig, EWA projection, SSIM, autograd, Adam) with numba kernels
(the differentiable rasterizer's forward and backward, ``render/diff_render.py``). Their thread pools do not
share: a torch pool spinning between its ops steals cores from numba's, which cost 7x on 2 cores (refine.py). How
many threads each side should get depends on the machine (core count, SMT, cache), so the first full-size
refinement (:data:`CALIBRATE_MIN_POINTS` Gaussians or more) on a machine times one iteration per candidate split
(:func:`candidates`: numba all or half of the cores, torch 1, a quarter, half or all of them) on a reduced
problem that predicts the full one: a synthetic head of the full 20018 Gaussians and 100 expressions, one view
(the real run refines 2-4) at the real 252 px. Per view the work is then exactly the real one; only the per-step
Adam part is over-weighted. The splits take turns iteration by iteration inside one refinement
(:func:`interleaved_seconds`), so a burst of outside load hits them alike. Each split's loss after one iteration
must match the first split's to :data:`ERROR_BOUND` (a broken split is never chosen). 3.8 s on the quiet
2-core EPYC (four splits), 17-27 s at load average 3 (the oversubscribed splits are slow to time there).
``R,T`` names a split (R numba threads, T torch threads).

Cache ``thread_choice.json`` (the key adds numba's version and takes numba's thread limit as its thread count),
override ``lam-head create --views ... --refine-threads R,T`` / ``$LAM_HEAD_REFINE_THREADS``, doctor lines: as
for the other choices (:mod:`backend.setup.machine_choice`). ``RefineSettings.render_threads`` /
``torch_threads`` set explicitly win over all of this. Torch- and numba-free at import time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from ..setup import machine_choice as mc

log = logging.getLogger("lam_head.refine_threads")

ENV_VAR = "LAM_HEAD_REFINE_THREADS"
CACHE_NAME = "thread_choice.json"
CALIBRATION_VERSION = 1
#: A refinement of at least this many Gaussians measures first (if no record matches); smaller ones use the default.
CALIBRATE_MIN_POINTS = 4096
#: The reduced problem: full Gaussian count and expressions, one view at the views path's refinement size.
CALIBRATION_POINTS, CALIBRATION_EXPR, CALIBRATION_SIZE = 20018, 100, 252
#: Timed rounds over the splits (after one warm-up round), one iteration per split and round: best one counts.
REPEATS = 3
#: Relative difference of the loss after the iterations vs the default split's (only summation order differs).
ERROR_BOUND = 1e-3
#: Another split replaces the default only when faster by more than this: iteration times of a shared machine
#: vary by a few per cent from one run to the next (still inside issue 17's 1.1 x goal).
TIE_MARGIN = 0.05


def max_render_threads() -> int:
    """numba's thread limit (``NUMBA_NUM_THREADS``, fixed at start: the most the renderer can use)."""
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


def default_split() -> str:
    """Before any measurement: numba on every core, torch on one (what refinement always did)."""
    return f"{max_render_threads()},1"


def parse_split(value: str) -> str:
    """``R,T`` -> normalised ``R,T``; ValueError unless 1 <= R <= numba's limit and T >= 1."""
    parts = value.replace(" ", "").split(",")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError("expected two thread counts R,T")
    render, torch_threads = (int(p) for p in parts)
    limit = max_render_threads()
    if not 1 <= render <= limit:
        raise ValueError(f"render threads must be 1 to {limit} (numba's limit here)")
    if torch_threads < 1:
        raise ValueError("torch threads must be 1 or more")
    return f"{render},{torch_threads}"


def split_of(name: str) -> tuple[int, int]:
    """``R,T`` -> (numba threads, torch threads)."""
    render, torch_threads = name.split(",")
    return int(render), int(torch_threads)


def candidates(cores: int | None = None) -> tuple[str, ...]:
    """The splits measured on a machine with ``cores`` numba threads (default: numba's limit), default first."""
    c = max(1, int(cores or max_render_threads()))
    render = sorted({c, max(1, c // 2)}, reverse=True)
    torch_side = sorted({1, max(1, c // 4), max(1, c // 2), c})
    return tuple(f"{r},{t}" for r in render for t in torch_side)


def _key_extra() -> dict[str, Any]:
    import numba

    return {"threads": max_render_threads(), "numba": numba.__version__}


CHOICE = mc.MachineChoice(
    "refine_threads",
    title="refinement threads (numba renderer, torch)",
    noun="refinement thread split",
    default=default_split,
    env_var=ENV_VAR,
    flag="--refine-threads",
    cache_name=CACHE_NAME,
    version=CALIBRATION_VERSION,
    parse=parse_split,
    accepted_values="R,T (numba render threads, torch threads), e.g. 2,1",
    option_names=candidates,
    key_extra=_key_extra,
)


def synthetic_problem(n_points: int = CALIBRATION_POINTS, n_expr: int = CALIBRATION_EXPR,
                      size: int = CALIBRATION_SIZE, seed: int = 0) -> tuple[Any, list[Any]]:
    """(start avatar, [one view]): a head-sized ellipsoid of Gaussians with a FLAME-like five-joint rig; its
    "photo" is its own render with other colours and slightly moved centres, as a photo differs from the
    network's result."""
    import numpy as np

    from ..core.formats.avatar_file import JOINT_NAMES, Avatar
    from ..core.rig import FlamePose
    from ..render import default_head_camera
    from ..render.diff_render import render_numpy
    from .refine import View

    rng = np.random.default_rng(seed)
    joints = np.array([[0, 0, 0], [0, -0.02, -0.01], [0, -0.03, 0.02], [0.03, 0.03, 0.06], [-0.03, 0.03, 0.06]],
                      np.float32)
    d = rng.normal(size=(n_points, 3))
    template = (d / np.linalg.norm(d, axis=1, keepdims=True) * [0.08, 0.11, 0.1] + [0, 0.02, 0]).astype(np.float32)
    w = np.exp(-((np.linalg.norm(template[:, None] - joints[None], axis=2) / 0.05) ** 2)) + 1e-3
    q = rng.normal(size=(n_points, 4))
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    avatar = Avatar(
        xyz=f32(template + rng.normal(scale=0.002, size=template.shape)), template=template,
        rgb=f32(rng.uniform(0.05, 0.95, (n_points, 3))), opacity=f32(rng.uniform(0.2, 1.0, n_points)),
        scale=f32(rng.uniform(0.001, 0.004, (n_points, 3))), rotation=f32(q / np.linalg.norm(q, axis=1, keepdims=True)),
        expr_dirs=f32(rng.normal(scale=0.002, size=(n_points, 3, n_expr))),
        pose_dirs=f32(rng.normal(scale=0.001, size=(n_points, 3, 36))), lbs_weights=f32(w / w.sum(1, keepdims=True)),
        joints=joints, joint_expr_dirs=f32(rng.normal(scale=0.001, size=(5, 3, n_expr))),
        parents=np.array([-1, 0, 1, 1, 1], np.int32), joint_names=JOINT_NAMES,
        faces=np.zeros((0, 3), np.int32), shape_params=np.zeros(10, np.float32), meta={"model": "synthetic"},
    )
    camera = default_head_camera(avatar.xyz, size, azimuth_deg=20.0, elevation_deg=5.0)
    truth_xyz = avatar.xyz + rng.normal(scale=0.001, size=avatar.xyz.shape)
    rgb, alpha, _ = render_numpy(truth_xyz, avatar.rotation, avatar.scale, avatar.opacity,
                                 np.clip(avatar.rgb * 0.8 + 0.1, 0, 1), camera)
    pose = FlamePose.zeros(1, n_expr)
    pose.expr[:] = rng.normal(scale=0.5, size=(1, n_expr))
    return avatar, [View(rgb, alpha, pose, camera, "calibration")]


def calibrate(splits: tuple[str, ...] | None = None, timer: mc.Timer | None = None, repeats: int | None = None,
              n_points: int | None = None, size: int | None = None, views: int = 1) -> dict[str, Any]:
    """Time one refinement iteration per split on the reduced problem (:func:`synthetic_problem`, ``views``
    copies of its view) and pick the fastest one whose loss matches.

    Accuracy: each split refines the problem for one iteration (also the numba kernels' warm-up); its loss must
    match the first split's. Timing (:func:`interleaved_seconds`): one refinement that switches the split after
    every iteration, 1 + ``repeats`` rounds over the accepted splits, the first round a warm-up; a split's rate is
    its best iteration. Interleaving at this grain makes a burst of outside load hit every split alike, and the
    problem is set up once. ``timer(name, run)`` replaces the timing with fake seconds (tests). Returns the record.
    """
    from .refine import RefineSettings, refine_avatar

    repeats = REPEATS if repeats is None else repeats
    n_points, size = n_points or CALIBRATION_POINTS, size or CALIBRATION_SIZE
    names = tuple(CHOICE.check_name(n, source="calibrate") for n in (splits or candidates()))
    t_start = time.perf_counter()
    avatar, one_view = synthetic_problem(n_points, size=size)
    problem = one_view * views

    def loss(name: str) -> float:
        render, torch_threads = split_of(name)
        settings = RefineSettings(iterations=1, seed=0, render_threads=render, torch_threads=torch_threads)
        return float(refine_avatar(avatar, problem, settings).stats["loss_after"])

    reference: list[float] = []

    def error(_name: str, out: float) -> float:
        if not reference:
            reference.append(out)
        return abs(out - reference[0]) / max(abs(reference[0]), 1e-12)

    results = mc.measure_options({n: (lambda n=n: loss(n)) for n in names}, error, ERROR_BOUND, repeats=0)
    accepted = [n for n in names if results[n]["accepted"]]
    if timer is not None:
        for _ in range(repeats):
            for n in accepted:
                best = results[n]["seconds"]
                results[n]["seconds"] = min(best if best is not None else math.inf, float(timer(n, lambda: None)))
    elif accepted:
        for n, sec in interleaved_seconds(avatar, problem, accepted, repeats).items():
            results[n]["seconds"] = sec
    for name, r in results.items():
        r["render_threads"], r["torch_threads"] = split_of(name)
        r["iterations_per_s"] = 1.0 / r["seconds"] if r["seconds"] else None
    default = default_split()
    winner = mc.pick(results, default if default in results else names[0], TIE_MARGIN)
    return CHOICE.make_record(winner, results, t_start, points=n_points, size_px=size, views=views,
                              rounds=repeats, error_bound=ERROR_BOUND)


def interleaved_seconds(avatar: Any, views: list[Any], names: list[str], rounds: int) -> dict[str, float]:
    """Best seconds per iteration of each split over ``rounds`` rounds (after one warm-up round) of one refinement
    whose split changes after every iteration (in the progress callback, which refine_avatar calls between
    iterations; refine_avatar restores the process's thread counts when it returns)."""
    import numba
    import torch

    from .refine import RefineSettings, refine_avatar

    order = list(names) * (1 + max(1, rounds))
    stamps: list[float] = []

    def use(name: str) -> None:
        render, torch_threads = split_of(name)
        numba.set_num_threads(min(render, numba.config.NUMBA_NUM_THREADS))
        torch.set_num_threads(torch_threads)

    def step_done(*_args: Any) -> None:
        stamps.append(time.perf_counter())
        if len(stamps) < len(order):
            use(order[len(stamps)])  # the split of the next iteration

    render, torch_threads = split_of(order[0])
    refine_avatar(avatar, views, RefineSettings(iterations=len(order), seed=0, render_threads=render,
                                                torch_threads=torch_threads), progress=step_done)
    best = {n: math.inf for n in names}
    for i in range(len(names), len(order)):  # iteration i ran order[i], from stamps[i - 1] to stamps[i]
        best[order[i]] = min(best[order[i]], stamps[i] - stamps[i - 1])
    return best


def ensure_choice(n_points: int | None = None, *, timer: mc.Timer | None = None,
                  progress: Callable[[str], None] | None = None, force: bool = False) -> dict | None:
    """Before a refinement: the record in use, measuring first when none matches this machine and the avatar has
    :data:`CALIBRATE_MIN_POINTS`+ Gaussians (or ``n_points`` is None). None when overridden or small and unmeasured."""
    large = n_points is None or n_points >= CALIBRATE_MIN_POINTS
    return CHOICE.ensure(lambda: calibrate(timer=timer), large=large, force=force, progress=progress,
                         what="the refinement's thread splits")


def current_split() -> tuple[int, int]:
    """(numba threads, torch threads): override, else this machine's measured split, else the default."""
    return split_of(CHOICE.current())


def set_override(value: str | None) -> None:
    """Force a split for this process (``--refine-threads R,T``); None or ``auto``: the measured one."""
    CHOICE.set_override(value)


def describe() -> dict[str, Any]:
    return CHOICE.describe()


def format_description(info: dict[str, Any]) -> list[str]:
    """Doctor lines for :func:`describe`'s result."""
    lines = CHOICE.head_lines(info, f"the first refinement of {CALIBRATE_MIN_POINTS}+ Gaussians times the splits "
                                    "once (a few seconds)")
    lines[0] += "  (numba render threads, torch threads)"
    record = info.get("record")
    if record is None:
        return lines
    load = record.get("load_average")
    lines.append(f"  measured {record['calibrated']} in {record['calibration_s']:.1f} s on {record['points']} "
                 f"Gaussians, {record['views']} view at {record['size_px']} px"
                 + (f", load average {load:.1f}" if load is not None else "") + f"; machine: {info['machine']}")
    lines += CHOICE.option_lines(record, lambda r: f"{r['seconds']:6.3f} s per iteration and view",
                                 excluded="loss differs by")
    lines.append(CHOICE.tail_line(info))
    return lines
