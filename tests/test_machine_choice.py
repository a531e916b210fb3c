"""The shared per-machine choice machinery (backend/setup/machine_choice.py) for every choice: cache keyed, reused
and invalidated, overrides validated, a rejected option never picked, the doctor and the CLI flags.

Measurements are faked (no test depends on this machine's speed); the cache lives in a tmp LAM_HEAD_HOME."""

from __future__ import annotations

import json

import pytest
import torch

from backend.core.errors import BadInputError
from backend.create import thread_choice as tc
from backend.network import attention_choice as ac
from backend.network import linear_choice as lc
from backend.setup import machine_choice as mc

CHOICES = {c.name: c for c in (ac.CHOICE, lc.CHOICE, tc.CHOICE)}


@pytest.fixture(autouse=True)
def clean_state(tmp_path, monkeypatch):
    monkeypatch.setenv("LAM_HEAD_HOME", str(tmp_path / "home"))
    for c in CHOICES.values():
        monkeypatch.delenv(c.env_var, raising=False)
    monkeypatch.setattr(tc, "max_render_threads", lambda: 4)  # the same candidates whatever this machine has
    mc.forget_all()
    yield
    mc.forget_all()


#: per choice: (the record's extra fields, each option's extra rate fields), as their calibrate() writes them
EXTRAS = {
    "attention": ({"shape": [2, 2048, 21314, 64], "error_bound": ac.ERROR_BOUND}, {"gflops": 1.0, "layer_s": 1.0}),
    "linears": ({"rows": 2048, "error_bound": lc.ERROR_BOUND}, {"gflops": 1.0, "forward_s": 1.0}),
    "refine_threads": ({"points": 20018, "size_px": 252, "views": 1, "error_bound": tc.ERROR_BOUND}, {}),
}


def _fake_record(choice: mc.MachineChoice, winner: str) -> dict:
    extra, rates = EXTRAS[choice.name]
    results = {n: {"error": 0.0, "accepted": True, "seconds": 1.0 if n == winner else 2.0, **rates}
               for n in choice.option_names()}
    return choice.make_record(winner, results, 0.0, **extra)


def _other(choice: mc.MachineChoice) -> str:
    return next(n for n in choice.option_names() if n != choice.default())


def test_every_choice_is_registered_and_cheap_to_list():
    assert [c.name for c in mc.all_choices()] == ["attention", "linears", "refine_threads"]
    for c in mc.all_choices():
        assert c.default() in c.option_names() and len(c.option_names()) >= 2
    assert len({c.cache_name for c in mc.all_choices()}) == 3


@pytest.mark.parametrize("name", CHOICES)
def test_cache_is_keyed_reused_and_invalidated(name, tmp_path, monkeypatch):
    choice = CHOICES[name]
    winner = _other(choice)
    calls = []

    def measure():
        calls.append(1)
        return _fake_record(choice, winner)

    assert choice.current() == choice.default()  # nothing measured: the default
    assert choice.ensure(measure, large=False) is None and not calls  # small problems never measure
    assert choice.ensure(measure)[choice.field] == winner and len(calls) == 1
    assert choice.current() == winner
    stored = json.loads((tmp_path / "home" / choice.cache_name).read_text())["machines"]
    assert list(stored) == [mc.key_string(choice.machine_key())]
    choice.memo.clear()  # a new process reads the file
    assert choice.ensure(measure)[choice.field] == winner and len(calls) == 1
    # another CPU: not this record; measured anew, both kept
    monkeypatch.setattr(mc, "cpu_identity", lambda: ("Other CPU", ("avx2",)))
    assert choice.current() == choice.default()
    choice.ensure(measure)
    assert len(calls) == 2
    assert len(json.loads((tmp_path / "home" / choice.cache_name).read_text())["machines"]) == 2


def test_the_key_changes_with_torch_threads_torch_version_and_numba():
    key = ac.CHOICE.machine_key()
    assert {"cpu", "flags", "torch", "capability", "threads", "version"} <= set(key)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert ac.CHOICE.machine_key() != key and lc.CHOICE.machine_key()["threads"] == threads + 1
    finally:
        torch.set_num_threads(threads)
    tkey = tc.CHOICE.machine_key()
    assert "numba" in tkey and tkey["threads"] == tc.max_render_threads()  # numba's limit, not torch's threads
    assert f"numba {tkey['numba']}" in mc.key_string(tkey)


def test_a_changed_calibration_version_is_measured_again(monkeypatch):
    c = lc.CHOICE
    c.save(_fake_record(c, "fp32"))
    assert c.current() == "fp32"
    c.memo.clear()
    monkeypatch.setattr(c, "version", c.version + 1)
    assert c.current() == c.default()


def test_overrides_win_and_bad_values_name_the_accepted_ones(monkeypatch):
    lc.CHOICE.save(_fake_record(lc.CHOICE, "fp32"))
    monkeypatch.setenv(lc.ENV_VAR, "bf16")
    assert lc.current() == "bf16" and lc.ensure_choice(20018) is None  # no measuring while forced
    lc.set_override("fp32")
    assert lc.current() == "fp32"
    with pytest.raises(BadInputError, match=r"unknown linear layer option 'int8' \(--linears\).*bf16, fp32"):
        lc.set_override("int8")
    monkeypatch.setenv(lc.ENV_VAR, "fp16")
    lc.set_override(None)
    with pytest.raises(BadInputError, match=r"\$LAM_HEAD_LINEARS.*bf16, fp32"):
        lc.current()
    assert "fp16" in lc.describe()["override_error"]  # the doctor reports it instead of failing
    for bad in ("2", "a,b", "0,1", "1,0", f"{tc.max_render_threads() + 1},1"):
        with pytest.raises(BadInputError, match=r"refinement thread split.*use auto or R,T"):
            tc.set_override(bad)
    tc.set_override(" 1, 1 ")
    assert tc.current_split() == (1, 1)


