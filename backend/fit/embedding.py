"""FLAME landmark embedding: where each 68-point landmark sits on the FLAME mesh.

LAM's ``landmark_embedding_with_eyes.npy`` is a pickled dict of arrays; the
68-point static embedding is ``full_lmk_faces_idx`` (triangle per landmark)
and ``full_lmk_bary_coords`` (barycentric weights). Older DECA-style files
only hold the 51 inner points (``lmk_face_idx`` / ``lmk_b_coords``, iBUG
17..67); those are accepted too. It is read with the restricted unpickler:
no arbitrary classes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import BadInputError
from ..core.formats.npz_arrays import NpzError, read_npz


@dataclass(frozen=True)
class LandmarkEmbedding:
    """faces_idx (K,) int64 FLAME triangle per landmark; bary (K, 3) float64 barycentric weights;
    ibug_index (K,) int64: which of the 68 iBUG points each row is."""

    faces_idx: np.ndarray
    bary: np.ndarray
    ibug_index: np.ndarray
    source: str = ""

    def check_against(self, n_faces: int) -> None:
        if self.faces_idx.size and int(self.faces_idx.max()) >= n_faces:
            raise BadInputError(
                f"landmark embedding {self.source or ''} refers to triangle {int(self.faces_idx.max())} but the FLAME "
                f"model has {n_faces}; the embedding belongs to another FLAME version"
            )


def embedding_from_dict(d: dict, source: str = "") -> LandmarkEmbedding:
    """Build from the dict stored in LAM/DECA embedding files (see module docstring)."""
    if not isinstance(d, dict):
        raise BadInputError(f"landmark embedding {source}: expected a dict of arrays, got {type(d).__name__}")
    if "full_lmk_faces_idx" in d and "full_lmk_bary_coords" in d:
        f = np.asarray(d["full_lmk_faces_idx"]).reshape(-1).astype(np.int64)
        b = np.asarray(d["full_lmk_bary_coords"], dtype=np.float64).reshape(-1, 3)
        if f.shape[0] < 68 or b.shape[0] != f.shape[0]:
            raise BadInputError(f"landmark embedding {source}: full_lmk_* must hold 68 landmarks, got {f.shape[0]}")
        f, b, idx = f[:68], b[:68], np.arange(68)
    elif "lmk_face_idx" in d and "lmk_b_coords" in d:
        f = np.asarray(d["lmk_face_idx"]).reshape(-1).astype(np.int64)
        b = np.asarray(d["lmk_b_coords"], dtype=np.float64).reshape(-1, 3)
        if f.shape[0] != 51 or b.shape[0] != 51:
            raise BadInputError(f"landmark embedding {source}: lmk_* must hold 51 landmarks, got {f.shape[0]}")
        idx = np.arange(17, 68)
    else:
        raise BadInputError(
            f"landmark embedding {source} has none of the expected keys (full_lmk_faces_idx/full_lmk_bary_coords "
            f"or lmk_face_idx/lmk_b_coords); found {sorted(d)[:12]}"
        )
    if (f < 0).any():
        raise BadInputError(f"landmark embedding {source}: negative triangle index")
    if not np.isfinite(b).all() or np.abs(b.sum(1) - 1.0).max() > 1e-3:
        raise BadInputError(f"landmark embedding {source}: barycentric weights must be finite and sum to 1")
    return LandmarkEmbedding(f, b, idx.astype(np.int64), source)


def load_landmark_embedding(path: str | os.PathLike) -> LandmarkEmbedding:
    """Read a landmark embedding ``.npy`` (pickled dict, loaded with the restricted unpickler) or ``.npz``."""
    path = Path(path)
    if path.suffix == ".npz":
        try:
            d = read_npz(path)
        except NpzError as exc:
            raise BadInputError(f"landmark embedding '{path}' could not be read ({exc.problem})") from None
    else:
        from ..flame.restricted_pickle import load_pickled_npy

        d = load_pickled_npy(path)
    return embedding_from_dict(d, str(path))
