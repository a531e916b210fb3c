"""The real client: LAM's official web player (npm ``gaussian-splat-renderer-for-lam`` 0.0.8) renders
our ZIPs in headless Chromium (software GL) like the real sample.

A local page (``tests/web_player/index.html``, served on 127.0.0.1 by a thread of this test) loads
(a) a real ZIP as published, (b) the same ZIP read and written again by our writer, and (c) its
avatar saved as our avatar file in FLAME's frame and exported by ``lam-head export-zip``
(placed back by centroid alignment), and (d) that avatar with its colours edited (a warm tint).
Each picture must show a head (drawn, and not collapsed to a point); (b) and (c) must match (a)
from the player's fixed camera, (d) must differ from it visibly (the comparison can fail).

Measured on p2-1 (512 x 512): (b) and (c) give pictures identical to (a) (mean absolute difference 0,
PSNR infinite): the writer changes offsets by at most 6e-8 m. Tolerance: mean absolute difference
<= 0.5 / 255 and PSNR >= 40 dB, room for the renderer's own nondeterminism (worker sort timing).

Needs ``chromium`` (Debian package) and ``npm ci`` in tests/web_player (``python3 -m backend.devenv
test`` does both when it can); skipped with the reason otherwise. Set ``LAM_HEAD_WEB_PLAYER_SHOTS`` to a
folder to keep the screenshots.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import threading
from dataclasses import replace
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from factories.real_zips import REAL_DIR, REAL_ZIPS
from PIL import Image

from backend import cli
from backend.core.formats.avatar_file import save_avatar
from backend.core.formats.lam_zip import read_lam_zip, write_lam_zip

HERE = Path(__file__).resolve().parent / "web_player"
PLAYER_JS = HERE / "node_modules" / "gaussian-splat-renderer-for-lam" / "build" / "gaussian-splat-renderer-for-lam.module.js"
PUPPETEER = HERE / "node_modules" / "puppeteer-core" / "package.json"
SIZE = 512
MAX_SECONDS = 120  # per ZIP: software GL takes ~10-60 s for 20K splats
FLAME_FRAME = np.array([0.0, -1.669, -0.043], np.float32)  # about the template frame -> FLAME's
MAX_MEAN_ABS_DIFF = 0.5  # of 255
MIN_PSNR_DB = 40.0
TINT = np.array([1.0, 0.75, 0.5], np.float32)  # an artist's colour edit


def _missing() -> str | None:
    chromium = os.environ.get("LAM_HEAD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        return "no chromium browser (Debian: apt-get install chromium; or set LAM_HEAD_CHROMIUM)"
    if not shutil.which("node"):
        return "no node (Debian: apt-get install nodejs npm)"
    if not PLAYER_JS.is_file() or not PUPPETEER.is_file():
        return f"the web player's npm packages are not installed (run: cd {HERE} && PUPPETEER_SKIP_DOWNLOAD=1 npm ci)"
    if not REAL_ZIPS:
        return f"no real LAM ZIP in {REAL_DIR}"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder with the page, the player module and the ZIPs, served on 127.0.0.1 (a free port)."""
    root = tmp_path_factory.mktemp("site")
    shutil.copy(HERE / "index.html", root / "index.html")
    shutil.copy(PLAYER_JS, root / PLAYER_JS.name)
    real = Path(shutil.copyfile(REAL_ZIPS[0], root / REAL_ZIPS[0].name))
    avatar, template = read_lam_zip(real)
    write_lam_zip(root / "reexport.zip", avatar, template)
    moved = save_avatar(root / "ours.npz", replace(avatar, xyz=avatar.xyz + FLAME_FRAME, template=avatar.template + FLAME_FRAME,
                                                   meta={"model": "test: the real avatar in FLAME's frame"}))
    assert cli.main(["export-zip", str(moved), "-o", str(root / "ours.zip"), "--template", str(real), "--quiet"]) == 0
    write_lam_zip(root / "tinted.zip", replace(avatar, rgb=(avatar.rgb * TINT).astype(np.float32)), template)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    try:
        yield {"root": root, "url": f"http://127.0.0.1:{server.server_address[1]}", "real": real.name}
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@functools.cache
def _shoot(url: str, zip_name: str, out: str) -> np.ndarray:
    chromium = os.environ.get("LAM_HEAD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    cmd = ["node", str(HERE / "shoot.mjs"), str(chromium), f"{url}/index.html?zip={zip_name}", out, str(MAX_SECONDS),
           "4", str(SIZE)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=MAX_SECONDS + 60, cwd=HERE)
    report = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 and r.stdout.strip() else None
    assert report is not None, f"the browser driver failed ({r.returncode}): {r.stderr[-2000:]}"
    assert report["ok"], f"{zip_name}: no settled picture in {MAX_SECONDS} s: {report}"
    keep = os.environ.get("LAM_HEAD_WEB_PLAYER_SHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(keep) / Path(out).name)
    return np.asarray(Image.open(out).convert("RGB"))


def _shot(site, zip_name: str) -> np.ndarray:
    return _shoot(site["url"], zip_name, str(site["root"] / f"{Path(zip_name).stem}.png"))


def _assert_head_visible(img: np.ndarray, what: str) -> None:
    drawn = (img < 245).any(axis=2)
    ys, xs = np.nonzero(drawn)
    assert drawn.mean() > 0.03, f"{what}: only {drawn.mean():.1%} of the picture is drawn"
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    assert width > 0.2 * SIZE and height > 0.2 * SIZE, f"{what}: the drawing is only {width} x {height} px"
    assert 0.1 < drawn[:, SIZE // 2].mean() < 0.9, f"{what}: the head is not in the middle of the view"


def _compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = float((diff**2).mean())
    return float(np.abs(diff).mean()), (float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse))


def test_the_player_shows_the_real_sample(site):
    _assert_head_visible(_shot(site, site["real"]), site["real"])


@pytest.mark.parametrize("zip_name", ["reexport.zip", "ours.zip"])
def test_our_zips_look_like_the_real_one_in_the_player(site, zip_name):
    ours, real = _shot(site, zip_name), _shot(site, site["real"])
    _assert_head_visible(ours, zip_name)
    mad, psnr = _compare(ours, real)
    print(f"{zip_name} vs {site['real']}: mean abs diff {mad:.4f} / 255, PSNR {psnr:.1f} dB")
    assert mad <= MAX_MEAN_ABS_DIFF and psnr >= MIN_PSNR_DB, f"{zip_name}: mean abs diff {mad:.3f}, PSNR {psnr:.1f} dB"


def test_an_edit_shows_in_the_player(site):
    tinted, real = _shot(site, "tinted.zip"), _shot(site, site["real"])
    _assert_head_visible(tinted, "tinted.zip")
    mad, psnr = _compare(tinted, real)
    print(f"tinted.zip vs {site['real']}: mean abs diff {mad:.4f} / 255, PSNR {psnr:.1f} dB")
    assert mad > 4 * MAX_MEAN_ABS_DIFF and psnr < MIN_PSNR_DB
    drawn = (real < 245).any(axis=2)
    blue_drop = real[..., 2].astype(float)[drawn].mean() - tinted[..., 2].astype(float)[drawn].mean()
    assert blue_drop > 10, f"the head is not warmer ({blue_drop:.1f})"
