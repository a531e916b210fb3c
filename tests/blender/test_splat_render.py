"""The splat node path: modifier set-up, inputs, rotations that follow the rig, and renders
that match the backend's own renderer (Cycles in-process, EEVEE in a subprocess)."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import bpy
import eevee_render_job as job
import numpy as np
import pytest
from mathutils import Quaternion, Vector

from backend.core import rig
from backend.core.formats.avatar_file import load_avatar
from backend.render import PinholeCamera, render_gaussians

N_POINTS = 300


def _import(lam, path):
    assert bpy.ops.lam_head.import_avatar(filepath=str(path)) == {"FINISHED"}
    mesh_obj = bpy.context.view_layer.objects.active
    return mesh_obj, mesh_obj.parent, importlib.import_module(lam.__name__ + ".splat")


def _instances(mesh_obj):
    """World matrices of the evaluated splat instances of ``mesh_obj``."""
    dg = bpy.context.evaluated_depsgraph_get()
    return [np.array(inst.matrix_world) for inst in dg.object_instances
            if inst.is_instance and inst.parent is not None and inst.parent.original == mesh_obj]


def _psnr(a, b):
    return 10 * math.log10(1.0 / max(float(((a - b) ** 2).mean()), 1e-12))


def _box(x, r=3):
    """Mean over (2r+1)^2 windows (valid region), per channel."""
    c = np.cumsum(np.cumsum(np.pad(x, ((1, 0), (1, 0), (0, 0))), 0), 1)
    k = 2 * r + 1
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def _ssim(a, b):
    """Mean SSIM with 7x7 uniform windows (skimage's default; numpy only: the Blender 4.5
    test environment has no scikit-image)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = 0.01**2, 0.03**2
    ma, mb = _box(a), _box(b)
    va, vb, cov = _box(a * a) - ma**2, _box(b * b) - mb**2, _box(a * b) - ma * mb
    n = 49 / 48  # sample covariance, as skimage
    s = ((2 * ma * mb + c1) * (2 * cov * n + c2)) / ((ma**2 + mb**2 + c1) * ((va + vb) * n + c2))
    return float(s.mean())


def _over_white(rgba):
    return np.clip(rgba[..., :3] + (1.0 - rgba[..., 3:4]), 0.0, 1.0)


def _reference(avatar, cam: dict):
    camera = PinholeCamera(cam["width"], cam["height"], cam["fx"], cam["fy"], cam["cx"], cam["cy"],
                           np.array(cam["world_to_camera"]))
    return render_gaussians(avatar.xyz, avatar.rotation, avatar.scale, avatar.opacity, avatar.rgb, camera,
                            background=None, backend="cpu")


def test_modifier_follows_the_armature_and_has_inputs(lam, avatar_file):
    path = avatar_file(n_points=N_POINTS)
    mesh_obj, arm_obj, splat = _import(lam, path)
    mods = list(mesh_obj.modifiers)
    assert mods[-1].type == "NODES" and mods[-1].name == splat.MODIFIER_NAME
    assert any(m.type == "ARMATURE" for m in mods[:-1])
    drivers = [d for d in mesh_obj.animation_data.drivers if d.data_path.startswith(f'modifiers["{splat.MODIFIER_NAME}"]')]
    assert len(drivers) == 15  # 5 bones x 3 rotation channels feed the blended rotations
    assert bpy.context.scene.cycles.transparent_max_bounces >= 512
    mod = splat.find_modifier(mesh_obj)
    assert len(_instances(mesh_obj)) == N_POINTS

    av = load_avatar(path)
    splat.set_inputs(mod, **{"Opacity Cut-off": 0.5})
    assert len(_instances(mesh_obj)) == int((av.opacity >= 0.5).sum())
    splat.set_inputs(mod, **{"Opacity Cut-off": 0.0, "Viewport Points": 60})
    kept = len(_instances(mesh_obj))  # background bpy evaluates the viewport depsgraph
    assert 30 <= kept <= 90, kept

    # Size multiplies the instance scale (the primitive is scaled by sigma * size).
    splat.set_inputs(mod, **{"Viewport Points": 10**6})
    before = np.array([np.linalg.norm(m[:3, :3], axis=0) for m in _instances(mesh_obj)])
    splat.set_inputs(mod, Size=2.0)
    after = np.array([np.linalg.norm(m[:3, :3], axis=0) for m in _instances(mesh_obj)])
    np.testing.assert_allclose(after, 2 * before, rtol=1e-5)


