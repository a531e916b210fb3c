"""A few-photo subject we know completely: the real LAM ZIP avatar, posed by our rig, photographed by our renderer.

Used by tests/test_views_heldout.py and bench/bench_views_heldout.py to check ``create --views`` end to end
(issue 15) where the truth is known. Nothing here runs inside ``create``: it only makes the inputs a user
would have (photos, a FLAME file, a landmark embedding, weights) and measures the outputs.

* **Subject.** The real ZIP's Gaussians (``read_lam_zip``) moved into FLAME's frame (the ZIP's mesh minus its
  centroid) and put on the rig of :func:`subject_flame_arrays` with betas = 0: exactly the avatar model
  ``create`` writes, so a known pose means the same thing for the subject and for every created avatar.
* **FLAME on the subject's own topology** (:func:`subject_flame_arrays`): ``v_template`` = the ZIP's 5023
  original vertices. Shape basis: the made-up smooth fields of ``factories.flame`` (the subject is betas = 0;
  the fit should stay near it). Expression basis: the ZIP's own 51 ARKit blendshapes (components 0-50, in
  the ZIP's order) padded with 49 zero components to FLAME's 100: real, face-local deformations (FLAME's
  PCA basis is not available), and a known ARKit expression is then a known FLAME expression. (A
  unit-variance PCA of the track's displacements, FLAME's own recipe, was tried: its prior held the
  photos' strong expressions back, landmark RMS 3.2 px against 2.4.) Joints:
  root and neck at the ZIP skeleton's ``neckUpper`` and ``head`` joints, jaw at the hinge of the
  ``jawOpen`` target (least-squares rotation centre), eyes at the eyeball centroids; each regressed
  exactly from surface vertices (non-negative weights, as FLAME's regressor). Skinning: the ZIP's ``head``
  weight drives the neck joint, the rest the root; the jaw takes the share of the head weight that
  ``jawOpen`` moves rigidly about the hinge; eyeballs go to the eye joints. No pose correctives (LAM
  animates without them).
* **Landmark embedding** (:func:`calibration_embedding`), in the official file layout: the subject rendered
  from five known cameras, the 68 landmarks found by ``backend.preprocess`` exactly as ``create`` finds them,
  each landmark placed at the point of the FLAME skin whose projections best match its detections in all
  five (triangle + barycentric weights); the inner lips on a mouth-open render. It matches what our
  detector sees on this subject, as the official embedding matches what the official detector sees on
  FLAME heads; what remains is the detector's own view- and expression-dependence (2.5 px at 504 on the
  calibration renders, 3-5 px on the photos).
* **Photos** (:data:`SHOTS`): head pose (global + neck), a frame of the real ARKit track
  ``test_expression_1s.json`` as the expression, and a camera (orbit azimuth/elevation, distance, focal);
  rendered by the CPU renderer through our rig on a plain background, saved as JPEG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from backend.core.formats.avatar_file import Avatar
from backend.core.rig import FlamePose, axis_angle_to_matrix
from backend.fit.flame_fit import FlameFit
from backend.render.camera import PinholeCamera, orbit_camera

from .flame import flame_arrays_on_mesh, write_flame_pickle
from .lam_zips import REAL_DIR, real_zips

TRACK = REAL_DIR / "test_expression_1s.json"
BACKGROUND = (0.80, 0.82, 0.85)  # a plain light wall
N_EXPR = 100  # FLAME's count; the first 51 are the ARKit targets
EYEBALL_L, EYEBALL_R = range(3931, 4477), range(4477, 5023)  # FLAME 2023's eyeballs (+X is the subject's left)
LOOK_AT = (0.0, 0.0, 0.0)  # the ZIP mesh's centroid: the head's middle


@dataclass(frozen=True)
class Shot:
    """One photo: camera on an orbit around the head (degrees; metres; focal in pixels of a ``size`` image
    at ``size`` 512), head pose (axis-angle radians) and the ARKit track frame used as the expression."""

    name: str
    azimuth: float
    elevation: float
    rotation: tuple[float, float, float]
    neck: tuple[float, float, float]
    jaw: tuple[float, float, float]
    frame: int
    distance: float = 0.5
    focal512: float = 610.0


# Track frames: 0 near neutral, 249 jawOpen 0.3, 799 broad smile, 129 pucker, 935 lower lip down, 45 brows up.
SHOTS: tuple[Shot, ...] = (
    Shot("front.jpg", 0.0, 4.0, (0.02, 0.05, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 799),
    Shot("left.jpg", -32.0, 0.0, (0.0, -0.10, 0.02), (0.03, 0.0, 0.0), (0.04, 0.0, 0.0), 249, 0.48, 590.0),
    Shot("right.jpg", 30.0, 8.0, (-0.03, 0.12, -0.03), (0.0, 0.05, 0.0), (0.0, 0.0, 0.0), 129, 0.55, 665.0),
    Shot("low.jpg", -12.0, -14.0, (0.08, 0.0, 0.0), (0.0, -0.05, 0.0), (0.06, 0.0, 0.0), 935),
    Shot("heldout.jpg", 18.0, -6.0, (0.04, 0.10, 0.03), (0.0, 0.0, 0.0), (0.03, 0.0, 0.0), 45, 0.52, 630.0),
)
HELD_OUT = "heldout.jpg"


@dataclass
class Subject:
    """The known avatar (FLAME rig, betas 0), the FLAME arrays it was built from (pickle names), the
    translation from the ZIP's frame into FLAME's, the ZIP it came from, and the map from ARKit weights to
    this FLAME's expression coefficients."""

    avatar: Avatar
    flame: dict[str, np.ndarray]
    shift: np.ndarray
    zip_path: Path
    arkit_to_expr: np.ndarray  # N_EXPR,K: ARKit weights (the avatar's arkit_names order) -> expression coefficients


