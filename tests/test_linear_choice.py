"""bf16 or fp32 linears in CPU fast mode: both options' accuracy, the measured choice, and that the forward really
runs the chosen one (a dispatch spy on aten.linear's dtypes). Timings are injected; the cache is a tmp folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from factories.checkpoint import make_tiny_weights_dir
from factories.fake_timer import FakeTimer
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from backend.core.errors import BadInputError
from backend.network import attention_choice as ac
from backend.network import linear_choice as lc
from backend.network import linears, load_lam, predict
from backend.setup import machine_choice as mc

N_POINTS = 300


@pytest.fixture(autouse=True)
def clean_state(tmp_path, monkeypatch):
    monkeypatch.setenv("LAM_HEAD_HOME", str(tmp_path / "home"))
    for var in (lc.ENV_VAR, ac.ENV_VAR, "LAM_HEAD_REFINE_THREADS"):
        monkeypatch.delenv(var, raising=False)
    mc.forget_all()
    yield
    mc.forget_all()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, _ = load_lam(make_tiny_weights_dir(tmp_path_factory.mktemp("ckpt"), seed=3), device="cpu")
    rng = np.random.default_rng(7)
    image = rng.uniform(0, 1, (504, 504, 3)).astype(np.float32)
    points = (rng.normal(size=(N_POINTS, 3)) * [0.08, 0.1, 0.09]).astype(np.float32)
    return model, image, points


class LinearSpy(TorchDispatchMode):
    """Counts linear GEMMs by input dtype (what runs after autocast has cast the arguments)."""

    def __init__(self):
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.linear.default:
            self.dtypes.append(args[0].dtype)
        elif func is torch.ops.aten.addmm.default:  # a 2-D linear with bias reaches the dispatcher as addmm
            self.dtypes.append(args[1].dtype)
        return func(*args, **(kwargs or {}))


def _rel(out, ref):
    return float((out.float() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_both_options_are_within_their_documented_error(x_dtype):
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(256, 512)
    x = torch.randn(3, 200, 256, generator=g).to(x_dtype)
    with torch.inference_mode():
        ref = F.linear(x.float(), lin.weight, lin.bias)
        for name, (_desc, tol) in lc.OPTIONS.items():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = linears.run_linear(name, lin, x)
            assert out.dtype == torch.bfloat16  # the same dtype downstream whichever option runs
            assert _rel(out, ref) <= tol <= lc.ERROR_BOUND, (name, _rel(out, ref))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fp32 = linears.fp32_linear(lin, x)
        assert torch.equal(fp32, ref.to(torch.bfloat16))  # an fp32 GEMM, only its output rounded
        assert torch.equal(linears.fp32_linear(lin, x.float()), lin(x.float()))  # no autocast: plain fp32


def test_linears_as_patches_for_the_block_only():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2)))
    x = torch.randn(2, 4)  # 2-D (addmm), the network's are 3-D (linear)
    with LinearSpy() as spy, torch.autocast("cpu", dtype=torch.bfloat16):
        with linears.linears_as(model, "fp32"):
            model(x)
        assert spy.dtypes == [torch.float32] * 2
        model(x)
        assert spy.dtypes[2:] == [torch.bfloat16] * 2  # restored
        with pytest.raises(RuntimeError, match="boom"), linears.linears_as(model, "fp32"):
            raise RuntimeError("boom")
        assert all("forward" not in m.__dict__ for m in model.modules())
    with pytest.raises(BadInputError, match="unknown linear layer option"), linears.linears_as(model, "fp8"):
        pass


@pytest.mark.parametrize("fastest", lc.OPTION_NAMES)
def test_calibration_picks_the_fastest_accurate_option(fastest):
    timer = FakeTimer({n: 1.0 if n == fastest else 2.0 for n in lc.OPTION_NAMES})
    record = lc.calibrate(rows=16, timer=timer)
    assert record["choice"] == fastest and sorted(timer.calls) == sorted(lc.OPTION_NAMES * lc.REPEATS)
    for name, r in record["options"].items():
        assert r["accepted"] and r["error"] <= lc.OPTIONS[name][1]
        assert r["gflops"] > 0 and r["forward_s"] == pytest.approx(r["seconds"] * lc.forward_linear_flops() /
                                                                   (2 * 16 * 1024 * 1024 * 12))
    assert record["rows"] == 16 and record["key"] == lc.CHOICE.machine_key()


def test_an_inaccurate_option_is_never_chosen(monkeypatch):
    real = linears.run_linear

    def broken(name, module, x):
        out = real(name, module, x)
        return out * 1.1 if name == "bf16" else out  # 10 % off: far above the bound

    monkeypatch.setattr(linears, "run_linear", broken)
    timer = FakeTimer({"bf16": 0.01, "fp32": 1.0})
    record = lc.calibrate(rows=16, timer=timer)
    assert record["choice"] == "fp32" and "bf16" not in timer.calls
    assert not record["options"]["bf16"]["accepted"] and record["options"]["bf16"]["seconds"] is None


def test_fast_mode_runs_the_chosen_linears_and_stays_accurate(tiny, monkeypatch):
    model, image, points = tiny
    ref = predict(model, image, points)
    runs = {}
    for name in lc.OPTION_NAMES:
        monkeypatch.setenv(lc.ENV_VAR, name)
        with LinearSpy() as spy:
            runs[name] = predict(model, image, points, precision="fast")
        bf16 = spy.dtypes.count(torch.bfloat16)
        if name == "bf16":
            assert bf16 > 10 and spy.dtypes.count(torch.float32) == 1  # only the point embedding stays fp32
        else:
            assert bf16 == 0 and len(spy.dtypes) > 10
        # fast mode's documented bounds on the tiny random model (tests/test_checkpoint.py)
        assert np.abs(runs[name].xyz - ref.xyz).max() < 1e-2
        assert np.abs(runs[name].rgb - ref.rgb).max() < 0.05
    assert not np.array_equal(runs["bf16"].xyz, runs["fp32"].xyz)
    assert all("forward" not in m.__dict__ for m in model.modules())
    for name in lc.OPTION_NAMES:  # float32 precision never changes: bit-identical whatever is chosen
        monkeypatch.setenv(lc.ENV_VAR, name)
        np.testing.assert_array_equal(predict(model, image, points).xyz, ref.xyz)


def test_a_full_size_forward_measures_once_and_uses_the_measured_option(tiny, monkeypatch):
    model, image, points = tiny
    monkeypatch.setattr(ac, "CALIBRATE_MIN_QUERIES", N_POINTS)  # this tiny forward counts as full-size
    monkeypatch.setattr(ac, "ensure_choice", lambda *a, **k: None)
    measured = []
    real = lc.calibrate

    def fake(**kw):
        measured.append(1)
        return real(rows=16, timer=FakeTimer({"bf16": 2.0, "fp32": 1.0}))

    monkeypatch.setattr(lc, "calibrate", fake)
    notes = []
    first = predict(model, image, points, precision="fast", progress=lambda stage, f, msg="": notes.append(msg))
    assert measured == [1] and lc.current() == "fp32"
    assert any("linear layers" in n for n in notes)
    with LinearSpy() as spy:
        again = predict(model, image, points, precision="fast")
    assert measured == [1]  # cached
    assert torch.bfloat16 not in spy.dtypes and len(spy.dtypes) > 10  # the measured option ran
    np.testing.assert_array_equal(again.xyz, first.xyz)


def test_small_forwards_do_not_measure(tiny, monkeypatch):
    model, image, points = tiny
    monkeypatch.setattr(lc, "calibrate", lambda **kw: pytest.fail("measured a small problem"))
    predict(model, image, points, precision="fast")
    assert lc.current() == lc.DEFAULT and not lc.CHOICE.cache_path().exists()
