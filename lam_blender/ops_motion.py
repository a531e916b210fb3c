"""File > Import > LAM Head Motion: ``bpy.ops.lam_head.import_motion(filepath=...)`` keys a capture
onto the active avatar (ours or an imported LAM web ZIP).

By content and extension: Apple Live Link Face and Audio2Face-3D ``.csv``, ARKit and Audio2Face
``.json`` (shape keys by name, head / eye angles onto bones), FLAME motions (a ``flame_param/`` folder, one stacked ``.npz`` or a
``.zip`` of either: expression keys and bone rotations). The file is read and planned first
(``backend/core/motion_channels.py``); only a good plan touches the scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np
from bpy.props import BoolProperty, FloatProperty, IntProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from . import controls, keyframes, naming
from .core import arkit_track, avatar_file, errors, flame_motion, motion_channels

ARKIT_EXTENSIONS = (".csv", ".json")
FLAME_JOINTS = tuple(naming.BONE_NAMES)
LAM_HEAD_POSE_BONES = ("neckLower", "head")  # where a LAM ZIP's rig sits like FLAME's root and neck joints


@dataclass
class ImportedMotion:
    actions: list
    plan: motion_channels.MotionPlan
    kind: str  # "ARKit" or "FLAME"


def _kind(path: Path) -> str:
    if path.is_dir() or path.suffix.lower() in (".npz", ".zip"):
        return "FLAME"
    if path.suffix.lower() in ARKIT_EXTENSIONS or arkit_track.sniff_arkit_track(path) is not None:
        return "ARKit"
    raise errors.BadInputError(f"{path}: not a motion this add-on reads (Live Link Face or Audio2Face-3D .csv, "
                               "ARKit or Audio2Face .json, FLAME flame_param/ folder, .npz or .zip)")


def _weighted(mesh_obj, joint: str) -> bool:
    attr = mesh_obj.data.attributes.get(naming.lbs_attr(joint))
    if attr is None:
        return False
    w = np.empty(len(mesh_obj.data.vertices), np.float32)
    attr.data.foreach_get("value", w)
    return bool((w > 0).any())


def plan_for(mesh_obj, arm_obj, path: Path, scene, *, frame_offset: int = 0, strength: float = 1.0,
             lam_web: bool = False, use_head: bool = True, json_head_pose: bool = False,
             eye_bones: bool = True) -> tuple[motion_channels.MotionPlan, str]:
    """Read ``path`` and plan its keys on the avatar (nothing in the scene changes)."""
    joints = tuple(mesh_obj.get(naming.PROP_JOINT_NAMES, ()))
    bones = [naming.bone_name(j) for j in joints]
    modes = {b: arm_obj.pose.bones[b].rotation_mode for b in bones if b in arm_obj.pose.bones}
    fps = scene.render.fps / scene.render.fps_base
    start = scene.frame_current + int(frame_offset)
    flame_rig = joints == FLAME_JOINTS
    if _kind(path) == "ARKit":
        track = arkit_track.load_arkit_track(path)
        keys = mesh_obj.data.shape_keys.key_blocks if mesh_obj.data.shape_keys else {}
        arkit_keys = [k for k in mesh_obj.get(naming.PROP_ARKIT_NAMES, ()) if k in keys]
        head = naming.bone_name("neck") if flame_rig else ("head" if "head" in bones else None)
        eyes = None
        if eye_bones and flame_rig and _weighted(mesh_obj, "eye_l") and _weighted(mesh_obj, "eye_r"):
            eyes = (naming.bone_name("eye_l"), naming.bone_name("eye_r"))
        plan = motion_channels.plan_arkit(track, arkit_keys, fps, start, strength=strength, lam_web=lam_web,
                                          head_bone=head, eye_bones=eyes, bone_modes=modes, use_head=use_head,
                                          use_json_head=json_head_pose)
        return plan, "ARKit"
    expr_keys = [kb.name for kb in controls.expression_keys(mesh_obj)]
    motion = flame_motion.load_motion(path, n_expr=len(expr_keys) or None)
    if flame_rig:
        targets: list[str | None] = bones
    else:  # a LAM web ZIP's skeleton: FLAME's root (neck base) and neck (skull base) joints
        targets = [b if b in bones else None for b in LAM_HEAD_POSE_BONES] + [None, None, None]
    plan = motion_channels.plan_flame(motion, expr_keys, targets, fps, start, bone_modes=modes)
    return plan, "FLAME"


def import_motion(context, obj, filepath: str | Path, progress=None, **options) -> ImportedMotion:
    """Key the motion at ``filepath`` onto the avatar of ``obj``; raises BadInputError on a bad
    file or an avatar it cannot drive (the scene is then unchanged)."""
    found = controls.find_avatar(obj)
    if found is None:
        raise errors.BadInputError("select a LAM Head avatar (its mesh or armature) to import a motion onto")
    mesh_obj, arm_obj = found
    path = Path(bpy.path.abspath(str(filepath)))
    if not path.exists():
        raise errors.BadInputError(f"motion not found: {path}")
    plan, kind = plan_for(mesh_obj, arm_obj, path, context.scene, **options)
    name = path.name if path.is_dir() else path.stem
    actions = keyframes.write_plan(plan, mesh_obj.data.shape_keys, arm_obj, name, progress=progress)
    return ImportedMotion(actions, plan, kind)


class LAM_HEAD_OT_import_motion(bpy.types.Operator, ImportHelper):
    """Key a facial capture (Live Link Face/Audio2Face-3D CSV, ARKit/Audio2Face JSON) or a FLAME motion on the avatar"""

    bl_idname = "lam_head.import_motion"
    bl_label = "Import LAM Head Motion"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ""
    filter_glob: StringProperty(default="*.csv;*.json;*.npz;*.zip", options={"HIDDEN"})  # type: ignore[valid-type]
    frame_offset: IntProperty(name="Frame Offset", default=0,  # type: ignore[valid-type]
                              description="First key at the current frame plus this")
    strength: FloatProperty(name="Strength", default=1.0, soft_min=0.0, soft_max=2.0,  # type: ignore[valid-type]
                            description="Multiplies every ARKit weight")
    lam_web_calibration: BoolProperty(name="LAM Web Player Calibration", default=False,  # type: ignore[valid-type]
                                      description="Scale channels as LAM's web player does (jawOpen x1.2, ...)")
    use_head: BoolProperty(name="Head Rotation", default=True,  # type: ignore[valid-type]
                           description="Key recorded head yaw / pitch / roll on the neck (ours) or head bone")
    json_head_pose: BoolProperty(name="Head Pose from JSON", default=False,  # type: ignore[valid-type]
                                 description="Use an ARKit JSON's head_pose (its convention is undocumented)")
    eye_bones: BoolProperty(name="Eye Bones", default=True,  # type: ignore[valid-type]
                            description="Recorded eye angles onto weighted eye bones (else the eyeLook keys)")

    @classmethod
    def poll(cls, context):
        return controls.find_avatar(context.active_object) is not None

    def execute(self, context):
        if context.mode != "OBJECT":
            bpy.ops.object.mode_set(mode="OBJECT")
        wm = context.window_manager
        wm.progress_begin(0.0, 1.0)
        try:
            done = import_motion(context, context.active_object, self.filepath, progress=wm.progress_update,
                                 frame_offset=self.frame_offset, strength=self.strength,
                                 lam_web=self.lam_web_calibration, use_head=self.use_head,
                                 json_head_pose=self.json_head_pose, eye_bones=self.eye_bones)
        except (errors.BadInputError, avatar_file.AvatarFileError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        finally:
            wm.progress_end()
        for note in done.plan.notes:
            self.report({"WARNING"}, note)
        f = done.plan.frames
        self.report({"INFO"}, f"{done.kind} motion: {len(done.plan.channels)} channels keyed on frames "
                              f"{int(f[0])}-{int(f[-1])} ({done.plan.n_frames} keys each) in '{done.actions[0].name}'")
        return {"FINISHED"}


def _menu_import(self, context):
    self.layout.operator(LAM_HEAD_OT_import_motion.bl_idname, text="LAM Head Motion (.csv, .json, .npz, .zip)")


CLASSES = (LAM_HEAD_OT_import_motion,)


def register_extra() -> None:
    bpy.types.TOPBAR_MT_file_import.append(_menu_import)


def unregister_extra() -> None:
    bpy.types.TOPBAR_MT_file_import.remove(_menu_import)
