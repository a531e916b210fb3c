"""LAM's web / OpenAvatarChat avatar ZIP: read one into the avatar contract, write one from an avatar.

Numpy + stdlib only (the add-on imports and exports ZIPs with it). The layout (LAM_SPEC sections
5 and 7): one folder ``<name>/`` holding

* ``skin.glb``: the shaped subdivided FLAME mesh placed on a body rig (metres, Y up), skinned to
  a 262-joint skeleton (only the neck/head chain carries weight), with 51 ARKit morph targets
  named in ``meshes[0].extras.targetNames``;
* ``offset.ply``: one row per vertex, ``xyz`` = Gaussian centre - vertex, ``f_dc`` = RGB in [0,1],
  opacity logit, ln sigma, rotation wxyz;
* ``animation.glb`` (body clips) and ``vertex_order.json`` (a permutation of the vertices).

Reading gives an :class:`~.avatar_file.Avatar` (centres = POSITION + offset, the ZIP's triangles,
the ARKit targets, the weighted joints and their ancestors with the skin's exact weights; no FLAME
expressions or pose correctives) plus a :class:`LamTemplate`: everything else in the ZIP, which a
later export needs. Writing takes an avatar on the template's topology and the template, and
changes only what differs between avatars: POSITION (and its bounds), ``offset.ply`` and
``vertex_order.json``; every other byte of ``skin.glb`` and ``animation.glb`` is the template's.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path, PurePosixPath

import numpy as np

from ..atomic_write import atomic_path
from ..errors import BadInputError
from ..file_hash import sha256_file
from . import ply
from .avatar_file import Avatar, AvatarFileError, to_arrays, validate
from .glb import Glb, GlbError, read_glb
from .safe_zip import SafeZip

SKIN, OFFSET, ANIMATION, VERTEX_ORDER = "skin.glb", "offset.ply", "animation.glb", "vertex_order.json"
MEMBERS = (SKIN, OFFSET, ANIMATION, VERTEX_ORDER)
TEMPLATE_MEMBERS = (SKIN, ANIMATION, VERTEX_ORDER)
MAX_OFFSET = 0.1  # metres per axis: LAM's offsets are (sigmoid - 0.5) * 0.2
_OFFSET_SLACK = 1e-4  # float32 rounding and edits that stay visibly inside the range
# Beyond these a value is damage, not an edit: offsets 10x LAM's bound, a Gaussian over 1 m across, a
# vertex 100 m away (LAM's body frame is metres, the head about 1.7 m up).
_DAMAGED_OFFSET, _DAMAGED_LOG_SCALE, _DAMAGED_POSITION = 1.0, 0.0, 100.0
_WEIGHT_SUM_TOL = 1e-3
_TEMPLATE_INFO = "template.json"
SOURCE = "LAM web ZIP"


class LamZipError(BadInputError):
    """A file that is not a usable LAM web ZIP, or an avatar that cannot become one."""


@dataclass
class LamTemplate:
    """The parts of a LAM ZIP that are not the avatar's Gaussians: enough to rebuild a ZIP.

    ``skin_glb`` is the source's own ``skin.glb`` (its POSITION is the source avatar's, replaced
    on export), ``animation_glb`` and ``vertex_order_json`` are kept byte for byte."""

    skin_glb: bytes
    animation_glb: bytes
    vertex_order_json: bytes
    folder: str  # the folder name inside the source ZIP
    source_name: str  # the source ZIP's file name
    source_sha256: str

    def skin(self) -> LamSkin:
        return parse_skin(self.skin_glb, f"{self.source_name}: {SKIN}")

    def pack(self) -> bytes:
        """One byte string (a small ZIP) to keep with an imported avatar; :meth:`unpack` reads it."""
        info = {"folder": self.folder, "source_name": self.source_name, "source_sha256": self.source_sha256}
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:  # fast: import time matters
            zf.writestr(_TEMPLATE_INFO, json.dumps(info, sort_keys=True))
            for member, data in zip(TEMPLATE_MEMBERS, (self.skin_glb, self.animation_glb, self.vertex_order_json)):
                zf.writestr(member, data)
        return buf.getvalue()

    @classmethod
    def unpack(cls, data: bytes) -> LamTemplate:
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                info = json.loads(zf.read(_TEMPLATE_INFO))
                parts = [zf.read(m) for m in TEMPLATE_MEMBERS]
        except (zipfile.BadZipFile, zlib.error, KeyError, ValueError) as exc:
            raise LamZipError(f"the stored LAM template is damaged ({exc}); re-import the LAM ZIP") from None
        return cls(*parts, folder=str(info["folder"]), source_name=str(info["source_name"]),
                   source_sha256=str(info["source_sha256"]))


@dataclass
class LamSkin:
    """``skin.glb`` parsed. N vertices, F triangles, K morph targets, G skin joints."""

    glb: Glb
    position_accessor: int
    positions: np.ndarray  # N,3 float32, metres, Y up
    faces: np.ndarray  # F,3 int32
    target_names: tuple[str, ...]
    target_deltas: np.ndarray  # N,3,K float32
    joint_names: tuple[str, ...]  # G, the skin's joints in skin order
    joint_parents: np.ndarray  # G int, index of the nearest ancestor that is a joint, -1 for none
    joint_order: np.ndarray  # G int, position of each joint in a depth-first walk of the node tree
    inverse_bind: np.ndarray  # G,4,4 float64 (row-major: x' = M @ [x, 1])
    weights: np.ndarray  # N,G float32, JOINTS_n/WEIGHTS_n summed per joint

    @property
    def n_vertices(self) -> int:
        return int(self.positions.shape[0])


def _skin_error(name: str, problem: str) -> LamZipError:
    return LamZipError(f"{name}: not a LAM avatar skin ({problem}); expected the skin.glb of a LAM web ZIP")


def _finite(name: str, what: str, a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise LamZipError(f"{name}: {what} contains NaN or infinite values; the file is damaged")
    return a


def parse_skin(data: bytes, name: str = SKIN) -> LamSkin:
    """Parse and check a LAM ``skin.glb``: one skinned triangle mesh with named morph targets."""
    try:
        glb = read_glb(data, name)
        return _parse_skin(glb, name)
    except GlbError as exc:
        raise LamZipError(f"{exc}; expected the skin.glb of a LAM web ZIP") from None


def _parse_skin(glb: Glb, name: str) -> LamSkin:
    gltf = glb.gltf
    meshes, nodes = gltf.get("meshes") or [], gltf.get("nodes") or []
    mesh_nodes = [i for i, n in enumerate(nodes) if isinstance(n, dict) and "mesh" in n]
    if len(meshes) != 1 or len(mesh_nodes) != 1:
        raise _skin_error(name, f"{len(meshes)} meshes in {len(mesh_nodes)} nodes, expected one mesh")
    mesh_node = nodes[mesh_nodes[0]]
    mesh = meshes[0] if isinstance(meshes[0], dict) else {}
    prims = mesh.get("primitives") or []
    if len(prims) != 1 or not isinstance(prims[0], dict):
        raise _skin_error(name, f"the mesh has {len(prims)} primitives, expected one")
    prim = prims[0]
    attrs = prim.get("attributes") or {}
    missing = [a for a in ("POSITION", "JOINTS_0", "WEIGHTS_0") if a not in attrs]
    if missing or "indices" not in prim:
        raise _skin_error(name, f"the mesh lacks {', '.join(missing + ([] if 'indices' in prim else ['indices']))}")
    if prim.get("mode", 4) != 4:
        raise _skin_error(name, f"primitive mode {prim.get('mode')} is not triangles")
    if "skin" not in mesh_node:
        raise _skin_error(name, "the mesh is not skinned")

    positions = _finite(name, "POSITION", glb.accessor(attrs["POSITION"]).astype(np.float32))
    if positions.shape[1] != 3 or positions.shape[0] < 3:
        raise _skin_error(name, f"POSITION has shape {positions.shape}")
    _refuse_beyond(name, "vertex", np.abs(positions).max(axis=1), _DAMAGED_POSITION,
                   f"more than {_DAMAGED_POSITION:g} m from the origin", "LAM's meshes are in metres")
    n = positions.shape[0]
    idx = glb.accessor(prim["indices"])
    if idx.dtype.kind != "u" or idx.shape[1] != 1 or idx.shape[0] % 3 or idx.shape[0] == 0:
        raise _skin_error(name, "the triangle indices are not a list of unsigned triples")
    if int(idx.max()) >= n:
        raise _skin_error(name, f"a triangle uses vertex {int(idx.max())}, the mesh has {n}")
    faces = idx.reshape(-1, 3).astype(np.int32)

    targets = prim.get("targets") or []
    names = (mesh.get("extras") or {}).get("targetNames")
    if not targets:
        raise _skin_error(name, "the mesh has no morph targets (LAM ZIPs carry the ARKit blendshapes)")
    if not isinstance(names, list) or len(names) != len(targets) or not all(isinstance(s, str) and s for s in names):
        raise _skin_error(name, "the morph targets are not named (meshes[0].extras.targetNames)")
    if len(set(names)) != len(names):
        raise _skin_error(name, "two morph targets share a name")
    deltas = np.empty((n, 3, len(targets)), np.float32)
    for k, target in enumerate(targets):
        if not isinstance(target, dict) or "POSITION" not in target:
            raise _skin_error(name, f"morph target '{names[k]}' has no POSITION deltas")
        d = glb.accessor(target["POSITION"])
        if d.shape != (n, 3):
            raise _skin_error(name, f"morph target '{names[k]}' has shape {d.shape}, expected ({n}, 3)")
        deltas[:, :, k] = _finite(name, f"morph target '{names[k]}'", d.astype(np.float32))

    skins = gltf.get("skins") or []
    skin_index = mesh_node["skin"]
    if not isinstance(skin_index, int) or not 0 <= skin_index < len(skins) or not isinstance(skins[skin_index], dict):
        raise _skin_error(name, f"skin {skin_index!r} does not exist")
    skin = skins[skin_index]
    joint_nodes = skin.get("joints") or []
    g = len(joint_nodes)
    if not g or not all(isinstance(j, int) and 0 <= j < len(nodes) for j in joint_nodes) or len(set(joint_nodes)) != g:
        raise _skin_error(name, "the skin's joint list is empty or refers to missing nodes")
    if "inverseBindMatrices" not in skin:
        raise _skin_error(name, "the skin has no inverse bind matrices")
    ibm = _finite(name, "inverseBindMatrices", glb.accessor(skin["inverseBindMatrices"]).astype(np.float64))
    if ibm.shape != (g, 16):
        raise _skin_error(name, f"{ibm.shape[0]} inverse bind matrices for {g} joints")
    ibm = ibm.reshape(g, 4, 4).transpose(0, 2, 1)  # glTF stores matrices column-major
    if np.abs(np.linalg.det(ibm[:, :3, :3])).min() < 1e-12:
        raise _skin_error(name, "an inverse bind matrix is singular")

    weights = np.zeros((n, g), np.float32)
    s = 0
    while f"JOINTS_{s}" in attrs:
        if f"WEIGHTS_{s}" not in attrs:
            raise _skin_error(name, f"JOINTS_{s} without WEIGHTS_{s}")
        jv, wv = glb.accessor(attrs[f"JOINTS_{s}"]), _finite(name, f"WEIGHTS_{s}", glb.accessor(attrs[f"WEIGHTS_{s}"]))
        if jv.dtype.kind != "u" or jv.shape != (n, 4) or wv.shape != (n, 4):
            raise _skin_error(name, f"JOINTS_{s}/WEIGHTS_{s} are not {n} x 4")
        if int(jv.max()) >= g:
            raise _skin_error(name, f"JOINTS_{s} refers to joint {int(jv.max())}, the skin has {g}")
        wv = wv.astype(np.float32)
        if wv.min() < 0:
            raise _skin_error(name, f"WEIGHTS_{s} has negative weights")
        np.add.at(weights, (np.repeat(np.arange(n), 4), jv.reshape(-1).astype(np.int64)), wv.reshape(-1))
        s += 1
    row = weights.sum(axis=1, dtype=np.float64)
    if np.abs(row - 1).max() > _WEIGHT_SUM_TOL:
        v = int(np.argmax(np.abs(row - 1)))
        raise _skin_error(name, f"the skin weights of vertex {v} sum to {row[v]:.6g}, not 1")

    parents, order = _joint_tree(gltf, nodes, joint_nodes, name)
    joint_names = tuple(str(nodes[j].get("name") or f"joint{j}") for j in joint_nodes)
    if len(set(joint_names)) != g:
        raise _skin_error(name, "two skin joints share a name")
    return LamSkin(glb, attrs["POSITION"], positions, faces, tuple(names), deltas, joint_names,
                   parents, order, ibm, weights)


def _joint_tree(gltf: dict, nodes: list, joint_nodes: list[int], name: str) -> tuple[np.ndarray, np.ndarray]:
    """For each skin joint: the nearest ancestor that is a joint (-1: none) and its depth-first rank."""
    parent_of: dict[int, int] = {}
    for i, node in enumerate(nodes):
        for c in (node.get("children") or []) if isinstance(node, dict) else []:
            if not isinstance(c, int) or not 0 <= c < len(nodes) or c in parent_of:
                raise _skin_error(name, "the node tree is not a tree")
            parent_of[c] = i
    roots = [i for i in range(len(nodes)) if i not in parent_of]
    rank: dict[int, int] = {}
    stack = list(reversed(roots))
    while stack:
        i = stack.pop()
        if i in rank:
            raise _skin_error(name, "the node tree has a cycle")
        rank[i] = len(rank)
        stack.extend(reversed([c for c in (nodes[i].get("children") or [])]))
    if len(rank) != len(nodes):
        raise _skin_error(name, "the node tree has a cycle")
    slot = {node: k for k, node in enumerate(joint_nodes)}
    parents = np.full(len(joint_nodes), -1, np.int64)
    for k, node in enumerate(joint_nodes):
        up = parent_of.get(node)
        while up is not None and up not in slot:
            up = parent_of.get(up)
        parents[k] = -1 if up is None else slot[up]
    return parents, np.array([rank[j] for j in joint_nodes], np.int64)


def skeleton(skin: LamSkin) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The joints an avatar keeps: every joint that carries weight and all its ancestor joints,
    parents before children (depth-first order). Returns (skin joint indices, parents within
    the kept list, rest positions J,3 = translation of the inverse of each inverse bind matrix)."""
    carried = np.flatnonzero(skin.weights.max(axis=0) > 0)
    keep: set[int] = set()
    for j in carried.tolist():
        while j >= 0 and j not in keep:
            keep.add(j)
            j = int(skin.joint_parents[j])
    kept = sorted(keep, key=lambda j: int(skin.joint_order[j]))
    pos = {j: k for k, j in enumerate(kept)}
    parents = np.array([pos.get(int(skin.joint_parents[j]), -1) for j in kept], np.int32)
    if (parents[1:] < 0).any():
        roots = [skin.joint_names[j] for j, p in zip(kept, parents) if p < 0]
        raise LamZipError(f"the skin's weighted joints hang from several roots ({', '.join(roots)}); expected one skeleton")
    rest = np.linalg.inv(skin.inverse_bind[kept])[:, :3, 3]
    return kept, parents, rest.astype(np.float32)


