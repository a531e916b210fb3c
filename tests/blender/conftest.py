"""Blender test harness: hermetic headless bpy with the add-on installed from its zip.

* Blender's user directories (config, scripts, extensions, datafiles) point at
  a temporary folder BEFORE bpy is imported, so no user preferences or add-ons
  leak in and nothing is written to the real home directory.
* The extension zip is built once per session from the working tree (the same
  ``blender_ext.py build`` as ``python3 -m backend.devenv build``), installed
  offline with ``bpy.ops.extensions.package_install_files`` and enabled.
* ``empty_scene`` resets to factory settings with an empty scene before each
  test and re-enables the add-on (a factory reset disables add-ons).

Fixtures: ``lam_extension_zip`` (session, Path), ``lam_addon`` (session, the
installed add-on package module), ``empty_scene`` (per test, yields the
installed ``lam_blender`` package), ``lam`` (alias of ``empty_scene``),
``avatar_file`` (factory: ``avatar_file(n_points=500, n_expr=10, seed=0) ->
Path`` of a synthetic avatar saved under tmp_path).

Code under test is the INSTALLED copy: reach its modules through the fixtures
(``lam.controls``, ``lam.ops_import``, ``importlib.import_module(lam.__name__ + ".splat")``),
not by importing ``lam_blender`` from the repo.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

# isort: off
from harness import ADDON_MODULE, BACKEND_PYTHON, REPO_ID, disable_addon, enable_addon  # noqa: F401  (first: hermetic bpy)
import bpy
# isort: on

from backend import devenv


@pytest.fixture(scope="session")
def lam_extension_zip(tmp_path_factory) -> Path:
    """The extension zip built from the working tree with the running bpy's blender_ext.py."""
    return devenv.build_extension(tmp_path_factory.mktemp("dist"), python=sys.executable, log=lambda _m: None)


@pytest.fixture(scope="session")
def lam_addon(lam_extension_zip):
    """Install the zip into the hermetic user repository (offline) and enable it."""
    result = bpy.ops.extensions.package_install_files(
        filepath=str(lam_extension_zip), repo=REPO_ID, enable_on_install=True
    )
    assert result == {"FINISHED"}, result
    enable_addon()
    yield importlib.import_module(ADDON_MODULE)
    if ADDON_MODULE in bpy.context.preferences.addons:
        disable_addon()


@pytest.fixture
def empty_scene(lam_addon):
    """Factory settings, empty scene, add-on enabled; yields the installed ``lam_blender`` package."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    enable_addon()
    yield importlib.import_module(f"{ADDON_MODULE}.lam_blender")


@pytest.fixture
def lam(empty_scene):
    return empty_scene


@pytest.fixture
def avatar_file(tmp_path):
    """Factory fixture: save a synthetic avatar and return its path."""
    from factories.avatar import make_avatar

    from backend.core.formats.avatar_file import save_avatar

    def make(name: str = "avatar.npz", **kwargs) -> Path:
        return save_avatar(tmp_path / name, make_avatar(**kwargs))

    return make