@dataclass
class Photo:
    """A photo as saved (``rgb`` decoded back from the file, float H,W,3), its true matte (the render's
    alpha), and the truth it was taken with."""

    name: str
    path: Path
    rgb: np.ndarray
    alpha: np.ndarray
    pose: FlamePose
    camera: PinholeCamera
    shot: Shot


def subject_zip() -> Path | None:
    """The real LAM ZIP the subject comes from (the first in the shared fixtures), or None."""
    found = real_zips()
    return found[0] if found else None


# --------------------------------------------------------------------------------------------- subject


def _regress(v: np.ndarray, target: np.ndarray, radius: float = 0.015) -> np.ndarray:
    """A J_regressor row (non-negative, sums to 1) whose vertex average is ``target``: the surface vertices
    within ``radius`` of the left-right line through it (both sides of the head surround the point)."""
    from scipy.optimize import nnls

    near = np.nonzero(np.linalg.norm(v[:, 1:] - target[1:], axis=1) < radius)[0]
    a = np.vstack([v[near].T, 10.0 * np.ones(near.size)])
    w, res = nnls(a, np.append(target, 10.0))
    if res > 1e-6:
        raise ValueError(f"no vertex average reaches the joint {target} (residual {res:.2e})")
    row = np.zeros(v.shape[0])
    row[near] = w
    return row


def _jaw_hinge(v: np.ndarray, jaw_open: np.ndarray) -> tuple[float, np.ndarray]:
    """(angle, centre (y, z)) of the rotation about the X axis that best explains ``jaw_open`` (V,3) where it
    moves more than 2 cm: delta_y = -a (z - cz), delta_z = a (y - cy), linear in (a, a cz, a cy)."""
    m = np.linalg.norm(jaw_open, axis=1) > 0.02
    p, d = v[m], jaw_open[m]
    n = int(m.sum())
    a = np.zeros((2 * n, 3))
    a[0::2] = np.stack([-p[:, 2], np.ones(n), np.zeros(n)], 1)
    a[1::2] = np.stack([p[:, 1], np.zeros(n), -np.ones(n)], 1)
    b = np.empty(2 * n)
    b[0::2], b[1::2] = d[:, 1], d[:, 2]
    (angle, acz, acy), *_ = np.linalg.lstsq(a, b, rcond=None)
    return float(angle), np.array([acy / angle, acz / angle])


