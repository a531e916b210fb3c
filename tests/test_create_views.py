"""``lam-head create --views`` (backend/create/views.py): several photos -> one avatar, with the tiny random
checkpoint, a synthetic FLAME and the astronaut plus a flipped / shifted copy as the second view."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from factories.checkpoint import make_tiny_weights_dir
from factories.flame import write_synthetic_flame
from factories.images import astronaut
from PIL import Image

from backend import cli
from backend.core.errors import BadInputError, CancelledError, CancelToken, NoFaceError
from backend.core.formats.avatar_file import load_avatar
from backend.create.views import choose_network_photo, create_from_views, fit_camera, views_overall_fraction

ITER = 3
SIZE = 64


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    a = astronaut()
    front, other = root / "front.jpg", root / "flipped.jpg"
    Image.fromarray(a).save(front, quality=92)
    shifted = np.full_like(a, 255)
    shifted[:, 20:] = a[:, ::-1][:, :-20]  # mirrored and shifted 20 px right
    Image.fromarray(shifted).save(other, quality=92)
    return {"weights": make_tiny_weights_dir(root), "flame": write_synthetic_flame(root / "flame2023.pkl"),
            "front": front, "other": other, "root": root}


@pytest.fixture(autouse=True)
def empty_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LAM_HEAD_HOME", str(tmp_path / "home"))


def _create(kit, out, **kw):
    kw.setdefault("refine_iterations", ITER)
    kw.setdefault("refine_size", SIZE)
    return create_from_views([kit["front"], kit["other"]], out, weights=kit["weights"], flame=kit["flame"], **kw)


def test_two_views_make_one_ordinary_avatar_whose_meta_records_the_run(kit, tmp_path):
    out, ply = tmp_path / "a.npz", tmp_path / "a.ply"
    seen = []
    res = _create(kit, out, ply=ply, seed=4, progress=lambda s, f, m="": seen.append((s, f, m)))
    avatar = load_avatar(out)  # validates every key: an ordinary avatar file
    meta = avatar.meta
    v = meta["views"]
    assert [p["name"] for p in v["photos"]] == ["front.jpg", "flipped.jpg"]
    assert v["photos"][1]["sha256"] == hashlib.sha256(kit["other"].read_bytes()).hexdigest()
    # no landmark embedding installed: no fit ran, so the first photo feeds the network and the reason says so
    assert v["network_photo"] == "front.jpg" == meta["source_image"] == res.network_photo
    assert "no landmark fit ran" in v["network_reason"]
    assert all(p["fit"] is None for p in v["photos"])  # no fit to record (tests/test_views_heldout.py: with one)
    r = meta["refinement"]
    assert r["iterations"] == ITER and r["views"] == ["front.jpg", "flipped.jpg"] and r["seed"] == 4
    assert r["size_px"] == SIZE and np.isfinite(r["loss_before"]) and np.isfinite(r["loss_after"])
    assert res.refinement["loss_after"] == r["loss_after"]
    assert np.abs(avatar.xyz - avatar.template).max() <= 0.1 + 1e-6
    assert "CC BY-NC 4.0" in json.dumps(meta["licences"])
    assert ply.is_file() and res.ply == ply
    # per-iteration loss in the progress, stages in order, overall progress monotonic and ending at 1
    assert sum(1 for s, _, m in seen if s == "refine" and "loss" in m) == ITER
    order = [s for s, _, _ in seen]
    assert order.index("prepare") < order.index("fit") < order.index("network") < order.index("refine") < order.index("write")
    overall = [views_overall_fraction(s, f) for s, f, _ in seen]
    assert overall == sorted(overall) and overall[-1] == pytest.approx(1.0)
    assert set(res.timings) >= {"prepare", "fit", "rig", "load", "network", "refine", "write"}


def test_the_refinement_changes_the_network_result_and_is_deterministic(kit, tmp_path):
    a = load_avatar(_create(kit, tmp_path / "a.npz", seed=1).path)
    b = load_avatar(_create(kit, tmp_path / "b.npz", seed=1).path)
    z = load_avatar(_create(kit, tmp_path / "z.npz", refine_iterations=0).path)
    for k in ("xyz", "rgb", "opacity", "scale", "rotation"):
        assert getattr(a, k).tobytes() == getattr(b, k).tobytes(), k
    assert not np.array_equal(a.rgb, z.rgb)  # 0 iterations: the network's Gaussians, unrefined
    assert z.meta["refinement"]["iterations"] == 0


def test_a_bad_photo_is_refused_by_name_before_any_network_work(kit, tmp_path):
    from factories.images import no_face

    bad = tmp_path / "holiday.jpg"
    bad.write_text("not a picture")
    landscape = tmp_path / "landscape.jpg"
    Image.fromarray(no_face()).save(landscape)
    seen = []
    for photo, err in ((bad, BadInputError), (landscape, NoFaceError)):
        with pytest.raises(err) as ei:
            create_from_views([kit["front"], photo], tmp_path / "a.npz", weights=kit["weights"], flame=kit["flame"],
                              progress=lambda s, f, m="": seen.append(s))
        assert photo.name in str(ei.value)
    assert "fit" not in seen and "load" not in seen and "network" not in seen
    assert not list(tmp_path.glob("*.npz*"))
    with pytest.raises(BadInputError, match="missing.jpg"):
        create_from_views([kit["front"], tmp_path / "missing.jpg"], tmp_path / "a.npz", weights=kit["weights"])
    with pytest.raises(BadInputError, match="2 to 4"):
        create_from_views([kit["front"]], tmp_path / "a.npz", weights=kit["weights"])
    with pytest.raises(BadInputError, match="twice"):
        create_from_views([kit["front"], kit["front"]], tmp_path / "a.npz", weights=kit["weights"])


def test_cancel_during_refinement_leaves_no_files(kit, tmp_path):
    token = CancelToken()

    def progress(stage, f, m=""):
        if stage == "refine" and f > 0:
            token.cancel()

    with pytest.raises(CancelledError):
        _create(kit, tmp_path / "a.npz", ply=tmp_path / "a.ply", progress=progress, cancel=token, refine_iterations=5)
    assert list(tmp_path.iterdir()) == [tmp_path / "home"] or list(tmp_path.iterdir()) == []


def test_cli_views(kit, tmp_path, capsys):
    out = tmp_path / "v.npz"
    rc = cli.main(["create", "--views", str(kit["front"]), str(kit["other"]), "-o", str(out), "--weights",
                   str(kit["weights"]), "--flame", str(kit["flame"]), "--refine-iterations", "2", "--seed", "3"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert cap.out.strip() == str(out)
    assert "network input: front.jpg" in cap.err and "refinement: 2 iterations" in cap.err
    meta = load_avatar(out).meta
    assert meta["refinement"]["seed"] == 3 and meta["refinement"]["size_px"] == 252
    rc = cli.main(["create", str(kit["front"]), "--views", str(kit["front"]), str(kit["other"]), "-o", str(out),
                   "--weights", str(kit["weights"]), "--quiet"])
    assert rc == 1 and "not both" in capsys.readouterr().err


def test_network_photo_choice_and_fit_camera():
    i, why = choose_network_photo([25.0, 4.2, 13.0], [0.5, 0.9, 0.4], ["a.jpg", "b.jpg", "c.jpg"])
    assert i == 1 and "b.jpg is the most frontal" in why and "a.jpg 25 deg" in why
    i, _ = choose_network_photo([5.2, 4.9], [0.9, 0.4], ["a.jpg", "b.jpg"])  # a tie within a degree: the better fit
    assert i == 1
    # the fit's projection (u = f x / (1 - z) + c, v = -f y / (1 - z) + c) is the camera's, at any size
    import torch

    from backend.fit.flame_fit import project

    pts = np.array([[0.03, -0.02, 0.4], [-0.05, 0.07, 0.5]])
    want = project(torch.as_tensor(pts), torch.tensor(700.0), 504).numpy() * (252 / 504)
    uv, _ = fit_camera(700.0, 504, 252).project(pts)
    np.testing.assert_allclose(uv, want, atol=1e-9)