# ----------------------------------------------------------------------------------- reading


def _find_folder(z: SafeZip) -> PurePosixPath:
    """The folder holding the avatar (whatever its name); the ZIP's root if the files lie there."""
    folders = sorted({p.parent for p in z.files if p.name == SKIN})
    if not folders:
        raise LamZipError(f"{z.path}: no {SKIN} inside; a LAM web ZIP holds <name>/{SKIN}, {OFFSET}, {ANIMATION} "
                          f"and {VERTEX_ORDER}")
    if len(folders) > 1:
        raise LamZipError(f"{z.path}: {len(folders)} avatar folders ({', '.join(map(str, folders))}); expected one")
    folder = folders[0]
    missing = [m for m in MEMBERS if folder / m not in z.files]
    if missing:
        raise LamZipError(f"{z.path}: the avatar folder '{folder}' lacks {', '.join(missing)}; the ZIP is incomplete")
    return folder


def _check_vertex_order(data: bytes, n: int, name: str) -> None:
    try:
        order = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise LamZipError(f"{name}: not valid JSON ({exc})") from None
    if not isinstance(order, list) or len(order) != n or not all(isinstance(i, int) and not isinstance(i, bool) for i in order) \
            or sorted(order) != list(range(n)):
        raise LamZipError(f"{name}: not a permutation of the {n} vertices")