def subject_flame_arrays(zip_avatar: Avatar, skin, seed: int = 3) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """FLAME arrays (pickle names) on the ZIP's own mesh, the shift ZIP frame -> FLAME frame, and the matrix
    taking the ZIP's ARKit weights to FLAME expression coefficients (see the module docstring)."""
    from backend.flame import arkit_basis
    from backend.flame.subdivide import faces_from_subdivided

    n = arkit_basis.original_vertex_count(skin.faces)
    faces = faces_from_subdivided(skin.faces, n)
    shift = skin.positions[:n].astype(np.float64).mean(axis=0)
    v = skin.positions[:n].astype(np.float64) - shift
    arrays = flame_arrays_on_mesh(v, faces, 300, N_EXPR, seed)
    deltas = skin.target_deltas[:n].astype(np.float64)  # V,3,51 in the ZIP's order
    names = list(skin.target_names)
    shapedirs = arrays["shapedirs"].copy()
    shapedirs[:, :, 300:] = 0.0
    shapedirs[:, :, 300:300 + deltas.shape[2]] = deltas
    arkit_to_expr = np.eye(N_EXPR, deltas.shape[2])  # ARKit target k is expression component k

    angle, (cy, cz) = _jaw_hinge(v, deltas[:, :, names.index("jawOpen")])
    joints = {name: zip_avatar.joints[i].astype(np.float64) - shift for i, name in enumerate(zip_avatar.joint_names)}
    regressor = np.zeros((5, n))
    for j, target in enumerate((joints["neckUpper"], joints["head"], np.array([0.0, cy, cz]))):
        regressor[j] = _regress(v, target)
    regressor[3, list(EYEBALL_L)] = 1.0 / len(EYEBALL_L)
    regressor[4, list(EYEBALL_R)] = 1.0 / len(EYEBALL_R)

    head = zip_avatar.lbs_weights[:n, list(zip_avatar.joint_names).index("head")].astype(np.float64)
    arm = np.maximum(np.linalg.norm(v[:, 1:] - [cy, cz], axis=1), 0.01)
    follows_jaw = np.clip(np.linalg.norm(deltas[:, :, names.index("jawOpen")], axis=1) / (abs(angle) * arm), 0.0, 1.0)
    weights = np.zeros((n, 5))
    weights[:, 0] = 1.0 - head
    weights[:, 2] = follows_jaw * head
    weights[:, 1] = head - weights[:, 2]
    for j, eye in ((3, EYEBALL_L), (4, EYEBALL_R)):
        weights[list(eye)] = 0.0
        weights[list(eye), j] = 1.0
    arrays.update(shapedirs=shapedirs, posedirs=np.zeros_like(arrays["posedirs"]), J_regressor=regressor,
                  weights=weights)
    return arrays, shift, arkit_to_expr


def load_subject(zip_path: Path | None = None) -> Subject:
    """The real ZIP avatar on our FLAME rig (betas 0): its Gaussians unchanged, moved into FLAME's frame."""
    from backend.core.formats.lam_zip import read_lam_zip
    from backend.create.assemble import assemble_avatar
    from backend.flame import arkit_basis, build_rig
    from backend.flame.model import FlameModel

    zip_path = zip_path or subject_zip()
    if zip_path is None:
        raise FileNotFoundError(f"no real LAM ZIP in {REAL_DIR}")
    zav, template = read_lam_zip(zip_path)
    arrays, shift, arkit_to_expr = subject_flame_arrays(zav, template.skin())
    model = FlameModel.from_arrays(arrays)
    rig = build_rig(model, np.zeros(model.n_shape), levels=1, arkit=arkit_basis.bundled())
    if np.abs(rig.template + shift - zav.template).max() > 1e-5:
        raise ValueError("our subdivision of the ZIP's mesh does not give the ZIP's vertices")
    avatar = assemble_avatar(rig, (zav.xyz - shift).astype(np.float32), zav.rgb, zav.opacity, zav.scale, zav.rotation,
                             {"model": "subject", "source_file": zip_path.name})
    return Subject(avatar, arrays, shift, Path(zip_path), arkit_to_expr)


