"""FLAME motions in a .zip: a zipped flame_param/ folder (with OS junk) or one stacked .npz read in
memory equal the unzipped reads; unsafe or ambiguous archives are refused clearly."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from backend.core.errors import BadInputError
from backend.core.formats.flame_motion import load_motion, save_motion
from backend.core.rig import FlamePose

FIELDS = ("expr", "rotation", "neck", "jaw", "eye_l", "eye_r", "translation")


def _frame(i: int, n_expr: int = 20) -> dict[str, np.ndarray]:
    r = np.random.default_rng(100 + i)
    return {
        "expr": r.normal(size=(1, n_expr)).astype(np.float32),
        "rotation": r.normal(scale=0.1, size=(1, 3)).astype(np.float32),
        "neck_pose": r.normal(scale=0.1, size=(1, 3)).astype(np.float32),
        "jaw_pose": r.normal(scale=0.1, size=(1, 3)).astype(np.float32),
        "eyes_pose": r.normal(scale=0.1, size=(1, 6)).astype(np.float32),
        "translation": r.normal(scale=0.01, size=(1, 3)).astype(np.float32),
    }


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _assert_same(a: FlamePose, b: FlamePose) -> None:
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def test_zipped_flame_param_folder_equals_the_folder(tmp_path):
    folder = tmp_path / "seq" / "flame_param"
    folder.mkdir(parents=True)
    zpath = tmp_path / "seq.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr(zipfile.ZipInfo("seq/"), "")
        for i in range(11):
            data = _npz_bytes(_frame(i))
            (folder / f"{i}.npz").write_bytes(data)
            z.writestr(f"seq/flame_param/{i}.npz", data)  # 0..10: natural order != lexical
        z.writestr("seq/transforms.json", "{}")
        z.writestr("seq/other/extra.npz", _npz_bytes(_frame(99)))  # not under flame_param/: not read
        z.writestr("__MACOSX/seq/flame_param/._3.npz", b"junk")
        z.writestr("seq/flame_param/.DS_Store", b"junk")
    zipped = load_motion(zpath, n_expr=20)
    plain = load_motion(folder, n_expr=20)
    assert zipped.n_frames == 11 and zipped.fps == 30.0
    _assert_same(zipped.pose, plain.pose)
    np.testing.assert_array_equal(zipped.pose.expr[10], _frame(10)["expr"][0])


def test_zip_of_per_frame_files_at_the_root_and_of_one_stacked_npz(tmp_path):
    zpath = tmp_path / "flat.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for i in range(3):
            z.writestr(f"frame_{i}.npz", _npz_bytes(_frame(i)))
    flat = load_motion(zpath)
    np.testing.assert_array_equal(flat.pose.jaw[2], _frame(2)["jaw_pose"][0])

    pose = FlamePose.zeros(6, 20)
    pose.jaw[:, 0] = np.linspace(0, 0.3, 6)
    stacked = save_motion(tmp_path / "m.npz", pose, fps=25)
    zpath = tmp_path / "stacked.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.write(stacked, "take/m.npz")
    got = load_motion(zpath)
    assert got.n_frames == 6 and got.fps == 25
    _assert_same(got.pose, load_motion(stacked).pose)


@pytest.mark.parametrize("members, message", [
    ({"readme.txt": b"hi"}, "no .npz files inside"),
    ({"a/1.npz": None, "b/2.npz": None}, "several folders"),
    ({"../evil.npz": None}, "'..' in the path"),
    ({"f/0.npz": b"not a zip"}, "not a readable .npz"),
    ({"f/0.npz": "pickle"}, "pickle"),
    ({"f/0.npz": "nothing"}, "no FLAME parameters"),
])
def test_bad_motion_zips_are_refused(tmp_path, members, message):
    zpath = tmp_path / "bad.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for name, data in members.items():
            if data is None:
                data = _npz_bytes(_frame(0))
            elif data == "pickle":
                data = _npz_bytes({"expr": np.array([{"x": 1}], dtype=object)})
            elif data == "nothing":
                data = _npz_bytes({"foo": np.zeros(2)})
            z.writestr(name, data)
    with pytest.raises(BadInputError, match=message) as info:
        load_motion(zpath)
    assert "bad.zip" in str(info.value)


def test_not_a_zip(tmp_path):
    path = tmp_path / "m.zip"
    path.write_text("plain text")
    with pytest.raises(BadInputError, match="not a ZIP"):
        load_motion(path)
