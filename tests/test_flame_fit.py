"""FLAME landmark fit on a synthetic FLAME-format head with a synthetic landmark embedding.

The observations are made by an independent numpy forward pass (full mesh,
scipy rotations, per-vertex LBS, then barycentric landmarks) through a known
camera; the fit (torch, landmark subset) must recover pose and shape.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from backend.core.errors import BadInputError, CancelledError, CancelToken
from backend.fit import fit_flame, load_landmark_embedding
from backend.fit.embedding import LandmarkEmbedding, embedding_from_dict

IMAGE = 504
N_SHAPE, N_EXPR = 300, 20
PARENTS = np.array([-1, 0, 1, 1, 1])


def synthetic_flame(seed: int = 0) -> dict:
    """A FLAME-format head: lat-long ellipsoid mesh, smooth shape/expression bases, 5 joints."""
    rng = np.random.default_rng(seed)
    n_lat, n_lon = 24, 32
    th = np.linspace(0.1, math.pi - 0.1, n_lat)
    ph = np.linspace(0, 2 * math.pi, n_lon, endpoint=False)
    T, P = np.meshgrid(th, ph, indexing="ij")
    unit = np.stack([np.sin(T) * np.sin(P), np.cos(T), np.sin(T) * np.cos(P)], -1).reshape(-1, 3)  # +Z = front
    template = unit * [0.075, 0.1, 0.09]
    faces = []
    for i in range(n_lat - 1):
        for j in range(n_lon):
            a, b = i * n_lon + j, i * n_lon + (j + 1) % n_lon
            c, d = a + n_lon, b + n_lon
            faces += [(a, c, b), (b, c, d)]
    faces = np.array(faces)
    n = template.shape[0]
    # Smooth bases: sums of random Gaussian bumps (3 cm wide) on the surface, decaying with the index, so that
    # components are nearly independent of each other and of rigid motion.
    def basis(k, scale, decay, weight=None):
        out = np.zeros((n, 3, k))
        for i in range(k):
            centres = template[rng.choice(n, 3, replace=False)]
            bump = np.exp(-((template[:, None, :] - centres[None]) ** 2).sum(-1) / 0.03**2)  # n,3
            out[:, :, i] = bump @ rng.normal(size=(3, 3))
        if weight is not None:
            out *= weight[:, None, None]
        return out * scale / (1.0 + np.arange(k) / decay)
    shapedirs = basis(N_SHAPE, 0.008, 3.0)
    mouth = np.exp(-((template[:, 1] + 0.05) ** 2 + (template[:, 2] - 0.08) ** 2) / 0.03**2)
    exprdirs = basis(N_EXPR, 0.004, 5.0, mouth)
    joints = np.array([[0, -0.03, -0.01], [0, -0.06, -0.02], [0, -0.03, 0.01], [0.03, 0.03, 0.06], [-0.03, 0.03, 0.06]])
    j_reg = np.zeros((5, n))
    for j, p in enumerate(joints):
        near = np.argsort(np.linalg.norm(template - p, axis=1))[:8]
        j_reg[j, near] = 1 / 8
    lower = 1 / (1 + np.exp((template[:, 1] + 0.03) / 0.01))
    front = 1 / (1 + np.exp(-(template[:, 2] - 0.02) / 0.01))
    w = np.stack([np.full(n, 0.2), 0.3 * lower * (1 - front), 0.8 * lower * front, np.zeros(n), np.zeros(n)], 1) + 1e-3
    w[:, 0] += 1 - w.sum(1).clip(max=1)
    w /= w.sum(1, keepdims=True)
    return {"template": template, "shapedirs": shapedirs, "exprdirs": exprdirs, "J_regressor": j_reg,
            "lbs_weights": w, "parents": PARENTS, "faces": faces}


def synthetic_embedding(flame: dict, seed: int = 1) -> LandmarkEmbedding:
    """68 landmarks on distinct front-facing triangles with random barycentric weights."""
    rng = np.random.default_rng(seed)
    cent = flame["template"][flame["faces"]].mean(1)
    front = np.nonzero((cent[:, 2] > 0.05) & (np.abs(cent[:, 1]) < 0.08))[0]
    f = rng.choice(front, 68, replace=False)
    b = rng.dirichlet([3, 3, 3], 68)
    return embedding_from_dict({"full_lmk_faces_idx": f[None], "full_lmk_bary_coords": b[None]}, "synthetic")


def numpy_landmarks(flame, emb, betas, expr, rotation, neck, jaw, translation) -> np.ndarray:
    """Reference forward: whole mesh, per-vertex LBS with scipy rotations, then barycentric landmarks."""
    v = flame["template"] + flame["shapedirs"][:, :, : betas.size] @ betas + flame["exprdirs"][:, :, : expr.size] @ expr
    J = flame["J_regressor"] @ v
    rots = [Rotation.from_rotvec(r).as_matrix() for r in (rotation, neck, jaw, np.zeros(3), np.zeros(3))]
    G = []
    for j, p in enumerate(PARENTS):
        local = np.eye(4)
        local[:3, :3] = rots[j]
        local[:3, 3] = J[j] - (J[p] if p >= 0 else 0)
        G.append(local if p < 0 else G[p] @ local)
    A = []
    for j in range(5):
        rest = np.eye(4)
        rest[:3, 3] = -J[j]
        A.append(G[j] @ rest)
    A = np.stack(A)
    M = np.einsum("nj,jab->nab", flame["lbs_weights"], A)
    posed = np.einsum("nab,nb->na", M[:, :3, :3], v) + M[:, :3, 3] + translation
    tri = posed[flame["faces"][emb.faces_idx]]
    return np.einsum("kc,kcd->kd", emb.bary, tri)


def numpy_project(pts: np.ndarray, focal: float) -> np.ndarray:
    depth = 1.0 - pts[:, 2]
    return np.stack([focal * pts[:, 0] / depth + IMAGE / 2, -focal * pts[:, 1] / depth + IMAGE / 2], 1)


TRUTH = dict(rotation=np.array([0.12, -0.3, 0.05]), neck=np.zeros(3), jaw=np.array([0.12, 0.0, 0.0]),
             translation=np.array([0.01, -0.015, 0.45]))


@pytest.fixture(scope="module")
def scene():
    flame = synthetic_flame()
    emb = synthetic_embedding(flame)
    rng = np.random.default_rng(7)
    betas = np.zeros(N_SHAPE)
    betas[:8] = rng.normal(size=8)
    expr = np.zeros(N_EXPR)
    expr[:4] = rng.normal(scale=0.7, size=4)
    focal = 1.5 * IMAGE
    pts = numpy_landmarks(flame, emb, betas, expr, **TRUTH)
    return flame, emb, betas, expr, focal, numpy_project(pts, focal)


def rotation_error_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees((Rotation.from_rotvec(a).inv() * Rotation.from_rotvec(b)).magnitude()))


def neutral_shape(flame, betas):
    return flame["template"] + flame["shapedirs"][:, :, : betas.size] @ betas


def shape_errors(flame, emb, fitted_betas, true_betas) -> tuple[float, float, float, float]:
    """RMS 3D errors (m) of the neutral shape: at the landmarks (what the photo shows) and over the whole head,
    each with the error of the mean head (betas = 0) for comparison."""
    z = np.zeros(3)
    fb = fitted_betas.astype(np.float64)
    lmk = lambda b: numpy_landmarks(flame, emb, b, np.zeros(N_EXPR), z, z, z, z)  # noqa: E731
    rms = lambda a, b: float(np.sqrt(((a - b) ** 2).sum(1).mean()))  # noqa: E731
    return (rms(lmk(fb), lmk(true_betas)), rms(lmk(0 * fb), lmk(true_betas)),
            rms(neutral_shape(flame, fb), neutral_shape(flame, true_betas)),
            rms(flame["template"], neutral_shape(flame, true_betas)))


def test_synthetic_fit_recovers_pose_and_shape(scene):
    """Exact landmarks. Tolerances: reprojection RMS < 0.5 px (the priors keep it above 0); global rotation
    within 1.5 deg; jaw within 6 deg (it trades off against the mouth expression components); neutral shape at
    the landmarks within 1 mm RMS and under 0.4x the mean head's error; whole head (including parts no
    landmark sees) under 0.6x the mean head's error; focal within 5 %."""
    flame, emb, betas, expr, focal, obs = scene
    fit = fit_flame(flame, obs, IMAGE, embedding=emb)
    assert fit.rms_px < 0.5
    assert rotation_error_deg(fit.rotation, TRUTH["rotation"]) < 1.5
    assert rotation_error_deg(fit.jaw, TRUTH["jaw"]) < 6.0
    lmk_err, lmk_err0, head_err, head_err0 = shape_errors(flame, emb, fit.betas, betas)
    assert lmk_err < 1e-3 and lmk_err < 0.4 * lmk_err0, (lmk_err, lmk_err0)
    assert head_err < 0.6 * head_err0, (head_err, head_err0)
    assert abs(fit.focal / focal - 1) < 0.05
    assert fit.betas.shape == (N_SHAPE,) and fit.betas.dtype == np.float32
    assert fit.expr.shape == (N_EXPR,)
    assert not fit.warnings
    # the reported projected landmarks are what the independent forward gives for the fitted parameters
    pts = numpy_landmarks(flame, emb, fit.betas.astype(np.float64), fit.expr.astype(np.float64),
                          fit.rotation.astype(np.float64), fit.neck.astype(np.float64), fit.jaw.astype(np.float64),
                          fit.translation.astype(np.float64))
    np.testing.assert_allclose(numpy_project(pts, fit.focal), fit.landmarks_px, atol=0.02)


