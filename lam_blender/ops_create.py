"""Create from photo: ``bpy.ops.lam_head.create_from_image(filepath=...)``.

Invoked from the UI it is modal: a timer steps a :class:`backend_job.CreateJob`
so Blender stays responsive; Esc or the panel's Cancel button cancels. Called
from a script (execute) it blocks until the job ends. Either way the result is
imported with the import operator's code, and on failure or cancel the scene
is left as it was. With no photo chosen, the UI's Create uses the sample
portrait that ships with the backend (``lam_head.use_sample_portrait`` puts it
in the Photo field), so a first run needs no file of the user's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import bpy
from bpy.props import StringProperty

from . import backend_job, preferences
from .core import assets
from .ops_import import import_avatar_file

TIMER_S = 0.1
JOB: dict = {"job": None}  # the running job (one at a time), read by the panel


def current_job() -> backend_job.CreateJob | None:
    return JOB["job"]


def sample_portrait() -> str | None:
    """The sample portrait shipped in the extension's backend (NASA, public domain), if present."""
    path = assets.SAMPLE_PORTRAIT
    return str(path) if path.is_file() else None


def output_path(image: str) -> Path:
    """Where the new avatar file goes: the add-on's user folder (or the temp folder)."""
    base = preferences.user_dir(create=True)
    folder = Path(base) / "avatars" if base else Path(bpy.app.tempdir or "/tmp") / "lam_head_avatars"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{Path(image).stem or 'avatar'}-{time.strftime('%Y%m%d-%H%M%S')}.npz"


def start_job(context, image: str) -> backend_job.CreateJob:
    """Start a create job (raises ValueError with the message to show)."""
    if current_job() is not None and not current_job().finished:
        raise ValueError("An avatar is already being created; wait or cancel it")
    image = os.path.abspath(bpy.path.abspath(image))  # the backend runs in another working directory
    if not Path(image).is_file():
        raise ValueError(f"Photo not found: {image}")
    python, source = preferences.backend_python(context)
    if python is None:
        raise ValueError(source)
    job = backend_job.CreateJob(
        preferences.MANAGER, python, image, str(output_path(image)), params=preferences.backend_params(context),
    ).start()
    JOB["job"] = job
    return job


def finish_job(context, job: backend_job.CreateJob, report) -> set[str]:
    """Import the result (or report why there is none); ``report(type_set, text)`` like Operator.report."""
    _status(context, None)
    if job.state == backend_job.CANCELLED:
        report({"WARNING"}, "Avatar creation cancelled")
        return {"CANCELLED"}
    if job.state == backend_job.FAILED:
        report({"ERROR"}, f"Avatar creation failed: {job.error}")
        return {"CANCELLED"}
    for w in job.warnings:
        report({"WARNING"}, w)
    try:
        built = import_avatar_file(context, job.avatar_path, name=Path(job.image).stem)
    except Exception as exc:  # rolled back by the importer; tell the user what happened
        report({"ERROR"}, f"The backend made {job.avatar_path} but importing it failed: {exc}")
        return {"CANCELLED"}
    report({"INFO"}, f"Created {built.mesh_obj.name} from {Path(job.image).name}")
    return {"FINISHED"}


def _status(context, text: str | None) -> None:
    workspace = getattr(context, "workspace", None)
    if workspace is not None:
        workspace.status_text_set(text)


def _redraw(context) -> None:
    screen = getattr(context, "screen", None)
    for area in getattr(screen, "areas", []):
        if area.type == "VIEW_3D":
            area.tag_redraw()


class LAM_HEAD_OT_create_from_image(bpy.types.Operator):
    """Create an animatable Gaussian head from a portrait photo (runs in the backend; Esc cancels)"""

    bl_idname = "lam_head.create_from_image"
    bl_label = "Create Head from Photo"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(subtype="FILE_PATH", options={"SKIP_SAVE"})  # type: ignore[valid-type]

    _timer = None

    def execute(self, context):
        try:
            job = start_job(context, self.filepath)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        job.run()
        return finish_job(context, job, self.report)

    def invoke(self, context, event):
        if not self.filepath:
            self.filepath = context.scene.lam_head.image
        if not self.filepath and sample_portrait():
            self.filepath = sample_portrait()
            self.report({"INFO"}, "No photo chosen: using the sample portrait (NASA, public domain)")
        if not self.filepath:
            self.report({"ERROR"}, "Choose a photo first (LAM panel > Photo)")
            return {"CANCELLED"}
        return self._start_modal(context)

    def _start_modal(self, context):
        try:
            start_job(context, self.filepath)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_S, window=context.window)
        wm.modal_handler_add(self)
        wm.progress_begin(0, 100)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        job = current_job()
        if event.type == "ESC" and event.value == "PRESS":
            job.cancel()
        if event.type == "TIMER":
            job.step()
            context.window_manager.progress_update(int(100 * job.fraction))
            _status(context, f"LAM Head: {job.message} ({100 * job.fraction:.0f} %)  Esc to cancel")
            _redraw(context)
            if job.finished:
                context.window_manager.event_timer_remove(self._timer)
                context.window_manager.progress_end()
                _redraw(context)
                return finish_job(context, job, self.report)
        return {"PASS_THROUGH"}


class LAM_HEAD_OT_cancel_create(bpy.types.Operator):
    """Cancel the avatar being created"""

    bl_idname = "lam_head.cancel_create"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        job = current_job()
        return job is not None and not job.finished

    def execute(self, context):
        current_job().cancel()
        return {"FINISHED"}


class LAM_HEAD_OT_use_sample_portrait(bpy.types.Operator):
    """Put the sample portrait that ships with the add-on (NASA, public domain) in the Photo field"""

    bl_idname = "lam_head.use_sample_portrait"
    bl_label = "Sample Portrait"

    @classmethod
    def poll(cls, context):
        return sample_portrait() is not None

    def execute(self, context):
        context.scene.lam_head.image = sample_portrait()
        return {"FINISHED"}


class LAM_HEAD_settings(bpy.types.PropertyGroup):
    """Scene-level UI settings of the LAM panel (not animation data)."""

    image: StringProperty(name="Photo", subtype="FILE_PATH", description="Portrait photo to create a head from")  # type: ignore[valid-type]
    show_all_expressions: bpy.props.BoolProperty(name="Show All", description="Show every expression slider")  # type: ignore[valid-type]


CLASSES = (LAM_HEAD_settings, LAM_HEAD_OT_create_from_image, LAM_HEAD_OT_cancel_create, LAM_HEAD_OT_use_sample_portrait)


def register_extra() -> None:
    bpy.types.Scene.lam_head = bpy.props.PointerProperty(type=LAM_HEAD_settings)


def unregister_extra() -> None:
    del bpy.types.Scene.lam_head
    job = current_job()
    if job is not None and not job.finished:
        job.cancel()
    JOB["job"] = None