def write_subject_flame(path: Path, subject: Subject) -> Path:
    """The subject's FLAME as an official-structure pickle (chumpy objects, sparse J_regressor)."""
    return write_flame_pickle(path, subject.flame)


# --------------------------------------------------------------------------------------------- photos


def track_expressions() -> tuple[tuple[str, ...], np.ndarray]:
    """(names, weights F,K) of the real ARKit track."""
    from backend.core.formats.arkit_track import load_arkit_track

    track = load_arkit_track(TRACK)
    return track.names, track.weights


def shot_pose(subject: Subject, shot: Shot) -> FlamePose:
    """The shot's FLAME pose: its head pose, and its track frame's ARKit weights as expression coefficients."""
    names, weights = track_expressions()
    targets = list(subject.avatar.arkit_names)
    w = np.zeros(len(targets))
    for k, name in enumerate(names):
        if name in targets:
            w[targets.index(name)] = weights[shot.frame, k]
    pose = FlamePose.zeros(1, N_EXPR)
    pose.expr[0] = subject.arkit_to_expr @ w
    pose.rotation[0], pose.neck[0], pose.jaw[0] = shot.rotation, shot.neck, shot.jaw
    return pose


def shot_camera(shot: Shot, size: int) -> PinholeCamera:
    return orbit_camera(np.array(LOOK_AT), shot.distance, shot.azimuth, shot.elevation,
                        focal=shot.focal512 * size / 512.0, size=size)


def render_subject(avatar: Avatar, pose: FlamePose, camera: PinholeCamera, background=BACKGROUND):
    """The CPU renderer through our rig (mode "rig", Gaussians rotating with their local deformation)."""
    from backend.render import render_avatar

    return render_avatar(avatar, pose, camera, background=background, backend="cpu")


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def take_photos(subject: Subject, folder: Path, size: int = 512, shots: tuple[Shot, ...] = SHOTS,
                quality: int = 95) -> dict[str, Photo]:
    """Render every shot and save it as a JPEG in ``folder``; returns them by name."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for shot in shots:
        pose, cam = shot_pose(subject, shot), shot_camera(shot, size)
        r = render_subject(subject.avatar, pose, cam)
        path = folder / shot.name
        Image.fromarray(to_uint8(r.rgb)).save(path, quality=quality)
        rgb = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0
        out[shot.name] = Photo(shot.name, path, rgb, r.alpha.astype(np.float32), pose, cam, shot)
    return out


# --------------------------------------------------------------------------------------------- embedding


def _bary_grid(steps: int) -> np.ndarray:
    """Barycentric weights on a triangular grid with ``steps`` intervals per edge: G,3."""
    i, j = np.meshgrid(np.arange(steps + 1), np.arange(steps + 1), indexing="ij")
    keep = i + j <= steps
    a, b = i[keep] / steps, j[keep] / steps
    return np.stack([1.0 - a - b, a, b], 1)


def best_surface_point(tri: np.ndarray, cameras: list[PinholeCamera], uvs: list[np.ndarray]) -> tuple[int, np.ndarray, float]:
    """The point of triangles T,3,3 whose projections best match the pixels ``uvs`` (one per camera):
    (triangle, barycentric weights, RMS reprojection error in pixels). A coarse barycentric grid over every
    triangle, then a fine one (1/24 of an edge) over the 8 best."""

    def errors(t: np.ndarray, grid: np.ndarray) -> np.ndarray:
        pts = np.einsum("gk,tkc->tgc", grid, t).reshape(-1, 3)
        err = np.zeros(len(pts))
        for cam, uv in zip(cameras, uvs):
            proj, _ = cam.project(pts)
            err += ((proj - uv) ** 2).sum(1)
        return err.reshape(len(t), len(grid))

    coarse = errors(tri, _bary_grid(4)).min(axis=1)
    top = np.argsort(coarse)[:8]
    fine_grid = _bary_grid(24)
    fine = errors(tri[top], fine_grid)
    t, g = np.unravel_index(int(np.argmin(fine)), fine.shape)
    return int(top[t]), fine_grid[g], float(np.sqrt(fine[t, g] / len(cameras)))


def _detected_rays(avatar: Avatar, pose: FlamePose, camera: PinholeCamera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render, detect with ``backend.preprocess`` (as ``create`` does), and return (camera centre, unit ray
    per landmark 68,3, landmark pixels 68,2 in the render)."""
    from backend.preprocess import prepare_portrait

    prepared = prepare_portrait(to_uint8(render_subject(avatar, pose, camera).rgb))
    # 504 input pixels -> 1024 head crop -> render pixels (the inverse of preprocess.crop.map_points)
    ix0, iy0, iside = prepared.input_crop
    x0, y0, side = prepared.head_crop
    uv = (np.asarray(prepared.landmarks68, np.float64) * iside / 504.0 + [ix0, iy0]) * side / 1024.0 + [x0, y0]
    c2w = camera.camera_to_world
    d = np.stack([(uv[:, 0] - camera.cx) / camera.fx, (uv[:, 1] - camera.cy) / camera.fy, np.ones(len(uv))], 1)
    d = d @ c2w[:3, :3].T
    return c2w[:3, 3], d / np.linalg.norm(d, axis=1, keepdims=True), uv


