"""Render an avatar through the splat node path in a separate process (EEVEE aborts the
whole process when no OpenGL driver is found, so EEVEE renders never run in-process).

Usage: ``python eevee_render_job.py --zip EXT.zip --avatar AVATAR.npz|LAM.zip --out OUT.exr
[--engine EEVEE|CYCLES] [--size 96] [--samples 8] [--keys jawOpen=0.6,...] [--centre]``
(``--centre``: aim at the head's centre instead of the origin; ``--keys``: shape-key values). Prints one JSON line on success:
``{"ok": true, "engine": ..., "camera": {...}}``; exits non-zero otherwise.

The scene helpers (camera, render settings, EXR reading, Blender camera -> pinhole
camera) are shared with the in-process tests, which import this module.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

EXTENSION_REPO = "user_default"
ADDON_MODULE = "bl_ext.user_default.lam_head"
# A camera 0.7 m in front of the face (FLAME +Z is Blender -Y once the rig's Y-up -> Z-up
# rotation is applied), looking at the head centre.
CAMERA_LOCATION = (0.0, -0.7, 0.02)
CAMERA_LENS_MM = 50.0
CAMERA_SENSOR_MM = 36.0


def eevee_engine_id(bpy) -> str:
    items = [e.identifier for e in bpy.types.RenderSettings.bl_rna.properties["engine"].enum_items]
    return "BLENDER_EEVEE_NEXT" if "BLENDER_EEVEE_NEXT" in items else "BLENDER_EEVEE"  # 4.2-4.5 vs 5.x


def add_camera(bpy, scene, target=(0.0, 0.0, 0.0)):
    data = bpy.data.cameras.new("LAM test camera")
    data.lens = CAMERA_LENS_MM
    data.sensor_width = CAMERA_SENSOR_MM
    data.sensor_fit = "HORIZONTAL"
    cam = bpy.data.objects.new("LAM test camera", data)
    scene.collection.objects.link(cam)
    cam.location = tuple(c + t for c, t in zip(CAMERA_LOCATION, target))
    cam.rotation_euler = (math.pi / 2, 0.0, 0.0)
    scene.camera = cam
    return cam


def configure_render(bpy, scene, engine: str, size: int, samples: int, out_path: str) -> None:
    """Small, cheap, comparable renders: linear float EXR, transparent film, Standard view."""
    r = scene.render
    r.resolution_x = r.resolution_y = size
    r.resolution_percentage = 100
    r.pixel_aspect_x = r.pixel_aspect_y = 1.0
    r.film_transparent = True
    r.threads_mode = "FIXED"
    r.threads = 2
    r.image_settings.file_format = "OPEN_EXR"
    r.image_settings.color_depth = "32"
    r.filepath = out_path
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.view_settings.exposure = 0.0
    scene.view_settings.gamma = 1.0
    if engine == "CYCLES":
        r.engine = "CYCLES"
        c = scene.cycles
        c.device = "CPU"
        c.samples = samples
        c.use_adaptive_sampling = False
        c.use_denoising = False
        c.filter_width = 0.01  # sample pixel centres, as the backend rasteriser does
    else:
        r.engine = eevee_engine_id(bpy)
        scene.eevee.taa_render_samples = samples
        r.filter_size = 0.01


def read_exr(bpy, path: str) -> np.ndarray:
    """H,W,4 float32 RGBA (premultiplied), row 0 at the top."""
    img = bpy.data.images.load(str(path), check_existing=False)
    try:
        w, h = img.size
        px = np.empty(w * h * 4, dtype=np.float32)
        img.pixels.foreach_get(px)
    finally:
        bpy.data.images.remove(img)
    return px.reshape(h, w, 4)[::-1].copy()


def pinhole_from_blender(scene, mesh_obj) -> dict:
    """The scene camera as a backend PinholeCamera's fields, for points in the mesh's own
    (FLAME) space: OpenCV axes, world_to_camera = flip * inv(camera) * mesh world matrix."""
    cam = scene.camera
    w, h = scene.render.resolution_x, scene.render.resolution_y
    if cam.data.sensor_fit != "HORIZONTAL" or cam.data.shift_x or cam.data.shift_y:
        raise ValueError("pinhole_from_blender handles horizontal sensor fit without lens shift only")
    fx = cam.data.lens / cam.data.sensor_width * w
    m_cam = np.array(cam.matrix_world, dtype=np.float64)
    m_obj = np.array(mesh_obj.matrix_world, dtype=np.float64)
    w2c = np.diag([1.0, -1.0, -1.0, 1.0]) @ np.linalg.inv(m_cam) @ m_obj
    return {"width": w, "height": h, "fx": fx, "fy": fx, "cx": w / 2.0, "cy": h / 2.0,
            "world_to_camera": w2c.tolist()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zip", required=True)
    p.add_argument("--avatar", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--engine", default="EEVEE", choices=("EEVEE", "CYCLES"))
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--keys", default="", help="shape-key values, e.g. jawOpen=0.6,eyeBlinkLeft=1")
    p.add_argument("--centre", action="store_true", help="aim the camera at the centre of the points")
    args = p.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared factories
    from factories.blender_user_dirs import isolate_blender_user_dirs

    isolate_blender_user_dirs("lam-head-job-user-")
    import bpy  # noqa: I001 - bpy first: addon_utils only exists once bpy is imported
    import addon_utils

    bpy.ops.wm.read_factory_settings(use_empty=True)
    res = bpy.ops.extensions.package_install_files(filepath=args.zip, repo=EXTENSION_REPO, enable_on_install=True)
    if res != {"FINISHED"}:
        print(f"installing the extension failed: {res}", file=sys.stderr)
        return 2
    if ADDON_MODULE not in bpy.context.preferences.addons:
        addon_utils.enable(ADDON_MODULE, default_set=True)
    if args.avatar.lower().endswith(".zip"):
        res = bpy.ops.lam_head.import_lam_zip(filepath=args.avatar)
    else:
        res = bpy.ops.lam_head.import_avatar(filepath=args.avatar)
    if res != {"FINISHED"}:
        print(f"importing the avatar failed: {res}", file=sys.stderr)
        return 3
    scene = bpy.context.scene
    mesh_obj = bpy.context.view_layer.objects.active
    for item in filter(None, args.keys.split(",")):
        name, value = item.split("=")
        mesh_obj.data.shape_keys.key_blocks[name].value = float(value)
    target = (0.0, 0.0, 0.0)
    if args.centre:
        bpy.context.view_layer.update()  # world matrices of the new objects
        co = np.empty(len(mesh_obj.data.vertices) * 3, dtype=np.float32)
        mesh_obj.data.vertices.foreach_get("co", co)
        m = np.array(mesh_obj.matrix_world, dtype=np.float64)
        target = tuple((m[:3, :3] @ co.reshape(-1, 3).mean(axis=0) + m[:3, 3]).tolist())
    add_camera(bpy, scene, target)
    configure_render(bpy, scene, args.engine, args.size, args.samples, args.out)
    bpy.ops.render.render(write_still=True)
    if not Path(args.out).is_file():
        print("the render wrote no image", file=sys.stderr)
        return 4
    print(json.dumps({"ok": True, "engine": scene.render.engine, "camera": pinhole_from_blender(scene, mesh_obj)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