def _instance_rotations(mesh_obj):
    mats = _instances(mesh_obj)
    return np.array([m[:3, 3] for m in mats]), np.array([m[:3, :3] / np.linalg.norm(m[:3, :3], axis=0) for m in mats]), \
        np.array([np.linalg.norm(m[:3, :3], axis=0) for m in mats])


def _angle_deg(a, b):
    rel = np.einsum("nji,njk->nik", a, b)
    return np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))


def test_gaussians_rotate_with_the_rig(lam, avatar_file):
    """A rigid root rotation: every Gaussian turns with it exactly (R * q); centres and
    scales follow the instance transform; the primitive bounds 3 sigma."""
    path = avatar_file(n_points=N_POINTS)
    av = load_avatar(path)
    mesh_obj, arm_obj, _ = _import(lam, path)
    root = arm_obj.pose.bones[0]
    root.rotation_mode = "XYZ"
    root.rotation_euler = (0.3, -0.5, 0.2)
    bpy.context.view_layer.update()
    centres, rot, scales = _instance_rotations(mesh_obj)
    assert len(centres) == N_POINTS  # instances come out in point order (none dropped here)
    world = np.array(arm_obj.matrix_world)
    r_root = np.array(root.matrix_basis.to_3x3())  # identity rest orientation: local == armature space
    skinned = av.xyz @ r_root.T + (av.joints[0] - r_root @ av.joints[0])
    np.testing.assert_allclose(centres, skinned @ world[:3, :3].T + world[:3, 3], atol=1e-5)
    want = world[:3, :3] @ r_root @ rig.quaternion_to_matrix(av.rotation)
    np.testing.assert_allclose(rot, want, atol=1e-4)
    np.testing.assert_allclose(scales, av.scale, rtol=1e-4)  # the primitive is in sigma units
    dg = bpy.context.evaluated_depsgraph_get()
    prim = next(i.object for i in dg.object_instances if i.is_instance and i.parent.original == mesh_obj)
    verts = np.array([v.co for v in prim.data.vertices])
    dist = [abs(np.dot(np.array(p.normal), verts[p.vertices[0]])) for p in prim.data.polygons]
    assert 3.0 - 1e-4 <= min(dist) < 3.3  # every face plane lies >= 3 sigma from the centre


def test_viewport_rotations_approximate_r_of_a(lam, avatar_file):
    """Jaw + neck + eyes + head pose: the node path's blended-quaternion rotations stay
    within a fraction of a degree of the exact R(A) * q the exporter writes."""
    path = avatar_file(n_points=N_POINTS, seed=3)
    av = load_avatar(path)
    mesh_obj, arm_obj, splat = _import(lam, path)
    pose = rig.FlamePose.zeros(1, av.n_expr)
    pose.rotation[0], pose.neck[0], pose.jaw[0] = [0.1, 0.4, 0.0], [0.2, -0.3, 0.1], [0.45, 0.0, 0.05]
    pose.eye_l[0], pose.eye_r[0] = [0.0, 0.3, 0.0], [0.1, -0.2, 0.0]
    for name, field in zip(("root", "neck", "jaw", "eye_L", "eye_R"), rig.POSE_JOINTS):
        pb = arm_obj.pose.bones[name]
        pb.rotation_mode = "QUATERNION"
        aa = Vector(getattr(pose, field)[0].tolist())
        pb.rotation_quaternion = Quaternion(aa.normalized(), aa.length)
    bpy.context.view_layer.update()
    _, rot, _ = _instance_rotations(mesh_obj)
    d = rig.evaluate(av, pose, with_rotations=True)
    world = np.array(mesh_obj.matrix_world)[:3, :3]
    want = world @ rig.quaternion_to_matrix(rig.rotate_gaussians(av.rotation, d.point_rotations)[0])
    err = _angle_deg(want, rot)
    turned = _angle_deg(world @ rig.quaternion_to_matrix(av.rotation), rot)
    print(f"node path vs R(A): median {np.median(err):.4f} deg, max {err.max():.4f} deg "
          f"(Gaussians turned by up to {turned.max():.1f} deg)")
    assert turned.max() > 20 and err.max() < 0.5
    splat.set_inputs(splat.find_modifier(mesh_obj), **{"Follow Deformation": False})
    _, still, _ = _instance_rotations(mesh_obj)
    np.testing.assert_allclose(still, np.broadcast_to(world, still.shape) @ rig.quaternion_to_matrix(av.rotation),
                               atol=1e-4)