def read_template(path: str | os.PathLike) -> LamTemplate:
    """The template parts of any LAM web ZIP (its Gaussians are not read beyond the layout check)."""
    return _read(path, with_avatar=False)[1]


def read_lam_zip(path: str | os.PathLike) -> tuple[Avatar, LamTemplate]:
    """A LAM web ZIP -> (avatar, template). Raises :class:`LamZipError` (or BadInputError for an
    unsafe or damaged archive) naming the file and the problem; nothing is written."""
    avatar, template = _read(path, with_avatar=True)
    assert avatar is not None
    return avatar, template


def _read(path: str | os.PathLike, with_avatar: bool) -> tuple[Avatar | None, LamTemplate]:
    path = Path(path)
    with SafeZip(path, what="LAM web ZIP") as z:
        folder = _find_folder(z)
        data = {m: z.read(folder / m) for m in (MEMBERS if with_avatar else TEMPLATE_MEMBERS)}
    label = f"{path.name}: {folder}"
    skin = parse_skin(data[SKIN], f"{label}/{SKIN}")
    _check_vertex_order(data[VERTEX_ORDER], skin.n_vertices, f"{label}/{VERTEX_ORDER}")
    if read_glb(data[ANIMATION], f"{label}/{ANIMATION}").gltf.get("animations") is None:
        raise LamZipError(f"{label}/{ANIMATION}: holds no animations; expected LAM's body animation clips")
    folder_name = folder.name or path.stem
    template = LamTemplate(data[SKIN], data[ANIMATION], data[VERTEX_ORDER], folder_name, path.name, sha256_file(path))
    if not with_avatar:
        return None, template
    return _avatar(skin, data[OFFSET], f"{label}/{OFFSET}", template), template


