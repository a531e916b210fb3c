"""ARKit tracks: Live Link Face CSVs written here from the format description (rates, drift, the FF
wrap jump, BOM, CRLF, shuffled columns, head recorded or not), the real LAM ARKit JSON, Audio2Face's
blendshape export, Audio2Face-3D's CSV, the LAM web calibration, and every kind of bad file refused
with a message naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from factories.live_link import (
    PASCAL_NAMES,
    arkit_json,
    audio2face_csv,
    audio2face_json,
    live_link_csv,
    random_track,
    timecodes,
)

from backend.core.errors import BadInputError
from backend.core.formats.arkit_track import (
    ARKIT_NAMES,
    LAM_WEB_CALIBRATION,
    apply_calibration,
    calibration_scales,
    load_arkit_track,
    sniff_arkit_track,
)

REAL_JSON = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "real" / "test_expression_1s.json"


def _printed(a: np.ndarray) -> np.ndarray:
    """What a reader gets back from values printed with 10 decimals, as float32."""
    return np.round(np.asarray(a, np.float64), 10).astype(np.float32)


def test_names_are_apples_52():
    assert len(ARKIT_NAMES) == 52 == len(set(ARKIT_NAMES))
    assert ARKIT_NAMES[0] == "eyeBlinkLeft" and ARKIT_NAMES[-1] == "tongueOut" and "jawOpen" in ARKIT_NAMES


@pytest.mark.parametrize("rate", [24, 30, 60])
def test_csv_rates_values_and_times(tmp_path, rate):
    n = int(2.5 * rate)
    w, h, e = random_track(n, seed=rate)
    path = live_link_csv(tmp_path / "take.csv", w, h, e, rate=rate, start=f"01:59:58:{rate - 3:02d}.250")
    track = load_arkit_track(path)
    assert track.names == ARKIT_NAMES and track.fps == rate and track.n_frames == n
    np.testing.assert_array_equal(track.weights, _printed(w))
    np.testing.assert_allclose(track.head, h, atol=1e-7)
    np.testing.assert_allclose(track.eyes, e, atol=1e-7)
    np.testing.assert_allclose(track.times, np.arange(n) / rate, atol=1e-9)  # across 01:59:59 -> 02:00:00
    assert track.head_documented and track.warnings == [] and track.source == str(path)
    assert track.channel("jawOpen").shape == (n,)


def test_csv_drift_of_a_real_recording_keeps_one_row_per_nominal_frame(tmp_path):
    n = 600  # 10 s at 60 fps, steps of 1.000 or 1.001 frames
    w, _, _ = random_track(n, seed=3, head=False)
    codes = timecodes(n, 60, "10:00:00:00.000", step=1.0005)
    steps = {round(float(b.split(":")[3]) - float(a.split(":")[3]), 3) for a, b in zip(codes, codes[1:])
             if a.split(":")[2] == b.split(":")[2]}
    assert steps == {1.0, 1.001}  # the generator does drift like the real app
    track = load_arkit_track(live_link_csv(tmp_path / "drift.csv", w, codes=codes))
    assert track.fps == 60 and track.n_frames == n and track.head is None
    np.testing.assert_allclose(np.diff(track.times) * 60, np.diff([1.0005 * i for i in range(n)]), atol=2e-3)
    frames, on60 = track.resampled(60, start_frame=7)
    np.testing.assert_array_equal(frames, 7 + np.arange(n))
    np.testing.assert_array_equal(on60.weights, track.weights)  # same rate: the rows exactly, despite the drift


def test_csv_frame_field_jump_where_the_fraction_wraps_is_no_missing_frame(tmp_path):
    codes = ["09:15:30:42.997", "09:15:30:43.998", "09:15:30:44.999", "09:15:30:46.000", "09:15:30:47.001",
             *[f"09:15:30:{48 + i}.001" for i in range(12)], "09:15:31:00.002", "09:15:31:01.003"]
    w, _, _ = random_track(len(codes), seed=4, head=False)
    track = load_arkit_track(live_link_csv(tmp_path / "jump.csv", w, codes=codes))
    assert track.fps == 60 and track.n_frames == len(codes)
    assert not any("gap" in x for x in track.warnings)
    assert track.times[3] - track.times[2] == pytest.approx(1.001 / 60)  # full timecode, not the FF field
    frames, same = track.resampled(60)
    np.testing.assert_array_equal(same.weights, track.weights)


def test_csv_shuffled_columns_bom_and_crlf_give_the_same_track(tmp_path):
    w, h, e = random_track(90, seed=5)
    ref = load_arkit_track(live_link_csv(tmp_path / "a.csv", w, h, e, rate=30))
    order = list(np.random.default_rng(0).permutation(2 + 52 + 9))
    for kw in ({"order": order}, {"bom": True, "crlf": True}, {"order": order, "bom": True, "crlf": True}):
        got = load_arkit_track(live_link_csv(tmp_path / "b.csv", w, h, e, rate=30, **kw))
        assert got.names == ref.names and got.fps == ref.fps
        for field in ("weights", "times", "head", "eyes"):
            np.testing.assert_array_equal(getattr(got, field), getattr(ref, field))


def test_csv_head_not_recorded_is_none_and_subset_of_columns_works(tmp_path):
    w, _, e = random_track(40, seed=6, head=False)
    track = load_arkit_track(live_link_csv(tmp_path / "nohead.csv", w, None, e, rate=30))
    assert track.head is None and track.eyes is not None
    # a file with only some blendshapes (and camelCase names) and no angle columns
    path = tmp_path / "few.csv"
    rows = [f"00:00:00:{i:02d}.000,{i / 40:.4f},{1 - i / 40:.4f}" for i in range(40)]
    path.write_text("Timecode,jawOpen,EyeBlinkLeft\n" + "\n".join(rows) + "\n")
    few = load_arkit_track(path)
    assert few.names == ("eyeBlinkLeft", "jawOpen") and few.head is None and few.eyes is None
    np.testing.assert_allclose(few.channel("jawOpen"), np.arange(40) / 40, atol=1e-7)


def test_csv_too_short_to_show_its_rate_assumes_60_and_says_so(tmp_path):
    w, _, _ = random_track(10, seed=11, head=False)
    track = load_arkit_track(live_link_csv(tmp_path / "short.csv", w, rate=30, start="00:00:05:03.000"))
    assert track.fps == 60 and any("60 fps assumed" in x for x in track.warnings)


def test_csv_unknown_extra_columns_are_left_out_with_a_warning(tmp_path):
    w, h, e = random_track(30, seed=7)
    track = load_arkit_track(live_link_csv(tmp_path / "x.csv", w, h, e, rate=30, extra={"Mystery": np.ones(30)}))
    assert track.names == ARKIT_NAMES
    assert any("Mystery" in x for x in track.warnings)


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def _csv(tmp_path, header="Timecode,BlendShapeCount,EyeBlinkLeft,JawOpen", rows=None, name="bad.csv"):
    rows = rows if rows is not None else [f"00:00:01:{i:02d}.000,61,0.1,0.2" for i in range(5)]
    return _write(tmp_path, name, header + "\n" + "\n".join(rows) + "\n")


BAD_CSV = [
    (dict(header="Time,BlendShapeCount,EyeBlinkLeft,JawOpen"), "no 'Timecode' column"),
    (dict(header="Timecode,BlendShapeCount,Foo,Bar"), "no ARKit blendshape names"),
    (dict(header="Timecode,EyeBlinkLeft,eyeBlinkLeft,JawOpen"), "more than once"),
    (dict(rows=["00:00:01:00.000,61,0.1,0.2", "00:00:01:01.000,61,0.1"]), "line 3 has 3 values, the header 4"),
    (dict(rows=["00:00:01:00.000,61,0.1,0.2", "00:00:01:01.000,61,nan,0.2"]), "line 3, column EyeBlinkLeft.*NaN"),
    (dict(rows=["00:00:01:00.000,61,0.1,0.2", "00:00:01:01.000,61,0.1,inf"]), "line 3, column JawOpen.*infinite"),
    (dict(rows=["00:00:01:00.000,61,0.1,0.2", "00:00:01:01.000,61,0.1,x"]), "'x' is not a number"),
    (dict(rows=["00:00:01:00.000,61,0.1,0.2", "00:00:01:02.000,61,0.1,0.2", "00:00:01:01.000,61,0.1,0.2"]),
     "backwards or repeat at line 4"),
    (dict(rows=["00:00:01:00.000,61,0.1,0.2", "00:00:01:00.000,61,0.1,0.2"]), "backwards or repeat"),
    (dict(rows=["0.5,61,0.1,0.2"]), "not HH:MM:SS:FF.fff"),
    (dict(rows=[]), "no frames"),
]


@pytest.mark.parametrize("kw, message", BAD_CSV)
def test_bad_csv_files_are_refused_clearly(tmp_path, kw, message):
    path = _csv(tmp_path, **kw)
    with pytest.raises(BadInputError, match=message) as info:
        load_arkit_track(path)
    assert str(path) in str(info.value)


BAD_JSON = [
    ('{"names": ["jawOpen"], "frames": [', "not valid JSON"),
    ("[1, 2]", "expected an object with 'names' and 'frames'"),
    ('{"names": ["jawOpen"], "frames": []}', "no frames"),
    ('{"names": ["foo", "bar"], "frames": [{"weights": [0, 1]}]}', "no ARKit blendshape names"),
    ('{"names": ["jawOpen", "mouthClose"], "frames": [{"weights": [0, 1]}, {"weights": [0]}]}',
     "frame 1 has 1 weights, 'names' has 2"),
    ('{"names": ["jawOpen"], "frames": [{"weights": [0.1]}, {"weights": [NaN]}]}', "frame 1, jawOpen: NaN"),
    ('{"names": ["jawOpen"], "frames": [{"weights": [0.1]}, {"weights": ["a"]}]}', "frame 1: weights must be numbers"),
    ('{"names": ["jawOpen"], "frames": [{"rotation": []}]}', "frame 0 has no 'weights'"),
    ('{"names": ["jawOpen"], "metadata": {"fps": 0}, "frames": [{"weights": [0.1]}]}', "metadata.fps"),
    ('{"names": ["jawOpen", "jawopen"], "frames": [{"weights": [0.1, 0.2]}]}', "appears twice"),
    ('{"names": ["jawOpen"], "frames": [{"weights": [0.1], "time": 0.1}, {"weights": [0.1], "time": 0.0}]}',
     "backwards or repeat"),
]


@pytest.mark.parametrize("text, message", BAD_JSON)
def test_bad_json_files_are_refused_clearly(tmp_path, text, message):
    path = _write(tmp_path, "bad.json", text)
    with pytest.raises(BadInputError, match=message) as info:
        load_arkit_track(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content, message", [
    (b"", "empty"), (b"  \n\r\n", "empty"), (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"hello,world\n1,2\n", "not a Live Link Face CSV"),
])
def test_unrecognisable_files_are_refused(tmp_path, content, message):
    path = tmp_path / "track.dat"
    path.write_bytes(content)
    with pytest.raises(BadInputError, match=message):
        load_arkit_track(path)
    with pytest.raises(BadInputError, match="not found"):
        load_arkit_track(tmp_path / "missing.csv")


def test_content_decides_before_extension(tmp_path):
    w, _, _ = random_track(40, seed=8, head=False)
    csv_named_txt = live_link_csv(tmp_path / "take.txt", w, rate=30)
    json_named_csv = arkit_json(tmp_path / "track.csv", w)
    assert sniff_arkit_track(csv_named_txt) == "csv" and sniff_arkit_track(json_named_csv) == "json"
    assert load_arkit_track(csv_named_txt).fps == 30 and load_arkit_track(json_named_csv).fps == 30
    np.save(tmp_path / "x.npy", np.zeros(3))
    assert sniff_arkit_track(tmp_path / "x.npy") is None and sniff_arkit_track(tmp_path) is None


def test_json_layout_rate_names_and_head_pose(tmp_path):
    rng = np.random.default_rng(9)
    w = rng.uniform(0, 1, (12, 52))
    perm = rng.permutation(52)
    names = [ARKIT_NAMES[i] for i in perm] + ["notAShape"]
    table = np.concatenate([w[:, perm], np.ones((12, 1))], axis=1)
    t = load_arkit_track(arkit_json(tmp_path / "a.json", table, names=names, fps=25))
    assert t.names == ARKIT_NAMES and t.fps == 25 and t.head is None and t.eyes is None
    np.testing.assert_array_equal(t.weights, w.astype(np.float32))
    np.testing.assert_allclose(t.times, np.arange(12) / 25)
    assert any("notAShape" in x for x in t.warnings)

    head = rng.normal(scale=0.01, size=(12, 3))
    d = load_arkit_track(arkit_json(tmp_path / "b.json", w, head_pose=head))
    assert d.fps == 30  # no metadata, no times: LAM's 30 fps
    np.testing.assert_allclose(d.head, head.astype(np.float32))
    assert not d.head_documented and any("undocumented" in x for x in d.warnings)
    bad_head = load_arkit_track(arkit_json(tmp_path / "c.json", w, head_pose=head[:5]))
    assert bad_head.head is None and any("head_pose" in x for x in bad_head.warnings)
    timed = load_arkit_track(arkit_json(tmp_path / "d.json", w, fps=24, times=True))
    assert timed.fps == 24
    timed.warnings.clear()
    data = json.loads((tmp_path / "d.json").read_text())
    del data["metadata"]
    (tmp_path / "e.json").write_text(json.dumps(data))
    assert load_arkit_track(tmp_path / "e.json").fps == 24  # the frames' times say 24 fps


def test_audio2face_export_reads_as_the_same_track_as_the_other_layouts(tmp_path):
    w, _, _ = random_track(50, seed=11, head=False, eyes=False)
    rng = np.random.default_rng(11)
    perm = rng.permutation(52)
    names = [PASCAL_NAMES[i] for i in perm] + ["tongueTwist"]  # A2F keeps the mesh's names and order
    table = np.concatenate([w[:, perm], np.zeros((50, 1))], axis=1)
    a2f = load_arkit_track(audio2face_json(tmp_path / "a2f.json", table, names=names, fps=60, joints=True))
    lam = load_arkit_track(arkit_json(tmp_path / "lam.json", w, fps=60))
    csv = load_arkit_track(live_link_csv(tmp_path / "take.csv", w, rate=60))
    assert a2f.names == lam.names == csv.names == ARKIT_NAMES
    assert a2f.fps == lam.fps == csv.fps == 60 and a2f.head is None and a2f.eyes is None
    np.testing.assert_array_equal(a2f.weights, lam.weights)
    np.testing.assert_array_equal(a2f.weights, w.astype(np.float32))
    np.testing.assert_allclose(a2f.weights, csv.weights, atol=1e-7)
    np.testing.assert_allclose(a2f.times, np.arange(50) / 60)
    assert any("tongueTwist" in x for x in a2f.warnings)
    assert any("rotations/translations are not read" in x for x in a2f.warnings)
    frames, at30 = a2f.resampled(30, start_frame=1)
    np.testing.assert_array_equal(at30.weights, w[::2].astype(np.float32))  # every other row, exactly

    few = load_arkit_track(audio2face_json(tmp_path / "few.json", w[:, :3], names=["jawOpen", "EyeBlinkLeft",
                                                                                    "eyeBlinkRight"], fps=None))
    assert few.names == ("eyeBlinkLeft", "eyeBlinkRight", "jawOpen") and few.fps == 30
    np.testing.assert_array_equal(few.channel("jawOpen"), w[:, 0].astype(np.float32))
    assert any("no exportFps" in x for x in few.warnings)
    counted = load_arkit_track(audio2face_json(tmp_path / "n.json", w, numFrames=49))
    assert counted.n_frames == 50 and any("numFrames says 49" in x for x in counted.warnings)


BAD_A2F = [
    (dict(weightMat=[]), "no frames"),
    (dict(weightMat=[[0.1, 0.2, 0.3], [0.1]]), "'weightMat' row 1 has 1 weights, 'facsNames' has 3"),
    (dict(weightMat=[[0.1, 0.2, 0.3], 5]), "'weightMat' row 1 is not a list"),
    (dict(weightMat=[[0.1, 0.2, "x"]]), "'weightMat' row 0: weights must be numbers"),
    (dict(weightMat=[[0.1, 0.2, float("nan")]]), "'weightMat' row 0, mouthClose: NaN"),
    (dict(exportFps=-30), "exportFps must be a positive number"),
    (dict(exportFps="30"), "exportFps must be a positive number"),
    (dict(facsNames=["jawOpen", 3, "mouthClose"]), "'facsNames' must be a list of strings"),
    (dict(facsNames=["a", "b", "c"]), "no ARKit blendshape names"),
]


@pytest.mark.parametrize("fields, message", BAD_A2F)
def test_bad_audio2face_files_are_refused_clearly(tmp_path, fields, message):
    path = audio2face_json(tmp_path / "bad.json", np.full((2, 3), 0.5), names=["jawOpen", "eyeBlinkLeft", "mouthClose"],
                           **fields)
    with pytest.raises(BadInputError, match=message) as info:
        load_arkit_track(path)
    assert "Audio2Face JSON" in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("index", [False, True])
@pytest.mark.parametrize("fps", [30, 60])
def test_audio2face_3d_csv_reads_as_the_same_track_as_the_other_layouts(tmp_path, index, fps):
    w, _, _ = random_track(45, seed=12, head=False, eyes=False)
    perm = np.random.default_rng(12).permutation(52)
    names = [PASCAL_NAMES[i] for i in perm] + ["TongueTwist"]
    table = np.concatenate([w[:, perm], np.full((45, 1), 0.5)], axis=1)
    path = audio2face_csv(tmp_path / "animation_frames.csv", table, names=names, fps=fps, index=index)
    assert sniff_arkit_track(path) == "csv"
    a2f3d = load_arkit_track(path)
    lam = load_arkit_track(arkit_json(tmp_path / "lam.json", w, fps=fps))
    assert a2f3d.names == lam.names == ARKIT_NAMES and a2f3d.fps == fps
    assert a2f3d.head is None and a2f3d.eyes is None
    np.testing.assert_array_equal(a2f3d.weights, _printed(w))
    np.testing.assert_allclose(a2f3d.weights, lam.weights, atol=1e-7)
    np.testing.assert_allclose(a2f3d.times, np.arange(45) / fps, atol=1e-6)
    assert a2f3d.warnings == ["1 channel(s) that are not ARKit blendshapes ignored: TongueTwist"]
    _, at_scene = a2f3d.resampled(fps, start_frame=1)
    np.testing.assert_array_equal(at_scene.weights, a2f3d.weights)  # the scene's rate: the rows exactly
    # a .txt name does not hide it, and a few channels are enough
    few = load_arkit_track(audio2face_csv(tmp_path / "few.txt", w[:, [17, 0]], names=["JawOpen", "EyeBlinkLeft"]))
    assert few.names == ("eyeBlinkLeft", "jawOpen")
    np.testing.assert_array_equal(few.channel("jawOpen"), _printed(w[:, 17]))


def test_audio2face_3d_csv_timing_notes(tmp_path):
    w = np.full((6, 1), 0.25)
    gap = load_arkit_track(audio2face_csv(tmp_path / "gap.csv", w, names=["JawOpen"],
                                          times=np.array([0, 1, 2, 4, 5, 6]) / 30))
    assert gap.fps == 30 and any("1 timeCode gap(s) (first at line 5" in x for x in gap.warnings)
    np.testing.assert_allclose(gap.times, np.array([0, 1, 2, 4, 5, 6]) / 30, atol=1e-6)
    one = load_arkit_track(audio2face_csv(tmp_path / "one.csv", w[:1], names=["JawOpen"]))
    assert one.fps == 30 and any("single row" in x for x in one.warnings)


BAD_A2F3D = [
    (dict(times=np.array([0.0, 0.1, 0.1])), "timeCode goes backwards or repeats at line 4"),
    (dict(names=["MouthSmile_L", "EyeBlink_L"]), "no ARKit blendshape names found"),
    (dict(weights=np.array([[0.1, np.nan], [0.2, 0.3], [0.3, 0.4]])), "line 2, column blendShapes.EyeBlinkLeft: nan"),
]


@pytest.mark.parametrize("kw, message", BAD_A2F3D)
def test_bad_audio2face_3d_csv_files_are_refused_clearly(tmp_path, kw, message):
    kw = {"weights": np.full((3, 2), 0.5), "names": ["JawOpen", "EyeBlinkLeft"], **kw}
    path = audio2face_csv(tmp_path / "bad.csv", **kw)
    with pytest.raises(BadInputError, match=message) as info:
        load_arkit_track(path)
    assert "Audio2Face-3D CSV" in str(info.value) and str(path) in str(info.value)


def test_an_audio2face_3d_csv_with_a_short_row_or_text_is_refused(tmp_path):
    path = audio2face_csv(tmp_path / "a.csv", np.full((3, 2), 0.5), names=["JawOpen", "EyeBlinkLeft"])
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1], lines[2].rsplit(",", 1)[0], lines[3]]))
    with pytest.raises(BadInputError, match="line 3 has 2 values, the header 3"):
        load_arkit_track(path)
    path.write_text("\n".join([lines[0], lines[1].replace("0.5000000000", "high", 1), *lines[2:]]))
    with pytest.raises(BadInputError, match="line 2, column blendShapes.JawOpen: 'high' is not a number"):
        load_arkit_track(path)


@pytest.mark.skipif(not REAL_JSON.is_file(), reason=f"{REAL_JSON} absent (shared/ fixtures not available)")
def test_real_lam_arkit_json():
    data = json.loads(REAL_JSON.read_text())
    track = load_arkit_track(REAL_JSON)
    n = len(data["frames"])
    assert track.n_frames == n == len(data["head_pose"])
    assert set(track.names) == set(data["names"]) <= set(ARKIT_NAMES)
    table = np.array([f["weights"] for f in data["frames"]], dtype=np.float64)
    for k, name in enumerate(data["names"]):
        np.testing.assert_array_equal(track.channel(name), table[:, k].astype(np.float32))
    assert track.fps == 30  # no metadata: 30 fps, as its frames' times say too
    np.testing.assert_allclose(track.times, [f["time"] - data["frames"][0]["time"] for f in data["frames"]])
    assert track.head.shape == (n, 3) and not track.head_documented
    frames, at24 = track.resampled(24, start_frame=1)
    assert frames[0] == 1 and at24.n_frames == int(np.floor((n - 1) / 30 * 24 + 1e-9)) + 1


def test_lam_web_calibration_table():
    expected = {"jawOpen": 1.2, "mouthClose": 0.2, "mouthLowerDownLeft": 0.7, "mouthLowerDownRight": 0.7,
                "mouthShrugUpper": 0.1, "mouthFunnel": 1.3, "mouthLeft": 1.3, "mouthRight": 1.3,
                "mouthShrugLower": 1.3, "mouthRollLower": 1.3, "mouthRollUpper": 1.3}
    for fam in ("mouthDimple", "mouthFrown", "mouthPress", "mouthStretch", "mouthUpperUp"):
        expected.update({fam + "Left": 1.3, fam + "Right": 1.3})
    assert LAM_WEB_CALIBRATION == expected
    assert set(LAM_WEB_CALIBRATION) <= set(ARKIT_NAMES)


def test_apply_calibration_and_strength(tmp_path):
    w, h, e = random_track(20, seed=10)
    track = load_arkit_track(live_link_csv(tmp_path / "c.csv", w, h, e, rate=30))
    cal = apply_calibration(track, strength=0.5)
    for name in ("jawOpen", "mouthClose", "eyeBlinkLeft", "mouthPressLeft"):
        np.testing.assert_allclose(cal.channel(name), track.channel(name) * 0.5 * LAM_WEB_CALIBRATION.get(name, 1.0),
                                   rtol=1e-6)
    np.testing.assert_array_equal(cal.head, track.head)
    plain = apply_calibration(track, strength=2.0, lam_web=False)
    np.testing.assert_allclose(plain.weights, track.weights * 2, rtol=1e-6)
    assert calibration_scales(("jawOpen", "tongueOut"), 1.0).tolist() == pytest.approx([1.2, 1.0])
    assert track.weights is not cal.weights and PASCAL_NAMES[17] == "JawOpen"
