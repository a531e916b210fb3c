"""``lam-head create --views`` end to end, from the CLI, on a subject we know completely (issue 15).

The subject, its FLAME, its landmark embedding and its photos are made by factories/views_subject.py: the
real LAM ZIP avatar on a FLAME rig built on its own mesh, photographed by our renderer through our rig with
known head poses, real ARKit expressions and cameras; the embedding is calibrated on renders of it with our
detector. The weights are the tiny random checkpoint, so the single-photo avatar is the network's random
output on the fitted head: what is tested is the few-photo machinery (a joint fit that really runs, and the
refinement), not LAM's quality.

Reduced against bench/bench_views_heldout.py to fit in about a minute on 2 cores: 3 photos (front, left,
right; the held-out photo is never given), refinement at 128 px for 40 iterations.
"""

from __future__ import annotations

import pytest
from factories import views_subject as vs

from backend import cli
from backend.core.formats.avatar_file import load_avatar

pytestmark = pytest.mark.skipif(vs.subject_zip() is None, reason=f"no real LAM ZIP in {vs.REAL_DIR}")

VIEWS = ("front.jpg", "left.jpg", "right.jpg")
ITERATIONS = 40
REFINE_SIZE = 128
# Held-out PSNR, views minus single photo. Measured (2 cores): +3.2 dB here (11.8 -> 15.0 dB), +3.9 dB with
# the bench's 4 photos, 100 iterations at 252 px; with 0 refinement iterations -0.04 dB (the network's
# output on the joint fit's head is no better than on the single fit's). 2 dB lies between, with 1.2 dB
# to spare for other CPUs' float rounding.
MARGIN_DB = 2.0
CONTROL_MARGIN_DB = 1.5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("views_heldout")
    kit = vs.build_kit(root)
    mp = pytest.MonkeyPatch()
    mp.setenv("LAM_HEAD_HOME", str(root / "home"))
    try:
        assert cli.main(["setup", "--landmark-embedding", str(kit.embedding)]) == 0
        common = ["--weights", str(kit.weights), "--flame", str(kit.flame), "--quiet"]
        single, views = root / "single.npz", root / "views.npz"
        assert cli.main(["create", str(kit.photos["front.jpg"].path), "-o", str(single), *common]) == 0
        assert cli.main(["create", "--views", *[str(kit.photos[n].path) for n in VIEWS], "-o", str(views), *common,
                         "--refine-iterations", str(ITERATIONS), "--refine-size", str(REFINE_SIZE)]) == 0
        yield {"kit": kit, "single": load_avatar(single), "views": load_avatar(views), "single_path": single}
    finally:
        mp.undo()


def test_views_beat_the_single_photo_on_the_held_out_view(run):
    kit, single, views = run["kit"], run["single"], run["views"]
    held = kit.photos[vs.HELD_OUT]
    assert vs.HELD_OUT not in [p["name"] for p in views.meta["views"]["photos"]]
    ceiling = vs.heldout_psnr(kit.subject.avatar, held)  # the subject itself: JPEG and matte edges only
    p1, pk = vs.heldout_psnr(single, held), vs.heldout_psnr(views, held)
    print(f"held-out PSNR: single {p1:.2f} dB, views {pk:.2f} dB ({pk - p1:+.2f}), subject {ceiling:.2f} dB")
    assert ceiling > 40.0  # the measure itself is sound: the truth matches its photo
    assert pk >= p1 + MARGIN_DB
    r = views.meta["refinement"]
    assert r["iterations"] == ITERATIONS and r["size_px"] == REFINE_SIZE and r["loss_after"] < 0.5 * r["loss_before"]


def test_the_other_views_are_what_helps_not_refinement_alone(run):
    """Control: the single-photo avatar refined on its one photo alone (same code, settings and budget). Measured:
    +0.7 dB over the unrefined single photo here (12.5 dB), +0.8 dB in the bench (4 photos, 100 iterations,
    252 px); the views stay ahead of it by +2.5 dB here, +3.0 dB in the bench. Held to 1.5 dB: what the other
    photos add, beyond refining at all (with 0 iterations both are the network's output: -0.05 dB)."""
    kit, views = run["kit"], run["views"]
    held = kit.photos[vs.HELD_OUT]
    alone, _ = vs.refine_on_one_photo(kit, run["single_path"], "front.jpg", ITERATIONS, REFINE_SIZE)
    p1, pk = vs.heldout_psnr(alone, held), vs.heldout_psnr(views, held)
    print(f"held-out PSNR: front.jpg refined alone {p1:.2f} dB, views {pk:.2f} dB ({pk - p1:+.2f})")
    assert pk >= p1 + CONTROL_MARGIN_DB


def test_the_joint_fit_ran_and_recovered_every_photos_pose_and_face(run):
    """The fit really ran (with the landmark embedding, in ``create --views`` from the CLI) and its per-photo
    records in the avatar's meta match the truth. Measured with these 3 photos (rotation 1.1-2.8 deg against
    true turns of 4-25 deg; alignment 2.6-3.3 px; landmark RMS 1.6-2.9 px; shape 3.3 mm; expression error
    2.3-3.5 mm, 0.44 of the opened mouth's displacement in left.jpg). Tolerances, about 1.5x those:
    landmark RMS < 4 px of 504; head orientation within 5 deg and under a third of the true turn where the
    head is turned (a run without a fit assumes a facing head: an error of the whole turn); face vertices
    within 5 px of the truth in the 504 network input (what the refinement relies on); the shared shape
    within 5 mm RMS over the face (the truth is the mean head); expression + jaw displacement within 5 mm
    RMS, and for the open mouth (left.jpg: the track's jawOpen 0.3 frame) under 0.7 of the true
    displacement (a neutral guess: 1.0). The subtle ones (smile, pucker) are not held closer: the detector's
    lip landmarks move with them by about as much as the expression does (the bench prints them)."""
    kit, views = run["kit"], run["views"]
    v = views.meta["views"]
    assert v["network_photo"] == "front.jpg" and "most frontal" in v["network_reason"]
    assert v["joint_fit_rms_px"] < 4.0
    errors = {}
    for p in v["photos"]:
        fit = vs.fit_of(p["fit"])
        fit.betas = views.shape_params
        e = vs.fit_errors(kit.subject.flame, fit, kit.photos[p["name"]], vs.network_crop(kit.photos[p["name"]].path))
        print(p["name"], {k: round(x, 2) for k, x in e.items()}, "RMS", round(p["fit_rms_px"], 2))
        errors[p["name"]] = e
        assert p["fit_rms_px"] < 4.0
        assert e["rotation_deg"] < 5.0 and e["align_px"] < 5.0 and e["shape_mm"] < 5.0 and e["expr_mm"] < 5.0, (p["name"], e)
        if e["turn_deg"] > 15.0:
            assert e["rotation_deg"] < e["turn_deg"] / 3, (p["name"], e)
    assert errors["left.jpg"]["expr_rel"] < 0.7
