"""What a motion keys on an avatar: per-channel values on scene frames (numpy only).

The Blender add-on writes a :class:`MotionPlan` as F-curves in bulk; everything that decides
which channel gets which value (name matching, calibration, resampling, rotations in the bone's
rotation mode) lives here, testable without Blender.

* ARKit tracks (:mod:`.formats.arkit_track`): each of the avatar's ARKit shape keys that the
  track carries; recorded head angles onto the head bone, eye angles onto weighted eye bones
  (their gaze then comes from the bones, so the eyeLook keys are left out).
* FLAME motions (:mod:`.formats.flame_motion`): expression keys, root / neck / jaw / eye bone
  rotations and the root translation, exactly the rig's pose at every keyed frame.

Angles (ARKit, radians) onto a bone with identity rest orientation in FLAME space (X: subject's
left, Y: up, Z: forward): pitch about X, yaw about Y, roll about Z, composed as Blender's XYZ
Euler (R = Rz(roll) Ry(yaw) Rx(pitch)). No convention is documented for these recordings;
this one is stated so it can be checked against a real capture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import BadInputError
from .formats.arkit_track import ArkitTrack, apply_calibration
from .formats.flame_motion import Motion
from .motion_timing import resample_arrays
from .rig import axis_angle_to_matrix, matrix_to_quaternion

OWNER_KEYS = "KEYS"  # the avatar mesh's shape keys (a Key datablock)
OWNER_RIG = "RIG"  # the avatar's armature object
ROTATION_MODES = ("XYZ", "QUATERNION")
EYE_LOOK_PREFIX = "eyeLook"
FLAME_BONE_FIELDS = ("rotation", "neck", "jaw", "eye_l", "eye_r")  # FlamePose fields, root first


@dataclass
class Channel:
    """One animated property: ``data_path``/``index`` on ``owner``, one value per plan frame."""

    owner: str
    data_path: str
    index: int
    values: np.ndarray  # M float64
    group: str


@dataclass
class MotionPlan:
    frames: np.ndarray  # M int64 scene frames
    channels: list[Channel]
    notes: list[str] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])


def key_path(name: str) -> str:
    return f'key_blocks["{_escape(name)}"].value'


def bone_path(bone: str, prop: str) -> str:
    return f'pose.bones["{_escape(bone)}"].{prop}'


def _escape(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"')


def euler_xyz(r: np.ndarray) -> np.ndarray:
    """M,3,3 rotation matrices -> M,3 Blender XYZ Euler angles (R = Rz Ry Rx), unwrapped over M
    so consecutive keys do not jump by 2 pi."""
    r = np.asarray(r, dtype=np.float64)
    y = -np.arcsin(np.clip(r[:, 2, 0], -1.0, 1.0))
    x = np.arctan2(r[:, 2, 1], r[:, 2, 2])
    z = np.arctan2(r[:, 1, 0], r[:, 0, 0])
    return np.unwrap(np.stack([x, y, z], axis=1), axis=0)


def euler_xyz_matrix(angles: np.ndarray) -> np.ndarray:
    """M,3 XYZ Euler angles -> M,3,3 (R = Rz(z) Ry(y) Rx(x))."""
    a = np.asarray(angles, dtype=np.float64)
    cx, cy, cz = np.cos(a).T
    sx, sy, sz = np.sin(a).T
    one, zero = np.ones_like(cx), np.zeros_like(cx)
    rx = np.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], 1).reshape(-1, 3, 3)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], 1).reshape(-1, 3, 3)
    rz = np.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], 1).reshape(-1, 3, 3)
    return rz @ ry @ rx


def rotation_channels(bone: str, mode: str, r: np.ndarray) -> list[Channel]:
    """Channels that pose ``bone`` (rotation mode ``mode``) at rotations ``r`` M,3,3."""
    if mode == "QUATERNION":
        q = matrix_to_quaternion(np.asarray(r, dtype=np.float64))
        flip = np.cumprod(np.where(np.sum(q[1:] * q[:-1], axis=1) < 0, -1.0, 1.0))
        q[1:] *= flip[:, None]  # the sign nearest the previous key: no long way round between keys
        return [Channel(OWNER_RIG, bone_path(bone, "rotation_quaternion"), i, q[:, i], bone) for i in range(4)]
    if mode == "XYZ":
        e = euler_xyz(r)
        return [Channel(OWNER_RIG, bone_path(bone, "rotation_euler"), i, e[:, i], bone) for i in range(3)]
    raise BadInputError(f"bone '{bone}' uses rotation mode {mode}; motion import keys XYZ Euler or quaternion bones")


def plan_arkit(
    track: ArkitTrack,
    arkit_keys: Sequence[str],
    scene_fps: float,
    start_frame: int,
    *,
    strength: float = 1.0,
    lam_web: bool = False,
    head_bone: str | None = None,
    eye_bones: tuple[str, str] | None = None,
    bone_modes: Mapping[str, str] | None = None,
    use_head: bool = True,
    use_json_head: bool = False,
) -> MotionPlan:
    """Key ``track`` onto an avatar with shape keys ``arkit_keys`` (ARKit names). ``head_bone`` /
    ``eye_bones`` (left, right): bones for recorded angles (None: the avatar has none)."""
    notes = list(track.warnings)
    present = [n for n in track.names if n in set(arkit_keys)]
    if not present:
        raise BadInputError(f"{track.source}: none of its {len(track.names)} ARKit channels is a shape key of this "
                            "avatar (it has no ARKit keys, or other names); nothing to import")
    lacking = [n for n in track.names if n not in set(arkit_keys)]
    if lacking:
        notes.append(f"the avatar has no shape key for {', '.join(lacking[:6])}{' ...' if len(lacking) > 6 else ''}: "
                     "not imported")
    track = apply_calibration(track, strength=strength, lam_web=lam_web)
    modes = dict(bone_modes or {})
    use_eyes = eye_bones is not None and track.eyes is not None
    head = track.head if use_head and (track.head_documented or use_json_head) else None
    if track.head is not None and head is None and not track.head_documented:
        notes.append("head_pose of the JSON not applied (no documented convention; switch on 'Head Pose from JSON')")
    frames, arrays = resample_arrays({"weights": track.weights, "head": head, "eyes": track.eyes if use_eyes else None},
                                     scene_fps, start_frame, source_fps=track.fps)
    channels = []
    for k, name in enumerate(track.names):
        if name not in present or (use_eyes and name.startswith(EYE_LOOK_PREFIX)):
            continue
        channels.append(Channel(OWNER_KEYS, key_path(name), 0, arrays["weights"][:, k].astype(np.float64), "ARKit"))
    if use_eyes:
        notes.append(f"eye angles keyed on bones {eye_bones[0]}, {eye_bones[1]}; the eyeLook keys are left out")
        for side, bone in enumerate(eye_bones):
            yaw, pitch, roll = (arrays["eyes"][:, 3 * side + i] for i in range(3))
            r = euler_xyz_matrix(np.stack([pitch, yaw, roll], 1))
            channels += rotation_channels(bone, modes.get(bone, "XYZ"), r)
    if head is not None:
        if head_bone is None:
            notes.append("the track has head angles but the avatar has no head bone: not applied")
        else:
            yaw, pitch, roll = (arrays["head"][:, i] for i in range(3))
            channels += rotation_channels(head_bone, modes.get(head_bone, "XYZ"),
                                          euler_xyz_matrix(np.stack([pitch, yaw, roll], 1)))
    return MotionPlan(frames, channels, notes)


def plan_flame(
    motion: Motion,
    expr_keys: Sequence[str],
    bones: Sequence[str | None],
    scene_fps: float,
    start_frame: int,
    *,
    bone_modes: Mapping[str, str] | None = None,
) -> MotionPlan:
    """Key a FLAME motion onto an avatar with expression keys ``expr_keys`` (component order) and
    ``bones`` for root, neck, jaw, eye_l, eye_r (None: the avatar has no such bone). At every keyed
    frame the rig's pose is the motion's (resampled) pose exactly, for what the avatar has.

    A LAM web ZIP avatar has no FLAME blendshapes and moves its jaw and eyes by ARKit morphs: only
    the head pose applies there (FLAME's root and neck joints onto its neck and head bones)."""
    if len(bones) != len(FLAME_BONE_FIELDS) or bones[0] is None:
        raise BadInputError(f"{motion.source}: a FLAME motion needs an avatar with FLAME's joints or LAM's neck and "
                            "head bones; this one has neither")
    pose = motion.pose
    arrays = {f: np.asarray(getattr(pose, f), np.float64) for f in FLAME_BONE_FIELDS}
    arrays["expr"] = np.asarray(pose.expr, np.float64)
    arrays["translation"] = np.asarray(pose.translation, np.float64)
    frames, out = resample_arrays(arrays, scene_fps, start_frame, source_fps=motion.fps)
    modes = dict(bone_modes or {})
    notes = list(motion.warnings)
    channels = [Channel(OWNER_KEYS, key_path(name), 0, out["expr"][:, e], "FLAME expressions")
                for e, name in enumerate(expr_keys[: out["expr"].shape[1]])]
    skipped = [f for f, b in zip(FLAME_BONE_FIELDS, bones) if b is None and np.any(out[f])]
    if not expr_keys and np.any(out["expr"]):
        skipped.insert(0, "expressions")
    if skipped:
        notes.append(f"this avatar has no FLAME blendshapes or bones for {', '.join(skipped)}: only the head pose is "
                     "keyed (drive its face with an ARKit track)")
    for f, bone in zip(FLAME_BONE_FIELDS, bones):
        if bone is not None:
            channels += rotation_channels(bone, modes.get(bone, "XYZ"), axis_angle_to_matrix(out[f]))
    channels += [Channel(OWNER_RIG, bone_path(bones[0], "location"), i, out["translation"][:, i], bones[0])
                 for i in range(3)]
    return MotionPlan(frames, channels, notes)
