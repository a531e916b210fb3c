"""The refinement's numba/torch thread split: candidates, the measured choice on a reduced problem, and that
refine_avatar really runs with it (unless its settings say otherwise). Timings injected; tmp asset cache."""

from __future__ import annotations

import numba
import pytest
import torch
from factories.fake_timer import FakeTimer

from backend.create import refine
from backend.create import thread_choice as tc
from backend.create.refine import RefineSettings, refine_avatar
from backend.setup import machine_choice as mc


@pytest.fixture(autouse=True)
def clean_state(tmp_path, monkeypatch):
    monkeypatch.setenv("LAM_HEAD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(tc.ENV_VAR, raising=False)
    mc.forget_all()
    yield
    mc.forget_all()


@pytest.fixture(scope="module")
def small():
    """300 Gaussians, one 32 px view: milliseconds per iteration."""
    return tc.synthetic_problem(300, 10, 32, seed=2)


def _record(split: str) -> dict:
    results = {split: {"error": 0.0, "accepted": True, "seconds": 0.1}}
    return tc.CHOICE.make_record(split, results, 0.0, points=20018, size_px=252, views=1, error_bound=tc.ERROR_BOUND)


def _spy_threads(monkeypatch) -> list[tuple[int, int]]:
    seen = []
    real = refine._refine

    def spy(*args, **kwargs):
        seen.append((numba.get_num_threads(), torch.get_num_threads()))
        return real(*args, **kwargs)

    monkeypatch.setattr(refine, "_refine", spy)
    return seen


def test_candidates_cover_the_split_space_default_first(monkeypatch):
    monkeypatch.setattr(tc, "max_render_threads", lambda: 64)
    assert tc.candidates(1) == ("1,1",)
    assert tc.candidates(2) == ("2,1", "2,2", "1,1", "1,2")
    many = tc.candidates(64)
    assert many[0] == "64,1" == tc.default_split() and len(many) == 8
    assert {"64,64", "32,16", "32,1"} <= set(many)
    assert all(tc.CHOICE.check_name(n) == n for n in many)


def test_refine_runs_the_measured_split_and_restores_the_threads(small, monkeypatch):
    avatar, views = small
    seen = _spy_threads(monkeypatch)
    before = (numba.get_num_threads(), torch.get_num_threads())
    tc.CHOICE.save(_record("1,2"))
    res = refine_avatar(avatar, views, RefineSettings(iterations=1))
    assert seen == [(1, 2)] and res.stats["threads"] == [1, 2]
    assert (numba.get_num_threads(), torch.get_num_threads()) == before
    # explicit settings win, field by field
    refine_avatar(avatar, views, RefineSettings(iterations=1, render_threads=1, torch_threads=1))
    refine_avatar(avatar, views, RefineSettings(iterations=1, torch_threads=3))
    assert seen[1:] == [(1, 1), (1, 3)]
    # the environment override beats the measured split
    monkeypatch.setenv(tc.ENV_VAR, "1,1")
    refine_avatar(avatar, views, RefineSettings(iterations=1))
    assert seen[-1] == (1, 1)


def test_unmeasured_and_small_refinements_use_the_default_without_measuring(small, monkeypatch):
    avatar, views = small
    seen = _spy_threads(monkeypatch)
    monkeypatch.setattr(tc, "calibrate", lambda **kw: pytest.fail("measured a small refinement"))
    refine_avatar(avatar, views, RefineSettings(iterations=1))
    assert seen == [tc.split_of(tc.default_split())] and not tc.CHOICE.cache_path().exists()
    # another renderer (gsplat) never measures the CPU split, whatever the problem size
    assert refine.thread_split(RefineSettings(renderer="gsplat"), 10**6) == tc.split_of(tc.default_split())


def test_a_full_size_refinement_measures_once(small, monkeypatch):
    avatar, views = small
    monkeypatch.setattr(tc, "CALIBRATE_MIN_POINTS", avatar.n_points)  # count this one as full-size
    measured = []
    monkeypatch.setattr(tc, "calibrate", lambda **kw: measured.append(1) or _record("1,1"))
    seen = _spy_threads(monkeypatch)
    notes = []
    refine_avatar(avatar, views, RefineSettings(iterations=1), progress=lambda s, f, m="": notes.append(m))
    refine_avatar(avatar, views, RefineSettings(iterations=1))
    assert measured == [1] and seen == [(1, 1), (1, 1)]
    assert any("thread splits" in n for n in notes)


def test_calibration_times_each_split_and_picks_the_fastest(monkeypatch):
    monkeypatch.setattr(tc, "max_render_threads", lambda: 1)  # a refinement here never needs more than 1 numba thread
    timer = FakeTimer({"1,1": 0.5, "1,2": 0.2})
    record = tc.calibrate(splits=("1,1", "1,2"), timer=timer, n_points=300, size=32)
    assert record["choice"] == "1,2" and timer.calls == ["1,1", "1,2"] * tc.REPEATS
    for name, r in record["options"].items():
        assert r["accepted"] and r["error"] <= tc.ERROR_BOUND  # the same maths, summed in another order
        assert (r["render_threads"], r["torch_threads"]) == tc.split_of(name)
        assert r["iterations_per_s"] == pytest.approx(1 / timer.seconds[name])
    assert record["points"] == 300 and record["size_px"] == 32 and record["key"] == tc.CHOICE.machine_key()
    close = tc.calibrate(splits=("1,1", "1,2"), timer=FakeTimer({"1,1": 0.2, "1,2": 0.195}), n_points=300, size=32)
    assert close["choice"] == "1,1"  # within the tie margin the default stays


def test_a_split_that_changes_the_result_is_never_chosen(monkeypatch):
    monkeypatch.setattr(tc, "max_render_threads", lambda: 1)
    real = refine.refine_avatar

    def broken(avatar, views, settings=None, **kw):
        res = real(avatar, views, settings, **kw)
        if settings.torch_threads == 2:
            res.stats["loss_after"] *= 1.5  # a split that computes something else
        return res

    monkeypatch.setattr(refine, "refine_avatar", broken)
    timer = FakeTimer({"1,1": 0.5, "1,2": 0.01})
    record = tc.calibrate(splits=("1,1", "1,2"), timer=timer, n_points=300, size=32)
    assert record["choice"] == "1,1" and "1,2" not in timer.calls
    assert not record["options"]["1,2"]["accepted"] and record["options"]["1,2"]["seconds"] is None


def test_the_default_timer_reads_refinement_iterations(monkeypatch):
    monkeypatch.setattr(tc, "max_render_threads", lambda: 1)
    record = tc.calibrate(splits=("1,1",), n_points=300, size=32)
    r = record["options"]["1,1"]
    assert record["choice"] == "1,1" and 0 < r["seconds"] < 5 and record["calibration_s"] >= r["seconds"]
