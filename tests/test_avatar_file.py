"""The avatar file contract (backend/core/formats/avatar_file.py): round trip and every refusal."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from factories.avatar import make_avatar

from backend.core.formats import avatar_file as af
from backend.core.formats.avatar_file import AvatarFileError, load_avatar, save_avatar, to_arrays, validate


def test_round_trip_is_exact(tmp_path):
    av = make_avatar(n_points=200, n_expr=7, seed=2)
    path = save_avatar(tmp_path / "sub" / "head.npz", av)
    back = load_avatar(path)
    for key in ("xyz", "template", "rgb", "opacity", "scale", "rotation", "expr_dirs", "pose_dirs", "lbs_weights",
                "joints", "joint_expr_dirs", "parents", "faces", "shape_params"):
        np.testing.assert_array_equal(getattr(back, key), getattr(av, key), err_msg=key)
    assert back.joint_names == av.joint_names and back.meta == av.meta
    assert back.n_points == 200 and back.n_expr == 7 and back.n_joints == 5
    np.testing.assert_allclose(back.offset, av.xyz - av.template)
    # plain numpy reads it without pickle, with the documented dtypes
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) == set(af.REQUIRED_KEYS)
        assert str(npz["format"]) == af.FORMAT and int(npz["version"]) == af.VERSION
        assert npz["xyz"].dtype == np.float32 and npz["faces"].dtype == np.int32 and npz["parents"].dtype == np.int32
        assert json.loads(str(npz["meta"])) == av.meta
    assert [p.name for p in path.parent.iterdir()] == ["head.npz"]  # no temporary left


def test_optional_keys_round_trip_and_stay_optional(tmp_path):
    av = make_avatar(n_points=60, n_expr=3, seed=4)
    rng = np.random.default_rng(0)
    av.arkit_dirs = rng.normal(scale=1e-3, size=(60, 3, 4)).astype(np.float32)
    av.arkit_names = ("jawOpen", "eyeBlinkLeft", "eyeBlinkRight", "mouthClose")
    av.opacity = np.clip(av.opacity, 0.01, 0.99).astype(np.float32)
    av.opacity_logit = np.log(av.opacity / (1 - av.opacity)).astype(np.float32)
    av.pose_dirs = np.zeros((60, 3, 0), np.float32)  # no pose correctives
    back = load_avatar(save_avatar(tmp_path / "a.npz", av))
    np.testing.assert_array_equal(back.arkit_dirs, av.arkit_dirs)
    assert back.arkit_names == av.arkit_names and back.n_arkit == 4
    np.testing.assert_array_equal(back.opacity_logit, av.opacity_logit)
    assert not back.has_pose_correctives
    with np.load(tmp_path / "a.npz") as npz:
        assert set(npz.files) == set(af.REQUIRED_KEYS) | set(af.OPTIONAL_KEYS)


def test_version_1_files_still_load(tmp_path):
    arrays = to_arrays(make_avatar(30, 2))
    arrays["version"] = np.array(1, dtype=np.int32)
    np.savez(tmp_path / "v1.npz", **arrays)
    back = load_avatar(tmp_path / "v1.npz")
    assert back.arkit_dirs is None and back.arkit_names == () and back.opacity_logit is None


def test_validate_converts_dtypes():
    arrays = to_arrays(make_avatar(50, 3))
    arrays["xyz"] = arrays["xyz"].astype(np.float64)
    arrays["faces"] = arrays["faces"].astype(np.int64)
    av = validate(arrays)
    assert av.xyz.dtype == np.float32 and av.faces.dtype == np.int32


def _arrays(**changes):
    a = to_arrays(make_avatar(40, 4, seed=1))
    for k, v in changes.items():
        if v is None:
            del a[k]
        else:
            a[k] = v
    return a


def _modified(key, fn):
    a = _arrays()
    a[key] = fn(a[key].copy())
    return a


def _set(idx, value):
    def fn(x):
        x[idx] = value
        return x

    return fn


N = 40
CASES = [
    # (arrays, key, message fragment)
    (_arrays(xyz=None), "xyz", "missing"),
    (_arrays(xyz=None, rgb=None), "xyz", "also missing: rgb"),
    (_arrays(format=np.array(3)), "format", "expected a string"),
    (_arrays(format=np.array("something-else")), "format", "expected 'lam-head-avatar'"),
    (_arrays(version=np.array(1.0)), "version", "integer scalar"),
    (_arrays(version=np.array([1])), "version", "integer scalar"),
    (_arrays(version=np.array(3)), "version", "not supported"),
    (_arrays(version=np.array(0)), "version", "not supported"),
    (_arrays(rgb=np.full((N, 3), "a")), "rgb", "expected a float array"),
    (_modified("scale", _set((0, 0), np.nan)), "scale", "NaN or infinite"),
    (_modified("xyz", _set((3, 1), np.inf)), "xyz", "NaN or infinite"),
    (_arrays(faces=np.zeros((4, 3), np.float32)), "faces", "integer array"),
    (_arrays(parents=np.array([-1.0, 0, 1, 1, 1])), "parents", "integer array"),
    (_arrays(xyz=np.zeros((N, 4), np.float32)), "xyz", "does not match expected (*, 3)"),
    (_arrays(xyz=np.zeros((0, 3), np.float32)), "xyz", "has no points"),
    (_arrays(template=np.zeros((N + 1, 3), np.float32)), "template", f"expected ({N}, 3)"),
    (_arrays(rgb=np.zeros((N, 4), np.float32)), "rgb", "does not match"),
    (_arrays(opacity=np.zeros((N, 1), np.float32)), "opacity", f"expected ({N})"),
    (_arrays(scale=np.ones((N,), np.float32)), "scale", "does not match"),
    (_arrays(rotation=np.zeros((N, 3), np.float32)), "rotation", "does not match"),
    (_arrays(expr_dirs=np.zeros((N, 3), np.float32)), "expr_dirs", "does not match"),
    (_arrays(joints=np.zeros((5, 2), np.float32)), "joints", "does not match"),
    (_arrays(joints=np.zeros((0, 3), np.float32)), "joints", "has no joints"),
    (_arrays(lbs_weights=np.full((N, 4), 0.25, np.float32)), "lbs_weights", "does not match"),
    (_arrays(pose_dirs=np.zeros((N, 3, 35), np.float32)), "pose_dirs", "expected (40, 3, 36)"),
    (_arrays(joint_expr_dirs=np.zeros((5, 3, 5), np.float32)), "joint_expr_dirs", "expected (5, 3, 4)"),
    (_arrays(parents=np.array([-1, 0, 1, 1], np.int32)), "parents", "expected (5)"),
    (_arrays(faces=np.zeros((4, 4), np.int32)), "faces", "does not match"),
    (_arrays(shape_params=np.zeros((2, 2), np.float32)), "shape_params", "does not match"),
    (_modified("rgb", _set((2, 0), 1.5)), "rgb", "must lie in [0, 1]"),
    (_modified("opacity", _set(5, -0.1)), "opacity", "must lie in [0, 1]"),
    (_modified("scale", _set((1, 2), 0.0)), "scale", "must be positive"),
    (_modified("rotation", lambda q: q * 1.1), "rotation", "unit length"),
    (_modified("lbs_weights", lambda w: np.concatenate([w[:, :1] + 0.5, w[:, 1:2] - 0.5, w[:, 2:]], 1)), "lbs_weights", "non-negative"),
    (_modified("lbs_weights", _set((6, 0), 0.9)), "lbs_weights", "row 6 sums to"),
    (_arrays(parents=np.array([0, 0, 1, 1, 1], np.int32)), "parents", "must be the root"),
    (_arrays(parents=np.array([-1, 0, 3, 1, 1], np.int32)), "parents", "joint 2 has parent 3"),
    (_modified("faces", _set((0, 0), N)), "faces", "indices must lie in [0, 40)"),
    (_modified("faces", _set((0, 0), -1)), "faces", "indices must lie in [0, 40)"),
    (_arrays(joint_names=np.array([1, 2, 3, 4, 5])), "joint_names", "expected 5 strings"),
    (_arrays(joint_names=np.array(["a", "b", "c", "d"])), "joint_names", "expected 5 strings"),
    (_arrays(joint_names=np.array(["a", "b", "c", "d", "a"])), "joint_names", "unique"),
    (_arrays(meta=np.array(["{}"])), "meta", "expected a string"),
    (_arrays(meta=np.array("{not json")), "meta", "not valid JSON"),
    (_arrays(meta=np.array("[1, 2]")), "meta", "JSON object"),
    (_arrays(arkit_dirs=np.zeros((N, 3, 2), np.float32)), "arkit_names", "missing ('arkit_dirs' is present"),
    (_arrays(arkit_names=np.array(["jawOpen"])), "arkit_dirs", "missing ('arkit_names' is present"),
    (_arrays(arkit_dirs=np.zeros((N, 2, 2), np.float32), arkit_names=np.array(["a", "b"])), "arkit_dirs", "does not match"),
    (_arrays(arkit_dirs=np.zeros((N, 3, 2), np.float32), arkit_names=np.array(["a"])), "arkit_names", "expected 2 strings"),
    (_arrays(arkit_dirs=np.zeros((N, 3, 2), np.float32), arkit_names=np.array(["a", "a"])), "arkit_names", "unique"),
    (_arrays(arkit_dirs=np.full((N, 3, 1), np.nan, np.float32), arkit_names=np.array(["a"])), "arkit_dirs", "NaN"),
    (_arrays(opacity_logit=np.zeros(N + 1, np.float32)), "opacity_logit", f"expected ({N})"),
    (_arrays(opacity_logit=np.full(N, 9.0, np.float32)), "opacity_logit", "disagrees with 'opacity'"),
]


@pytest.mark.parametrize(("arrays", "key", "fragment"), CASES, ids=[f"{i}-{c[1]}" for i, c in enumerate(CASES)])
def test_every_validation_error_names_the_key(arrays, key, fragment):
    with pytest.raises(AvatarFileError) as err:
        validate(arrays)
    assert err.value.key == key
    assert fragment in err.value.problem
    assert f"key '{key}'" in str(err.value)


def test_load_reports_the_path_and_key(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, **_arrays(rgb=np.zeros((N, 4), np.float32)))
    with pytest.raises(AvatarFileError) as err:
        load_avatar(path)
    assert err.value.key == "rgb" and err.value.path == str(path) and str(path) in str(err.value)


def test_unreadable_files_are_refused(tmp_path):
    with pytest.raises(AvatarFileError, match="file not found"):
        load_avatar(tmp_path / "missing.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_text("hello, not an archive")
    with pytest.raises(AvatarFileError, match="not a readable .npz archive .no ZIP header"):
        load_avatar(garbage)
    npy = tmp_path / "array.npz"
    with npy.open("wb") as fh:
        np.save(fh, np.zeros(3))  # a bare .npy under an .npz name
    with pytest.raises(AvatarFileError, match="not a readable .npz archive .no ZIP header"):
        load_avatar(npy)
    broken = tmp_path / "broken.npz"
    good = save_avatar(tmp_path / "good.npz", make_avatar(30, 2))
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # truncated download
    with pytest.raises(AvatarFileError, match="not a readable .npz"):
        load_avatar(broken)


def test_pickled_content_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.npz"
    arrays = _arrays()
    arrays["meta"] = np.array([{"x": 1}], dtype=object)
    np.savez(path, **arrays)
    with pytest.raises(AvatarFileError, match="needs pickle"):
        load_avatar(path)


def test_extra_non_array_member_is_refused(tmp_path):
    path = save_avatar(tmp_path / "a.npz", make_avatar(30, 2))
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["xyz.npy"] = b"\x93NUMPY garbage"
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    with pytest.raises(AvatarFileError, match="not a readable .npz"):
        load_avatar(path)


def test_save_refuses_invalid_avatar_and_leaves_existing_file(tmp_path):
    path = save_avatar(tmp_path / "a.npz", make_avatar(30, 2))
    before = path.read_bytes()
    bad = make_avatar(30, 2)
    bad.opacity[0] = 2.0
    with pytest.raises(AvatarFileError, match="opacity"):
        save_avatar(path, bad)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]


# ------------------------------------------------------------------ assembling an avatar from a FLAME rig


def _gaussians(n, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    return dict(rgb=rng.uniform(size=(n, 3)), opacity=rng.uniform(size=(n, 1)), scale=rng.uniform(1e-3, 1e-2, size=(n, 3)),
                rotation=q / np.linalg.norm(q, axis=1, keepdims=True))


def test_assembled_avatar_round_trips_and_rests_at_xyz(tmp_path):
    from factories.flame import make_flame_model

    from backend.core import rig as rig_math
    from backend.create.assemble import assemble_avatar
    from backend.flame import build_rig

    r = build_rig(make_flame_model(200, n_shape=6, n_expr=5), np.linspace(-1, 1, 6), levels=1)
    xyz = r.template + 0.004
    av = assemble_avatar(r, xyz, meta={"model": "test", "image_sha256": "0" * 64}, **_gaussians(r.n_points))
    back = load_avatar(save_avatar(tmp_path / "a.npz", av))
    np.testing.assert_allclose(back.offset, 0.004, atol=1e-6)
    np.testing.assert_array_equal(back.expr_dirs, r.expr_dirs)
    np.testing.assert_array_equal(back.faces, r.faces)
    assert back.joint_names == ("root", "neck", "jaw", "eye_l", "eye_r") and back.meta["model"] == "test"
    np.testing.assert_allclose(rig_math.evaluate(back, rig_math.FlamePose.zeros(1, 5)).positions[0], back.xyz, atol=1e-7)


def test_assemble_refuses_mismatched_gaussians():
    from factories.flame import make_flame_model

    from backend.create.assemble import assemble_avatar
    from backend.flame import build_rig

    r = build_rig(make_flame_model(120, n_shape=4, n_expr=2), np.zeros(4), levels=0)
    with pytest.raises(AvatarFileError, match="xyz"):
        assemble_avatar(r, r.template[:-1], meta={}, **_gaussians(r.n_points))
    g = _gaussians(r.n_points)
    g["opacity"] = g["opacity"] * 3
    with pytest.raises(AvatarFileError, match="opacity"):
        assemble_avatar(r, r.template, meta={}, **g)


def test_meta_must_be_strict_json(tmp_path):
    avatar = make_avatar()
    avatar.meta = {"fit_rms_px": float("nan")}
    with pytest.raises(AvatarFileError, match="meta"):
        save_avatar(tmp_path / "a.npz", avatar)
    assert not list(tmp_path.iterdir())
