"""The per-point rig of an avatar, built from a FLAME model and the photo's shape.

LAM_SPEC.md sections 1.2 and 4: the query points are the shaped, subdivided template
(zero pose, zero expression); each point carries its subdivided vertex's expression
blendshapes, pose correctives and LBS weights; the joints come from the ORIGINAL
(not subdivided) model: ``J = J_regressor . (template + shapedirs . [betas, expr])``,
split here into rest joints (expr = 0) and ``joint_expr_dirs``. An ARKit basis on the
model's original vertices (:mod:`.arkit_basis`) is subdivided the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.errors import BadInputError
from .arkit_basis import ArkitBasis
from .model import FlameModel
from .subdivide import plan_subdivision


@dataclass
class RigArrays:
    """N points, E expression components, J joints, P = 9 * (J - 1), F faces, S betas."""

    template: np.ndarray  # N,3 float32 shaped canonical vertices (the query points)
    expr_dirs: np.ndarray  # N,3,E float32
    pose_dirs: np.ndarray  # N,3,P float32
    lbs_weights: np.ndarray  # N,J float32
    joints: np.ndarray  # J,3 float32 rest joints (shaped, neutral expression)
    joint_expr_dirs: np.ndarray  # J,3,E float32
    parents: np.ndarray  # J int32
    joint_names: tuple[str, ...]
    faces: np.ndarray  # F,3 int32
    shape_params: np.ndarray  # S float32 (the betas used)
    arkit_dirs: np.ndarray | None = None  # N,3,K float32 ARKit blendshapes (optional)
    arkit_names: tuple[str, ...] = ()

    @property
    def n_points(self) -> int:
        return int(self.template.shape[0])


def build_rig(model: FlameModel, betas: np.ndarray, levels: int = 1, n_expr: int | None = None,
              arkit: ArkitBasis | None = None) -> RigArrays:
    """Shape the model with ``betas`` (S <= n_shape, missing ones are 0), subdivide ``levels``
    times, keep the first ``n_expr`` expression components (default: all). ``arkit``: a basis
    on the model's own topology (checked) to subdivide along."""
    betas = np.asarray(betas, dtype=np.float64).reshape(-1)
    if betas.size > model.n_shape:
        raise BadInputError(f"{betas.size} shape parameters given, the FLAME model has {model.n_shape}")
    if not np.isfinite(betas).all():
        raise BadInputError("shape parameters contain NaN or infinite values")
    n_expr = model.n_expr if n_expr is None else int(n_expr)
    if not 0 <= n_expr <= model.n_expr:
        raise BadInputError(f"n_expr={n_expr} is outside [0, {model.n_expr}] for this FLAME model")

    if arkit is not None and (why := arkit.mismatch(model.faces, model.n_vertices)) is not None:
        raise BadInputError(why)
    s = betas.size
    shaped = model.v_template.astype(np.float64) + model.shapedirs[:, :, :s].astype(np.float64) @ betas  # V,3
    expr_dirs = model.shapedirs[:, :, model.n_shape : model.n_shape + n_expr]  # V,3,E
    joints = model.j_regressor @ shaped  # J,3
    joint_expr_dirs = np.einsum("jv,vce->jce", model.j_regressor, expr_dirs.astype(np.float64))

    plan = plan_subdivision(model.faces, model.n_vertices, levels)
    return RigArrays(
        template=plan.apply(shaped).astype(np.float32),
        expr_dirs=plan.apply(np.ascontiguousarray(expr_dirs, dtype=np.float32)),
        pose_dirs=plan.apply(model.posedirs.astype(np.float32, copy=False)),
        lbs_weights=plan.apply(model.lbs_weights.astype(np.float32, copy=False)),
        joints=joints.astype(np.float32),
        joint_expr_dirs=joint_expr_dirs.astype(np.float32),
        parents=model.parents.astype(np.int32),
        joint_names=tuple(model.joint_names),
        faces=plan.faces.astype(np.int32),
        shape_params=betas.astype(np.float32),
        arkit_dirs=None if arkit is None else plan.apply(np.ascontiguousarray(arkit.dirs, dtype=np.float32)),
        arkit_names=() if arkit is None else tuple(arkit.names),
    )
