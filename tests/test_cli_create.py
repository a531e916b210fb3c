"""``lam-head create`` and backend/create/pipeline.py: photo -> valid avatar file, with a tiny
random checkpoint in the official layout and a synthetic FLAME (no real assets)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from factories.checkpoint import make_tiny_weights_dir
from factories.flame import lam_buffers, make_flame_model, write_synthetic_flame
from factories.images import astronaut
from PIL import Image

from backend import cli
from backend.core.errors import BadInputError, CancelledError, CancelToken, MissingAssetError, NoFaceError
from backend.core.formats.avatar_file import load_avatar
from backend.create.pipeline import STAGES, create_avatar, overall_fraction

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """Tiny weights, a synthetic official-format FLAME pickle, the astronaut as JPEG."""
    root = tmp_path_factory.mktemp("kit")
    photo = root / "astronaut.jpg"
    Image.fromarray(astronaut()).save(photo, quality=92)
    return {
        "weights": make_tiny_weights_dir(root),
        "flame": write_synthetic_flame(root / "flame2023.pkl"),
        "photo": photo,
        "root": root,
    }


@pytest.fixture(autouse=True)
def empty_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LAM_HEAD_HOME", str(tmp_path / "home"))


def _env(tmp_path) -> dict:
    return {**os.environ, "LAM_HEAD_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}


def test_cli_creates_a_valid_avatar_in_a_subprocess(kit, tmp_path):
    out, ply, dbg = tmp_path / "out" / "avatar.npz", tmp_path / "a.ply", tmp_path / "dbg"
    r = subprocess.run(
        [sys.executable, "-m", "backend", "create", str(kit["photo"]), "-o", str(out), "--weights", str(kit["weights"]),
         "--flame", str(kit["flame"]), "--ply", str(ply), "--debug-dir", str(dbg), "--precision", "fast"],
        cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:2] == [str(out), str(ply)]
    avatar = load_avatar(out)  # validates every key
    # one Gaussian per point of the once-subdivided synthetic FLAME: V + unique edges
    from backend.flame import load_flame

    flame = load_flame(kit["flame"])
    f = flame.faces
    edges = np.unique(np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1), axis=0)
    assert avatar.n_points == flame.n_vertices + len(edges)
    assert avatar.n_expr == 100 and avatar.faces.shape[0] == 4 * f.shape[0]
    assert np.abs(avatar.offset).max() <= 0.1 + 1e-6  # LAM's offset bound
    assert avatar.meta["source_image_sha256"] and avatar.meta["precision"] == "fast"
    assert "--flame" in avatar.meta["flame_source"]
    from backend.core.formats.ply import read_3dgs_ply

    np.testing.assert_allclose(read_3dgs_ply(ply)["xyz"], avatar.xyz, atol=1e-6)
    assert (dbg / "input_504.npy").is_file() and (dbg / "crop.png").is_file() and (dbg / "flame_fit.npz").is_file()
    timings = next(line for line in r.stderr.splitlines() if line.startswith("timings:"))
    for stage in ("decode", "detect", "matte", "fit", "network", "rig", "write"):
        assert f"{stage} " in timings
    assert "Traceback" not in r.stderr


def test_cli_missing_assets_says_which_command_fixes_it(kit, tmp_path):
    r = subprocess.run([sys.executable, "-m", "backend", "create", str(kit["photo"]), "-o", str(tmp_path / "a.npz")],
                       cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lam-head create: error: ")
    assert "run: lam-head setup --accept-licences" in lines[0] and "lam-head setup --weights DIR" in lines[0]
    assert not (tmp_path / "a.npz").exists()


def test_cli_bad_photo_is_one_line_and_leaves_nothing(kit, tmp_path, capsys):
    bad = tmp_path / "holiday.jpg"
    bad.write_text("not a picture")
    out = tmp_path / "o" / "a.npz"
    rc = cli.main(["create", str(bad), "-o", str(out), "--weights", str(kit["weights"]), "--flame", str(kit["flame"]),
                   "--ply", str(tmp_path / "o" / "a.ply"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("lam-head create: error:") and "holiday.jpg" in err[0]
    assert not out.exists() and not (tmp_path / "o" / "a.ply").exists()
    assert cli.main(["create", str(kit["photo"]), "-o", str(tmp_path / "a.glb"), "--weights", str(kit["weights"]), "--quiet"]) == 1
    assert "must end in .npz" in capsys.readouterr().err


def test_flame_from_checkpoint_buffers_when_nothing_else(tmp_path, kit):
    model = make_flame_model(n_vertices=400, n_shape=300, n_expr=100)
    weights = make_tiny_weights_dir(tmp_path, flame_buffers=lam_buffers(model, prefix=""))
    out = tmp_path / "a.npz"
    res = create_avatar(kit["photo"], out, weights=weights)
    avatar = load_avatar(out)
    assert avatar.meta["flame_source"].startswith("checkpoint buffers")
    assert avatar.n_points == lam_buffers(model)["renderer.flame_model.v_template_up"].shape[0]
    assert set(res.timings) >= {"decode", "detect", "matte", "fit", "rig", "network", "write"}


def test_flame_from_the_setup_cache(tmp_path, kit):
    assert cli.main(["setup", "--flame", str(kit["flame"]), "--weights", str(kit["weights"])]) == 0
    out = tmp_path / "a.npz"
    create_avatar(kit["photo"], out)  # weights and FLAME both from the cache
    assert load_avatar(out).meta["flame_source"].startswith("setup cache")


def test_missing_flame_names_the_fix(tmp_path, kit):
    with pytest.raises(MissingAssetError) as ei:
        create_avatar(kit["photo"], tmp_path / "a.npz", weights=kit["weights"])
    assert "lam-head setup --accept-licences --lam-assets" in str(ei.value) and "lam-head setup --flame FILE" in str(ei.value)
    with pytest.raises(BadInputError, match="weights folder not found"):
        create_avatar(kit["photo"], tmp_path / "a.npz", weights=tmp_path / "nope")


def test_no_face_is_a_clear_error(tmp_path, kit):
    from factories.images import no_face

    photo = tmp_path / "landscape.jpg"
    Image.fromarray(no_face()).save(photo)
    with pytest.raises(NoFaceError, match="no face"):
        create_avatar(photo, tmp_path / "a.npz", weights=kit["weights"], flame=kit["flame"])
    assert not list(tmp_path.glob("*.npz*"))


def test_cancel_during_the_network_leaves_no_files(tmp_path, kit):
    token = CancelToken()
    seen = []

    def progress(stage, fraction, message=""):
        seen.append(stage)
        if stage == "network" and fraction > 0:
            token.cancel()

    out, ply = tmp_path / "a.npz", tmp_path / "a.ply"
    with pytest.raises(CancelledError):
        create_avatar(kit["photo"], out, weights=kit["weights"], flame=kit["flame"], ply=ply, progress=progress, cancel=token)
    assert "network" in seen and "write" not in seen
    assert list(tmp_path.iterdir()) == []


def test_progress_is_monotonic_and_ends_at_one(tmp_path, kit):
    overall = []
    create_avatar(kit["photo"], tmp_path / "a.npz", weights=kit["weights"], flame=kit["flame"],
                  progress=lambda s, f, m="": overall.append(overall_fraction(s, f)))
    assert overall == sorted(overall) and overall[-1] == pytest.approx(1.0)
    assert overall_fraction(STAGES[0][0], 0.0) == 0.0


def test_meta_records_licences_and_source(tmp_path, kit):
    out = tmp_path / "a.npz"
    create_avatar(kit["photo"], out, weights=kit["weights"], flame=kit["flame"])
    meta = load_avatar(out).meta
    assert "CC BY-NC 4.0" in json.dumps(meta["licences"])
    assert meta["source_image"] == "astronaut.jpg" and meta["model"] == "lam_tiny"


@pytest.mark.slow  # the L-BFGS fit: ~5-15 s on 2 busy cores
def test_fit_runs_with_an_installed_landmark_embedding(tmp_path, kit, capsys):
    from backend.flame import load_flame

    n_faces = load_flame(kit["flame"]).faces.shape[0]
    rng = np.random.default_rng(1)
    emb = tmp_path / "landmark_embedding_with_eyes.npz"
    np.savez(emb, full_lmk_faces_idx=rng.choice(n_faces, 68, replace=False)[None].astype(np.int64),
             full_lmk_bary_coords=rng.dirichlet([2.0, 2.0, 2.0], size=68)[None])
    assert cli.main(["setup", "--landmark-embedding", str(emb)]) == 0
    assert "landmark embedding: copied" in capsys.readouterr().out
    out = tmp_path / "a.npz"
    res = create_avatar(kit["photo"], out, weights=kit["weights"], flame=kit["flame"])
    avatar = load_avatar(out)
    assert not any("embedding not installed" in w for w in res.warnings)
    assert np.isfinite(avatar.meta["fit_rms_px"]) and np.abs(avatar.shape_params).max() > 0  # a fit ran
    # the config says shape_param_dim 10; the fit still moves components beyond the tenth
    assert json.loads((kit["weights"] / "config.json").read_text())["shape_param_dim"] == 10
    assert avatar.shape_params.size == 300 and np.abs(avatar.shape_params[10:]).max() > 0


def test_flame_keeps_300_shape_and_100_expression_components_whatever_the_config_says(tmp_path, kit):
    from backend.flame import load_flame
    from backend.flame.subdivide import plan_subdivision

    weights = make_tiny_weights_dir(tmp_path, config_overrides={"shape_param_dim": 10, "expr_param_dim": 10})
    out = tmp_path / "a.npz"
    create_avatar(kit["photo"], out, weights=weights, flame=kit["flame"])
    avatar = load_avatar(out)
    assert avatar.shape_params.size == 300 and avatar.n_expr == 100
    assert avatar.meta["flame_components"] == {"shape": 300, "expression": 100}
    # the expression keys are FLAME's expression columns 300..399, not its shape columns 10..19
    flame = load_flame(kit["flame"])
    want = plan_subdivision(flame.faces, flame.n_vertices, 1).apply(flame.shapedirs[:, :, 300:400])
    np.testing.assert_allclose(avatar.expr_dirs, want, atol=1e-7)


def test_preview_png_shows_the_head(tmp_path, kit):
    out, png = tmp_path / "a.npz", tmp_path / "preview.png"
    res = create_avatar(kit["photo"], out, weights=kit["weights"], flame=kit["flame"], preview=png)
    assert res.preview == png and not any("preview skipped" in w for w in res.warnings)
    img = np.asarray(Image.open(png))
    assert img.shape == (512, 512, 3)
    covered = (img < 250).any(axis=2)
    assert 0.02 < covered.mean() < 0.9  # a head in the middle of a white frame
    assert covered[200:312, 200:312].mean() > 0.5 and not covered[:5].any()


def test_unwritable_output_is_a_clear_error(tmp_path, kit):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(BadInputError, match="cannot write"):
        create_avatar(kit["photo"], blocker / "a.npz", weights=kit["weights"], flame=kit["flame"])


# Everything the few-photo path (issue 15) added; the single-photo path must not even import it.
FEW_PHOTO_MODULES = ("backend.cli.create_views", "backend.create.views", "backend.create.refine", "backend.fit.joint_fit",
                     "backend.render.diff_render", "backend.render.gsplat_diff", "backend.render.rig_torch")


@pytest.mark.slow  # two CLI runs with an L-BFGS fit each: ~30 s on 2 cores
def test_one_photo_is_todays_path_byte_for_byte_without_the_few_photo_code(tmp_path, kit):
    """One photo: the same bytes whether or not the few-photo modules can be imported at all, and no
    few-photo records in meta. (Checked once against the commit before issue 15, 3e5ad9f: identical
    arrays and PLY bytes in fp32, apart from mediapipe's weighted NMS, which a later fix restored.)"""
    rng = np.random.default_rng(1)
    from backend.flame import load_flame

    n_faces = load_flame(kit["flame"]).faces.shape[0]
    emb = tmp_path / "landmark_embedding_with_eyes.npz"
    np.savez(emb, full_lmk_faces_idx=rng.choice(n_faces, 68, replace=False)[None].astype(np.int64),
             full_lmk_bary_coords=rng.dirichlet([2.0, 2.0, 2.0], size=68)[None])
    env = _env(tmp_path)
    subprocess.run([sys.executable, "-m", "backend", "setup", "--landmark-embedding", str(emb)], cwd=REPO, env=env,
                   check=True, capture_output=True)
    outputs = {}
    for run, blocked in (("plain", ()), ("blocked", FEW_PHOTO_MODULES)):
        out, ply = tmp_path / run / "a.npz", tmp_path / run / "a.ply"
        code = (f"import sys\nfor m in {blocked!r}: sys.modules[m] = None  # any import of it raises\n"
                "from backend import cli\nsys.exit(cli.main(sys.argv[1:]))")
        r = subprocess.run(
            [sys.executable, "-c", code, "create", str(kit["photo"]), "-o", str(out), "--ply", str(ply),
             "--weights", str(kit["weights"]), "--flame", str(kit["flame"]), "--quiet"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )
        assert r.returncode == 0, r.stderr
        outputs[run] = (np.load(out, allow_pickle=False), ply.read_bytes())
    (a, ply_a), (b, ply_b) = outputs["plain"], outputs["blocked"]
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        if k != "meta":
            assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k
    meta_a, meta_b = (json.loads(str(x["meta"])) for x in (a, b))
    assert np.isfinite(meta_a["fit_rms_px"])  # the fit ran
    assert {k: v for k, v in meta_a.items() if k != "created"} == {k: v for k, v in meta_b.items() if k != "created"}
    assert not {"views", "refinement"} & set(meta_a)
    assert ply_a == ply_b


def test_plain_progress_lines_show_one_off_notes_but_not_every_counter_step():
    """In a log (not a terminal) a note such as the once-per-machine calibration gets its own line even when the
    percentage did not move, while block counters print per 5 % only."""
    import io

    from backend.cli.create import ProgressBar

    out = io.StringIO()
    bar = ProgressBar(stream=out)
    bar("network", 0.550, "20018 points on cpu")
    bar("network", 0.551, "timing the attention kernels on this CPU (once per machine, a few seconds)")
    for i in range(1, 25):
        bar("network", 0.552 + i * 0.0001, f"encoder {i}/24")
    bar("network", 0.70, "encoder 20/24")
    lines = out.getvalue().splitlines()
    assert lines == ["network 55% 20018 points on cpu",
                     "network 55% timing the attention kernels on this CPU (once per machine, a few seconds)",
                     "network 55% encoder 1/24",
                     "network 70% encoder 20/24"]