def _refuse_beyond(name: str, item: str, size: np.ndarray, limit: float, claim: str, why: str) -> None:
    """Refuse a file in which some item's ``size`` (metres) passes ``limit``: such values are damage."""
    bad = np.flatnonzero(size > limit)
    if bad.size:
        worst = int(bad[np.argmax(size[bad])])
        raise LamZipError(f"{name}: {bad.size} {item}(s) {claim} (worst: {item} {worst}, {size[worst]:.3g} m); {why}: "
                          "the file is damaged, export or download it again")


def decode_offset_ply(data: bytes, n: int, name: str) -> dict[str, np.ndarray]:
    """LAM's ``offset.ply`` bytes -> offset, rgb, opacity, opacity_logit, scale, rotation (float32),
    checked: one row per vertex, finite, colours in [0, 1]."""
    cols = ply.read_ply_columns(data, name)
    missing = [p for p in ply.OFFSET_PLY_PROPS if p not in cols and p not in ("nx", "ny", "nz")]
    if missing:
        raise LamZipError(f"{name}: missing properties {', '.join(missing)}; not LAM's offset.ply")
    rows = len(cols["x"])
    if rows != n:
        raise LamZipError(f"{name}: {rows} rows, but skin.glb has {n} vertices; the ZIP's files do not belong together")
    for p in cols:
        _finite(name, f"property '{p}'", cols[p])
    stack = lambda props: np.stack([cols[p] for p in props], axis=1)  # noqa: E731
    rgb = stack(ply.DC_PROPS)
    if rgb.min() < -1e-6 or rgb.max() > 1 + 1e-6:
        raise LamZipError(f"{name}: f_dc values outside [0, 1] ({rgb.min():.3g}..{rgb.max():.3g}); LAM stores RGB there, "
                          "this looks like a standard 3DGS PLY (SH colours) instead")
    offset, log_scale = stack(("x", "y", "z")), stack(("scale_0", "scale_1", "scale_2"))
    _refuse_beyond(name, "Gaussian", np.abs(offset).max(axis=1), _DAMAGED_OFFSET,
                   f"more than {_DAMAGED_OFFSET:g} m from the vertex", f"LAM's offsets stay within {MAX_OFFSET:g} m")
    _refuse_beyond(name, "Gaussian", np.exp(np.minimum(log_scale.max(axis=1), 50.0)), np.exp(_DAMAGED_LOG_SCALE),
                   "with a scale over 1 m", "scale_* holds ln(sigma), LAM's sigma is at most 0.01 m")
    rot = stack(("rot_0", "rot_1", "rot_2", "rot_3")).astype(np.float64)
    norm = np.linalg.norm(rot, axis=1)
    if norm.min() < 1e-8:
        raise LamZipError(f"{name}: Gaussian {int(np.argmin(norm))} has a zero rotation quaternion")
    logit = cols["opacity"].astype(np.float32)
    return {
        "offset": offset,
        "rgb": np.clip(rgb, 0.0, 1.0),
        "opacity_logit": logit,
        "opacity": ply.logit_to_opacity(logit),
        "scale": np.exp(log_scale.astype(np.float64)).astype(np.float32),
        "rotation": (rot / norm[:, None]).astype(np.float32),
    }


