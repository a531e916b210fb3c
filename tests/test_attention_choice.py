"""The CPU fast-mode attention kernel: every kernel's accuracy, the measured choice, its cache, the overrides.

Timings are injected (no test depends on this machine's speed); calibration runs on small shapes."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from factories.fake_timer import FakeTimer

import backend.network.attention as attn_mod
from backend.core.errors import BadInputError
from backend.network import attention_choice as ac
from backend.setup import machine_choice as mc

SMALL = (2, 300, 700, 16)  # heads, queries, keys, head dim: a calibration shape that runs in milliseconds


@pytest.fixture(autouse=True)
def clean_state(tmp_path, monkeypatch):
    """Each test: its own asset cache, no override, no choice remembered from an earlier test."""
    monkeypatch.setenv("LAM_HEAD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(ac.ENV_VAR, raising=False)
    monkeypatch.setattr(ac, "CALIBRATION_SHAPE", SMALL)
    ac.CHOICE.memo.clear()
    ac.set_override(None)
    yield
    ac.CHOICE.memo.clear()
    ac.set_override(None)


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("name", ac.KERNEL_NAMES)
@pytest.mark.parametrize("shape", [(1, 4, 2500, 2600, 64), (2, 3, 700, 530, 32)])
def test_every_kernel_matches_fp32_sdpa_within_its_tolerance(name, shape):
    """Query counts that are not multiples of the chunks (2500 = 2 x 1024 + 452) and Nq != Nk; unit-scale logits,
    like q/k after the per-head RMSNorm. Inputs float32 (a kernel rounds what it needs) or already bf16."""
    b, h, nq, nk, d = shape
    g = torch.Generator().manual_seed(nq)
    q, k, v = (torch.randn(b, h, n, d, generator=g) for n in (nq, nk, nk))
    for inputs in ((q, k, v), (q.bfloat16(), k.bfloat16(), v.bfloat16())):
        x = [t.float() for t in inputs]
        ref = F.scaled_dot_product_attention(*x)
        out = attn_mod.run_kernel(name, *inputs)
        assert out.dtype == torch.bfloat16 and out.shape == (b, h, nq, d)
        tol = ac.KERNELS[name][1]
        assert _relative_error(out, ref) <= tol, (name, _relative_error(out, ref), tol)
        assert tol <= ac.ERROR_BOUND  # every documented tolerance passes the calibration's bound


def test_attention_runs_the_chosen_kernel_for_cpu_bf16_only(monkeypatch):
    seen = []
    real = attn_mod.run_kernel
    monkeypatch.setattr(attn_mod, "run_kernel", lambda name, *a: seen.append(name) or real(name, *a))
    q = torch.randn(1, 2, 50, 16)
    ref = F.scaled_dot_product_attention(q, q, q)
    assert torch.equal(attn_mod.attention(q, q, q), ref)  # float32: plain SDPA
    assert seen == []
    attn_mod.attention(q.bfloat16(), q.bfloat16(), q.bfloat16())
    assert seen == [ac.DEFAULT_KERNEL]  # nothing measured yet, no override
    monkeypatch.setenv(ac.ENV_VAR, "sdpa_fp32")
    attn_mod.attention(q.bfloat16(), q.bfloat16(), q.bfloat16())
    assert seen[-1] == "sdpa_fp32"


@pytest.mark.parametrize("fastest", ac.KERNEL_NAMES)
def test_calibration_picks_the_fastest_accurate_kernel(fastest):
    timer = FakeTimer({n: (1.0 if n == fastest else 2.0 + i) for i, n in enumerate(ac.KERNEL_NAMES)})
    record = ac.calibrate(timer=timer, repeats=2)
    assert record["kernel"] == fastest
    assert sorted(timer.calls) == sorted(ac.KERNEL_NAMES * 2)
    assert record["shape"] == list(SMALL) and record["key"] == ac.machine_key()
    for name, r in record["kernels"].items():
        assert r["accepted"] and r["error"] <= ac.KERNELS[name][1]
        assert r["seconds"] == timer.seconds[name]
        h, nq, nk, d = SMALL
        assert r["gflops"] == pytest.approx(4 * h * nq * nk * d / r["seconds"] / 1e9)
        assert r["layer_s"] == pytest.approx(r["seconds"] * (16 * 20018 * 21314 * 64) / (h * nq * nk * d))
    json.dumps(record)  # the cache stores it as is


def test_within_the_noise_margin_the_default_kernel_stays():
    others = {n: 5.0 for n in ac.KERNEL_NAMES}
    close = ac.calibrate(timer=FakeTimer({**others, ac.DEFAULT_KERNEL: 1.02, "sdpa_fp32": 1.0}))
    assert close["kernel"] == ac.DEFAULT_KERNEL  # 2 % slower: not worth leaving the tuned default
    clear = ac.calibrate(timer=FakeTimer({**others, ac.DEFAULT_KERNEL: 1.1, "sdpa_fp32": 1.0}))
    assert clear["kernel"] == "sdpa_fp32"


def test_calibration_keeps_the_best_round_of_each_kernel():
    rounds = iter([3.0, 5.0, 1.0, 4.0])  # a: 3 then 1; b: 5 then 4 -> a wins with 1

    record = ac.calibrate(kernels=("sdpa_bf16", "gemm_bf16"), timer=lambda name, run: next(rounds), repeats=2)
    assert record["kernel"] == "sdpa_bf16"
    assert record["kernels"]["sdpa_bf16"]["seconds"] == 1.0 and record["kernels"]["gemm_bf16"]["seconds"] == 4.0


def test_a_kernel_above_the_error_bound_is_excluded_however_fast(monkeypatch):
    real = attn_mod.run_kernel

    def noisy(name, q, k, v):
        out = real(name, q, k, v)
        return out + 0.1 * out.abs().max() if name == "gemm_bf16" else out  # a broken kernel: 10 % off

    monkeypatch.setattr(attn_mod, "run_kernel", noisy)
    timer = FakeTimer({"gemm_bf16": 0.1, "sdpa_bf16": 1.0, "sdpa_bf16_q1024": 1.5, "sdpa_fp32": 2.0})
    record = ac.calibrate(timer=timer)
    assert record["kernel"] == "sdpa_bf16"
    bad = record["kernels"]["gemm_bf16"]
    assert not bad["accepted"] and bad["error"] > ac.ERROR_BOUND and bad["seconds"] is None
    assert "gemm_bf16" not in timer.calls  # not even timed
    assert any("excluded" in line for line in ac.format_description({**ac.describe(), "record": record}))


def test_choice_is_cached_and_reused(tmp_path):
    timer = FakeTimer({"sdpa_bf16": 1.0, "sdpa_bf16_q1024": 1.2, "sdpa_fp32": 3.0, "gemm_bf16": 2.0})
    record = ac.ensure_choice(20018, timer=timer)
    assert record["kernel"] == "sdpa_bf16" and ac.current_kernel() == "sdpa_bf16"
    path = tmp_path / "home" / ac.CACHE_NAME
    stored = json.loads(path.read_text())["machines"]
    assert list(stored) == [ac.key_string(ac.machine_key())]
    n_calls = len(timer.calls)
    assert ac.ensure_choice(20018, timer=timer) == record  # same process
    ac.CHOICE.memo.clear()  # a new process: read from the file
    assert ac.ensure_choice(20018, timer=timer)["kernel"] == "sdpa_bf16"
    assert ac.current_kernel() == "sdpa_bf16"
    assert len(timer.calls) == n_calls  # never measured again


def test_small_problems_do_not_calibrate():
    timer = FakeTimer({})
    assert ac.ensure_choice(ac.CALIBRATE_MIN_QUERIES - 1, timer=timer) is None
    assert timer.calls == [] and ac.current_kernel() == ac.DEFAULT_KERNEL
    assert not ac.cache_path().exists()


def test_a_changed_machine_recalibrates(monkeypatch, tmp_path):
    first = FakeTimer({"sdpa_bf16": 1.0, "sdpa_bf16_q1024": 1.1, "sdpa_fp32": 3.0, "gemm_bf16": 2.0})
    ac.ensure_choice(20018, timer=first)
    # another CPU (a Xeon with AMX), same cache folder: measured anew, both records kept
    real_identity = mc.cpu_identity
    monkeypatch.setattr(mc, "cpu_identity", lambda: ("Intel Xeon", ("avx512f", "avx512_bf16", "amx_bf16")))
    second = FakeTimer({"sdpa_bf16": 3.0, "sdpa_bf16_q1024": 3.1, "sdpa_fp32": 4.0, "gemm_bf16": 1.0})
    assert ac.current_kernel() == ac.DEFAULT_KERNEL  # nothing for this machine yet
    assert ac.ensure_choice(20018, timer=second)["kernel"] == "gemm_bf16"
    assert len(second.calls) == len(ac.KERNEL_NAMES) * ac.REPEATS
    machines = json.loads((tmp_path / "home" / ac.CACHE_NAME).read_text())["machines"]
    assert len(machines) == 2 and {r["kernel"] for r in machines.values()} == {"sdpa_bf16", "gemm_bf16"}
    monkeypatch.setattr(mc, "cpu_identity", real_identity)  # back on the first machine
    assert ac.current_kernel() == "sdpa_bf16"
    # another thread count is another key too
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        third = FakeTimer(first.seconds)
        ac.ensure_choice(20018, timer=third)
        assert third.calls
    finally:
        torch.set_num_threads(threads)


def test_a_stale_or_corrupt_cache_is_measured_again(tmp_path):
    path = tmp_path / "home" / ac.CACHE_NAME
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    timer = FakeTimer({"sdpa_bf16": 2.0, "sdpa_bf16_q1024": 2.0, "sdpa_fp32": 1.0, "gemm_bf16": 2.0})
    assert ac.ensure_choice(20018, timer=timer)["kernel"] == "sdpa_fp32"
    # a record naming a kernel that no longer exists is ignored
    data = json.loads(path.read_text())
    for r in data["machines"].values():
        r["kernel"] = "retired_kernel"
    path.write_text(json.dumps(data))
    ac.CHOICE.memo.clear()
    assert ac.current_kernel() == ac.DEFAULT_KERNEL


def test_override_wins_and_skips_calibration(monkeypatch):
    timer = FakeTimer({n: 1.0 for n in ac.KERNEL_NAMES})
    monkeypatch.setenv(ac.ENV_VAR, "sdpa_fp32")
    assert ac.ensure_choice(20018, timer=timer) is None and timer.calls == []
    assert ac.current_kernel() == "sdpa_fp32"
    ac.set_override("gemm_bf16")  # --attention beats the environment
    assert ac.current_kernel() == "gemm_bf16"
    ac.set_override("auto")
    assert ac.current_kernel() == "sdpa_fp32"
    monkeypatch.setenv(ac.ENV_VAR, "auto")
    assert ac.current_kernel() == ac.DEFAULT_KERNEL
    info = ac.describe()
    assert info["override"] is None and info["record"] is None


def test_unknown_kernel_names_are_rejected_clearly(monkeypatch):
    with pytest.raises(BadInputError, match="unknown attention kernel 'flash9'.*sdpa_bf16.*gemm_bf16"):
        ac.set_override("flash9")
    monkeypatch.setenv(ac.ENV_VAR, "flash9")
    with pytest.raises(BadInputError, match=r"\$LAM_HEAD_ATTENTION"):
        ac.current_kernel()
    info = ac.describe()  # the doctor reports it instead of failing
    assert "flash9" in info["override_error"]
    with pytest.raises(BadInputError, match="unknown attention kernel"):
        attn_mod.run_kernel("flash9", *(torch.zeros(1, 1, 2, 4),) * 3)


def test_create_cli_option(capsys):
    from backend import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["create", "photo.jpg", "-o", "x.npz", "--attention", "flash9"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--attention" in err and "flash9" in err and all(n in err for n in ac.KERNEL_NAMES)
    with pytest.raises(SystemExit):
        cli.main(["create", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--attention KERNEL" in out and all(n in out for n in ac.KERNEL_NAMES)


def test_create_cli_sets_and_resets_the_override(monkeypatch, tmp_path):
    """--attention reaches attention_choice before the pipeline runs; a later run without it goes back to auto."""
    from backend import cli
    from backend.create import pipeline

    seen = []

    def fake_create(*args, **kwargs):
        seen.append(ac.current_kernel())
        raise BadInputError("stop here")

    monkeypatch.setattr(pipeline, "create_avatar", fake_create)
    assert cli.main(["create", "p.jpg", "-o", str(tmp_path / "a.npz"), "--attention", "sdpa_fp32", "--quiet"]) == 1
    assert cli.main(["create", "p.jpg", "-o", str(tmp_path / "a.npz"), "--quiet"]) == 1
    assert seen == ["sdpa_fp32", ac.DEFAULT_KERNEL]


def test_doctor_shows_the_choice_and_its_rates(capsys):
    from backend import cli
    from backend.cli.doctor import collect_report, format_report

    text = format_report(collect_report())
    assert f"attention kernel (fast mode on CPU): {ac.DEFAULT_KERNEL}" in text and "not measured on this machine" in text
    timer = FakeTimer({"sdpa_bf16": 0.5, "sdpa_bf16_q1024": 0.6, "sdpa_fp32": 1.0, "gemm_bf16": 0.8})
    ac.ensure_choice(20018, timer=timer)
    report = collect_report()
    assert report["attention"]["record"]["kernel"] == "sdpa_bf16"
    json.dumps(report)
    text = format_report(report)
    assert "attention kernel (fast mode on CPU): sdpa_bf16" in text
    for name in ac.KERNEL_NAMES:
        assert any(name in line and "GFLOP/s" in line and "per full layer" in line for line in text.splitlines())
    # --calibrate-attention measures (here: the small shape, real timer) and prints the report
    cli.main(["doctor", "--calibrate-attention"])
    out = capsys.readouterr().out
    assert "attention kernel (fast mode on CPU):" in out and "measured" in out