def _triangulate(origins: list[np.ndarray], rays: list[np.ndarray]) -> np.ndarray:
    """Per landmark, the point closest (least squares) to its rays from every view: K,3."""
    out = np.zeros((rays[0].shape[0], 3))
    for k in range(len(out)):
        a, b = np.zeros((3, 3)), np.zeros(3)
        for o, r in zip(origins, rays):
            m = np.eye(3) - np.outer(r[k], r[k])
            a += m
            b += m @ o
        out[k] = np.linalg.solve(a, b)
    return out


CALIBRATION_AZIMUTHS = (-30.0, -15.0, 0.0, 15.0, 30.0)
INNER_LIPS = range(60, 68)
MOUTH_OPEN = {"jawOpen": 0.35}  # inner-lip calibration: a closed mouth puts upper and lower inner lip on one point
SEARCH_RADIUS = 0.03  # m around the triangulated point


def calibration_embedding(subject: Subject, size: int = 512) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The 68-landmark embedding of this subject in LAM's file layout (``full_lmk_faces_idx`` 1,68 and
    ``full_lmk_bary_coords`` 1,68,3 on FLAME's original triangles), and diagnostics.

    The subject is rendered with its head still from :data:`CALIBRATION_AZIMUTHS`; the landmarks are
    detected as ``create`` detects them; each landmark's rays from the known cameras are triangulated (least
    squares), and among the skin triangles near that point (eyeballs excluded: landmarks lie on the eyelids)
    the point whose projections best match the detections in every view is taken. Contour and nose points,
    which the detector places differently from each side, get one compromise point, as a static embedding
    must. The inner lips (60-67) are calibrated the same way with the mouth open (:data:`MOUTH_OPEN`, on the
    open mesh). Diagnostics: mean ray-to-point distance of the triangulation (mm) and RMS reprojection error
    of the chosen points over all views (px)."""
    v0 = subject.flame["v_template"].astype(np.float64)
    faces = subject.flame["f"].astype(np.int64)
    eyes = np.zeros(len(v0), bool)
    eyes[list(EYEBALL_L) + list(EYEBALL_R)] = True
    skin = np.nonzero(~eyes[faces].any(axis=1))[0]
    names = list(subject.avatar.arkit_names)
    face_idx, bary = np.zeros(68, np.int64), np.zeros((68, 3))
    residual, reproj = [], []
    for which, expr in ((range(60), {}), (INNER_LIPS, MOUTH_OPEN)):
        w = np.zeros(len(names))
        for name, value in expr.items():
            w[names.index(name)] = value
        pose = FlamePose.zeros(1, N_EXPR)
        pose.arkit, pose.arkit_names = w[None].astype(np.float32), tuple(names)  # the avatar's own ARKit keys
        verts = v0 + subject.avatar.arkit_dirs[:len(v0)].astype(np.float64) @ w
        origins, rays, cams, uvs = [], [], [], []
        for az in CALIBRATION_AZIMUTHS:
            cam = shot_camera(Shot("calibration", az, 0.0, (0, 0, 0), (0, 0, 0), (0, 0, 0), 0), size)
            o, r, uv = _detected_rays(subject.avatar, pose, cam)
            origins.append(o)
            rays.append(r)
            cams.append(cam)
            uvs.append(uv)
        points = _triangulate(origins, rays)
        tri = verts[faces[skin]]
        centres = tri.mean(axis=1)
        for k in which:
            residual.append(np.mean([np.linalg.norm(np.cross(points[k] - o, r[k])) for o, r in zip(origins, rays)]))
            near = np.nonzero(np.linalg.norm(centres - points[k], axis=1) < SEARCH_RADIUS)[0]
            f, b, e = best_surface_point(tri[near], cams, [uv[k] for uv in uvs])
            face_idx[k], bary[k] = skin[near[f]], b
            reproj.append(e)
    diag = {"ray_residual_mm": 1000.0 * float(np.mean(residual)), "reprojection_px": float(np.sqrt(np.mean(np.square(reproj))))}
    return {"full_lmk_faces_idx": face_idx[None], "full_lmk_bary_coords": bary[None]}, diag


def write_embedding(path: Path, embedding: dict[str, np.ndarray]) -> Path:
    """LAM's ``landmark_embedding_with_eyes.npy`` layout: a pickled dict of arrays in a 0-d object array."""
    np.save(path, np.array(embedding, dtype=object), allow_pickle=True)
    return path


