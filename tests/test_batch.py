"""``lam-head batch`` (backend/create/batch.py) and photo independence: a folder of good and bad
photos, one network load, avatars identical to a fresh ``lam-head create`` of each photo, the
summary, resuming, and Ctrl-C leaving no partial file. Tiny random checkpoint, synthetic FLAME."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from factories.batch_kit import BAD, GOOD, REPO, avatar_differences, fresh_create, make_kit

from backend import cli
from backend.core.errors import CancelledError, CancelToken


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return make_kit(tmp_path_factory.mktemp("batch_kit"))


@pytest.fixture(scope="module")
def fresh(kit):
    """What a fresh `lam-head create` process writes for each good photo (avatar + PLY)."""
    return {name: fresh_create(kit, name, kit["root"] / "fresh") for name in GOOD}


@pytest.fixture(autouse=True)
def kit_home(kit, monkeypatch):
    monkeypatch.setenv("LAM_HEAD_HOME", str(kit["home"]))  # with a landmark embedding: the FLAME fit runs


@pytest.fixture
def loads(monkeypatch):
    """Counts network loads (the loader itself, wherever it is called from)."""
    import backend.network.checkpoint as ckpt

    calls = []
    real = ckpt.load_lam

    def counting(*a, **k):
        calls.append(a[0] if a else k.get("weights_dir"))
        return real(*a, **k)

    monkeypatch.setattr(ckpt, "load_lam", counting)
    return calls


def _args(kit, *extra):
    return ["--weights", str(kit["weights"]), "--flame", str(kit["flame"]), "--quiet", *extra]


def _no_partials(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".part" in p.name or p.name.startswith(".")]


def test_folder_of_good_and_bad_photos(kit, fresh, tmp_path, loads, capsys):
    out = tmp_path / "out"
    rc = cli.main(["batch", str(kit["photos"]), "-o", str(out), "--ply", *_args(kit)])
    err = capsys.readouterr().err
    assert rc == 3, err  # finished, some photos failed
    assert len(loads) == 1  # one network load for the whole folder
    for name in GOOD:
        assert avatar_differences(fresh[name]["avatar"], out / name / f"{name}.npz") == []
        assert (out / name / f"{name}.ply").read_bytes() == fresh[name]["ply"].read_bytes()
    for name in BAD:
        assert not (out / name).exists()  # nothing written for a failed photo
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"total": 5, "created": 2, "skipped": 0, "failed": 3, "pending": 0}
    by_name = {p["name"]: p for p in summary["photos"]}
    for name, code in BAD.items():
        assert by_name[name]["status"] == "failed" and by_name[name]["code"] == code
        assert by_name[name]["message"]
    assert "no face" in by_name["landscape"]["message"] and "notes.jpg" in by_name["notes"]["message"]
    assert "truncated" in by_name["truncated"]["message"]
    assert by_name["astro"]["outputs"] == {"avatar": str(out / "astro" / "astro.npz"), "ply": str(out / "astro" / "astro.ply")}
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [(r["name"], r["status"]) for r in rows] == [(p["name"], p["status"]) for p in summary["photos"]]
    assert all(f"failed: {kit['photos'] / n}.jpg" in err for n in BAD)
    assert _no_partials(out) == []

    # Rerun: the good photos are skipped (not rewritten), the bad ones tried again (still failing).
    mtime = (out / "astro" / "astro.npz").stat().st_mtime_ns
    assert cli.main(["batch", str(kit["photos"]), "-o", str(out), "--ply", *_args(kit)]) == 3
    assert len(loads) == 1  # nothing reached the network this time
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["skipped"] == 2 and summary["counts"]["failed"] == 3
    assert (out / "astro" / "astro.npz").stat().st_mtime_ns == mtime

    # Asking for an extra output the earlier run did not write redoes the photo; --force redoes all.
    good_list = tmp_path / "good.txt"
    good_list.write_text(f"# the two portraits\n{kit['photos'] / 'astro.jpg'}\n\n{kit['photos'] / 'mirror.jpg'}\n")
    assert cli.main(["batch", str(good_list), "-o", str(out), "--ply", *_args(kit)]) == 0  # all done: exit 0
    assert cli.main(["batch", str(good_list), "-o", str(out), "--ply", "--force", *_args(kit)]) == 0
    assert len(loads) == 2
    assert (out / "astro" / "astro.npz").stat().st_mtime_ns != mtime
    assert avatar_differences(fresh["astro"]["avatar"], out / "astro" / "astro.npz") == []
    assert json.loads((out / "summary.json").read_text())["counts"]["created"] == 2


def test_interrupt_while_writing_leaves_no_partial_file(kit, tmp_path, monkeypatch, capsys):
    """Ctrl-C during a photo's write: its finished PLY is removed, no temporary is left, exit 130,
    the summary says what is pending; the next run completes it."""
    import backend.create.stages as stages

    real = stages._write_ply

    def write_then_interrupt(path, avatar):
        real(path, avatar)
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "_write_ply", write_then_interrupt)
    out = tmp_path / "out"
    photo = str(kit["photos"] / "astro.jpg")
    assert cli.main(["batch", photo, "-o", str(out), "--ply", *_args(kit)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (out / "astro" / "astro.ply").exists() and not (out / "astro" / "astro.npz").exists()
    assert _no_partials(out) == []
    summary = json.loads((out / "summary.json").read_text())
    assert summary["photos"][0]["status"] == "pending" and summary["finished"]
    monkeypatch.setattr(stages, "_write_ply", real)
    assert cli.main(["batch", photo, "-o", str(out), "--ply", *_args(kit)]) == 0
    assert (out / "astro" / "astro.npz").is_file()


def test_cancel_token_stops_the_run(kit, tmp_path, monkeypatch):
    import backend.create.stages as stages
    from backend.create.batch import BatchOptions, run_batch

    token = CancelToken()
    real = stages.infer

    def infer_then_cancel(*a, **k):
        token.cancel()
        return real(*a, **k)

    monkeypatch.setattr(stages, "infer", infer_then_cancel)
    with pytest.raises(CancelledError):
        run_batch([kit["photos"]], tmp_path / "out", BatchOptions(weights=kit["weights"], flame=kit["flame"]),
                  cancel=token)
    assert not list((tmp_path / "out").glob("*/*.npz")) and _no_partials(tmp_path / "out") == []


def test_inputs_names_and_sequential_mode(kit, tmp_path, loads):
    from backend.create.batch import BatchOptions, collect_photos, plan_items, run_batch

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a b.jpg").write_bytes((kit["photos"] / "astro.jpg").read_bytes())
    (folder / "a b.png").write_bytes(b"x")
    (folder / ".hidden.jpg").write_bytes(b"x")
    (folder / "readme.md").write_text("not a photo")
    lst = tmp_path / "list.txt"
    lst.write_text("in/a b.jpg\n# comment\n")
    photos = collect_photos([folder, lst, folder / "a b.jpg"])
    assert [p.name for p in photos] == ["a b.jpg", "a b.png"]  # listed twice: once
    items = plan_items(photos, tmp_path / "o", BatchOptions(preview=True))
    assert [i.name for i in items] == ["a_b", "a_b-2"]
    assert items[0].outputs.preview == tmp_path / "o" / "a_b" / "a_b.png" and items[0].outputs.ply is None
    # prefetch 0: the stages one after the other, same result
    report = run_batch([kit["photos"] / "astro.jpg"], tmp_path / "seq",
                       BatchOptions(weights=kit["weights"], flame=kit["flame"], prefetch=0))
    assert report.exit_status == 0 and report.network_loads == 1 and len(loads) == 1


def test_no_photos_is_a_one_line_error(kit, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["batch", str(tmp_path / "empty"), "-o", str(tmp_path / "out"), *_args(kit)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no photos found" in err[0]


def test_each_photo_is_independent_of_the_ones_before(kit, fresh, tmp_path):
    """Photo B after photo A in one process gives what B alone gives in a fresh process (mediapipe's
    graphs used to lose node options until another solution's module had been imported)."""
    from backend.create.pipeline import create_avatar

    opts = {"weights": kit["weights"], "flame": kit["flame"]}
    create_avatar(kit["photos"] / "astro.jpg", tmp_path / "a.npz", **opts)
    create_avatar(kit["photos"] / "mirror.jpg", tmp_path / "b.npz", **opts)
    assert avatar_differences(fresh["mirror"]["avatar"], tmp_path / "b.npz") == []


def test_face_detection_is_the_same_before_and_after_the_face_mesh():
    code = (
        "import numpy as np, sys\n"
        "sys.path.insert(0, 'tests')\n"
        "from factories.images import astronaut\n"
        "from backend.preprocess.faces import detect_faces, face_landmarks\n"
        "img = np.ascontiguousarray(astronaut()[:, ::-1])\n"
        "first = detect_faces(img)\n"
        "face_landmarks(img, first[0])\n"
        "print(first == detect_faces(img))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "True"
