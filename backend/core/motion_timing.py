"""Putting a motion's rows on a scene's frames (numpy only; ARKit tracks and FLAME motions alike).

Convention (one, used by the add-on's import and by ``lam-head render``):

* Source row ``i`` lies at time ``t_i = i / source_fps`` (rows one per frame at the nominal rate),
  or at ``times[i] - times[0]`` when explicit times are given instead of a rate.
* Scene frame ``start_frame + k`` lies at time ``k / target_fps``.
* Same rate (``source_fps == target_fps``, relative tolerance 1e-6): no interpolation at all,
  row ``i`` becomes frame ``start_frame + i`` exactly.
* Otherwise frames ``k = 0 .. floor(duration * target_fps)`` (``duration = t_last``; never past
  the last row), each the linear interpolation of the two rows around ``k / target_fps``; a frame
  that falls on a row (60 -> 30 fps: every other row) gets that row's values exactly.
  Angles are interpolated component-wise, which is what keyframes between rows do too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

RATE_RTOL = 1e-6
_SNAP = 1e-9  # positions within this of a row are that row (float round-off of k * ratio)


def same_rate(a: float, b: float, rtol: float = RATE_RTOL) -> bool:
    return abs(float(a) - float(b)) <= rtol * max(abs(float(a)), abs(float(b)))


@dataclass(frozen=True)
class TimingPlan:
    """Where each scene frame reads the source: ``frames`` M int64 scene frame numbers, and for
    each the rows ``lo``/``hi`` and the blend ``t`` in [0, 1] (value = (1 - t) row lo + t row hi).
    ``exact``: same rate, rows copied as they are."""

    frames: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    t: np.ndarray
    exact: bool

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    def apply(self, values: np.ndarray) -> np.ndarray:
        """values T,... -> M,... (float dtype kept)."""
        v = np.asarray(values)
        if self.exact:
            return v[self.lo]
        t = self.t.reshape(-1, *([1] * (v.ndim - 1)))
        out = v[self.lo] * (1.0 - t) + v[self.hi] * t
        return out.astype(v.dtype if v.dtype.kind == "f" else np.float64, copy=False)


def make_plan(n_rows: int, target_fps: float, start_frame: int = 0, *, source_fps: float | None = None,
              times: np.ndarray | None = None) -> TimingPlan:
    """The :class:`TimingPlan` for ``n_rows`` rows timed by ``source_fps`` (or by ``times``, seconds,
    increasing) on a scene at ``target_fps`` whose first keyed frame is ``start_frame``."""
    if n_rows < 1:
        raise ValueError("a motion needs at least one row")
    if not target_fps > 0:
        raise ValueError(f"target_fps must be positive, got {target_fps}")
    if (source_fps is None) == (times is None):
        raise ValueError("give exactly one of source_fps and times")
    start = int(start_frame)
    if source_fps is not None:
        if not source_fps > 0:
            raise ValueError(f"source_fps must be positive, got {source_fps}")
        if same_rate(source_fps, target_fps) or n_rows == 1:
            rows = np.arange(n_rows, dtype=np.int64)
            return TimingPlan(start + rows, rows, rows, np.zeros(n_rows), True)
        duration = (n_rows - 1) / float(source_fps)
        k = np.arange(int(np.floor(duration * target_fps + _SNAP)) + 1, dtype=np.int64)
        pos = k * (float(source_fps) / float(target_fps))  # position in rows
        near = np.rint(pos)
        pos = np.where(np.abs(pos - near) < _SNAP * np.maximum(1.0, near), near, pos)
        lo = np.minimum(np.floor(pos).astype(np.int64), n_rows - 1)
        t = pos - lo
    else:
        tt = np.asarray(times, dtype=np.float64).reshape(-1)
        if tt.shape[0] != n_rows:
            raise ValueError(f"{tt.shape[0]} times for {n_rows} rows")
        if n_rows > 1 and not (np.diff(tt) > 0).all():
            raise ValueError("times must increase")
        tt = tt - tt[0]
        k = np.arange(int(np.floor(tt[-1] * target_fps + _SNAP)) + 1, dtype=np.int64)
        at = k / float(target_fps)
        lo = np.clip(np.searchsorted(tt, at + _SNAP, side="right") - 1, 0, n_rows - 1)
        nxt = np.minimum(lo + 1, n_rows - 1)
        span = tt[nxt] - tt[lo]
        t = np.where(span > 0, (at - tt[lo]) / np.where(span > 0, span, 1.0), 0.0)
        t = np.where(np.abs(t) < _SNAP, 0.0, np.clip(t, 0.0, 1.0))
    hi = np.minimum(lo + 1, n_rows - 1)
    t = np.where(hi == lo, 0.0, t)
    return TimingPlan(start + k, lo, hi, t, False)


def resample(values: np.ndarray, target_fps: float, start_frame: int = 0, *, source_fps: float | None = None,
             times: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scene frame numbers M, values at them M,...) for rows ``values`` T,... (see the module docstring)."""
    v = np.asarray(values)
    plan = make_plan(v.shape[0], target_fps, start_frame, source_fps=source_fps, times=times)
    return plan.frames, plan.apply(v)


def resample_arrays(arrays: Mapping[str, np.ndarray | None], target_fps: float, start_frame: int = 0, *,
                    source_fps: float | None = None, times: np.ndarray | None = None
                    ) -> tuple[np.ndarray, dict[str, np.ndarray | None]]:
    """Several row-aligned arrays (e.g. a pose's fields; None passes through) on one plan."""
    lengths = {k: np.asarray(a).shape[0] for k, a in arrays.items() if a is not None}
    if not lengths or len(set(lengths.values())) != 1:
        raise ValueError(f"arrays must share their row count, got {lengths}")
    plan = make_plan(next(iter(lengths.values())), target_fps, start_frame, source_fps=source_fps, times=times)
    return plan.frames, {k: None if a is None else plan.apply(a) for k, a in arrays.items()}
