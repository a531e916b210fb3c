"""Motion -> channels planning (backend/core/motion_channels.py), without Blender."""

from __future__ import annotations

import numpy as np
import pytest

from backend.core import motion_channels as mc
from backend.core.errors import BadInputError
from backend.core.formats.arkit_track import ARKIT_NAMES, ArkitTrack
from backend.core.formats.flame_motion import Motion
from backend.core.rig import FlamePose, axis_angle_to_matrix, quaternion_to_matrix


def test_euler_round_trip_and_unwrapping():
    rng = np.random.default_rng(0)
    angles = rng.uniform(-1.2, 1.2, size=(50, 3))
    np.testing.assert_allclose(mc.euler_xyz(mc.euler_xyz_matrix(angles)), angles, atol=1e-12)
    # a yaw crossing pi keeps increasing instead of jumping by 2 pi
    sweep = np.stack([np.zeros(20), np.zeros(20), np.linspace(2.9, 3.4, 20)], 1)
    got = mc.euler_xyz(mc.euler_xyz_matrix(sweep))
    np.testing.assert_allclose(got, sweep, atol=1e-12)


def test_quaternion_channels_reproduce_the_rotation_and_stay_on_one_side():
    r = axis_angle_to_matrix(np.stack([np.zeros(30), np.linspace(2.5, 3.8, 30), np.zeros(30)], 1))
    chans = mc.rotation_channels("neck", "QUATERNION", r)
    q = np.stack([c.values for c in chans], 1)
    np.testing.assert_allclose(quaternion_to_matrix(q), r, atol=1e-12)
    assert (np.sum(q[1:] * q[:-1], axis=1) > 0).all()  # no sign flip between keys
    assert [c.data_path for c in chans] == ['pose.bones["neck"].rotation_quaternion'] * 4
    with pytest.raises(BadInputError, match="rotation mode"):
        mc.rotation_channels("neck", "ZXY", r)


def _track(n=10, fps=30.0, names=ARKIT_NAMES, head=None, eyes=None):
    w = np.linspace(0, 1, n * len(names)).reshape(n, len(names)).astype(np.float32)
    return ArkitTrack(tuple(names), w, np.arange(n) / fps, fps, "t.csv", head=head, eyes=eyes)


def test_arkit_plan_matches_by_name_and_notes_what_is_missing():
    plan = mc.plan_arkit(_track(), ["jawOpen", "eyeBlinkLeft", "notInTrack"], 30.0, 5)
    np.testing.assert_array_equal(plan.frames, np.arange(5, 15))
    assert [c.data_path for c in plan.channels] == ['key_blocks["eyeBlinkLeft"].value', 'key_blocks["jawOpen"].value']
    track = _track()
    np.testing.assert_array_equal(plan.channels[1].values, track.weights[:, ARKIT_NAMES.index("jawOpen")])
    assert any("no shape key for" in n for n in plan.notes)
    with pytest.raises(BadInputError, match="none of its"):
        mc.plan_arkit(track, ["foo"], 30.0, 1)


def test_arkit_plan_strength_calibration_and_angles():
    head = np.tile([[0.1, -0.2, 0.05]], (10, 1)).astype(np.float32)  # yaw, pitch, roll
    eyes = np.tile([[0.2, 0.1, 0.0, -0.2, 0.1, 0.0]], (10, 1)).astype(np.float32)
    plan = mc.plan_arkit(_track(head=head, eyes=eyes), list(ARKIT_NAMES), 30.0, 1, strength=0.5, lam_web=True,
                         head_bone="neck", eye_bones=("eye_L", "eye_R"))
    by_path = {(c.data_path, c.index): c.values for c in plan.channels}
    jaw = ARKIT_NAMES.index("jawOpen")
    np.testing.assert_allclose(by_path[('key_blocks["jawOpen"].value', 0)], _track().weights[:, jaw] * 0.5 * 1.2,
                               rtol=1e-6)
    assert not any("eyeLook" in p for p, _ in by_path)  # gaze comes from the eye bones
    np.testing.assert_allclose([by_path[('pose.bones["neck"].rotation_euler', i)][0] for i in range(3)],
                               [-0.2, 0.1, 0.05], atol=1e-6)  # (pitch, yaw, roll)
    np.testing.assert_allclose([by_path[('pose.bones["eye_R"].rotation_euler', i)][0] for i in range(3)],
                               [0.1, -0.2, 0.0], atol=1e-6)


def test_flame_plan_needs_a_flame_rig_and_keys_every_field():
    t = 4
    pose = FlamePose(expr=np.ones((t, 3), np.float32), rotation=np.zeros((t, 3), np.float32),
                     neck=np.zeros((t, 3), np.float32), jaw=np.full((t, 3), 0.1, np.float32),
                     eye_l=np.zeros((t, 3), np.float32), eye_r=np.zeros((t, 3), np.float32),
                     translation=np.full((t, 3), 0.01, np.float32))
    motion = Motion(pose, 30.0, "m.npz")
    bones = ["root", "neck", "jaw", "eye_L", "eye_R"]
    plan = mc.plan_flame(motion, ["expr_000", "expr_001", "expr_002"], bones, 30.0, 1)
    assert len(plan.channels) == 3 + 5 * 3 + 3
    jaw = [c for c in plan.channels if c.data_path == 'pose.bones["jaw"].rotation_euler']
    np.testing.assert_allclose(mc.euler_xyz_matrix(np.stack([c.values for c in jaw], 1)),
                               axis_angle_to_matrix(np.full((t, 3), 0.1)), atol=1e-6)
    with pytest.raises(BadInputError, match="neck and head bones"):
        mc.plan_flame(motion, [], [], 30.0, 1)
    head_only = mc.plan_flame(motion, [], ["neckLower", "head", None, None, None], 30.0, 1)
    assert {c.data_path for c in head_only.channels} == {'pose.bones["neckLower"].rotation_euler',
                                                         'pose.bones["head"].rotation_euler',
                                                         'pose.bones["neckLower"].location'}
    assert any("expressions, jaw" in n and "ARKit track" in n for n in head_only.notes)
