"""The extension packages, validates, installs offline, registers and unregisters cleanly."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import bpy
import pytest
import tomllib
from harness import ADDON_MODULE, disable_addon, enable_addon

from backend import devenv

ROOT = Path(__file__).resolve().parents[2]


def _validate(target: Path) -> subprocess.CompletedProcess:
    tool = devenv.blender_ext_script(sys.executable)
    return subprocess.run([sys.executable, str(tool), "validate", str(target)], capture_output=True, text=True)


def test_blender_validator_accepts_source_dir_and_zip(lam_extension_zip):
    for target in (ROOT, lam_extension_zip):
        res = _validate(target)
        assert res.returncode == 0 and "Success" in res.stdout, res.stdout + res.stderr


def test_zip_carries_addon_and_backend_only(lam_extension_zip):
    names = zipfile.ZipFile(lam_extension_zip).namelist()
    assert lam_extension_zip.name.startswith("lam_head-")
    assert "blender_manifest.toml" in names and "__init__.py" in names
    assert "lam_blender/__init__.py" in names and "lam_blender/naming.py" in names
    assert "backend/core/formats/avatar_file.py" in names and "backend/__main__.py" in names
    assert "backend/requirements.txt" in names, "Install Backend needs it"
    bundled = "backend/flame/data/arkit_basis_lam.npz"  # the one data file that ships (ARKit basis, MIT)
    assert bundled in names and "backend/flame/data/LICENSE-LAM_WebRender.txt" in names
    bad = [n for n in names if n.split("/")[0] in {"tests", "bench", ".venv", ".git", "dist", "shared", ".ci"}
           or "__pycache__" in n or (n.endswith((".pyc", ".npz", ".safetensors", ".zip")) and n != bundled)
           or ".egg-info" in n]
    assert not bad, bad


def test_broken_manifest_is_reported(tmp_path):
    """The validator really checks: a manifest with an over-long tagline is refused."""
    (tmp_path / "blender_manifest.toml").write_text(
        (ROOT / "blender_manifest.toml").read_text().replace('tagline = "', 'tagline = "' + "x" * 80, 1)
    )
    (tmp_path / "__init__.py").write_text("")
    assert _validate(tmp_path).returncode != 0


def test_installed_addon_registers_panel_and_operators(lam):
    assert ADDON_MODULE in bpy.context.preferences.addons
    panel = bpy.types.VIEW3D_PT_lam_head
    assert panel.bl_space_type == "VIEW_3D" and panel.bl_region_type == "UI" and panel.bl_category == "LAM"
    assert panel.is_registered
    assert hasattr(bpy.types, "LAM_HEAD_OT_import_avatar")
    draw_funcs = getattr(bpy.types.TOPBAR_MT_file_import.draw, "_draw_funcs", [])
    assert any(getattr(f, "__module__", "").startswith(ADDON_MODULE) for f in draw_funcs)


def _ours_registered() -> list[str]:
    found = []
    stack = [bpy.types.bpy_struct]
    seen = set()
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            if sub in seen:
                continue
            seen.add(sub)
            stack.append(sub)
            if sub.__module__.startswith(ADDON_MODULE) and getattr(sub, "is_registered", False):
                found.append(sub.__name__)
    draw_funcs = getattr(bpy.types.TOPBAR_MT_file_import.draw, "_draw_funcs", [])
    found += [f.__name__ for f in draw_funcs if getattr(f, "__module__", "").startswith(ADDON_MODULE)]
    for type_name in ("Scene", "Object", "WindowManager"):
        rna = getattr(bpy.types, type_name).bl_rna
        found += [f"{type_name}.{p}" for p in rna.properties.keys() if p.startswith("lam_head")]
    for handlers in (bpy.app.handlers.load_post, bpy.app.handlers.depsgraph_update_post, bpy.app.handlers.frame_change_post):
        found += [h.__name__ for h in handlers if getattr(h, "__module__", "").startswith(ADDON_MODULE)]
    return found


def test_unregister_leaves_nothing_registered(lam):
    assert _ours_registered(), "the check must see our classes while the add-on is enabled"
    disable_addon()
    try:
        assert ADDON_MODULE not in bpy.context.preferences.addons
        assert not hasattr(bpy.types, "VIEW3D_PT_lam_head")
        assert _ours_registered() == []
    finally:
        enable_addon()
    assert hasattr(bpy.types, "VIEW3D_PT_lam_head")


@pytest.mark.slow
def test_devenv_build_command(tmp_path):
    """`python3 -m backend.devenv build` writes dist/lam_head-<version>.zip with the .venv python."""
    out = devenv.build_extension(tmp_path, python=sys.executable, log=lambda _m: None)
    version = tomllib.loads((ROOT / "blender_manifest.toml").read_text())["version"]
    assert out.parent == tmp_path and out.name == f"lam_head-{version}.zip"
    assert not list(tmp_path.glob(".build-*")), "no temporary build folder is left behind"


def test_bundled_plyfile_wheel_is_declared_shipped_and_installed(lam_extension_zip, lam):
    """plyfile (PLY I/O of backend/core/formats/ply.py) ships as a wheel that Blender installs offline."""
    manifest = tomllib.loads((ROOT / "blender_manifest.toml").read_text())
    wheels = manifest["wheels"]
    assert wheels == ["./wheels/plyfile-1.1.3-py3-none-any.whl"]
    assert (ROOT / wheels[0]).is_file()
    assert "wheels/plyfile-1.1.3-py3-none-any.whl" in zipfile.ZipFile(lam_extension_zip).namelist()
    # Blender unpacked it into the extensions' site-packages (the hermetic user folder)
    site = Path(bpy.utils.user_resource("EXTENSIONS", path=".local"))
    assert list(site.rglob("plyfile.py")), f"plyfile not installed under {site}"
    # and the add-on's PLY writer works through it
    import numpy as np

    ply = lam.core.ply
    out = ply.columns_to_bytes({"x": np.zeros(2, np.float32), "y": np.ones(2, np.float32)})
    assert out.startswith(b"ply\nformat binary_little_endian 1.0\nelement vertex 2\n")
    assert list(ply.read_ply_columns(out, "t.ply")) == ["x", "y"]