def test_fit_with_noise_stays_close(scene):
    """1 px (per axis) landmark noise: RMS about the noise level (< 2 px), rotation within 2 deg, neutral shape at
    the landmarks within 1.5 mm and under 0.6x the mean head's error."""
    flame, emb, betas, expr, focal, obs = scene
    noisy = obs + np.random.default_rng(3).normal(scale=1.0, size=obs.shape)
    fit = fit_flame(flame, noisy, IMAGE, embedding=emb)
    assert fit.rms_px < 2.0
    assert rotation_error_deg(fit.rotation, TRUTH["rotation"]) < 2.0
    lmk_err, lmk_err0, _, _ = shape_errors(flame, emb, fit.betas, betas)
    assert lmk_err < 1.5e-3 and lmk_err < 0.6 * lmk_err0


def test_without_embedding_betas_zero_and_warning(scene):
    flame, _emb, _b, _e, _f, obs = scene
    fit = fit_flame(flame, obs, IMAGE, embedding=None)
    assert np.all(fit.betas == 0) and fit.betas.shape == (N_SHAPE,)
    assert math.isnan(fit.rms_px)
    assert any("embedding" in w and "betas = 0" in w for w in fit.warnings)


def test_progress_and_cancel(scene):
    flame, emb, _b, _e, _f, obs = scene
    seen = []
    fit_flame(flame, obs, IMAGE, embedding=emb, progress=lambda s, f, m="": seen.append((s, f)), iterations=(10, 30))
    assert seen[0] == ("fit", 0.0) and seen[-1][1] == 1.0
    assert all(0.0 <= f <= 1.0 for _, f in seen)
    assert [f for _, f in seen] == sorted(f for _, f in seen)
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        fit_flame(flame, obs, IMAGE, embedding=emb, cancel=token)


