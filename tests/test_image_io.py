"""load_image on the bad-input corpus: every file is a picture or a clear BadInputError."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from factories.images import astronaut, with_exif_orientation, write_corpus, write_huge
from PIL import Image

from backend.core.errors import BadInputError
from backend.preprocess import image_io
from backend.preprocess.image_io import as_rgb8, load_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.mark.parametrize(
    "name, words",
    [
        ("empty.jpg", ["empty.jpg", "empty", "0 bytes"]),
        ("truncated.jpg", ["truncated.jpg", "truncated or corrupt"]),
        ("text.png", ["text.png", "not an image"]),
        ("one_pixel.png", ["one_pixel.png", "1 x 1", "at least"]),
    ],
)
def test_bad_files_refused_with_reason(corpus, name, words):
    with pytest.raises(BadInputError) as err:
        load_image(corpus[name])
    for w in words:
        assert w in str(err.value)


def test_missing_and_directory(tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(BadInputError, match="not a file"):
        load_image(tmp_path)


def test_upright_formats_decode_to_the_same_picture(corpus):
    ref = astronaut()
    png = load_image(corpus["upright.png"])
    assert png.dtype == np.uint8 and png.shape == ref.shape
    np.testing.assert_array_equal(png, ref)
    assert mad(load_image(corpus["upright.jpg"]), ref) < 3
    # 16-bit RGB (v * 257): scaled back to 8 bits, not clipped
    np.testing.assert_array_equal(load_image(corpus["rgb16.png"]), ref)
    # CMYK JPEG: converted to RGB (naive CMYK, JPEG loss)
    assert mad(load_image(corpus["cmyk.jpg"]), ref) < 4
    # palette: quantised to 64 colours
    assert mad(load_image(corpus["palette.png"]), ref) < 12


def test_grey_formats_become_grey_rgb(corpus):
    grey_ref = np.asarray(Image.fromarray(astronaut()).convert("L"))
    for name, tol in (("grey.jpg", 3), ("grey16.png", 0.5)):
        g = load_image(corpus[name])
        assert g.shape == grey_ref.shape + (3,)
        assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
        assert mad(g[..., 0], grey_ref) < tol, name


def test_transparency_composited_on_white(corpus):
    rgba = load_image(corpus["rgba.png"])
    ref = astronaut()
    assert (rgba[:40] == 255).all()
    np.testing.assert_array_equal(rgba[40:], ref[40:])


def test_exif_orientation_applied(corpus):
    ref = astronaut()
    np.testing.assert_array_equal(load_image(corpus["exif_rotated.png"]), ref)
    assert mad(load_image(corpus["exif_rotated.jpg"]), ref) < 3


@pytest.mark.parametrize("orientation", range(2, 9))
def test_every_exif_orientation_non_square(tmp_path, orientation):
    upright = astronaut()[:, 50:450]  # 512 x 400: rotations swap the sides
    p = tmp_path / f"o{orientation}.png"
    stored = with_exif_orientation(upright, orientation)
    stored.save(p, exif=stored.info["exif"])
    np.testing.assert_array_equal(load_image(p), upright)


def test_decompression_bomb_refused(tmp_path):
    """A tiny PNG whose header claims 30000 x 30000 pixels: refused before any pixel is decoded."""
    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = (30000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    p = tmp_path / "bomb.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
                  + chunk(b"IEND", b""))
    with pytest.raises(BadInputError, match="too large"):
        load_image(p)


def test_decode_budget_refusal_names_the_size(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.new("RGB", (800, 600), (10, 20, 30)).save(p)
    monkeypatch.setattr(image_io, "MAX_DECODE_BYTES", 1_000_000)
    with pytest.raises(BadInputError, match="800 x 600"):
        load_image(p)


# Peak RSS from VmHWM: it belongs to the new address space, whereas ru_maxrss of a
# fork+exec child starts at the (large) pytest parent's peak.
_MEASURE = """
import json, sys
from backend.preprocess.image_io import load_image
a = load_image(sys.argv[1])
hwm_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"shape": list(a.shape), "peak_mb": hwm_kb / 1024}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc (Linux only)")
def test_huge_image_downscaled_within_memory_budget(tmp_path, suffix):
    """12000 x 12000 photos decode in a fresh process with peak RSS under 1.5 GB (the process budget is 3.5 GB):
    JPEG through the codec's reduced-scale decode, PNG by decoding then box-reducing at once."""
    p = write_huge(tmp_path / f"huge{suffix}", 12000)
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(p)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["shape"] == [image_io.MAX_WORK_SIDE, image_io.MAX_WORK_SIDE, 3]
    assert res["peak_mb"] < 1500, res


def test_as_rgb8_arrays():
    a = astronaut()
    np.testing.assert_array_equal(as_rgb8(a), a)
    np.testing.assert_array_equal(as_rgb8(a.astype(np.float32) / 255.0), a)
    np.testing.assert_array_equal(as_rgb8(a.astype(np.uint16) * 257), a)
    g = as_rgb8(a[..., 0])
    assert g.shape == a.shape and (g[..., 2] == a[..., 0]).all()
    rgba = np.dstack([a, np.zeros(a.shape[:2], np.uint8)])
    assert (as_rgb8(rgba) == 255).all()
    with pytest.raises(BadInputError, match="1 x 1"):
        as_rgb8(np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(BadInputError, match="NaN"):
        as_rgb8(np.full((100, 100, 3), np.nan, np.float32))
    with pytest.raises(BadInputError, match="shape"):
        as_rgb8(np.zeros((100, 100, 2), np.uint8))
