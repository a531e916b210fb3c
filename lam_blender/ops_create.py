"""Create from photo: ``bpy.ops.lam_head.create_from_image(filepath=...)``, and from
2-4 photos of one person: ``bpy.ops.lam_head.create_from_photos(directory=..., files=[...])``.

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
from bpy.props import BoolProperty, CollectionProperty, IntProperty, StringProperty

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


MIN_VIEWS, MAX_VIEWS = 2, 4  # the backend's create_views range (backend/create/views.py)


def _absolute_photo(path: str) -> str:
    path = os.path.abspath(bpy.path.abspath(path))  # the backend runs in another working directory
    if not Path(path).is_file():
        raise ValueError(f"Photo not found: {path}")
    return path


def start_job(context, image: str, views: list[str] | None = None, refine_iterations: int | None = None,
              seed: int = 0) -> backend_job.CreateJob:
    """Start a create job (raises ValueError with the message to show).

    With ``views`` (2-4 photos of one person) the backend fits them jointly and refines the avatar on all
    of them; ``image`` is then ignored and the result is named after the first photo."""
    if current_job() is not None and not current_job().finished:
        raise ValueError("An avatar is already being created; wait or cancel it")
    params = preferences.backend_params(context)
    if views is not None:
        if not MIN_VIEWS <= len(views) <= MAX_VIEWS:
            raise ValueError(f"Choose {MIN_VIEWS} to {MAX_VIEWS} photos of the same person (got {len(views)}); "
                             "for one photo use Create")
        views = [_absolute_photo(v) for v in views]
        if len(set(views)) != len(views):
            raise ValueError("The same photo is chosen twice; choose each photo once")
        image = views[0]
        if refine_iterations is not None:
            params["refine_iterations"] = int(refine_iterations)
        params["seed"] = int(seed)
    else:
        image = _absolute_photo(image)
    python, source = preferences.backend_python(context)
    if python is None:
        raise ValueError(source)
    job = backend_job.CreateJob(
        preferences.MANAGER, python, image, str(output_path(image)), params=params, views=views,
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
    if job.views:
        result = job.result or {}
        refined = result.get("refinement") or {}
        report({"INFO"}, f"Created {built.mesh_obj.name} from {len(job.views)} photos (network on "
                         f"{result.get('network_photo', '?')}; {refined.get('iterations', 0)} refinement iterations, "
                         f"loss {refined.get('loss_before', 0):.4f} -> {refined.get('loss_after', 0):.4f})")
    else:
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


class _CreateModal:
    """The modal half shared by both create operators: a timer steps the running job, Esc cancels."""

    _timer = None

    def _start_modal(self, context, **job_args):
        try:
            start_job(context, **job_args)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_S, window=context.window)
        wm.modal_handler_add(self)
        wm.progress_begin(0, 100)
        return {"RUNNING_MODAL"}

    def _run_blocking(self, context, **job_args):
        try:
            job = start_job(context, **job_args)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        job.run()
        return finish_job(context, job, self.report)

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


class LAM_HEAD_OT_create_from_image(_CreateModal, bpy.types.Operator):
    """Create an animatable Gaussian head from a portrait photo (runs in the backend; Esc cancels)"""

    bl_idname = "lam_head.create_from_image"
    bl_label = "Create Head from Photo"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(subtype="FILE_PATH", options={"SKIP_SAVE"})  # type: ignore[valid-type]

    def execute(self, context):
        return self._run_blocking(context, image=self.filepath)

    def invoke(self, context, event):
        if not self.filepath:
            self.filepath = context.scene.lam_head.image
        if not self.filepath and sample_portrait():
            self.filepath = sample_portrait()
            self.report({"INFO"}, "No photo chosen: using the sample portrait (NASA, public domain)")
        if not self.filepath:
            self.report({"ERROR"}, "Choose a photo first (LAM panel > Photo)")
            return {"CANCELLED"}
        return self._start_modal(context, image=self.filepath)


def chosen_photos(directory: str, names: list[str]) -> list[str]:
    """The file browser's choice (a folder and file names) as paths, in the order chosen."""
    return [os.path.join(directory, n) for n in names if n]


class LAM_HEAD_OT_create_from_photos(_CreateModal, bpy.types.Operator):
    """Create one head from 2-4 photos of the same person (different views or expressions): a joint FLAME fit, \
the network on the most frontal photo, then the avatar refined on every photo. Esc cancels"""

    bl_idname = "lam_head.create_from_photos"
    bl_label = "Create Head from Photos"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(subtype="DIR_PATH", options={"SKIP_SAVE"})  # type: ignore[valid-type]
    files: CollectionProperty(type=bpy.types.OperatorFileListElement, options={"SKIP_SAVE", "HIDDEN"})  # type: ignore[valid-type]
    filter_image: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})  # type: ignore[valid-type]
    filter_folder: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})  # type: ignore[valid-type]
    refine_iterations: IntProperty(  # type: ignore[valid-type]
        name="Refinement Iterations", min=0, max=2000, default=100,
        description="Optimisation steps of the avatar on all photos (0: the network's result on the joint fit). "
                    "About 0.25 s each on 2 CPU cores for 4 photos",
    )
    seed: IntProperty(name="Seed", min=0, default=0, description="Same photos and seed: the same avatar")  # type: ignore[valid-type]
    # Set by invoke: after the file browser the job runs modally (a script's call blocks instead).
    modal_after_browse: BoolProperty(default=False, options={"HIDDEN", "SKIP_SAVE"})  # type: ignore[valid-type]

    def _job_args(self) -> dict:
        return {"image": "", "views": chosen_photos(self.directory, [f.name for f in self.files]),
                "refine_iterations": self.refine_iterations, "seed": self.seed}

    def execute(self, context):
        if self.modal_after_browse:
            return self._start_modal(context, **self._job_args())
        return self._run_blocking(context, **self._job_args())

    def invoke(self, context, event):
        self.refine_iterations = context.scene.lam_head.refine_iterations
        self.modal_after_browse = True
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}


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
    refine_iterations: IntProperty(  # type: ignore[valid-type]
        name="Refinement", min=0, max=2000, default=100,
        description="Create from Photos: optimisation steps of the avatar on all photos (about 0.25 s each on 2 CPU cores for 4 photos)",
    )


CLASSES = (
    LAM_HEAD_settings, LAM_HEAD_OT_create_from_image, LAM_HEAD_OT_create_from_photos, LAM_HEAD_OT_cancel_create,
    LAM_HEAD_OT_use_sample_portrait,
)


def register_extra() -> None:
    bpy.types.Scene.lam_head = bpy.props.PointerProperty(type=LAM_HEAD_settings)


def unregister_extra() -> None:
    del bpy.types.Scene.lam_head
    job = current_job()
    if job is not None and not job.finished:
        job.cancel()
    JOB["job"] = None
