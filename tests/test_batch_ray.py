"""``lam-head batch --ray`` (backend/create/ray_batch.py) on a local Ray: the same folder of good and
bad photos gives the same avatars as a fresh ``lam-head create`` and the same summary; without Ray the
command says in one line how to install it."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from factories.batch_kit import BAD, GOOD, avatar_differences, fresh_create, make_kit

from backend import cli

HAVE_RAY = importlib.util.find_spec("ray") is not None
NO_RAY = "ray is not installed (the cluster extra: pip install '.[cluster]'; python3 -m backend.devenv installs it)"


@pytest.fixture(autouse=True)
def kit_home(kit, monkeypatch):
    monkeypatch.setenv("LAM_HEAD_HOME", str(kit["home"]))  # with a landmark embedding: the FLAME fit runs


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return make_kit(tmp_path_factory.mktemp("ray_kit"))


def test_without_ray_the_message_says_how_to_install_it(kit, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    rc = cli.main(["batch", str(kit["photos"]), "-o", str(tmp_path / "out"), "--ray", "--weights", str(kit["weights"]),
                   "--flame", str(kit["flame"]), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert err[0].startswith("lam-head batch: error: --ray needs Ray Data") and "pip install 'lam-head-blender[cluster]'" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not HAVE_RAY, reason=NO_RAY)
def test_local_ray_gives_the_same_avatars_and_summary(kit, tmp_path):
    import ray

    from backend.create.batch import BatchOptions, make_plan
    from backend.create.ray_batch import run_ray_batch

    fresh = {name: fresh_create(kit, name, kit["root"] / "fresh") for name in GOOD}
    out = tmp_path / "out"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        plan = make_plan([kit["photos"]], out, BatchOptions(weights=kit["weights"], flame=kit["flame"], ply=True))
        report = run_ray_batch(plan)
    finally:
        ray.shutdown()
    assert report.exit_status == 3 and report.network_loads == 1
    for name in GOOD:
        assert avatar_differences(fresh[name]["avatar"], out / name / f"{name}.npz") == []
        assert (out / name / f"{name}.ply").read_bytes() == fresh[name]["ply"].read_bytes()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"total": 5, "created": 2, "skipped": 0, "failed": 3, "pending": 0}
    assert {p["name"]: p["code"] for p in summary["photos"] if p["status"] == "failed"} == BAD
    assert not [p for p in out.rglob("*") if ".part" in p.name]
