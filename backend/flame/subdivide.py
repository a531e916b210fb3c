"""Midpoint (1 -> 4) subdivision of a triangle mesh and its per-vertex attributes (topology only;
:meth:`FlameModel.subdivided` applies it to a whole FLAME model).

The vertex order is LAM's (LAM_SPEC.md section 2): the originals keep their indices,
then one new vertex per unique edge, edges ordered by (min index, max index) ascending.
Every per-vertex attribute of a new vertex is the average of its two endpoints.
New faces: the corner triangles of all faces (at vertex 0, 1, 2 of each face), then
the centre triangles, orientation kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.errors import BadInputError


def subdivide_faces(faces: np.ndarray, n_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """One midpoint pass. faces F,3 over ``n_vertices`` -> (faces 4F,3, edges M,2).

    ``edges[k]`` = (a, b), a < b, are the endpoints of new vertex ``n_vertices + k``.
    """
    faces = np.asarray(faces, dtype=np.int64)
    v0, v1, v2 = faces[:, 0], faces[:, 1], faces[:, 2]
    # edge opposite vertex 0, 1, 2 of every face
    all_edges = np.concatenate([np.stack([v1, v2], 1), np.stack([v2, v0], 1), np.stack([v0, v1], 1)])
    all_edges.sort(axis=1)
    key = all_edges[:, 0] * n_vertices + all_edges[:, 1]
    unique_keys, inverse = np.unique(key, return_inverse=True)  # ascending (min, max)
    edges = np.stack([unique_keys // n_vertices, unique_keys % n_vertices], 1)
    mid = inverse.reshape(3, -1).T + n_vertices  # F,3: midpoint opposite vertex 0, 1, 2
    m12, m20, m01 = mid[:, 0], mid[:, 1], mid[:, 2]
    new_faces = np.concatenate(
        [
            np.stack([v0, m01, m20], 1),
            np.stack([v1, m12, m01], 1),
            np.stack([v2, m20, m12], 1),
            np.stack([m12, m20, m01], 1),
        ]
    )
    return new_faces, edges


def add_midpoints(attr: np.ndarray, edges: np.ndarray, axis: int = 0) -> np.ndarray:
    """Append, along ``axis`` (the vertex axis), the average of each edge's endpoints."""
    a = np.take(attr, edges[:, 0], axis=axis)
    b = np.take(attr, edges[:, 1], axis=axis)
    mids = (a + b) * np.asarray(0.5, dtype=attr.dtype)
    return np.concatenate([attr, mids], axis=axis)


@dataclass
class SubdivisionPlan:
    """Edges of each level and the final faces; apply it to any per-vertex attribute."""

    level_edges: list[np.ndarray]
    faces: np.ndarray
    n_vertices: int  # after subdivision

    def apply(self, attr: np.ndarray, axis: int = 0) -> np.ndarray:
        for edges in self.level_edges:
            attr = add_midpoints(attr, edges, axis)
        return attr


def plan_subdivision(faces: np.ndarray, n_vertices: int, levels: int) -> SubdivisionPlan:
    """Faces F,3 over ``n_vertices`` -> the plan for ``levels`` midpoint passes (0 = unchanged)."""
    if levels < 0:
        raise ValueError(f"subdivision levels must be >= 0, got {levels}")
    faces = np.asarray(faces, dtype=np.int64)
    level_edges = []
    for _ in range(levels):
        faces, edges = subdivide_faces(faces, n_vertices)
        level_edges.append(edges)
        n_vertices += edges.shape[0]
    return SubdivisionPlan(level_edges, faces, n_vertices)


def faces_from_subdivided(faces_up: np.ndarray, n_original: int) -> np.ndarray:
    """Recover the original faces from one midpoint pass's faces (LAM stores only ``faces_up``).

    In a midpoint subdivision an original vertex is adjacent only to new vertices, and every
    new vertex to exactly its two original endpoints. Each corner triangle (one original
    vertex ``a``, two midpoints) gives back its face: (a, other end of m1, other end of m2),
    with orientation. Raises BadInputError when ``faces_up`` is not such a subdivision in
    LAM's vertex order (new vertex k = k-th edge in sorted (min, max) order).
    """
    fu = np.asarray(faces_up, dtype=np.int64)
    if fu.ndim != 2 or fu.shape[1] != 3 or fu.shape[0] % 4 or fu.size == 0:
        raise BadInputError(f"faces_up must be a non-empty (4F, 3) array, got shape {fu.shape}")
    n_new = int(fu.max()) + 1 - n_original
    if fu.min() < 0 or n_new <= 0:
        raise BadInputError("faces_up does not reference any new (midpoint) vertex; it is not a subdivided mesh")
    is_orig = fu < n_original
    n_orig_in_face = is_orig.sum(axis=1)
    if not np.isin(n_orig_in_face, (0, 1)).all():
        raise BadInputError("faces_up has a triangle with two original vertices; it is not a midpoint subdivision")
    rows = np.flatnonzero(n_orig_in_face == 1)
    k = np.argmax(is_orig[rows], axis=1)
    a = fu[rows, k]
    m1 = fu[rows, (k + 1) % 3]
    m2 = fu[rows, (k + 2) % 3]
    # the original neighbours of every midpoint
    pairs = np.unique(np.stack([np.concatenate([m1, m2]), np.concatenate([a, a])], 1), axis=0)
    counts = np.bincount(pairs[:, 0] - n_original, minlength=n_new)
    if pairs.shape[0] != 2 * n_new or (counts != 2).any():
        raise BadInputError("faces_up: a new vertex is not adjacent to exactly two original vertices")
    ends = pairs[:, 1].reshape(n_new, 2)  # sorted: (min, max) per midpoint
    if n_new > 1:
        key = ends[:, 0] * n_original + ends[:, 1]
        if (np.diff(key) <= 0).any():
            raise BadInputError("faces_up: new vertices are not in sorted (min, max) edge order")
    other = lambda m, v: ends[m - n_original].sum(axis=1) - v  # noqa: E731
    faces = np.stack([a, other(m1, a), other(m2, a)], 1)
    _, first = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
    faces = faces[np.sort(first)]
    redo, _ = subdivide_faces(faces, n_original)
    if redo.shape != fu.shape or not np.array_equal(_canonical_triangles(redo), _canonical_triangles(fu)):
        raise BadInputError("faces_up is not the midpoint subdivision of any triangle mesh over the original vertices")
    return faces


def _canonical_triangles(f: np.ndarray) -> np.ndarray:
    """Rotate each triangle so its smallest index is first (orientation kept), then sort rows."""
    k = np.argmin(f, axis=1)
    idx = (k[:, None] + np.arange(3)) % 3
    rot = np.take_along_axis(f, idx, axis=1)
    return rot[np.lexsort(rot.T[::-1])]
