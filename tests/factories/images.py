"""The bad-input corpus: photo files a user might hand us, good and bad, written on demand.

Everything is generated (no binary fixtures): the real face is scikit-image's
bundled astronaut portrait, other cases are built from it or drawn.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

EXIF_ORIENTATION = 0x0112


def astronaut() -> np.ndarray:
    """The bundled 512x512 RGB portrait (uint8), one real face."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def astronaut_head(size: int = 256) -> np.ndarray:
    """A square crop around the astronaut's head, resized to ``size`` (uint8 RGB)."""
    crop = Image.fromarray(astronaut()[20:300, 120:400])
    return np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS))


def write_png16(path: Path, rgb16: np.ndarray) -> Path:
    """A 16-bit-per-channel RGB PNG (PIL cannot write these), written by hand: IHDR, one IDAT, IEND."""
    h, w, c = rgb16.shape
    assert c == 3 and rgb16.dtype == np.uint16
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    Path(path).write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    )
    return Path(path)


def three_faces() -> np.ndarray:
    """Three astronaut heads side by side on grey; the middle one is the largest."""
    canvas = Image.new("RGB", (900, 420), (128, 128, 128))
    canvas.paste(Image.fromarray(astronaut_head(220)), (20, 150))
    canvas.paste(Image.fromarray(astronaut_head(340)), (280, 40))
    canvas.paste(Image.fromarray(astronaut_head(220)), (660, 150))
    return np.asarray(canvas)


def no_face() -> np.ndarray:
    """A smooth landscape-like gradient with a few shapes and noise; nothing face-like."""
    rng = np.random.default_rng(3)
    h, w = 480, 640
    y = np.linspace(0, 1, h)[:, None, None]
    img = np.concatenate([0.3 + 0.5 * y + 0 * np.zeros((1, w, 1)), 0.6 - 0.2 * y + 0 * np.zeros((1, w, 1)),
                          0.9 - 0.6 * y + 0 * np.zeros((1, w, 1))], axis=2)
    img = np.clip(img + rng.normal(scale=0.02, size=img.shape), 0, 1)
    pil = Image.fromarray((img * 255).astype(np.uint8))
    d = ImageDraw.Draw(pil)
    d.rectangle((60, 300, 220, 440), fill=(90, 60, 40))
    d.polygon([(300, 440), (420, 220), (560, 440)], fill=(70, 90, 70))
    return np.asarray(pil)


def drawing() -> np.ndarray:
    """A line-art smiley: a face to a person, maybe not to a detector."""
    pil = Image.new("RGB", (512, 512), "white")
    d = ImageDraw.Draw(pil)
    d.ellipse((106, 76, 406, 436), outline="black", width=6, fill=(250, 224, 196))
    d.ellipse((180, 190, 230, 230), fill="black")
    d.ellipse((282, 190, 332, 230), fill="black")
    d.line((256, 230, 240, 300, 262, 305), fill="black", width=5)
    d.arc((186, 280, 326, 380), 20, 160, fill="black", width=6)
    return np.asarray(pil)


def with_exif_orientation(upright: np.ndarray, orientation: int) -> Image.Image:
    """The picture a camera would store for ``upright`` with EXIF ``orientation`` (2..8): the
    stored pixels are transformed so that applying the tag's correction gives ``upright`` back."""
    inverse = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,  # tag 6 means "rotate 90 CW to view": stored rotated CCW
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }[orientation]
    stored = Image.fromarray(upright).transpose(inverse)
    exif = stored.getexif()
    exif[EXIF_ORIENTATION] = orientation
    stored.info["exif"] = exif.tobytes()
    return stored


def write_corpus(folder: Path) -> dict[str, Path]:
    """Write every case into ``folder``; returns name -> path (the huge case is separate: see write_huge)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    a = astronaut()
    out: dict[str, Path] = {}

    def put(name: str, fn) -> None:
        p = folder / name
        fn(p)
        out[name] = p

    put("empty.jpg", lambda p: p.write_bytes(b""))
    good_jpeg = folder / "_good.jpg"
    Image.fromarray(a).save(good_jpeg, quality=92)
    data = good_jpeg.read_bytes()
    good_jpeg.unlink()
    put("truncated.jpg", lambda p: p.write_bytes(data[: len(data) // 3]))
    put("text.png", lambda p: p.write_text("this is not a picture\n"))
    put("one_pixel.png", lambda p: Image.new("RGB", (1, 1), (200, 150, 120)).save(p))
    put("upright.jpg", lambda p: Image.fromarray(a).save(p, quality=95))
    put("upright.png", lambda p: Image.fromarray(a).save(p))
    put("rgb16.png", lambda p: write_png16(p, a.astype(np.uint16) * 257))
    grey16 = (np.asarray(Image.fromarray(a).convert("L")).astype(np.uint16) * 257)
    put("grey16.png", lambda p: Image.fromarray(grey16).save(p))
    put("cmyk.jpg", lambda p: Image.fromarray(a).convert("CMYK").save(p, quality=95))
    rgba = np.dstack([a, np.full(a.shape[:2], 255, np.uint8)])
    rgba[:40] = 0  # a transparent band at the top, as cut-out photos have
    put("rgba.png", lambda p: Image.fromarray(rgba, "RGBA").save(p))
    put("grey.jpg", lambda p: Image.fromarray(a).convert("L").save(p, quality=95))
    put("palette.png", lambda p: Image.fromarray(a).quantize(64).save(p))
    put("exif_rotated.jpg", lambda p: with_exif_orientation(a, 6).save(p, quality=95, exif=with_exif_orientation(a, 6).info["exif"]))
    put("exif_rotated.png", lambda p: with_exif_orientation(a, 8).save(p, exif=with_exif_orientation(a, 8).info["exif"]))
    put("no_face.jpg", lambda p: Image.fromarray(no_face()).save(p, quality=92))
    put("three_faces.jpg", lambda p: Image.fromarray(three_faces()).save(p, quality=92))
    put("drawing.png", lambda p: Image.fromarray(drawing()).save(p))
    return out


def write_huge(path: Path, side: int = 12000) -> Path:
    """A ``side`` x ``side`` photo with the astronaut in the middle (mostly flat grey so it is
    quick to write); JPEG or PNG by suffix."""
    path = Path(path)
    canvas = Image.new("RGB", (side, side), (120, 120, 120))
    face = Image.fromarray(astronaut()).resize((side // 3, side // 3), Image.Resampling.BILINEAR)
    canvas.paste(face, (side // 3, side // 3))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        canvas.save(path, quality=85)
    else:
        canvas.save(path, compress_level=1)
    del canvas
    return path