def _avatar(skin: LamSkin, offset_ply: bytes, ply_name: str, template: LamTemplate) -> Avatar:
    g = decode_offset_ply(offset_ply, skin.n_vertices, ply_name)
    kept, parents, rest = skeleton(skin)
    n, j = skin.n_vertices, len(kept)
    avatar = Avatar(
        xyz=skin.positions + g["offset"],
        template=skin.positions,
        rgb=g["rgb"], opacity=g["opacity"], scale=g["scale"], rotation=g["rotation"],
        expr_dirs=np.zeros((n, 3, 0), np.float32),
        pose_dirs=np.zeros((n, 3, 0), np.float32),
        lbs_weights=skin.weights[:, kept],
        joints=rest,
        joint_expr_dirs=np.zeros((j, 3, 0), np.float32),
        parents=parents,
        joint_names=tuple(skin.joint_names[k] for k in kept),
        faces=skin.faces,
        shape_params=np.zeros(0, np.float32),
        meta={"source": SOURCE, "source_file": template.source_name, "source_sha256": template.source_sha256,
              "folder": template.folder, "model": "LAM"},
        arkit_dirs=skin.target_deltas,
        arkit_names=skin.target_names,
        opacity_logit=g["opacity_logit"],
    )
    try:
        return validate(to_arrays(avatar))
    except AvatarFileError as exc:
        raise LamZipError(f"{ply_name}: {exc}") from None


