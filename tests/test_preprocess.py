"""prepare_portrait on real faces (scikit-image's astronaut) and on the bad-input corpus.

Every corpus file ends in a prepared portrait or a clear LamHeadError naming the problem.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from factories.images import astronaut, write_corpus, write_huge
from PIL import Image

from backend.core.errors import BadInputError, CancelledError, CancelToken, NoFaceError
from backend.preprocess import PreparedPortrait, load_image, prepare_portrait
from backend.preprocess.crop import HEAD_CROP_SIZE, INPUT_SIZE
from backend.preprocess.faces import detect_faces, face_landmarks

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def prepared() -> PreparedPortrait:
    return prepare_portrait(astronaut())


def to_source(points: np.ndarray, p: PreparedPortrait) -> np.ndarray:
    """504-input pixel coordinates -> source-image pixels, by the crops the result reports."""
    hx, hy, hs = p.head_crop
    ix, iy, is_ = p.input_crop
    q = np.asarray(points, np.float64)[:, :2] * is_ / INPUT_SIZE + [ix, iy]
    return q * hs / HEAD_CROP_SIZE + [hx, hy]


def assert_valid(p: PreparedPortrait) -> None:
    assert p.image.shape == (INPUT_SIZE, INPUT_SIZE, 3) and p.image.dtype == np.float32
    assert p.alpha.shape == (INPUT_SIZE, INPUT_SIZE) and p.alpha.dtype == np.float32
    assert 0.0 <= p.image.min() and p.image.max() <= 1.0
    assert 0.0 <= p.alpha.min() and p.alpha.max() <= 1.0
    assert p.landmarks68.shape == (68, 2) and p.landmarks478.shape == (478, 3)
    assert np.isfinite(p.landmarks68).all()
    # background is white where the matte is empty
    bg = p.alpha == 0
    assert bg.any() and np.allclose(p.image[bg], 1.0)


def test_astronaut_portrait(prepared):
    p = prepared
    assert_valid(p)
    assert p.warnings == []
    lm = p.landmarks68
    # anatomy in image coordinates: right eye (36) left of left eye (45), brows above eyes above nose tip above
    # mouth above chin; the face sits inside the frame with the head roughly centred horizontally
    assert lm[36, 0] < lm[45, 0]
    assert lm[19, 1] < lm[37, 1] < lm[30, 1] < lm[57, 1] < lm[8, 1]
    assert (lm > 0).all() and (lm < INPUT_SIZE).all()
    assert abs(lm[:, 0].mean() - INPUT_SIZE / 2) < 0.15 * INPUT_SIZE
    # face skin is foreground, the far corners are background
    ix = np.round(lm[27:36]).astype(int)
    assert (p.alpha[ix[:, 1], ix[:, 0]] > 0.99).all()
    assert p.alpha[:5, :5].max() == 0 and p.alpha[:5, -5:].max() == 0
    # the eyes are 25-45 % of the input apart: a head crop, not a whole-body or a face-only crop
    assert 0.12 * INPUT_SIZE < lm[45, 0] - lm[36, 0] < 0.3 * INPUT_SIZE


def test_crop_geometry_matches_the_source(prepared):
    """Input pixels and landmarks map back onto the source photo through the reported crops: the mesh run directly
    on the source lands where the mapped-back landmarks say (sub-pixel), and the input's colours at the face
    landmarks are the source's colours there."""
    src = astronaut()
    p = prepared
    direct = face_landmarks(src, detect_faces(src)[0])
    back = to_source(p.landmarks478, p)
    # (mediapipe's mesh varies by a fraction of a pixel from run to run)
    assert np.abs(back - direct[:, :2]).mean() < 0.3 and np.abs(back - direct[:, :2]).max() < 1.5
    pts = p.landmarks68[17:]  # inner face points: inside the matte
    in_col = p.image[np.round(pts[:, 1]).astype(int), np.round(pts[:, 0]).astype(int)]
    sp = np.round(to_source(pts, p)).astype(int)
    src_col = src[sp[:, 1], sp[:, 0]] / 255.0
    assert np.abs(in_col - src_col).mean() < 0.06


def test_lam_crop_convention(prepared):
    """Head crop: side = sqrt(w*h) * 1.65 of the head box; input crop: centred on the 1024 crop's centre."""
    from backend.preprocess.crop import head_box_from_landmarks

    p = prepared
    hx, hy, hs = p.head_crop
    _, _, w, h = head_box_from_landmarks(to_source(p.landmarks478, p))
    assert hs == pytest.approx(np.sqrt(w * h) * 1.65, rel=1e-3)
    ix, iy, is_ = p.input_crop
    assert ix + is_ / 2 == pytest.approx(HEAD_CROP_SIZE / 2, abs=1)
    assert iy + is_ / 2 == pytest.approx(HEAD_CROP_SIZE / 2, abs=1)


@pytest.mark.parametrize("name", ["upright.jpg", "rgb16.png", "grey16.png", "cmyk.jpg", "rgba.png", "grey.jpg",
                                  "palette.png", "exif_rotated.jpg", "exif_rotated.png"])
def test_corpus_faces_prepare(corpus, prepared, name):
    p = prepare_portrait(load_image(corpus[name]))
    assert_valid(p)
    # same face, same crop as the clean astronaut (colour conversions must not move the face)
    assert np.abs(p.landmarks68 - prepared.landmarks68).max() < 6.0


