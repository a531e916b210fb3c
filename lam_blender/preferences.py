"""Add-on preferences: the backend (where its Python is, its status), installing
it into the extension's user directory, and downloading the model assets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import bpy
from bpy.props import EnumProperty, StringProperty

from . import backend_job, background_task
from .core import assets, environment

BackendError = backend_job.BackendError


ADDON_ID = __package__.rpartition(".")[0] or __package__  # the extension module (bl_ext.<repo>.lam_head)

# Session state shown in the preferences (not saved: it describes running processes).
MANAGER = backend_job.BackendManager()
STATUS: dict = {}  # last hello/doctor answer, or {"error": message}
TASKS: dict[str, background_task.BackgroundTask] = {}


def prefs(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon else None


def user_dir(create: bool = False) -> str | None:
    try:
        return bpy.utils.extension_path_user(ADDON_ID, create=create)
    except (ValueError, AttributeError):  # not loaded as an extension
        return None


def backend_python(context=None) -> tuple[str | None, str]:
    p = prefs(context)
    return backend_job.find_backend_python(p.backend_python if p else "", user_dir())


def backend_params(context=None) -> dict:
    """Extra ``create`` parameters from the preferences (device, precision, asset overrides)."""
    p = prefs(context)
    if p is None:
        return {}
    out = {"device": p.device, "precision": p.precision}
    if p.weights_dir.strip():
        out["weights"] = os.path.abspath(bpy.path.abspath(p.weights_dir.strip()))  # the backend has its own cwd
    if p.flame_file.strip():
        out["flame"] = os.path.abspath(bpy.path.abspath(p.flame_file.strip()))
    return out


def refresh_status(context=None) -> dict:
    """Ask the backend for ``hello`` and ``doctor`` (starting it if needed)."""
    STATUS.clear()
    python, source = backend_python(context)
    if python is None:
        STATUS["error"] = source
        return STATUS
    try:
        STATUS.update(MANAGER.call(python, "hello", timeout=60))
        STATUS["doctor"] = MANAGER.call(python, "doctor", timeout=120)
        STATUS["source"] = source
    except (BackendError, TimeoutError) as exc:
        MANAGER.discard()
        STATUS["error"] = str(exc)
    return STATUS


def _redraw_prefs() -> float | None:
    for window in getattr(bpy.context.window_manager, "windows", []):
        for area in window.screen.areas:
            if area.type == "PREFERENCES":
                area.tag_redraw()
    return 0.5 if any(t.running for t in TASKS.values()) else None


def _start_task(key: str, task: background_task.BackgroundTask) -> None:
    TASKS[key] = task.start()
    if not bpy.app.timers.is_registered(_redraw_prefs):
        bpy.app.timers.register(_redraw_prefs, first_interval=0.5)


def _offline_refusal() -> str | None:
    if not bpy.app.online_access:
        return ("Online access is disabled in Blender (Preferences > System > Network > Allow Online Access); "
                "enable it to download, or install the backend by hand and set its Python path")
    return None


class LAM_HEAD_OT_check_backend(bpy.types.Operator):
    """Start the backend and report its Python, torch, device and model assets"""

    bl_idname = "lam_head.check_backend"
    bl_label = "Check Backend"

    def execute(self, context):
        status = refresh_status(context)
        if "error" in status:
            self.report({"ERROR"}, status["error"])
            return {"CANCELLED"}
        self.report({"INFO"}, f"Backend: torch {status.get('torch')} on {status.get('device')}")
        return {"FINISHED"}


class LAM_HEAD_OT_install_backend(bpy.types.Operator):
    """Create the backend's Python environment in the add-on's user folder and install its packages (downloads ~1-3 GB)"""

    bl_idname = "lam_head.install_backend"
    bl_label = "Install Backend"

    def execute(self, context):
        refusal = _offline_refusal()
        if refusal:
            self.report({"ERROR"}, refusal)
            return {"CANCELLED"}
        if any(t.running for t in TASKS.values()):
            self.report({"WARNING"}, "Another set-up task is running")
            return {"CANCELLED"}
        base = user_dir(create=True)
        if base is None:
            self.report({"ERROR"}, "The add-on must be installed as an extension to install its backend")
            return {"CANCELLED"}
        venv = Path(base) / backend_job.BACKEND_VENV_NAME
        MANAGER.stop()

        def work(log):
            environment.install_backend(venv, base_python=sys.executable, log=log)
            log(f"backend installed: {environment.venv_python(venv)}")

        _start_task("install", background_task.BackgroundTask("Install backend", work))
        self.report({"INFO"}, f"Installing the backend into {venv}")
        return {"FINISHED"}


class LAM_HEAD_OT_download_assets(bpy.types.Operator):
    """Download the LAM model weights and the FLAME assets after showing their licences"""

    bl_idname = "lam_head.download_assets"
    bl_label = "Download Model Assets"

    def invoke(self, context, event):
        return context.window_manager.invoke_props_dialog(self, width=520, confirm_text="Accept Licences and Download")

    def draw(self, context):
        col = self.layout.column(align=True)
        col.label(text="Downloading means accepting these licences:")
        for text in assets.LICENCES.values():
            for line in _wrap(text, 90):
                col.label(text=line)
            col.separator()

    def execute(self, context):
        refusal = _offline_refusal()
        if refusal:
            self.report({"ERROR"}, refusal)
            return {"CANCELLED"}
        python, source = backend_python(context)
        if python is None:
            self.report({"ERROR"}, source)
            return {"CANCELLED"}
        if any(t.running for t in TASKS.values()):
            self.report({"WARNING"}, "Another set-up task is running")
            return {"CANCELLED"}
        root = str(backend_job.backend_root())
        env = dict(os.environ, PYTHONPATH=root, PYTHONUNBUFFERED="1")
        cmd = [python, "-m", "backend", "setup", "--accept-licences", "--lam-assets"]

        def work(log):
            background_task.run_command(cmd, log, cwd=root, env=env)

        _start_task("download", background_task.BackgroundTask("Download model assets", work))
        return {"FINISHED"}


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


class LAM_HEAD_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    backend_python: StringProperty(  # type: ignore[valid-type]
        name="Backend Python", subtype="FILE_PATH",
        description="Python of the backend environment (empty: auto-detect: $LAM_HEAD_BACKEND_PYTHON, the installed backend, a developer .venv)",
    )
    device: EnumProperty(  # type: ignore[valid-type]
        name="Device", items=(("auto", "Auto", "CUDA if available, else CPU"), ("cuda", "CUDA", ""), ("cpu", "CPU", "")),
        default="auto",
    )
    precision: EnumProperty(  # type: ignore[valid-type]
        name="Precision", items=(("fp32", "Full (fp32)", "Reference precision"), ("fast", "Fast", "Faster on GPUs, tiny differences")),
        default="fp32",
    )
    weights_dir: StringProperty(name="Weights Folder", subtype="DIR_PATH", description="Optional: LAM weights folder (default: the installed assets)")  # type: ignore[valid-type]
    flame_file: StringProperty(name="FLAME File", subtype="FILE_PATH", description="Optional: FLAME model file (default: the installed assets)")  # type: ignore[valid-type]

    def draw(self, context):
        layout = self.layout
        col = layout.column()
        col.prop(self, "backend_python")
        python, source = backend_python(context)
        col.label(text=f"Using: {python} ({source})" if python else source, icon="CHECKMARK" if python else "ERROR")
        row = col.row()
        row.prop(self, "device")
        row.prop(self, "precision")
        col.prop(self, "weights_dir")
        col.prop(self, "flame_file")

        box = layout.box()
        if STATUS.get("error"):
            for line in _wrap(STATUS["error"], 100)[:6]:
                box.label(text=line, icon="ERROR")
        elif STATUS:
            box.label(text=f"Python {STATUS.get('python')}  torch {STATUS.get('torch')}  device {STATUS.get('device')}")
            for item in (STATUS.get("doctor") or {}).get("assets", []):
                ok = item.get("present")
                box.label(text=f"{item['name']}: " + ("present" if ok else f"missing - {item.get('fix')}"),
                          icon="CHECKMARK" if ok else ("ERROR" if item.get("required") else "INFO"))
        else:
            box.label(text="Status unknown: press Check Backend")
        row = layout.row()
        row.operator(LAM_HEAD_OT_check_backend.bl_idname, icon="FILE_REFRESH")
        row.operator(LAM_HEAD_OT_install_backend.bl_idname, icon="IMPORT")
        row.operator(LAM_HEAD_OT_download_assets.bl_idname, icon="URL")
        if not bpy.app.online_access:
            layout.label(text="Online access is disabled: installing and downloading are unavailable", icon="INFO")
        for task in TASKS.values():
            tbox = layout.box()
            tbox.label(text=f"{task.title}: {task.state.lower()}" + (f" - {task.error}" if task.error else ""))
            for line in list(task.lines)[-6:]:
                tbox.label(text=line[:120])


CLASSES = (LAM_HEAD_OT_check_backend, LAM_HEAD_OT_install_backend, LAM_HEAD_OT_download_assets, LAM_HEAD_preferences)


def unregister_extra() -> None:
    if bpy.app.timers.is_registered(_redraw_prefs):
        bpy.app.timers.unregister(_redraw_prefs)
    MANAGER.stop()
