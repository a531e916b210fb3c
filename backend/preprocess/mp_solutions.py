"""Import mediapipe's legacy face solutions without the drawing helpers.

``import mediapipe`` runs ``mediapipe/python/solutions/__init__.py``, which
imports ``drawing_utils`` and with it OpenCV and matplotlib, neither of which
the face detector, face mesh or selfie segmentation use (their graphs run in
mediapipe's own C++ bindings and take numpy arrays). We install mediapipe
``--no-deps`` and keep those two out, so we register the two package objects
whose ``__init__`` would pull them in, with their real search paths, and then
import the solution modules themselves. Everything they run is mediapipe's own
code and model files, shipped inside the wheel.
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
        mod = importlib.import_module(f"mediapipe.python.solutions.{name}")
        _cache[name] = mod
        return mod
