"""File > Export > LAM Head Splat Sequence: one standard 3DGS PLY per frame.

``bpy.ops.lam_head.export_splat_sequence(directory=..., frame_start=..., frame_end=...)``
writes ``frame_NNNNNN.ply`` (the Blender frame number, 6 digits) for every frame
plus ``canonical.ply`` (the rest pose). Per frame: the deformed centres come
from the evaluated mesh (shape keys + armature, the splat modifier switched off
meanwhile), each Gaussian is rotated by R(A), the polar rotation of its blended
bone matrix (pose-bone matrices x the ``lam_lbs_*`` weights), and scales,
colours and opacities are static. The maths lives in
``backend/core/splat_frames.py``; this module only reads Blender data with
``foreach_get`` and bone matrices (no per-point Python, except one pass over the
vertex groups at the start of the fast path).

Fast path (the default whenever it is exact): Blender still evaluates the frame
(actions, NLA, drivers, bone matrices and the shape-key VALUES, driven pose
correctives included), but the mesh itself is not deformed meanwhile (Armature
modifier off, "shape key lock" on the basis); the centres are then mixed and
skinned here in numpy from those values and matrices, the same sums Blender's
relative shape keys and Armature modifier compute. It is taken only when the
avatar uses nothing those sums do not model (see :func:`fast_path_blocker`), and
the first frame is checked against Blender's evaluated mesh (1e-5 m); otherwise
the export reads the evaluated mesh every frame (``job.fast_blocker`` says why).

Interactive runs are modal: progress in the status bar, Esc cancels. Every file
is written under a temporary name and renamed, so a cancelled or failed export
never leaves a partial file (finished frames stay).
"""

from __future__ import annotations

import time
from pathlib import Path

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from . import naming
from .core import errors, ply, splat_frames

SPLAT_MODIFIER = "LAM Splats"  # lam_blender.splat.MODIFIER_NAME (not imported: the splat package is optional here)
CANONICAL_NAME = "canonical.ply"


def find_avatar_mesh(obj) -> bpy.types.Object | None:
    """The avatar mesh for ``obj``: itself, or the avatar child of an armature."""
    if obj is None:
        return None
    if obj.type == "MESH" and naming.PROP_AVATAR in obj:
        return obj
    if obj.type == "ARMATURE":
        for child in obj.children:
            if child.type == "MESH" and naming.PROP_AVATAR in child:
                return child
    return None


def _armature_of(mesh_obj) -> bpy.types.Object:
    for mod in mesh_obj.modifiers:
        if mod.type == "ARMATURE" and mod.object is not None:
            return mod.object
    raise errors.BadInputError(f"'{mesh_obj.name}' has no Armature modifier with an armature: re-import the avatar")


def _point_attr(mesh, name: str, width: int) -> np.ndarray:
    attr = mesh.attributes.get(name)
    if attr is None or attr.domain != "POINT":
        raise errors.BadInputError(f"'{mesh.name}' has no point attribute '{name}': re-import the avatar")
    n = len(mesh.vertices)
    buf = np.empty(n * width, dtype=np.float32)
    field = "value" if attr.data_type in ("FLOAT", "QUATERNION") else "vector"
    attr.data.foreach_get(field, buf)
    return buf.reshape(n, width) if width > 1 else buf


FAST_CHECK_TOL = 1e-5  # metres: the first frame's fast centres vs Blender's evaluated mesh


def fast_path_blocker(mesh_obj, arm_obj, bone_names: list[str]) -> str | None:
    """Why the numpy shape-key + skinning path cannot reproduce Blender's deformation of
    ``mesh_obj`` exactly, or None when it can (static checks; weights are checked later)."""
    if mesh_obj.mode != "OBJECT":
        return f"'{mesh_obj.name}' is in {mesh_obj.mode} mode"
    if mesh_obj.parent_type != "OBJECT":
        return f"'{mesh_obj.name}' is parented as {mesh_obj.parent_type}"
    if mesh_obj.show_only_shape_key:
        return "the shape key lock (show only the active key) is on"
    arm_mods = [m for m in mesh_obj.modifiers if m.type == "ARMATURE" and m.show_viewport]
    if len(arm_mods) != 1:
        return f"{len(arm_mods)} enabled Armature modifiers (the fast path models exactly one)"
    mod = arm_mods[0]
    if (mod.object != arm_obj or not mod.use_vertex_groups or mod.use_bone_envelopes or mod.use_deform_preserve_volume
            or mod.use_multi_modifier or mod.vertex_group):
        return f"Armature modifier '{mod.name}' uses settings beyond plain vertex-group skinning"
    key = mesh_obj.data.shape_keys
    if key is None or not key.use_relative:
        return "the mesh has no relative shape keys"
    ref = key.reference_key
    for kb in key.key_blocks:
        if kb.vertex_group or (kb != ref and kb.relative_key not in (ref, kb)):
            return f"shape key '{kb.name}' uses a vertex group or a non-basis relative key"
    ours = set(bone_names)
    for bone in arm_obj.data.bones:
        if bone.use_deform and (bone.bbone_segments > 1 if bone.name in ours else bone.name in mesh_obj.vertex_groups):
            return f"bone '{bone.name}' is a B-Bone or an extra deforming bone"
    return None