def test_cycles_render_matches_backend_renderer(lam, avatar_file, tmp_path):
    path = avatar_file(n_points=N_POINTS, seed=4)
    av = load_avatar(path)
    mesh_obj, _, _ = _import(lam, path)
    scene = bpy.context.scene
    job.add_camera(bpy, scene)
    out = tmp_path / "cycles.exr"
    job.configure_render(bpy, scene, "CYCLES", 128, 2, str(out))
    bpy.ops.render.render(write_still=True)
    got = job.read_exr(bpy, out)
    ref = _reference(av, job.pinhole_from_blender(scene, mesh_obj))
    ref_rgba = np.concatenate([ref.rgb, ref.alpha[..., None]], axis=2)
    a, b = _over_white(got), _over_white(ref_rgba)
    psnr, ssim = _psnr(a, b), _ssim(a, b)
    print(f"Cycles vs backend CPU renderer: PSNR {psnr:.2f} dB, SSIM {ssim:.4f}, "
          f"coverage {float((got[..., 3] > 0.05).mean()):.3f} vs {float((ref.alpha > 0.05).mean()):.3f}")
    assert (ref.alpha > 0.5).mean() > 0.05  # the head fills a good part of the frame
    assert psnr >= 25.0
    # Not a flat disc or hard sphere: soft alpha values dominate.
    soft = (got[..., 3] > 0.02) & (got[..., 3] < 0.9)
    assert soft.sum() > 0.2 * (got[..., 3] > 0.02).sum()


def _run_job(zip_path, avatar, out, engine):
    cmd = [sys.executable, str(Path(job.__file__)), "--zip", str(zip_path), "--avatar", str(avatar),
           "--out", str(out), "--engine", engine, "--size", "96", "--samples", "8"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_eevee_render_in_subprocess_shows_the_head(lam_extension_zip, avatar_file, tmp_path, lam):
    path = avatar_file(n_points=N_POINTS, seed=4)
    out = tmp_path / "eevee.exr"
    proc = _run_job(lam_extension_zip, path, out, "EEVEE")
    if proc.returncode != 0:
        log = proc.stdout[-2000:] + proc.stderr[-2000:]
        no_gl = any(s in log for s in ("Unable to initialize GPU", "no OpenGL", "EGL_NOT_INITIALIZED",
                                       "Failed to create GPU context", "GPU backend"))
        if no_gl:
            pytest.skip(f"EEVEE needs an OpenGL driver (EGL/llvmpipe) and the render process reports none: {log[-300:]}")
        raise AssertionError(f"EEVEE job failed (rc {proc.returncode}):\n{log}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    got = job.read_exr(bpy, out)
    ref = _reference(load_avatar(path), info["camera"])
    a, b = _over_white(got), _over_white(np.concatenate([ref.rgb, ref.alpha[..., None]], axis=2))
    mask_got, mask_ref = got[..., 3] > 0.3, ref.alpha > 0.3
    iou = (mask_got & mask_ref).sum() / max((mask_got | mask_ref).sum(), 1)
    print(f"EEVEE ({info['engine']}) vs backend: PSNR {_psnr(a, b):.2f} dB, SSIM {_ssim(a, b):.4f}, mask IoU {iou:.3f}")
    assert mask_got.mean() > 0.05 and iou > 0.75  # dithered transparency, 8 samples: a noisy edge
    assert _psnr(a, b) >= 20.0


def test_attach_refuses_non_mesh(lam):
    splat = importlib.import_module(lam.__name__ + ".splat")
    empty = bpy.data.objects.new("empty", None)
    with pytest.raises(TypeError, match="mesh"):
        splat.attach(empty)
