"""Photo preprocessing: file -> upright RGB -> LAM's 504 x 504 input with matte and landmarks.

``load_image(path)`` and ``prepare_portrait(rgb)`` are the entry points; mediapipe is
imported only when a detector first runs.
"""

from .image_io import BadInputError, as_rgb8, load_image, to_rgb8
from .portrait import PreparedPortrait, prepare_portrait, save_debug

__all__ = ["BadInputError", "PreparedPortrait", "as_rgb8", "load_image", "prepare_portrait", "save_debug", "to_rgb8"]