# ----------------------------------------------------------------------------------- writing


def template_frame_shift(avatar: Avatar, skin: LamSkin) -> np.ndarray:
    """Translation that moves the avatar's canonical mesh into the template's frame: its centroid
    onto the template POSITION's (the exact constant of the official pipeline is not published;
    two identities' centroids differ by under a millimetre). Zero for the template's own mesh."""
    if np.array_equal(avatar.template, skin.positions):
        return np.zeros(3, np.float64)
    return skin.positions.astype(np.float64).mean(axis=0) - avatar.template.astype(np.float64).mean(axis=0)


def check_topology(n_points: int, faces: np.ndarray, skin: LamSkin) -> None:
    """Raise LamZipError unless a mesh of ``n_points`` with ``faces`` is the template's (same vertex
    count, same triangles in the same order): the morph targets and skin weights are per vertex."""
    if n_points != skin.n_vertices or np.shape(faces) != skin.faces.shape or not np.array_equal(faces, skin.faces):
        raise LamZipError(
            f"the avatar has {n_points} points and {len(faces)} triangles, the LAM template "
            f"{skin.n_vertices} and {len(skin.faces)}" + ("" if n_points != skin.n_vertices else " in another order")
            + ": only avatars on FLAME's subdivided topology (as LAM makes them) can become a LAM web ZIP")


def check_exportable(avatar: Avatar, skin: LamSkin) -> None:
    """Raise LamZipError unless ``avatar`` can be written with this template: the same vertices
    and triangles (FLAME's subdivided topology) and offsets inside what LAM produces."""
    check_topology(avatar.n_points, avatar.faces, skin)
    off = np.abs(avatar.offset)
    if off.max() > MAX_OFFSET + _OFFSET_SLACK:
        bad = int(np.count_nonzero(off.max(axis=1) > MAX_OFFSET + _OFFSET_SLACK))
        raise LamZipError(
            f"{bad} Gaussians lie more than {MAX_OFFSET * 100:.0f} cm (per axis) from their mesh vertex (largest "
            f"{off.max() * 100:.1f} cm); LAM's web player expects offsets within that range: move them back")


def _opacity_logits(opacity: np.ndarray, stored: np.ndarray | None) -> np.ndarray:
    """The stored logits where the opacity is still the one they decode to (unedited, so a re-export
    keeps the file's exact values), else new ones."""
    fresh = ply.opacity_to_logit(opacity)
    if stored is None or np.shape(stored) != np.shape(opacity):
        return fresh
    stored = np.asarray(stored, np.float32)
    kept = np.isfinite(stored) & (ply.logit_to_opacity(stored) == opacity)
    return np.where(kept, stored, fresh).astype(np.float32)