def vertex_group_weights(mesh_obj, bone_names: list[str]) -> np.ndarray:
    """N,J weights of the vertex groups named after ``bone_names`` (one Python pass over the
    points: about 50 ms for 20k points, once per export)."""
    col = {vg.index: bone_names.index(vg.name) for vg in mesh_obj.vertex_groups if vg.name in bone_names}
    w = np.zeros((len(mesh_obj.data.vertices), len(bone_names)))
    for v in mesh_obj.data.vertices:
        for g in v.groups:
            j = col.get(g.group)
            if j is not None:
                w[v.index, j] = g.weight
    return w


class SplatSequenceExport:
    """One export job, advanced frame by frame (so a modal operator can show progress and
    stop between frames). ``coordinates``: ``"LOCAL"`` (the avatar's FLAME space, Y up,
    as LAM's files) or ``"WORLD"`` (Blender world space; scales follow a uniform object
    scale)."""

    def __init__(self, scene, mesh_obj, directory: str | Path, frame_start: int, frame_end: int,
                 coordinates: str = "LOCAL", write_canonical: bool = True):
        if frame_end < frame_start:
            raise errors.BadInputError(f"the frame range is empty ({frame_start}..{frame_end})")
        if coordinates not in ("LOCAL", "WORLD"):
            raise errors.BadInputError(f"coordinates must be LOCAL or WORLD, got {coordinates!r}")
        self.scene = scene
        self.mesh_obj = mesh_obj
        self.arm_obj = _armature_of(mesh_obj)
        self.directory = Path(bpy.path.abspath(str(directory)))
        self.frames = list(range(frame_start, frame_end + 1))
        self.coordinates = coordinates
        self.write_canonical = write_canonical
        self.done = 0
        self.written: list[Path] = []
        mesh = mesh_obj.data
        joint_names = list(mesh_obj.get(naming.PROP_JOINT_NAMES, []))
        if not joint_names:
            raise errors.BadInputError(f"'{mesh_obj.name}' is not a LAM avatar (no joint names): re-import it")
        self.bone_names = [naming.bone_name(j) for j in joint_names]
        missing = [b for b in self.bone_names if b not in self.arm_obj.pose.bones]
        if missing:
            raise errors.BadInputError(f"armature '{self.arm_obj.name}' lacks bones {missing}: re-import the avatar")
        self.n = len(mesh.vertices)
        self.weights = np.stack([_point_attr(mesh, naming.lbs_attr(j), 1) for j in joint_names], axis=1)
        self.rgb = _point_attr(mesh, naming.ATTR_RGB, 3)
        self.opacity = _point_attr(mesh, naming.ATTR_OPACITY, 1)
        self.scale = _point_attr(mesh, naming.ATTR_SCALE, 3)
        self.rotation = _point_attr(mesh, naming.ATTR_ROTATION, 4)
        self.rest_inv = np.stack([np.linalg.inv(np.array(self.arm_obj.data.bones[b].matrix_local))
                                  for b in self.bone_names])
        self._co = np.empty(self.n * 3, dtype=np.float32)
        self._writer: splat_frames.SplatFrameWriter | None = None
        self._saved: dict = {}
        self.use_fast_path = True  # set False to always read Blender's evaluated mesh
        self.fast_blocker: str | None = None  # after begin(): why the fast path is off (None: it is on)
        self._blend: splat_frames.ShapeKeyBlend | None = None

    # -- set-up / tear-down -------------------------------------------------------------

    def begin(self) -> None:
        """Switch the splat modifier off (the evaluated mesh must be the deformed points) and
        remember the frame; :meth:`end` restores both."""
        self.directory.mkdir(parents=True, exist_ok=True)
        mod = self.mesh_obj.modifiers.get(SPLAT_MODIFIER)
        self._saved = {"frame": (self.scene.frame_current, self.scene.frame_subframe),
                       "mod": (mod, mod.show_viewport) if mod is not None else None}
        if mod is not None:
            mod.show_viewport = False
        for m in self.mesh_obj.modifiers:
            if m.show_viewport and m.type not in ("ARMATURE",):
                raise errors.BadInputError(
                    f"modifier '{m.name}' on '{self.mesh_obj.name}' would change the points: disable it for the export")
        scale = 1.0
        if self.coordinates == "WORLD":
            scale = float(abs(np.linalg.det(np.array(self.mesh_obj.matrix_world)[:3, :3])) ** (1.0 / 3.0))
        self._writer = splat_frames.SplatFrameWriter(self.rgb, self.opacity, self.scale, self.rotation, self.weights,
                                                     scale_factor=scale)
        if self.write_canonical:
            xyz = np.empty(self.n * 3, dtype=np.float32)
            self.mesh_obj.data.vertices.foreach_get("co", xyz)  # the basis: canonical centres
            xyz = xyz.reshape(-1, 3)
            rot = self.rotation
            if self.coordinates == "WORLD":
                m = np.array(self.mesh_obj.matrix_world)
                xyz = xyz @ m[:3, :3].T + m[:3, 3]
                rot = splat_frames.deformed_rotations(rot, np.ones((self.n, 1)), np.eye(4)[None], pre=m)
            path = ply.write_3dgs_ply(self.directory / CANONICAL_NAME, xyz, self.rgb, self.opacity,
                                      self.scale * scale, rot)
            self.written.append(path)
        self.fast_blocker = self._start_fast_path() if self.use_fast_path else "switched off"

    @property
    def fast(self) -> bool:
        return self._blend is not None

    def _start_fast_path(self) -> str | None:
        """Set up the numpy deformation, check it on the first frame, and stop Blender's mesh
        evaluation; returns why not (None: on). Everything it changes is restored by :meth:`end`."""
        blocker = fast_path_blocker(self.mesh_obj, self.arm_obj, self.bone_names)
        if blocker is not None:
            return blocker
        raw = vertex_group_weights(self.mesh_obj, self.bone_names)
        contrib = raw.sum(axis=1)
        if contrib.min() <= 1e-4:
            return "some points have no deforming vertex-group weight"
        if np.abs(raw / contrib[:, None] - self.weights).max() > 1e-5:
            return f"the vertex groups differ from the '{naming.lbs_attr('*')}' weights"
        kbs = self.mesh_obj.data.shape_keys.key_blocks
        co = np.empty((len(kbs), self.n, 3), dtype=np.float32)
        for i, kb in enumerate(kbs):
            (kb.points if hasattr(kb, "points") else kb.data).foreach_get("co", co[i].reshape(-1))  # points (4.1+): raw copy
        ref = kbs.find(self.mesh_obj.data.shape_keys.reference_key.name)
        self._values = np.empty(len(kbs), dtype=np.float32)
        self._mute = np.empty(len(kbs), dtype=bool)
        self._inert = np.array([kb.relative_key == kb for kb in kbs])  # relative to itself: moves nothing
        self._blend = splat_frames.ShapeKeyBlend(co, ref)
        # First frame both ways: Blender's evaluated mesh, then the fast path.
        self.scene.frame_set(self.frames[0])
        want = self._evaluated_centres().copy()
        mod = next(m for m in self.mesh_obj.modifiers if m.type == "ARMATURE" and m.show_viewport)
        self._saved["fast"] = (mod, self.mesh_obj.show_only_shape_key, self.mesh_obj.active_shape_key_index)
        mod.show_viewport = False  # bone matrices and drivers are still evaluated; the mesh is not deformed
        self.mesh_obj.show_only_shape_key = True
        self.mesh_obj.active_shape_key_index = ref
        self.scene.frame_set(self.frames[0])
        evaluated = {id_.original for id_ in bpy.context.evaluated_depsgraph_get().ids}
        if self.mesh_obj not in evaluated or self.arm_obj not in evaluated:  # hidden: its values would go stale
            self._restore_fast()
            self._blend = None
            return "the avatar or its armature is not evaluated (disabled in viewports or excluded)"
        got = self._fast_frame(None)
        err = float(np.abs(np.stack([got["x"], got["y"], got["z"]], 1) - want).max())
        if err > FAST_CHECK_TOL:
            self._restore_fast()
            self._blend = None
            return f"the first frame differed from Blender's evaluated mesh by {err:.2g} m"
        return None

    def _restore_fast(self) -> None:
        saved = self._saved.pop("fast", None)
        if saved is not None:
            mod, only, index = saved
            mod.show_viewport = True
            self.mesh_obj.show_only_shape_key = only
            self.mesh_obj.active_shape_key_index = index

    def _evaluated_centres(self) -> np.ndarray:
        evaluated = self.mesh_obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
        mesh = evaluated.data
        if len(mesh.vertices) != self.n:
            raise errors.BadInputError(
                f"the evaluated '{self.mesh_obj.name}' has {len(mesh.vertices)} points, not {self.n}: "
                "a modifier changes the topology; disable it for the export")
        mesh.vertices.foreach_get("co", self._co)
        return self._co.reshape(-1, 3)

    def _fast_frame(self, pre: np.ndarray | None) -> np.ndarray:
        """The current frame's PLY array from the evaluated key values and bone matrices."""
        kbs = self.mesh_obj.data.shape_keys.key_blocks
        kbs.foreach_get("value", self._values)
        kbs.foreach_get("mute", self._mute)
        self._values[self._mute | self._inert] = 0.0
        return self._writer.frame_skinned(self._blend(self._values), self.bone_matrices(), pre)

    def end(self) -> None:
        """Restore what :meth:`begin` changed (also after an error or a cancel)."""
        saved = self._saved
        if not saved:
            return
        self._restore_fast()
        self._saved = {}
        if saved["mod"] is not None:
            mod, shown = saved["mod"]
            mod.show_viewport = shown
        self.scene.frame_set(saved["frame"][0], subframe=saved["frame"][1])

    # -- frames -------------------------------------------------------------------------

    def bone_matrices(self) -> np.ndarray:
        """J,4,4 deformation of each bone in the mesh's object space (what the Armature
        modifier applies): M_mesh^-1 M_arm (pose x rest^-1) M_arm^-1 M_mesh."""
        pose = np.stack([np.array(self.arm_obj.pose.bones[b].matrix) for b in self.bone_names])
        skin = pose @ self.rest_inv
        to_arm = np.array(self.arm_obj.matrix_world.inverted_safe() @ self.mesh_obj.matrix_world)  # mathutils: no LAPACK
        from_arm = np.array(self.mesh_obj.matrix_world.inverted_safe() @ self.arm_obj.matrix_world)
        return from_arm @ skin @ to_arm

    def step(self) -> Path:
        """Export the next frame; returns its path."""
        frame = self.frames[self.done]
        self.scene.frame_set(frame)
        pre = np.array(self.mesh_obj.matrix_world) if self.coordinates == "WORLD" else None
        target = self.directory / splat_frames.frame_filename(frame)
        if self.fast:
            data = self._fast_frame(pre)
        else:
            centres = self._evaluated_centres()
            if pre is not None:
                centres = centres @ pre[:3, :3].T.astype(np.float32) + pre[:3, 3].astype(np.float32)
            data = self._writer.frame(centres, self.bone_matrices(), pre)
        path = ply.write_vertex_array(target, data)
        self.written.append(path)
        self.done += 1
        return path

    @property
    def finished(self) -> bool:
        return self.done >= len(self.frames)

    def run(self, progress=None, cancel: errors.CancelToken | None = None) -> list[Path]:
        """Export every frame (blocking). ``progress(done, total)`` after each frame."""
        try:
            self.begin()
            while not self.finished:
                if cancel is not None:
                    cancel.check()
                self.step()
                if progress is not None:
                    progress(self.done, len(self.frames))
        finally:
            self.end()
        return self.written


