"""``lam-head render AVATAR [--motion FILE | --turntable] -o OUT/``: PNG frames (+ MP4).

``--motion`` takes a FLAME motion (frames rendered one per row, at the motion's rate or
``--fps``) or an ARKit track (Live Link Face CSV, ARKit or Audio2Face JSON) for avatars with ARKit
blendshapes: rendered at the track's rate, or resampled to ``--fps`` (exact rows when the rates
match; :mod:`backend.core.motion_timing`).

Frames are ``OUT/frame_000000.png`` ...; each file is written to a temporary name
and renamed, so a frame on disk is always complete. An MP4 (``OUT/render.mp4``)
is written too when imageio-ffmpeg is installed; otherwise the command says so.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from ..core.atomic_write import atomic_path

HELP = "render an avatar (turntable or motion) to PNG frames / MP4"
VIDEO_NAME = "render.mp4"
_FRAME_RE = re.compile(r"^frame_(\d{6})\.png$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("avatar", help="avatar file (.npz) made by 'lam-head create'")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--motion", metavar="PATH",
                      help="FLAME motion (a flame_param/ folder of per-frame .npz files, one stacked .npz, or a .zip "
                           "of either) or ARKit track (Live Link Face .csv, ARKit or Audio2Face .json; avatars with ARKit shapes)")
    what.add_argument("--turntable", action="store_true", help="a 360 degree turn around the head (the default)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder for the frames")
    parser.add_argument("--size", type=int, default=512, help="image width and height in pixels (default 512)")
    parser.add_argument("--fps", type=float, default=None, help="frame rate (default: the motion's, else 30)")
    parser.add_argument("--frames", type=int, default=None,
                        help="turntable: frames per turn (default 90); motion: render only the first N")
    parser.add_argument("--background", choices=("white", "transparent"), default="white",
                        help="white (LAM's) or transparent (RGBA PNGs; the MP4 is composited on white)")
    parser.add_argument("--renderer", "--device", dest="renderer", choices=("auto", "cpu", "gsplat"), default="auto",
                        help="auto: gsplat when CUDA and gsplat are available, else the CPU renderer")
    parser.add_argument("--mode", choices=("rig", "lam"), default="rig",
                        help="rig: Blender's deformation (default); lam: the official LAM animation")
    parser.add_argument("--canonical-rotations", action="store_true",
                        help="keep Gaussian orientations canonical (LAM-exact) instead of following the deformation")
    parser.add_argument("--elevation", type=float, default=0.0, help="camera elevation in degrees (default 0)")
    parser.add_argument("--distance", type=float, default=1.0, help="camera distance in metres (default 1.0)")
    parser.add_argument("--no-video", action="store_true", help="write PNG frames only")


class FrameProgress:
    """``render [####------] 12/90 frames  14.3 frames/s`` on stderr (a line per 10 % when not a terminal)."""

    def __init__(self, total: int, stream=None, width: int = 30):
        self.total, self.width = max(1, total), width
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self._last_decile = -1

    def update(self, done: int) -> None:
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        frac = done / self.total
        filled = int(round(frac * self.width))
        text = f"render [{'#' * filled}{'-' * (self.width - filled)}] {done}/{self.total} frames {rate:6.1f} frames/s"
        if self.tty:
            self.stream.write("\r" + text)
        elif int(frac * 10) != self._last_decile or done == self.total:
            self._last_decile = int(frac * 10)
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_png_atomic(path: Path, image: np.ndarray) -> None:
    """image H,W,3|4 uint8 -> PNG at ``path`` via a temporary file + rename."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", compress_level=3)  # level 6 costs 3x the time for -10 % size


class VideoWriter:
    """MP4 (H.264, yuv420p) through imageio-ffmpeg's bundled ffmpeg; written under a
    temporary name and renamed on :meth:`close`, removed on :meth:`abort`."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float):
        import imageio_ffmpeg

        self.path = path
        self.tmp = path.with_name(f".{path.stem}.part{path.suffix}")
        w, h = size
        params = ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"] if (w % 2 or h % 2) else []
        self._gen = imageio_ffmpeg.write_frames(str(self.tmp), (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24",
                                                pix_fmt_out="yuv420p", macro_block_size=1, quality=8,
                                                output_params=params, ffmpeg_log_level="error")
        self._gen.send(None)

    def write(self, rgb_uint8: np.ndarray) -> None:
        self._gen.send(np.ascontiguousarray(rgb_uint8))

    def close(self) -> None:
        self._gen.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self._gen.close()
        except Exception:  # noqa: BLE001 - best effort while already failing
            pass
        self.tmp.unlink(missing_ok=True)


def video_writer_available() -> tuple[bool, str]:
    try:
        import imageio_ffmpeg

        return True, imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # not installed, or no ffmpeg binary for this platform
        return False, f"{type(exc).__name__}: {exc}"


def _load_avatar(path: str):
    from ..core.errors import BadInputError
    from ..core.formats.avatar_file import AvatarFileError, load_avatar

    try:
        return load_avatar(path)
    except AvatarFileError as exc:
        raise BadInputError(str(exc)) from None


def _arkit_poses(avatar, path: str, args: argparse.Namespace):
    """(batched FlamePose carrying the track's ARKit weights at the output rate, output fps).
    Blendshapes only: head and eye angles of the track are not applied (reported)."""
    from ..core.errors import BadInputError
    from ..core.formats.arkit_track import load_arkit_track
    from ..core.rig import FlamePose

    track = load_arkit_track(path)
    if avatar.n_arkit == 0:
        raise BadInputError(f"avatar {args.avatar} has no ARKit blendshapes (arkit_dirs), so ARKit track {path} "
                            f"cannot drive it; use an avatar imported from a LAM web ZIP or created with an ARKit "
                            f"basis, or a FLAME motion")
    notes = list(track.warnings)
    used = [n for n in track.names if n in avatar.arkit_names]
    if not used:
        raise BadInputError(f"ARKit track {path} shares no channel with the avatar's ARKit blendshapes "
                            f"({', '.join(avatar.arkit_names[:5])}, ...)")
    missing = [n for n in track.names if n not in avatar.arkit_names]
    if missing:
        notes.append(f"the avatar has no {', '.join(missing)}: ignored")
    if track.head is not None or track.eyes is not None:
        notes.append("the track's head/eye angles are not applied by render (blendshapes only)")
    fps = float(args.fps or track.fps)
    _, track = track.resampled(fps)
    weights = track.weights if args.frames is None else track.weights[: args.frames]
    for note in notes:
        print(f"lam-head render: warning: {note}", file=sys.stderr)
    pose = FlamePose.zeros(weights.shape[0], 0)
    pose.arkit, pose.arkit_names = weights, track.names
    return pose, fps


def run(args: argparse.Namespace) -> int:
    from ..core.errors import BadInputError
    from ..render import default_head_camera, iter_render_avatar, select_backend

    if args.size < 8 or args.size > 8192:
        raise BadInputError(f"--size must lie in [8, 8192], got {args.size}")
    if args.frames is not None and args.frames < 1:
        raise BadInputError(f"--frames must be at least 1, got {args.frames}")
    if args.fps is not None and not args.fps > 0:
        raise BadInputError(f"--fps must be positive, got {args.fps}")
    avatar = _load_avatar(args.avatar)
    renderer = select_backend(args.renderer)
    background = (1.0, 1.0, 1.0) if args.background == "white" else None

    arkit_path = None
    if args.motion:
        from ..core.formats.arkit_track import sniff_arkit_track

        arkit_path = args.motion if sniff_arkit_track(args.motion) else None
    if arkit_path:
        poses, fps = _arkit_poses(avatar, arkit_path, args)
        n_frames = poses.batch_size
        cameras = default_head_camera(avatar.xyz, args.size, distance=args.distance, elevation_deg=args.elevation)
    elif args.motion:
        from ..core.formats.flame_motion import load_motion
        from ..render import slice_pose

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reported below, once, on stderr
            motion = load_motion(args.motion, n_expr=avatar.n_expr, fps=args.fps)
        for note in motion.warnings:
            print(f"lam-head render: warning: {note}", file=sys.stderr)
        poses = motion.pose if args.frames is None else slice_pose(motion.pose, 0, min(args.frames, motion.n_frames))
        n_frames, fps = poses.batch_size, motion.fps
        shift = np.median(np.asarray(poses.translation, np.float64), axis=0)  # follow the head if the motion moves it
        cameras = default_head_camera(avatar.xyz + shift, args.size, distance=args.distance,
                                      elevation_deg=args.elevation)
    else:
        n_frames = args.frames or 90
        fps = args.fps or 30.0
        poses = None
        cameras = [default_head_camera(avatar.xyz, args.size, distance=args.distance, elevation_deg=args.elevation,
                                       azimuth_deg=360.0 * k / n_frames) for k in range(n_frames)]

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"output {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    video = None
    if not args.no_video:
        ok, why = video_writer_available()
        if ok:
            video = VideoWriter(out / VIDEO_NAME, (args.size, args.size), fps)
        else:
            print(f"lam-head render: no video writer ({why}; pip install imageio-ffmpeg): PNG frames only",
                  file=sys.stderr)

    print(f"lam-head render: {n_frames} frames at {args.size}x{args.size}, {fps:g} fps, renderer {renderer}",
          file=sys.stderr)
    progress = FrameProgress(n_frames)
    t0 = time.perf_counter()
    try:
        frames = iter_render_avatar(avatar, poses, cameras, n_frames=n_frames, mode=args.mode,
                                    rotate_gaussians=not args.canonical_rotations, background=background,
                                    backend=renderer)
        for k, frame in enumerate(frames):
            if background is None:
                image = _to_uint8(frame.rgba_straight())
            else:
                image = _to_uint8(frame.rgb)
            write_png_atomic(out / f"frame_{k:06d}.png", image)
            if video is not None:
                video.write(image if background is not None else _to_uint8(frame.rgb + (1 - frame.alpha[..., None])))
            progress.update(k + 1)
        if video is not None:
            video.close()
    except BaseException:
        if video is not None:
            video.abort()
        raise
    finally:
        progress.close()
    elapsed = time.perf_counter() - t0
    for stale in out.iterdir():  # frames left over from an earlier, longer render
        m = _FRAME_RE.match(stale.name)
        if m and int(m.group(1)) >= n_frames:
            stale.unlink()
    rate = n_frames / max(elapsed, 1e-9)
    what = f"{out / VIDEO_NAME}" if video is not None else "no video"
    print(f"wrote {n_frames} frames to {out} ({what}; renderer {renderer}, {rate:.1f} frames/s)")
    return 0 if math.isfinite(rate) else 1