def test_bad_landmarks_refused(scene):
    flame, emb, *_ = scene
    with pytest.raises(BadInputError, match="68"):
        fit_flame(flame, np.zeros((10, 2)), IMAGE, embedding=emb)
    bad = np.zeros((68, 2))
    bad[3, 0] = np.nan
    with pytest.raises(BadInputError):
        fit_flame(flame, bad, IMAGE, embedding=emb)


def test_embedding_from_other_flame_refused(scene):
    flame, emb, *_ = scene
    far = LandmarkEmbedding(emb.faces_idx + 10**6, emb.bary, emb.ibug_index, "other")
    with pytest.raises(BadInputError, match="another FLAME"):
        fit_flame(flame, np.zeros((68, 2)) + 250, IMAGE, embedding=far)


def test_load_embedding_files(tmp_path, scene):
    """LAM's pickled-dict .npy (68 full landmarks, extra keys ignored), DECA's 51-point variant, and refusals."""
    _flame, emb, *_ = scene
    full = {"full_lmk_faces_idx": emb.faces_idx[None].astype(np.int64), "full_lmk_bary_coords": emb.bary[None],
            "lmk_face_idx": emb.faces_idx[17:], "lmk_b_coords": emb.bary[17:], "dynamic_lmk_faces_idx": np.zeros((79, 17))}
    p = tmp_path / "landmark_embedding_with_eyes.npy"
    np.save(p, np.array(full, dtype=object), allow_pickle=True)
    e = load_landmark_embedding(p)
    np.testing.assert_array_equal(e.faces_idx, emb.faces_idx)
    np.testing.assert_allclose(e.bary, emb.bary)
    np.testing.assert_array_equal(e.ibug_index, np.arange(68))

    p51 = tmp_path / "landmark_embedding.npy"
    np.save(p51, np.array({"lmk_face_idx": emb.faces_idx[17:], "lmk_b_coords": emb.bary[17:]}, dtype=object),
            allow_pickle=True)
    e51 = load_landmark_embedding(p51)
    np.testing.assert_array_equal(e51.ibug_index, np.arange(17, 68))

    pbad = tmp_path / "bad.npy"
    np.save(pbad, np.array({"something": np.zeros(3)}, dtype=object), allow_pickle=True)
    with pytest.raises(BadInputError, match="expected keys"):
        load_landmark_embedding(pbad)
    pb2 = tmp_path / "bary.npy"
    np.save(pb2, np.array({"full_lmk_faces_idx": emb.faces_idx[None], "full_lmk_bary_coords": emb.bary[None] * 2},
                          dtype=object), allow_pickle=True)
    with pytest.raises(BadInputError, match="sum to 1"):
        load_landmark_embedding(pb2)