# --------------------------------------------------------------------------------------------- measures


def heldout_psnr(avatar: Avatar, photo: Photo, pose: FlamePose | None = None) -> float:
    """PSNR (dB) of ``avatar`` rendered with the photo's known pose and camera, against the photo, weighted
    by the photo's true matte (the background is the photo's own colour, so matte edges compare fairly)."""
    from backend.create.refine import psnr

    r = render_subject(avatar, photo.pose if pose is None else pose, photo.camera)
    return psnr(r.rgb, photo.rgb, photo.alpha)


def _rotation_deg(a: np.ndarray, b: np.ndarray) -> float:
    c = (np.trace(a.T @ b) - 1.0) / 2.0
    return math.degrees(math.acos(float(np.clip(c, -1.0, 1.0))))


FIT_VIEW = np.diag([1.0, -1.0, -1.0])  # the FLAME fit's camera axes (on +Z looking down -Z) in OpenCV axes


def _posed_vertices(arrays: dict[str, np.ndarray], betas, expr, rotation, neck, jaw) -> np.ndarray:
    """FLAME vertices (original mesh) under shape, expression, global/neck/jaw rotations: our own numpy LBS."""
    v = arrays["v_template"] + arrays["shapedirs"][:, :, :len(betas)] @ betas
    v = v + arrays["shapedirs"][:, :, 300:300 + len(expr)] @ expr
    joints = arrays["J_regressor"] @ v
    parents = arrays["kintree_table"][0].astype(np.int64)
    parents[parents > 4] = -1
    rots = axis_angle_to_matrix(np.stack([rotation, neck, jaw, np.zeros(3), np.zeros(3)]).astype(np.float64))
    g = []
    for j, p in enumerate(parents):
        local = np.eye(4)
        local[:3, :3] = rots[j]
        local[:3, 3] = joints[j] - (joints[p] if p >= 0 else 0)
        g.append(local if p < 0 else g[p] @ local)
    a = np.stack([gj @ np.block([[np.eye(3), -joints[j][:, None]], [np.zeros((1, 3)), np.ones((1, 1))]])
                  for j, gj in enumerate(g)])
    m = np.einsum("nj,jab->nab", arrays["weights"], a)
    return np.einsum("nab,nb->na", m[:, :3, :3], v) + m[:, :3, 3]