def test_exif_rotated_gives_the_upright_result(corpus):
    upright = prepare_portrait(load_image(corpus["upright.png"]))
    rotated = prepare_portrait(load_image(corpus["exif_rotated.png"]))
    np.testing.assert_array_equal(rotated.image, upright.image)
    np.testing.assert_array_equal(rotated.landmarks68, upright.landmarks68)
    rotated_jpg = prepare_portrait(load_image(corpus["exif_rotated.jpg"]))
    upright_jpg = prepare_portrait(load_image(corpus["upright.jpg"]))
    # JPEG stores the rotated pixels with other compression artefacts: the mesh moves by a pixel or two
    assert np.abs(rotated_jpg.landmarks68 - upright_jpg.landmarks68).mean() < 1.0
    assert np.abs(rotated_jpg.landmarks68 - upright_jpg.landmarks68).max() < 4.0
    assert np.abs(rotated_jpg.image - upright_jpg.image).mean() < 0.02


def test_no_face(corpus):
    with pytest.raises(NoFaceError, match="no face"):
        prepare_portrait(load_image(corpus["no_face.jpg"]))


def test_three_faces_warns_and_takes_the_largest_central(corpus):
    p = prepare_portrait(load_image(corpus["three_faces.jpg"]))
    assert_valid(p)
    assert any("3 faces" in w for w in p.warnings)
    cx, _ = to_source(p.landmarks68, p).mean(0)
    assert 380 < cx < 520  # the middle head (pasted at x 280..620)


def test_drawing_ends_cleanly(corpus):
    """A line-art face: a valid portrait or a clear refusal (no face found, or no person to separate from the
    background). With mediapipe 0.10.21 the detector and mesh accept the smiley but the person matte is empty."""
    try:
        p = prepare_portrait(load_image(corpus["drawing.png"]))
    except NoFaceError as exc:
        assert "no face" in str(exc) or "landmarks" in str(exc)
    except BadInputError as exc:
        assert "separated from the background" in str(exc)
    else:
        assert_valid(p)


@pytest.mark.parametrize("name, error", [("one_pixel.png", BadInputError), ("empty.jpg", BadInputError),
                                         ("text.png", BadInputError), ("truncated.jpg", BadInputError)])
def test_unusable_files_end_in_a_clear_error(corpus, name, error):
    with pytest.raises(error) as err:
        prepare_portrait(load_image(corpus[name]))
    assert name in str(err.value)


@pytest.mark.slow
def test_huge_photo_prepares(tmp_path):
    p = prepare_portrait(load_image(write_huge(tmp_path / "huge.jpg", 12000)))
    assert_valid(p)


def test_debug_dir(tmp_path, prepared):
    from backend.preprocess import save_debug

    out = save_debug(prepared, tmp_path / "dbg")
    assert sorted(out) == ["crop.png", "landmarks.png", "matte.png"]
    for path in out.values():
        with Image.open(path) as im:
            assert im.size == (INPUT_SIZE, INPUT_SIZE)
    assert not list((tmp_path / "dbg").glob(".*tmp"))
    with Image.open(out["crop.png"]) as im:
        np.testing.assert_allclose(np.asarray(im) / 255.0, prepared.image, atol=1 / 255 + 1e-6)


def test_progress_and_cancel():
    seen = []
    prepare_portrait(astronaut(), progress=lambda s, f, m="": seen.append((s, f)))
    stages = [s for s, _ in seen]
    assert stages[0] == "detect" and stages[-1] == "matte" and set(stages) == {"detect", "matte"}
    for stage in ("detect", "matte"):
        fr = [f for s, f in seen if s == stage]
        assert fr == sorted(fr) and all(0 <= f <= 1 for f in fr)
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        prepare_portrait(astronaut(), cancel=token)


def test_mediapipe_needs_no_opencv_or_matplotlib():
    """The face solutions load without cv2/matplotlib (mediapipe is installed --no-deps)."""
    code = (
        "import sys\n"
        "from backend.preprocess.mp_solutions import solution\n"
        "for n in ('face_detection', 'face_mesh', 'selfie_segmentation'): solution(n)\n"
        "print(sorted(m for m in ('cv2', 'matplotlib', 'jax', 'sounddevice') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_mask_square_is_lams_centred_cover():
    from backend.preprocess.crop import mask_square

    alpha = np.zeros((1024, 1024), np.float32)
    alpha[300:701, 400:901] = 0.8  # above the 180/255 threshold
    alpha[100:120, 100:120] = 0.6  # below it: ignored
    # half side = the largest distance from the centre (512) to an extreme mask pixel: 512 - 400 = 112,
    # 900 - 512 = 388, 512 - 300 = 212, 700 - 512 = 188
    assert mask_square(alpha) == (124.0, 124.0, 776.0)
    with pytest.raises(BadInputError, match="separated"):
        mask_square(np.full((64, 64), 0.5, np.float32))


def test_crop_resize_pads_white_and_maps_points():
    from backend.preprocess.crop import crop_resize, map_points

    img = np.zeros((100, 200, 3), np.uint8)
    img[40:60, 140:160] = (255, 0, 0)  # a red square centred at (150, 50)
    out = crop_resize(img, 100.0, -50.0, 200.0, 100)  # half of it above the image
    assert (out[:20] == 255).all()  # off-image rows are white
    c = map_points(np.array([[150.0, 50.0]]), 100.0, -50.0, 200.0, 100)[0]
    np.testing.assert_allclose(c, [25.0, 50.0])
    assert tuple(out[int(c[1]), int(c[0])]) == (255, 0, 0)


def test_small_face_warns():
    canvas = np.full((900, 1200, 3), 128, np.uint8)
    small = np.asarray(Image.fromarray(astronaut()).resize((200, 200), Image.Resampling.LANCZOS))
    canvas[350:550, 500:700] = small
    p = prepare_portrait(canvas)
    assert_valid(p)
    assert any("small" in w and "blurry" in w for w in p.warnings)
    assert not prepare_portrait(astronaut()).warnings
