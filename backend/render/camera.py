"""Pinhole cameras for the splat renderers (numpy only).

Convention (the same for the CPU renderer, the gsplat adapter and the Blender
comparison):

* ``world_to_camera`` is a 4x4 rigid transform into OpenCV camera axes:
  x right, y down, z forward (the camera looks along +z).
* A camera-space point (x, y, z) projects to image coordinates
  ``u = fx * x / z + cx``, ``v = fy * y / z + cy``.
* Pixel (row i, column j) covers ``[j, j+1) x [i, i+1)`` in (u, v); its centre
  is ``(j + 0.5, i + 0.5)`` (gsplat's convention). A centred principal point is
  therefore ``cx = width / 2``, ``cy = height / 2``.
* Gaussians with camera depth ``z < near`` or ``z > far`` are not drawn.

World space is FLAME space: metres, Y up, the face looks towards +Z. The
default head camera sits on +Z looking at the head centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import BadInputError

DEFAULT_NEAR = 0.01  # LAM's render settings (LAM_SPEC section 4)
DEFAULT_FAR = 100.0


@dataclass(frozen=True)
class PinholeCamera:
    """A pinhole camera: image size in pixels, intrinsics in pixels, extrinsics 4x4."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    world_to_camera: np.ndarray = field(default_factory=lambda: np.eye(4))
    near: float = DEFAULT_NEAR
    far: float = DEFAULT_FAR

    def __post_init__(self) -> None:
        m = np.asarray(self.world_to_camera, dtype=np.float64)
        if m.shape != (4, 4) or not np.isfinite(m).all():
            raise BadInputError(f"camera world_to_camera must be a finite 4x4 matrix, got shape {m.shape}")
        if int(self.width) < 1 or int(self.height) < 1:
            raise BadInputError(f"camera size must be positive, got {self.width}x{self.height}")
        if not (self.fx > 0 and self.fy > 0):
            raise BadInputError(f"camera focal lengths must be positive, got fx={self.fx}, fy={self.fy}")
        if not 0 < self.near < self.far:
            raise BadInputError(f"camera needs 0 < near < far, got near={self.near}, far={self.far}")
        object.__setattr__(self, "world_to_camera", m)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    @property
    def K(self) -> np.ndarray:
        """3x3 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def rotation(self) -> np.ndarray:
        """3x3 world-to-camera rotation."""
        return self.world_to_camera[:3, :3]

    @property
    def translation(self) -> np.ndarray:
        return self.world_to_camera[:3, 3]

    @property
    def camera_to_world(self) -> np.ndarray:
        return np.linalg.inv(self.world_to_camera)

    @property
    def position(self) -> np.ndarray:
        """Camera centre in world space."""
        return -self.rotation.T @ self.translation

    @property
    def fov_y_deg(self) -> float:
        return math.degrees(2.0 * math.atan(0.5 * self.height / self.fy))

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points N,3 -> camera-space points N,3."""
        p = np.asarray(points, dtype=np.float64)
        return p @ self.rotation.T + self.translation

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points N,3 -> (uv N,2 image coordinates, z N camera depth)."""
        pc = self.to_camera(points)
        z = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([self.fx * pc[:, 0] / z + self.cx, self.fy * pc[:, 1] / z + self.cy], axis=1)
        return uv, z

    def opengl_camera_to_world(self) -> np.ndarray:
        """Camera-to-world 4x4 in OpenGL/Blender camera axes (x right, y up, looking along -z)."""
        flip = np.diag([1.0, -1.0, -1.0, 1.0])
        return self.camera_to_world @ flip

    def blender_camera_settings(self, sensor_width: float = 36.0) -> dict:
        """Blender camera data for the same view (FLAME space; put the Y-up -> Z-up
        rotation on top of ``matrix_world`` as for the avatar object).

        ``lens`` (mm) with ``sensor_fit='HORIZONTAL'``, ``shift_x``/``shift_y`` (fractions of
        the larger image side; 0 for a centred principal point), ``matrix_world``
        (4x4, OpenGL camera axes), render ``resolution``; needs fx == fy (square pixels)."""
        if not math.isclose(self.fx, self.fy, rel_tol=1e-6):
            raise BadInputError(f"Blender cameras need square pixels (fx == fy), got fx={self.fx}, fy={self.fy}")
        side = max(self.width, self.height)
        return {
            "lens": self.fx * sensor_width / self.width,
            "sensor_width": sensor_width,
            "sensor_fit": "HORIZONTAL",
            "shift_x": (self.width / 2.0 - self.cx) / side,
            "shift_y": (self.cy - self.height / 2.0) / side,
            "clip_start": self.near,
            "clip_end": self.far,
            "resolution": (self.width, self.height),
            "matrix_world": self.opengl_camera_to_world(),
        }


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (tuple, list)):
        w, h = int(size[0]), int(size[1])
    else:
        w = h = int(size)
    if w < 1 or h < 1:
        raise BadInputError(f"image size must be positive, got {w}x{h}")
    return w, h


def look_at(eye, target, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """World-to-camera 4x4 (OpenCV axes) for a camera at ``eye`` looking at ``target``.

    ``up`` is the world direction that appears upwards in the image (FLAME: +Y).
    """
    eye = np.asarray(eye, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    forward = target - eye
    n = np.linalg.norm(forward)
    if n == 0:
        raise BadInputError("look_at: eye and target coincide")
    forward /= n
    right = np.cross(forward, np.asarray(up, dtype=np.float64))
    rn = np.linalg.norm(right)
    if rn < 1e-9:
        raise BadInputError("look_at: the up vector is parallel to the viewing direction")
    right /= rn
    down = np.cross(forward, right)
    m = np.eye(4)
    m[0, :3], m[1, :3], m[2, :3] = right, down, forward
    m[:3, 3] = -m[:3, :3] @ eye
    return m


def orbit_camera(
    center,
    radius: float,
    azimuth_deg: float = 0.0,
    elevation_deg: float = 0.0,
    *,
    fov_deg: float | None = None,
    focal: float | None = None,
    size: int | tuple[int, int] = 512,
    near: float = DEFAULT_NEAR,
    far: float = DEFAULT_FAR,
) -> PinholeCamera:
    """A camera on a sphere of ``radius`` around ``center`` looking at it (turntables).

    Azimuth 0, elevation 0 is on +Z (in front of the face); positive azimuth turns
    towards +X, positive elevation lifts the camera towards +Y. Give either the
    vertical field of view ``fov_deg`` or ``focal`` in pixels; the principal point
    is the image centre.
    """
    w, h = _size(size)
    if (fov_deg is None) == (focal is None):
        raise BadInputError("orbit_camera: give exactly one of fov_deg or focal")
    if focal is None:
        if not 0 < fov_deg < 180:
            raise BadInputError(f"orbit_camera: fov_deg must lie in (0, 180), got {fov_deg}")
        focal = 0.5 * h / math.tan(math.radians(fov_deg) / 2)
    if not radius > 0:
        raise BadInputError(f"orbit_camera: radius must be positive, got {radius}")
    center = np.asarray(center, dtype=np.float64)
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    direction = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    eye = center + radius * direction
    up = (0.0, 1.0, 0.0) if abs(math.cos(el)) > 1e-6 else (0.0, 0.0, -math.copysign(1.0, el))
    return PinholeCamera(w, h, float(focal), float(focal), w / 2.0, h / 2.0, look_at(eye, center, up), near, far)


def head_frame(points: np.ndarray) -> tuple[np.ndarray, float]:
    """(centre 3, bounding-sphere radius) of a point cloud: the box centre and the
    farthest point from it."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if p.shape[0] == 0 or not np.isfinite(p).all():
        raise BadInputError("cannot frame an empty or non-finite point cloud")
    center = 0.5 * (p.min(axis=0) + p.max(axis=0))
    radius = float(np.linalg.norm(p - center, axis=1).max())
    return center, max(radius, 1e-6)


def default_head_camera(
    points: np.ndarray,
    size: int | tuple[int, int] = 512,
    *,
    distance: float = 1.0,
    fill: float = 0.9,
    azimuth_deg: float = 0.0,
    elevation_deg: float = 0.0,
) -> PinholeCamera:
    """LAM-like framing: camera ``distance`` metres in front of the head (+Z) looking at
    its centre, focal chosen so the bounding sphere spans ``fill`` of the shorter image
    side. The focal does not depend on the azimuth, so a turntable keeps its scale."""
    center, r = head_frame(points)
    w, h = _size(size)
    distance = max(float(distance), 1.5 * r)
    tan_half = r / math.sqrt(distance**2 - r**2)
    focal = (fill * 0.5 * min(w, h)) / tan_half
    return orbit_camera(center, distance, azimuth_deg, elevation_deg, focal=focal, size=(w, h))
