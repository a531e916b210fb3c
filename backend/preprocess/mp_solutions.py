"""Import mediapipe's legacy face solutions without the drawing helpers.

``import mediapipe`` runs ``mediapipe/python/solutions/__init__.py``, which
imports ``drawing_utils`` and with it OpenCV and matplotlib, neither of which
the face detector, face mesh or selfie segmentation use (their graphs run in
mediapipe's own C++ bindings and take numpy arrays). We install mediapipe
``--no-deps`` and keep those two out, so we register the two package objects
whose ``__init__`` would pull them in, with their real search paths, and then
import the solution modules themselves. Everything they run is mediapipe's own
code and model files, shipped inside the wheel.

Every calculator-options protobuf module of the wheel is imported before the first graph is
built (:func:`_register_option_types`). A solution hands its graph to C++ through Python's
protobuf, and any node option whose message type Python has not imported yet is silently
dropped on the way: ``face_detection.py`` does not import the non-max-suppression options, so
in a fresh process the detector ran with plain NMS instead of its weighted NMS, until
``face_mesh.py`` (which does import them) had been loaded by the first photo's landmark step.
Every later photo of the same process was then detected differently from the first (boxes ~1 px
apart, landmarks and crop following); the face mesh lost its presence-score sigmoid the same
way. With every options type registered up front each photo gets the graphs as mediapipe
defines them, whatever ran before it.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import threading
import types

from ..core.errors import MissingAssetError

_lock = threading.Lock()
_cache: dict[str, types.ModuleType] = {}


def _package(name: str, path: str) -> None:
    if name not in sys.modules:
        mod = types.ModuleType(name)
        mod.__path__ = [path]  # a package: submodules are found here
        mod.__package__ = name
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        mod.__spec__.submodule_search_locations = [path]
        sys.modules[name] = mod


def solution(name: str) -> types.ModuleType:
    """``mediapipe.python.solutions.<name>`` (``face_detection``, ``face_mesh``, ``selfie_segmentation``)."""
    with _lock:
        if name in _cache:
            return _cache[name]
        spec = importlib.util.find_spec("mediapipe")
        if spec is None or not spec.submodule_search_locations:
            raise MissingAssetError(
                "mediapipe is not installed in the backend environment; run the backend setup again "
                "(it installs mediapipe==0.10.21)"
            )
        root = list(spec.submodule_search_locations)[0]
        if "mediapipe" not in sys.modules:
            _package("mediapipe", root)
        _package("mediapipe.python.solutions", os.path.join(root, "python", "solutions"))
        _register_option_types(root)
        mod = importlib.import_module(f"mediapipe.python.solutions.{name}")
        _cache[name] = mod
        return mod


# Folders of the mediapipe wheel whose ``*_pb2`` modules define graph-node options (not ``tasks``).
_OPTION_PACKAGES = ("framework", "calculators", "modules", "gpu", "util")
_registered = False


def _register_option_types(root: str) -> None:
    """Import every ``*_pb2`` module under :data:`_OPTION_PACKAGES` once (about 200, ~0.1 s), so no
    node option of any solution graph is dropped for want of its Python type (module docstring)."""
    global _registered
    if _registered:
        return
    for sub in _OPTION_PACKAGES:
        for folder, _dirs, files in os.walk(os.path.join(root, sub)):
            for f in sorted(files):
                if f.endswith("_pb2.py"):
                    rel = os.path.relpath(os.path.join(folder, f[:-3]), root)
                    try:
                        importlib.import_module("mediapipe." + rel.replace(os.sep, "."))
                    except ImportError:  # a module needing something not installed defines no option we use
                        continue
    _registered = True
