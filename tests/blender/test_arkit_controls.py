"""ARKit controls: grouped sliders, left/right link, reset and keyframes on FLAME + ARKit keys."""

from __future__ import annotations

import bpy
import numpy as np
from factories.avatar import make_avatar

from backend.core.formats.arkit_track import ARKIT_NAMES
from backend.core.formats.avatar_file import save_avatar


def _import(tmp_path):
    av = make_avatar(n_points=200, n_expr=4, seed=2)
    av.arkit_names = ARKIT_NAMES
    av.arkit_dirs = np.random.default_rng(0).normal(scale=2e-3, size=(200, 3, len(ARKIT_NAMES))).astype(np.float32)
    assert bpy.ops.lam_head.import_avatar(filepath=str(save_avatar(tmp_path / "a.npz", av))) == {"FINISHED"}
    mesh_obj = bpy.context.view_layer.objects.active
    for mod in mesh_obj.modifiers:
        mod.show_viewport = mod.type == "ARMATURE"
    return mesh_obj, av


def test_groups_cover_every_key_as_artists_know_them(lam, tmp_path):
    mesh_obj, av = _import(tmp_path)
    groups = dict(lam.controls.arkit_groups(mesh_obj))
    assert list(groups) == ["Brows", "Eyes", "Cheeks", "Nose", "Jaw", "Mouth", "Tongue"]
    assert sorted(kb.name for keys in groups.values() for kb in keys) == sorted(ARKIT_NAMES)
    assert [kb.name for kb in groups["Tongue"]] == ["tongueOut"]
    assert bpy.types.VIEW3D_PT_lam_head_arkit.poll(bpy.context)


def test_linked_sides_move_together_and_unlink_cleanly(lam, tmp_path):
    mesh_obj, av = _import(tmp_path)
    keys = mesh_obj.data.shape_keys.key_blocks
    assert bpy.ops.lam_head.link_arkit_sides() == {"FINISHED"} and lam.controls.arkit_sides_linked(mesh_obj)
    keys["eyeBlinkLeft"].value = 0.7
    bpy.context.view_layer.update()
    got = lam.controls.evaluated_positions(mesh_obj)
    both = av.arkit_dirs[:, :, ARKIT_NAMES.index("eyeBlinkLeft")] + av.arkit_dirs[:, :, ARKIT_NAMES.index("eyeBlinkRight")]
    np.testing.assert_allclose(got, av.xyz + 0.7 * both, atol=1e-6)
    assert bpy.ops.lam_head.insert_keyframes(what="EXPRESSION") == {"FINISHED"}
    assert mesh_obj.data.shape_keys.animation_data.action is not None
    assert bpy.ops.lam_head.link_arkit_sides() == {"FINISHED"} and not lam.controls.arkit_sides_linked(mesh_obj)
    assert keys["eyeBlinkRight"].value == keys["eyeBlinkLeft"].value  # unlinking keeps the pose


def test_reset_clears_flame_and_arkit_keys(lam, tmp_path):
    mesh_obj, _ = _import(tmp_path)
    keys = mesh_obj.data.shape_keys.key_blocks
    keys["jawOpen"].value, keys["expr_002"].value = 0.5, 1.0
    assert bpy.ops.lam_head.reset_controls(what="EXPRESSION") == {"FINISHED"}
    assert keys["jawOpen"].value == 0.0 and keys["expr_002"].value == 0.0
