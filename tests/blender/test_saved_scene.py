"""An avatar survives saving and reopening the .blend: after ``open_mainfile`` the rig deforms as
before at every keyed frame, every driver still evaluates (no Python auto-run needed), the splat
sequence export writes the same files and a LAM ZIP avatar exports the same ZIP (its template
travels inside the .blend)."""

from __future__ import annotations

import bpy
import numpy as np
import pytest
from factories import lam_zips
from factories.avatar import make_avatar
from harness import enable_addon

from backend.core.formats.arkit_track import ARKIT_NAMES
from backend.core.formats.avatar_file import save_avatar

REAL = lam_zips.real_zips()
REAL_JSON = lam_zips.REAL_DIR / "test_expression_1s.json"
FRAMES = (1, 4, 9)


def _positions(lam, name: str) -> dict[int, np.ndarray]:
    """The deformed points (the armature's result; the splat instancing after it switched off)."""
    mesh_obj = bpy.data.objects[name]
    shown = {m.name: m.show_viewport for m in mesh_obj.modifiers}
    for mod in mesh_obj.modifiers:
        mod.show_viewport = mod.type == "ARMATURE"
    out = {}
    for f in FRAMES:
        bpy.context.scene.frame_set(f)
        out[f] = lam.controls.evaluated_positions(mesh_obj).copy()
    for mod in mesh_obj.modifiers:
        mod.show_viewport = shown[mod.name]
    return out


def _drivers(name: str) -> list:
    """Every driver of the avatar's objects and shape keys."""
    mesh_obj = bpy.data.objects[name]
    owners = [mesh_obj, mesh_obj.parent, mesh_obj.data.shape_keys]
    return [fc for o in owners if o is not None and o.animation_data for fc in o.animation_data.drivers]


def _export_sequence(name: str, folder) -> dict[str, bytes]:
    bpy.context.view_layer.objects.active = bpy.data.objects[name]
    assert bpy.ops.lam_head.export_splat_sequence(directory=str(folder), frame_start=FRAMES[0],
                                                  frame_end=FRAMES[-1]) == {"FINISHED"}
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _reopen(path) -> None:
    assert bpy.ops.wm.save_as_mainfile(filepath=str(path)) == {"FINISHED"}
    bpy.ops.wm.read_factory_settings(use_empty=True)  # nothing of the session survives but the file
    assert not bpy.data.objects
    enable_addon()  # as a user's preferences have it when Blender starts (a factory reset disables add-ons)
    assert bpy.ops.wm.open_mainfile(filepath=str(path), load_ui=False) == {"FINISHED"}


def test_our_avatar_with_a_flame_take_and_correctives(lam, tmp_path):
    av = make_avatar(n_points=300, n_expr=12, seed=5)
    rng = np.random.default_rng(1)
    av.arkit_names = ARKIT_NAMES[:-1]
    av.arkit_dirs = rng.normal(scale=2e-3, size=(av.n_points, 3, len(av.arkit_names))).astype(np.float32)
    assert bpy.ops.lam_head.import_avatar(filepath=str(save_avatar(tmp_path / "ours.npz", av))) == {"FINISHED"}
    mesh_obj = bpy.context.view_layer.objects.active
    lam.controls.set_pose_correctives(mesh_obj, True)
    t = 12
    take = {"expr": rng.normal(size=(t, 12)) * 0.8, "rotation": rng.normal(scale=0.2, size=(t, 3)),
            "neck_pose": rng.normal(scale=0.3, size=(t, 3)), "jaw_pose": rng.normal(scale=0.2, size=(t, 3)),
            "eyes_pose": rng.normal(scale=0.15, size=(t, 6)), "translation": rng.normal(scale=0.02, size=(t, 3))}
    np.savez(tmp_path / "take.npz", **{k: v.astype(np.float32) for k, v in take.items()})
    assert bpy.ops.lam_head.import_motion(filepath=str(tmp_path / "take.npz")) == {"FINISHED"}
    name = mesh_obj.name
    before = _positions(lam, name)
    assert np.abs(before[4] - before[9]).max() > 1e-3  # the take moves the head
    drivers = _drivers(name)
    assert len(drivers) >= 9 * 4  # the correctives' drivers (and the splat drivers)
    seq_before = _export_sequence(name, tmp_path / "seq_before")

    _reopen(tmp_path / "scene.blend")
    assert lam.controls.find_avatar(bpy.data.objects[name]) is not None
    after = _positions(lam, name)
    for f in FRAMES:
        np.testing.assert_allclose(after[f], before[f], atol=1e-7, rtol=0, err_msg=f"frame {f}")
    reopened = _drivers(name)
    assert len(reopened) == len(drivers)
    assert all(fc.driver.is_valid and not fc.mute for fc in reopened), [fc.data_path for fc in reopened
                                                                          if not fc.driver.is_valid]
    assert lam.controls.pose_correctives_enabled(bpy.data.objects[name])
    assert _export_sequence(name, tmp_path / "seq_after") == seq_before


