"""Put the network's Gaussians and the FLAME rig together into an :class:`Avatar`."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.formats import avatar_file
from ..core.formats.avatar_file import Avatar
from ..flame.rig_arrays import RigArrays


def assemble_avatar(
    rig: RigArrays,
    xyz: np.ndarray,
    rgb: np.ndarray,
    opacity: np.ndarray,
    scale: np.ndarray,
    rotation: np.ndarray,
    meta: dict[str, Any],
) -> Avatar:
    """Gaussians (xyz N,3 canonical centres; rgb N,3 in [0,1]; opacity N or N,1; scale N,3
    sigmas; rotation N,4 wxyz) + the rig of the same N points -> a validated Avatar.

    Row i of the Gaussians belongs to rig point i (LAM predicts one Gaussian per query point).
    Raises AvatarFileError naming the key when something does not fit the avatar contract.
    """
    n = rig.n_points
    xyz = np.asarray(xyz)
    if xyz.shape != (n, 3):
        raise avatar_file.AvatarFileError("xyz", f"shape {xyz.shape} does not match the rig's {n} points")
    avatar = Avatar(
        xyz=xyz,
        template=rig.template,
        rgb=np.asarray(rgb),
        opacity=np.asarray(opacity).reshape(-1),
        scale=np.asarray(scale),
        rotation=np.asarray(rotation),
        expr_dirs=rig.expr_dirs,
        pose_dirs=rig.pose_dirs,
        lbs_weights=rig.lbs_weights,
        joints=rig.joints,
        joint_expr_dirs=rig.joint_expr_dirs,
        parents=rig.parents,
        joint_names=tuple(rig.joint_names),
        faces=rig.faces,
        shape_params=rig.shape_params,
        meta=dict(meta),
        arkit_dirs=rig.arkit_dirs,
        arkit_names=tuple(rig.arkit_names),
    )
    return avatar_file.validate(avatar_file.to_arrays(avatar))
