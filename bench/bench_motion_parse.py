"""ARKit track parse time: a generated Live Link Face CSV, an ARKit JSON, an Audio2Face JSON and an
Audio2Face-3D CSV of the same length (default 60 s at 60 fps, 52 blendshapes; the Live Link CSV also
head and eye angles), best of a few runs, plus the time to resample each to 24 fps.

    .venv/bin/python bench/bench_motion_parse.py [--seconds 60] [--fps 60] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from factories.live_link import (  # noqa: E402
    arkit_json,
    audio2face_csv,
    audio2face_json,
    live_link_csv,
    random_track,
)

from backend.core.formats.arkit_track import load_arkit_track  # noqa: E402


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--fps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    n = int(args.seconds * args.fps)
    w, h, e = random_track(n, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            "Live Link Face CSV": live_link_csv(Path(tmp) / "take.csv", w, h, e, rate=args.fps, step=1.0005),
            "ARKit JSON": arkit_json(Path(tmp) / "take.json", w, fps=args.fps),
            "Audio2Face JSON": audio2face_json(Path(tmp) / "a2f.json", w, fps=args.fps),
            "Audio2Face-3D CSV": audio2face_csv(Path(tmp) / "animation_frames.csv", w, fps=args.fps),
        }
        print(f"{n} frames ({args.seconds:g} s at {args.fps} fps), best of {args.repeats}")
        for what, path in files.items():
            parse, track = _best(lambda p=path: load_arkit_track(p), args.repeats)
            resample, _ = _best(lambda t=track: t.resampled(24), args.repeats)
            size = path.stat().st_size / 1e6
            print(f"  {what:20s} {size:6.2f} MB  parse {parse * 1000:7.1f} ms  resample to 24 fps "
                  f"{resample * 1000:5.2f} ms")


if __name__ == "__main__":
    main()