def face_vertices(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The face: vertices an expression moves (except the eyeballs)."""
    moved = np.abs(arrays["shapedirs"][:, :, 300:]).max(axis=(1, 2)) > 1e-4
    moved[list(EYEBALL_L) + list(EYEBALL_R)] = False
    return np.nonzero(moved)[0]


def fit_errors(arrays: dict[str, np.ndarray], fit: FlameFit, photo: Photo, prepared_crop: tuple) -> dict[str, float]:
    """How far a FlameFit (with its ``betas``) is from the truth of ``photo`` (the subject is betas = 0):

    * ``rotation_deg``: head orientation (global x neck) relative to the ray through the network input's
      centre (the fit's camera looks through it, the photo's camera through the photo's centre); ``turn_deg``:
      the true head turn on the same terms (the error of a run without a fit, which assumes a facing head);
    * ``shape_mm``: RMS over the face vertices of the fitted shape's displacement (the truth is none);
    * ``expr_mm``: RMS over the face vertices of the expression + jaw displacement, fitted vs true, both on
      the mean head in its own frame; ``expr_rel``: that over the size of the true displacement (0 perfect,
      1 as far off as a neutral face);
    * ``align_px``: RMS image distance over the face vertices between the truth (true pose through the
      photo's camera, mapped into the input) and the fit (its shape, expression, pose and camera), in pixels
      of the 504 network input (``prepared_crop`` = (x0, y0, side) of that input in the photo): what the
      refinement relies on.
    """
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    z, b0 = np.zeros(3), np.zeros(300)
    face = face_vertices(arrays)
    rms = lambda a: float(np.sqrt((a ** 2).sum(1).mean()))  # noqa: E731
    neutral = _posed_vertices(arrays, b0, np.zeros(N_EXPR), z, z, z)[face]
    true_disp = _posed_vertices(arrays, b0, f64(photo.pose.expr[0]), z, z, f64(photo.pose.jaw[0]))[face] - neutral
    fit_disp = _posed_vertices(arrays, b0, f64(fit.expr), z, z, f64(fit.jaw))[face] - neutral
    shape = arrays["shapedirs"][face, :, :len(fit.betas)] @ f64(fit.betas)
    r = lambda a: axis_angle_to_matrix(f64(a)[None])[0]  # noqa: E731
    x0, y0, side = prepared_crop
    cam = photo.camera
    ray = np.array([(x0 + side / 2 - cam.cx) / cam.fx, (y0 + side / 2 - cam.cy) / cam.fy, 1.0])
    ray /= np.linalg.norm(ray)
    axis = np.cross(ray, [0.0, 0.0, 1.0])
    to_centre = r(axis / max(np.linalg.norm(axis), 1e-12) * math.acos(float(np.clip(ray[2], -1.0, 1.0))))
    true_rel = to_centre @ cam.rotation @ r(photo.pose.rotation[0]) @ r(photo.pose.neck[0])
    fit_rel = FIT_VIEW @ r(fit.rotation) @ r(fit.neck)
    true_posed = _posed_vertices(arrays, b0, f64(photo.pose.expr[0]), f64(photo.pose.rotation[0]),
                                 f64(photo.pose.neck[0]), f64(photo.pose.jaw[0]))[face]
    uv_true = (cam.project(true_posed)[0] - [x0, y0]) * 504.0 / side
    fit_posed = _posed_vertices(arrays, f64(fit.betas), f64(fit.expr), f64(fit.rotation), f64(fit.neck),
                                f64(fit.jaw))[face] + f64(fit.translation)
    depth = 1.0 - fit_posed[:, 2]  # the fit's camera: 1 m on +Z looking down -Z, centred principal point
    c = fit.image_size / 2.0
    uv_fit = np.stack([fit.focal * fit_posed[:, 0] / depth + c, -fit.focal * fit_posed[:, 1] / depth + c], 1)
    return {
        "rotation_deg": _rotation_deg(true_rel, fit_rel),
        "turn_deg": _rotation_deg(true_rel, FIT_VIEW),
        "shape_mm": 1000.0 * rms(shape),
        "expr_mm": 1000.0 * rms(fit_disp - true_disp),
        "expr_rel": rms(fit_disp - true_disp) / max(rms(true_disp), 1e-9),
        "align_px": float(np.sqrt(((uv_fit - uv_true) ** 2).sum(1).mean())),
    }


def network_crop(photo_path: Path) -> tuple[float, float, float]:
    """(x0, y0, side) in the photo's pixels of the 504 x 504 network input ``create`` makes of it."""
    from backend.preprocess import load_image, prepare_portrait

    p = prepare_portrait(load_image(photo_path))
    ix0, iy0, iside = p.input_crop
    x0, y0, side = p.head_crop
    s = side / 1024.0
    return (x0 + ix0 * s, y0 + iy0 * s, iside * s)


@dataclass
class Kit:
    """Everything a user would hand ``lam-head``: photos, a FLAME file, a landmark embedding file, weights."""

    subject: Subject
    photos: dict[str, Photo]
    flame: Path
    embedding: Path
    weights: Path
    calibration: dict[str, float]


def build_kit(root: Path, size: int = 512, shots: tuple[Shot, ...] = SHOTS) -> Kit:
    """The subject, its photos (``root/photos``), its FLAME pickle, its landmark embedding (official layout,
    ``landmark_embedding_with_eyes.npy``) and the tiny random checkpoint in the official layout (the
    stand-in for LAM-20K: the network's output is random)."""
    from .checkpoint import make_tiny_weights_dir

    root.mkdir(parents=True, exist_ok=True)
    subject = load_subject()
    photos = take_photos(subject, root / "photos", size, shots)
    embedding, diag = calibration_embedding(subject, size)
    return Kit(subject, photos, write_subject_flame(root / "flame_subject.pkl", subject),
               write_embedding(root / "landmark_embedding_with_eyes.npy", embedding), make_tiny_weights_dir(root), diag)


def fit_of(record: dict) -> FlameFit:
    """A FlameFit from a photo's ``fit`` record in a ``create --views`` avatar's meta (the shape is shared:
    the avatar's ``shape_params``)."""
    a = lambda k: np.asarray(record[k], np.float32)  # noqa: E731
    return FlameFit(betas=np.zeros(0, np.float32), expr=a("expr"), rotation=a("rotation"), neck=a("neck"),
                    jaw=a("jaw"), translation=a("translation"), focal=float(record["focal_px"]), rms_px=float("nan"),
                    image_size=int(record["image_px"]))


def refine_on_one_photo(kit: Kit, avatar_path: Path, name: str, iterations: int, size: int,
                        seed: int = 0) -> tuple[Avatar, float]:
    """A control for ``create --views``: the avatar ``create`` made from photo ``name`` refined on that photo
    alone, as ``create --views`` refines (same code and settings; the photo prepared and fitted as ``create``
    does, which is the fit ``create`` ran: same inputs, deterministic, checked against the avatar's recorded
    RMS). Returns the refined avatar and the refinement's seconds."""
    import time

    from backend.core.formats.avatar_file import load_avatar
    from backend.create.refine import RefineSettings, View, refine_avatar
    from backend.create.views import _resize, fit_camera, fit_pose
    from backend.fit import fit_flame, load_landmark_embedding
    from backend.flame import load_flame
    from backend.preprocess import load_image, prepare_portrait

    avatar = load_avatar(avatar_path)
    prepared = prepare_portrait(load_image(kit.photos[name].path))
    flame = load_flame(kit.flame)
    fit = fit_flame(flame, prepared.landmarks68, 504, embedding=load_landmark_embedding(kit.embedding),
                    n_shape=flame.n_shape, n_expr=flame.n_expr)
    if abs(fit.rms_px - avatar.meta["fit_rms_px"]) > 1e-9:
        raise AssertionError("the control's fit is not the one create ran")
    view = View(_resize(prepared.image, size), _resize(prepared.alpha, size), fit_pose(fit, avatar.n_expr),
                fit_camera(fit.focal, 504, size), name)
    t = time.perf_counter()
    res = refine_avatar(avatar, [view], RefineSettings(iterations=iterations, seed=seed))
    return res.avatar, time.perf_counter() - t


__all__ = ["BACKGROUND", "HELD_OUT", "SHOTS", "Kit", "Photo", "Shot", "Subject", "build_kit", "calibration_embedding",
           "face_vertices", "fit_errors", "fit_of", "heldout_psnr", "load_subject", "network_crop", "refine_on_one_photo",
           "shot_camera", "shot_pose", "subject_zip", "take_photos", "track_expressions", "write_embedding", "write_subject_flame"]
