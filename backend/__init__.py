"""LAM Head backend: photo -> animatable Gaussian head (see DESIGN.md).

Kept import-light: ``python3 -m backend.devenv`` must run before numpy exists.
"""

__version__ = "0.1.0"
