"""Putting motion rows on scene frames: exact rows at equal rates, linear interpolation otherwise,
24/30/60 fps both ways, explicit times, several arrays on one plan."""

from __future__ import annotations

import numpy as np
import pytest

from backend.core.motion_timing import make_plan, resample, resample_arrays, same_rate


def _linear(times: np.ndarray) -> np.ndarray:
    """T,3 values linear in time: linear interpolation must reproduce them exactly."""
    return np.stack([0.5 + 2.0 * times, -times, np.full_like(times, 0.25)], axis=1)


@pytest.mark.parametrize("fps", [24, 30, 60, 29.97])
def test_equal_rates_copy_the_rows(fps):
    rows = np.random.default_rng(0).normal(size=(37, 4)).astype(np.float32)
    frames, values = resample(rows, fps, start_frame=11, source_fps=fps)
    np.testing.assert_array_equal(frames, 11 + np.arange(37))
    np.testing.assert_array_equal(values, rows)
    assert values.dtype == np.float32 and make_plan(37, fps, source_fps=fps).exact


@pytest.mark.parametrize("src, dst", [(24, 30), (30, 24), (24, 60), (60, 24), (30, 60), (60, 30)])
def test_other_rates_interpolate_linearly_over_the_duration(src, dst):
    n = 2 * src + 7
    t = np.arange(n) / src
    frames, values = resample(_linear(t), dst, start_frame=-3, source_fps=src)
    duration = (n - 1) / src
    m = int(np.floor(duration * dst + 1e-9)) + 1
    np.testing.assert_array_equal(frames, -3 + np.arange(m))
    np.testing.assert_allclose(values, _linear(np.arange(m) / dst), atol=1e-12)
    assert (m - 1) / dst <= duration + 1e-12 < m / dst  # never past the last row


def test_frames_on_rows_take_the_rows_exactly_and_midpoints_average():
    rows = np.random.default_rng(1).uniform(size=(61, 5)).astype(np.float32)
    _, half = resample(rows, 30, source_fps=60)
    np.testing.assert_array_equal(half, rows[::2])
    _, double = resample(rows, 120, source_fps=60)
    np.testing.assert_array_equal(double[::2], rows)
    np.testing.assert_allclose(double[1::2], (rows[:-1] + rows[1:]) / 2, rtol=1e-6)
    _, at24 = resample(rows, 24, source_fps=60)  # every 2.5 rows: even frames on rows
    np.testing.assert_array_equal(at24[::2], rows[::5])


def test_explicit_times_irregular_rows():
    times = np.array([10.0, 10.03, 10.05, 10.11, 10.2])
    frames, values = resample(_linear(times - 10.0), 50, start_frame=2, times=times)
    np.testing.assert_array_equal(frames, 2 + np.arange(11))
    np.testing.assert_allclose(values, _linear(np.arange(11) / 50), atol=1e-12)


def test_single_row_and_arrays_on_one_plan():
    frames, values = resample(np.ones((1, 3)), 24, start_frame=5, source_fps=60)
    assert frames.tolist() == [5] and values.shape == (1, 3)
    frames, out = resample_arrays({"a": np.arange(7.0), "b": np.arange(14.0).reshape(7, 2), "c": None}, 60,
                                  source_fps=30)
    assert out["c"] is None and len(frames) == 13
    np.testing.assert_allclose(out["a"], np.arange(13) / 2)
    np.testing.assert_allclose(out["b"][:, 0], np.arange(13))


def test_bad_requests():
    with pytest.raises(ValueError, match="exactly one"):
        make_plan(3, 30)
    with pytest.raises(ValueError, match="exactly one"):
        make_plan(3, 30, source_fps=30, times=np.arange(3))
    with pytest.raises(ValueError, match="increase"):
        make_plan(3, 30, times=np.array([0.0, 0.1, 0.1]))
    with pytest.raises(ValueError, match="positive"):
        make_plan(3, 0, source_fps=30)
    with pytest.raises(ValueError, match="at least one row"):
        make_plan(0, 30, source_fps=30)
    with pytest.raises(ValueError, match="row count"):
        resample_arrays({"a": np.zeros(3), "b": np.zeros(4)}, 30, source_fps=30)
    assert same_rate(30, 30.0000001) and not same_rate(30, 29.97)
