"""ARKit blendshapes for every avatar on FLAME's topology, taken from a LAM web ZIP.

LAM_SPEC section 7: the 51 morph targets of a LAM ZIP's ``skin.glb`` are the same in every
avatar (identity independent) and are exactly a basis on FLAME's original vertices subdivided
once: vertices 0..V-1 are FLAME's, every midpoint delta is the average of its two parents'.
So the basis is the deltas of the V original vertices; our own subdivision carries it to an
avatar's points (any number of levels), next to the FLAME expression blendshapes.

Where the basis comes from: the LAM template ZIP registered with ``lam-head setup
--lam-template ZIP``, else the one bundled with the backend (``data/arkit_basis_lam.npz``,
derived from the MIT-licensed real sample of LAM_WebRender, see ``data/README.md``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import BadInputError
from ..core.formats.lam_zip import LamTemplate
from ..core.formats.npz_arrays import read_npz
from .subdivide import faces_from_subdivided

BUNDLED_FILE = Path(__file__).resolve().parent / "data" / "arkit_basis_lam.npz"
_FORMAT = "lam-head-arkit-basis"


@dataclass
class ArkitBasis:
    """K named blendshapes on V vertices (deltas V,3,K float32) and the triangles F,3 of the
    mesh they belong to (the topology an avatar must share to use them)."""

    names: tuple[str, ...]
    dirs: np.ndarray
    faces: np.ndarray
    source: str

    @property
    def n_vertices(self) -> int:
        return int(self.dirs.shape[0])

    def mismatch(self, faces: np.ndarray, n_vertices: int) -> str | None:
        """Why a mesh of ``n_vertices`` with ``faces`` cannot use this basis, or None when it can."""
        if n_vertices != self.n_vertices or np.shape(faces) != self.faces.shape:
            return (f"the FLAME model's mesh ({n_vertices} vertices, {len(faces)} faces) is not the topology of the "
                    f"ARKit basis from {self.source} ({self.n_vertices} vertices, {len(self.faces)} faces)")
        if not np.array_equal(faces, self.faces):
            differ = int(np.any(np.asarray(faces) != self.faces, axis=1).sum())
            return (f"the FLAME model's mesh has the size of the ARKit basis from {self.source} ({n_vertices} vertices, "
                    f"{len(faces)} faces) but {differ} of its triangles join other vertices, so it is another topology")
        return None

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, format=np.array(_FORMAT), names=np.array(self.names), dirs=self.dirs,
                            faces=self.faces.astype(np.int32), source=np.array(self.source))
        return path


def original_vertex_count(faces_up: np.ndarray) -> int:
    """V of a once-subdivided mesh in LAM's vertex order (originals first, then midpoints).

    Original vertices are never adjacent to each other and the first midpoint (index V) is
    adjacent to its two endpoints below it, so V is the smallest index with a lower neighbour."""
    f = np.asarray(faces_up, dtype=np.int64)
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    hi, lo = edges.max(axis=1), edges.min(axis=1)
    return int(hi[lo < hi].min())


def from_template(template: LamTemplate) -> ArkitBasis:
    """The basis of a LAM ZIP: its morph deltas at the original vertices, with the original
    triangles recovered (and checked) from the subdivided ones."""
    skin = template.skin()
    v = original_vertex_count(skin.faces)
    faces = faces_from_subdivided(skin.faces, v).astype(np.int32)
    return ArkitBasis(skin.target_names, np.ascontiguousarray(skin.target_deltas[:v]), faces,
                      f"{template.source_name} (sha256 {template.source_sha256[:12]})")


def load(path: str | os.PathLike) -> ArkitBasis:
    path = Path(path)
    try:
        npz = read_npz(path)
        if str(npz["format"]) != _FORMAT:
            raise ValueError("not an ARKit basis file")
        basis = ArkitBasis(tuple(str(s) for s in npz["names"]), npz["dirs"].astype(np.float32),
                           npz["faces"].astype(np.int32), str(npz["source"]))
    except (KeyError, ValueError) as exc:  # NpzError is a ValueError
        raise BadInputError(f"{path}: not a readable ARKit basis ({exc}); run lam-head setup --lam-template ZIP again") from None
    if basis.dirs.ndim != 3 or basis.dirs.shape[1:] != (3, len(basis.names)) or not np.isfinite(basis.dirs).all():
        raise BadInputError(f"{path}: the ARKit basis arrays are damaged; run lam-head setup --lam-template ZIP again")
    return basis


def bundled() -> ArkitBasis:
    """The basis shipped with the backend (derived from LAM_WebRender's MIT sample ``p2-1.zip``)."""
    return load(BUNDLED_FILE)