class LAM_HEAD_OT_export_splat_sequence(bpy.types.Operator):
    """Export the avatar's animation as a sequence of 3D Gaussian splat PLY files (one per frame)"""

    bl_idname = "lam_head.export_splat_sequence"
    bl_label = "Export LAM Splat Sequence"
    bl_options = {"REGISTER"}

    directory: StringProperty(name="Folder", subtype="DIR_PATH")  # type: ignore[valid-type]
    filter_folder: BoolProperty(default=True, options={"HIDDEN"})  # type: ignore[valid-type]
    frame_start: IntProperty(name="Start Frame", default=-1, description="First frame (-1: the scene's start)")  # type: ignore[valid-type]
    frame_end: IntProperty(name="End Frame", default=-1, description="Last frame (-1: the scene's end)")  # type: ignore[valid-type]
    coordinates: EnumProperty(  # type: ignore[valid-type]
        name="Coordinates",
        items=(("LOCAL", "Avatar (FLAME, Y up)", "The avatar's own space, as LAM and splat viewers use it"),
               ("WORLD", "Blender World", "Blender world space (Z up), including the objects' transforms")),
        default="LOCAL",
    )
    write_canonical: BoolProperty(name="Canonical PLY", default=True,  # type: ignore[valid-type]
                                  description="Also write canonical.ply, the avatar in its rest pose")
    modal_run: BoolProperty(default=False, options={"HIDDEN", "SKIP_SAVE"})  # type: ignore[valid-type]

    _job: SplatSequenceExport | None = None
    _timer = None

    @classmethod
    def poll(cls, context):
        return find_avatar_mesh(context.active_object) is not None

    def _make_job(self, context) -> SplatSequenceExport:
        if not self.directory:
            raise errors.BadInputError("choose a folder to export into")
        scene = context.scene
        start = scene.frame_start if self.frame_start < 0 else self.frame_start
        end = scene.frame_end if self.frame_end < 0 else self.frame_end
        mesh_obj = find_avatar_mesh(context.active_object)
        return SplatSequenceExport(scene, mesh_obj, self.directory, start, end, self.coordinates, self.write_canonical)

    def execute(self, context):
        if self.modal_run and context.window is not None:  # started from the UI: progress + Esc
            return self._start_modal(context)
        try:
            job = self._make_job(context)
            t0 = time.perf_counter()
            wm = context.window_manager
            wm.progress_begin(0, len(job.frames))
            try:
                job.run(progress=lambda done, _total: wm.progress_update(done))
            finally:
                wm.progress_end()
        except (errors.LamHeadError, OSError) as exc:
            self.report({"ERROR"}, f"splat export failed: {exc}")
            return {"CANCELLED"}
        how = "fast path" if job.fast else f"read the evaluated mesh: {job.fast_blocker}"
        self.report({"INFO"}, f"Exported {job.done} frames to {job.directory} in {time.perf_counter() - t0:.1f} s ({how})")
        return {"FINISHED"}

    def invoke(self, context, event):
        self.modal_run = True
        if not self.directory:
            context.window_manager.fileselect_add(self)  # calls execute() when confirmed
            return {"RUNNING_MODAL"}
        return self._start_modal(context)

    def _start_modal(self, context):
        try:
            self._job = self._make_job(context)
            self._job.begin()
        except (errors.LamHeadError, OSError) as exc:
            if self._job is not None:
                self._job.end()
            self.report({"ERROR"}, f"splat export failed: {exc}")
            return {"CANCELLED"}
        wm = context.window_manager
        wm.progress_begin(0, len(self._job.frames))
        self._timer = wm.event_timer_add(0.001, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def _finish(self, context, cancelled: bool, error: str | None = None):
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        wm.progress_end()
        if context.workspace is not None:
            context.workspace.status_text_set(None)
        job, self._job = self._job, None
        job.end()
        if error:
            self.report({"ERROR"}, f"splat export failed after {job.done} frames: {error}")
            return {"CANCELLED"}
        if cancelled:
            self.report({"WARNING"}, f"Splat export cancelled: {job.done} of {len(job.frames)} frames written")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Exported {job.done} frames to {job.directory}")
        return {"FINISHED"}

    def modal(self, context, event):
        if event.type == "ESC":
            return self._finish(context, cancelled=True)
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        job = self._job
        deadline = time.perf_counter() + 0.1  # stay responsive to Esc
        try:
            while not job.finished and time.perf_counter() < deadline:
                job.step()
        except (errors.LamHeadError, OSError) as exc:
            return self._finish(context, cancelled=False, error=str(exc))
        context.window_manager.progress_update(job.done)
        if context.workspace is not None:
            context.workspace.status_text_set(f"Exporting splats: frame {job.done} / {len(job.frames)} (Esc cancels)")
        if job.finished:
            return self._finish(context, cancelled=False)
        return {"RUNNING_MODAL"}


def _menu_export(self, context):
    self.layout.operator(LAM_HEAD_OT_export_splat_sequence.bl_idname, text="LAM Head Splat Sequence (.ply)")


CLASSES = (LAM_HEAD_OT_export_splat_sequence,)


def register_extra() -> None:
    bpy.types.TOPBAR_MT_file_export.append(_menu_export)


def unregister_extra() -> None:
    bpy.types.TOPBAR_MT_file_export.remove(_menu_export)