def vertex_order_for(positions: np.ndarray) -> bytes:
    """``vertex_order.json`` for new positions: indices by ascending z (the newer real ZIPs')."""
    return json.dumps(np.argsort(positions[:, 2], kind="stable").tolist()).encode()


def lam_zip_members(avatar: Avatar, template: LamTemplate) -> dict[str, bytes]:
    """The four member files of the ZIP for ``avatar`` (checked first: the avatar contract, so no
    NaN reaches the glTF JSON, then the template's topology and LAM's offset range). Stored opacity
    logits that no longer match an edited opacity are replaced, not refused."""
    stored_logits = avatar.opacity_logit
    try:
        avatar = validate(to_arrays(replace(avatar, opacity_logit=None)))
    except AvatarFileError as exc:
        raise LamZipError(f"cannot export this avatar as a LAM web ZIP: {exc}") from None
    skin = template.skin()
    check_exportable(avatar, skin)
    shift = template_frame_shift(avatar, skin)
    positions = (avatar.template.astype(np.float64) + shift).astype(np.float32)
    same_mesh = np.array_equal(positions, skin.positions)
    skin_glb = template.skin_glb if same_mesh else skin.glb.with_accessor_data(skin.position_accessor, positions).to_bytes()
    cols = ply.encode_offset(avatar.xyz.astype(np.float64) + shift - positions, avatar.rgb, avatar.opacity,
                             avatar.scale, avatar.rotation)
    cols["opacity"] = _opacity_logits(avatar.opacity, stored_logits)
    return {
        SKIN: skin_glb,
        OFFSET: ply.columns_to_bytes(cols),
        ANIMATION: template.animation_glb,
        VERTEX_ORDER: template.vertex_order_json if same_mesh else vertex_order_for(positions),
    }


_NAME_FORBIDDEN = set('<>:"/\\|?*')  # separators, and what Windows refuses in a folder name


def check_zip_name(path: str | os.PathLike, name: str | None = None) -> str:
    """The folder name for ``path`` (``name``, else the file's stem), or LamZipError: the file must
    end in ``.zip``, lower case (the web player finds the avatar's name in the URL by it), and the
    name must be a plain folder name that no unzip tool or importer skips (no separators, control
    characters, leading dot or macOS junk name)."""
    path = Path(path)
    if path.suffix != ".zip":
        raise LamZipError(f"{path}: a LAM web avatar file must end in .zip, lower case (the web player looks for "
                          f"it in the file's URL), e.g. {path.with_suffix('.zip').name}")
    name = path.stem if name is None else name
    bad = sorted({c for c in name if c in _NAME_FORBIDDEN or ord(c) < 32 or ord(c) == 127})
    if not name or name != name.strip() or name.startswith(".") or name == "__MACOSX" or bad:
        why = f" (it contains {' '.join(map(repr, bad))})" if bad else ""
        raise LamZipError(f"{name!r} cannot name the avatar folder inside the ZIP{why}; use letters, digits, '-' or '_'")
    return name


def write_lam_zip(path: str | os.PathLike, avatar: Avatar, template: LamTemplate, name: str | None = None) -> Path:
    """Write ``<name>.zip`` holding exactly ``<name>/`` (an explicit directory entry, which the web
    player needs, and the only one: the player takes the last), ``<name>/skin.glb``, ``offset.ply``,
    ``animation.glb``, ``vertex_order.json``. ``name`` defaults to the file's stem. Everything is
    checked and encoded before the file is opened, and the write is atomic: on any error no file
    (and no partial file) is left, and an existing file is kept."""
    path = Path(path)
    name = check_zip_name(path, name)
    members = lam_zip_members(avatar, template)
    stamp = datetime.now().timetuple()[:6]
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w") as zf:
            folder = zipfile.ZipInfo(f"{name}/", date_time=stamp)
            folder.external_attr = (0o40755 << 16) | 0x10  # a directory, for every unzip tool
            zf.writestr(folder, b"")
            for member in MEMBERS:
                info = zipfile.ZipInfo(f"{name}/{member}", date_time=stamp)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, members[member])
    return path