def test_fit_with_51_point_embedding(scene):
    """An inner-landmarks-only embedding fits too (no contour points): pose within 2 deg."""
    flame, emb, betas, expr, focal, obs = scene
    e51 = LandmarkEmbedding(emb.faces_idx[17:], emb.bary[17:], np.arange(17, 68), "51")
    fit = fit_flame(flame, obs, IMAGE, embedding=e51)
    assert fit.rms_px < 0.5
    assert rotation_error_deg(fit.rotation, TRUTH["rotation"]) < 2.0
    assert np.isnan(fit.landmarks_px[:17]).all() and np.isfinite(fit.landmarks_px[17:]).all()


def test_fit_reads_the_real_flame_model_class():
    """backend.flame.FlameModel (shape and expression stacked in shapedirs, lowercase j_regressor) is read
    correctly: observations made from its arrays with the reference forward are fitted (pose within 2 deg)."""
    from factories.flame import make_flame_model

    model = make_flame_model(n_vertices=600, n_shape=20, n_expr=10)
    as_dict = {"template": model.v_template.astype(np.float64), "shapedirs": model.shape_dirs.astype(np.float64),
               "exprdirs": model.expr_dirs.astype(np.float64), "J_regressor": model.j_regressor,
               "lbs_weights": model.lbs_weights.astype(np.float64), "parents": model.parents, "faces": model.faces}
    rng = np.random.default_rng(5)
    cent = model.v_template[model.faces].mean(1)
    front = np.nonzero(cent[:, 2] > np.quantile(cent[:, 2], 0.8))[0]
    emb = embedding_from_dict({"full_lmk_faces_idx": rng.choice(front, 68, replace=False),
                               "full_lmk_bary_coords": rng.dirichlet([3, 3, 3], 68)}, "factory")
    betas = np.zeros(20)
    betas[:3] = [0.8, -0.5, 0.3]
    truth = dict(rotation=np.array([0.05, 0.2, 0.0]), neck=np.zeros(3), jaw=np.zeros(3),
                 translation=np.array([0.0, 0.0, 0.4]))
    obs = numpy_project(numpy_landmarks(as_dict, emb, betas, np.zeros(10), **truth), 1.5 * IMAGE)
    fit = fit_flame(model, obs, IMAGE, embedding=emb)
    assert fit.betas.shape == (20,) and fit.expr.shape == (10,)
    assert fit.rms_px < 0.5
    assert rotation_error_deg(fit.rotation, truth["rotation"]) < 2.0