@pytest.mark.skipif(not REAL or not REAL_JSON.is_file(), reason=f"no real LAM files in {lam_zips.REAL_DIR}")
def test_a_lam_zip_avatar_with_an_arkit_take_exports_the_same_zip(lam, tmp_path, monkeypatch):
    monkeypatch.setenv("LAM_HEAD_HOME", str(tmp_path / "empty_home"))  # only the template in the .blend
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 30, 1.0
    scene.frame_set(1)
    assert bpy.ops.lam_head.import_lam_zip(filepath=str(REAL[0])) == {"FINISHED"}
    mesh_obj = bpy.context.view_layer.objects.active
    assert bpy.ops.lam_head.import_motion(filepath=str(REAL_JSON)) == {"FINISHED"}
    name = mesh_obj.name
    before = _positions(lam, name)
    assert np.abs(before[1] - before[9]).max() > 1e-4  # the take moves the face
    bpy.context.view_layer.objects.active = mesh_obj
    assert bpy.ops.lam_head.export_lam_zip(filepath=str(tmp_path / "before.zip")) == {"FINISHED"}

    _reopen(tmp_path / "scene.blend")
    after = _positions(lam, name)
    for f in FRAMES:
        np.testing.assert_allclose(after[f], before[f], atol=1e-7, rtol=0, err_msg=f"frame {f}")
    assert all(fc.driver.is_valid for fc in _drivers(name))
    bpy.context.view_layer.objects.active = bpy.data.objects[name]
    assert bpy.ops.lam_head.export_lam_zip(filepath=str(tmp_path / "after.zip")) == {"FINISHED"}
    a, b = lam_zips.members(tmp_path / "before.zip"), lam_zips.members(tmp_path / "after.zip")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), [k for k in a if a[k] != b.get(k)]


def _template_texts() -> list[str]:
    return sorted(t.name for t in bpy.data.texts if t.name.endswith(".lam_template"))


@pytest.mark.skipif(not REAL, reason=f"no real LAM ZIP in {lam_zips.REAL_DIR}")
def test_a_deleted_lam_zip_avatar_leaves_no_template_in_the_saved_file(lam, tmp_path, monkeypatch):
    """The template (megabytes) is kept while an avatar uses it and dropped with the last one."""
    monkeypatch.setenv("LAM_HEAD_HOME", str(tmp_path / "empty_home"))
    names = []
    for _ in range(2):
        assert bpy.ops.lam_head.import_lam_zip(filepath=str(REAL[0])) == {"FINISHED"}
        names.append(bpy.context.view_layer.objects.active.name)
    assert len(_template_texts()) == 2
    first = bpy.data.objects[names[0]]
    for obj in (first, first.parent):
        bpy.data.objects.remove(obj)
    _reopen(tmp_path / "one.blend")
    assert _template_texts() == [f"{names[1]}.lam_template"]
    bpy.context.view_layer.objects.active = bpy.data.objects[names[1]]
    assert bpy.ops.lam_head.export_lam_zip(filepath=str(tmp_path / "second.zip")) == {"FINISHED"}
    second = bpy.data.objects[names[1]]
    for obj in (second, second.parent):
        bpy.data.objects.remove(obj)
    _reopen(tmp_path / "none.blend")
    assert _template_texts() == []


@pytest.mark.skipif(not REAL, reason=f"no real LAM ZIP in {lam_zips.REAL_DIR}")
def test_files_that_name_the_template_text_still_export(lam, tmp_path, monkeypatch):
    """Earlier versions stored the text's name and gave the text a fake user."""
    monkeypatch.setenv("LAM_HEAD_HOME", str(tmp_path / "empty_home"))
    assert bpy.ops.lam_head.import_lam_zip(filepath=str(REAL[0])) == {"FINISHED"}
    mesh_obj = bpy.context.view_layer.objects.active
    assert bpy.ops.lam_head.export_lam_zip(filepath=str(tmp_path / "pointer.zip")) == {"FINISHED"}
    text = mesh_obj["lam_template_text"]
    text.use_fake_user = True
    mesh_obj["lam_template_text"] = text.name
    name = mesh_obj.name
    _reopen(tmp_path / "old.blend")
    bpy.context.view_layer.objects.active = bpy.data.objects[name]
    assert bpy.ops.lam_head.export_lam_zip(filepath=str(tmp_path / "name.zip")) == {"FINISHED"}
    assert lam_zips.members(tmp_path / "name.zip") == lam_zips.members(tmp_path / "pointer.zip")