def test_pick_never_returns_a_rejected_option():
    results = {"a": {"accepted": True, "seconds": 1.0}, "b": {"accepted": False, "seconds": 0.1},
               "c": {"accepted": True, "seconds": 0.5}}
    assert mc.pick(results, "a") == "c"
    assert mc.pick(results, "b") == "c"  # a rejected default is not kept either
    assert mc.pick({**results, "c": {"accepted": True, "seconds": 0.99}}, "a") == "a"  # within the tie margin
    assert mc.pick({"b": {"accepted": False, "seconds": 0.1}}, "a") == "a"


def test_measure_options_skips_timing_of_an_inaccurate_option():
    timed = []
    res = mc.measure_options({"good": lambda: 1.0, "bad": lambda: 2.0}, lambda _n, out: out - 1.0, 0.5,
                             timer=lambda n, run: timed.append(n) or 0.25, repeats=2)
    assert timed == ["good", "good"]
    assert res["good"] == {"error": 0.0, "accepted": True, "seconds": 0.25}
    assert res["bad"]["accepted"] is False and res["bad"]["seconds"] is None


def test_an_unwritable_cache_keeps_the_choice_for_the_process(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("LAM_HEAD_HOME", str(blocker / "home"))  # under a file: cannot be created
    lc.CHOICE.save(_fake_record(lc.CHOICE, "fp32"))
    assert lc.current() == "fp32"


def test_doctor_shows_every_choice_and_calibrate_measures_all(monkeypatch, capsys):
    from backend import cli
    from backend.cli.doctor import collect_report, format_report

    text = format_report(collect_report())
    for c in CHOICES.values():
        assert f"{c.title}: {c.default()}" in text
    assert text.count("not measured on this machine yet") == 3
    forced = []
    for module in (ac, lc, tc):
        choice = module.CHOICE
        monkeypatch.setattr(module, "ensure_choice", lambda force=False, c=choice: forced.append(c.name)
                            or c.save(_fake_record(c, _other(c))))
    cli.main(["doctor", "--calibrate"])
    cap = capsys.readouterr()
    out = cap.out
    assert out, cap.err
    assert forced == ["attention", "linears", "refine_threads"]
    for c in CHOICES.values():
        assert f"{c.title}: {_other(c)}" in out
    report = collect_report()
    json.dumps(report)
    assert report["linears"]["record"]["choice"] == "fp32"
    assert report["refine_threads"]["record"]["options"]
    forced.clear()
    cli.main(["doctor", "--calibrate-attention"])  # the old flag: the attention kernels only
    assert forced == ["attention"]


def test_doctor_lines_for_measured_records():
    lrec = lc.CHOICE.make_record("bf16", {"bf16": {"error": 4e-3, "accepted": True, "seconds": 0.3, "gflops": 150.0,
                                                   "forward_s": 33.0},
                                          "fp32": {"error": 9e-2, "accepted": False, "seconds": None}},
                                 0.0, rows=2048, error_bound=lc.ERROR_BOUND)
    lines = lc.format_description({**lc.describe(), "record": lrec})
    assert any("bf16" in x and "GFLOP/s" in x and "per forward's linears" in x for x in lines)
    assert any("fp32" in x and "excluded" in x for x in lines)
    trec = tc.CHOICE.make_record("1,1", {"1,1": {"error": 0.0, "accepted": True, "seconds": 0.2},
                                         "2,1": {"error": 0.5, "accepted": False, "seconds": None}},
                                 0.0, points=20018, size_px=252, views=1, error_bound=tc.ERROR_BOUND)
    lines = tc.format_description({**tc.describe(), "record": trec})
    assert any("1,1" in x and "s per iteration" in x for x in lines)
    assert any("2,1" in x and "excluded" in x for x in lines)


def test_create_cli_flags(capsys):
    from backend import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["create", "p.jpg", "-o", "x.npz", "--linears", "int8"])
    assert exc.value.code == 2 and "bf16" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["create", "--views", "a.jpg", "b.jpg", "-o", "x.npz", "--refine-threads", "two"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--refine-threads" in err and "R,T" in err
    with pytest.raises(SystemExit):
        cli.main(["create", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--linears DTYPE" in out and "--refine-threads R,T" in out and "LAM_HEAD_REFINE_THREADS" in out


@pytest.mark.parametrize("views", [False, True])
def test_create_cli_sets_every_override_before_the_work(views, monkeypatch, tmp_path):
    from backend import cli
    from backend.cli import create_views
    from backend.create import pipeline

    seen = []

    def fake(*_a, **_k):
        seen.append((ac.current_kernel(), lc.current(), tc.current_split()))
        raise BadInputError("stop here")

    monkeypatch.setattr(pipeline, "create_avatar", fake)
    monkeypatch.setattr(create_views, "run_views", lambda args, bar: fake())
    what = ["--views", "a.jpg", "b.jpg"] if views else ["p.jpg"]
    out = ["-o", str(tmp_path / "a.npz"), "--quiet"]
    assert cli.main(["create", *what, *out, "--attention", "sdpa_fp32", "--linears", "fp32",
                     "--refine-threads", "1,1"]) == 1
    assert cli.main(["create", *what, *out]) == 1  # a later run without the flags: back to auto
    assert seen == [("sdpa_fp32", "fp32", (1, 1)), (ac.DEFAULT_KERNEL, lc.DEFAULT, tc.split_of(tc.default_split()))]
