"""The splat Geometry Nodes group: one Gaussian primitive instanced per avatar point.

Input: the avatar mesh AFTER shape keys and the Armature modifier (deformed
centres, FLAME faces, point attributes named in ``naming.py``). Output: only
instances (the mesh itself would render as an opaque surface), one scaled and
rotated ico sphere (20 faces) per surviving point, carrying ``lam_rgb`` / ``lam_opacity``
on the instance domain for the material (``material.py``).

Gaussian rotations follow the skinning as DESIGN.md defines it (R(A), the polar
rotation of the blended bone matrix A = sum_j w_j G_j), approximated in the
viewport by the normalised weighted blend of the bones' quaternions,
normalize(sum_j w_j q_j): exact for rigid motion and for one-bone points, and
within about 0.2 degrees of R(A) for head-rig poses (tests measure it). The bones' world rotations reach the node group
through driven modifier inputs (``drivers.py``); shape keys do not rotate
Gaussians (as in R(A)). The exporter computes R(A) exactly
(``backend/core/splat_frames.py``).

Modifier inputs: Size (scale multiplier), Opacity Cut-off (points below are
dropped), Viewport Points (a random subset of at most this many points is kept
in the viewport; renders always use all points).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import bpy

from .. import naming

GROUP_NAME = "LAM Gaussian Splats"
GROUP_VERSION = 3  # bump when the node layout changes: stale groups are rebuilt
PROP_VERSION = "lam_splat_version"
PROP_JOINTS = "lam_splat_joints"  # the avatar joint names the group blends (one bone input each)

# Primitive: an ico sphere whose faces lie at least SIGMA_EXTENT away from its centre
# (in units of the Gaussian's standard deviations, the instance is scaled by sigma).
SIGMA_EXTENT = 3.0
ICO_SUBDIVISIONS = 1
_ICO1_INRADIUS = 0.79465  # inradius / circumradius of an icosahedron (Blender's ico sphere, 1 subdivision: 20 faces)
ICO_RADIUS = SIGMA_EXTENT / _ICO1_INRADIUS

# Modifier input names (the modifier is driven through these sockets' identifiers).
IN_SIZE = "Size"
IN_CUTOFF = "Opacity Cut-off"
IN_BUDGET = "Viewport Points"
IN_FOLLOW = "Follow Deformation"
IN_RIG = "Rig"  # the armature object; bone inputs (one Rotation per bone, named as the bone) are driven
RIG_PANEL = "Rig (driven)"
FLAME_JOINTS = tuple(naming.BONE_NAMES)  # our avatars' joints; other skeletons (LAM ZIPs) get a group of their own
DEFAULTS = {IN_SIZE: 1.0, IN_CUTOFF: 1.0 / 255.0, IN_BUDGET: 50000, IN_FOLLOW: True}


def _socket(sockets, name: str):
    """The enabled socket called ``name`` (nodes keep disabled same-name sockets for other types)."""
    for s in sockets:
        if s.name == name and getattr(s, "enabled", True):
            return s
    raise KeyError(name)


class _Builder:
    def __init__(self, tree):
        self.tree = tree
        self.x = 0

    def node(self, kind: str, inputs: dict | None = None, **props):
        n = self.tree.nodes.new(kind)
        for k, v in props.items():
            setattr(n, k, v)
        n.location = (self.x, 0)
        self.x += 40
        for name, value in (inputs or {}).items():
            sock = _socket(n.inputs, name) if isinstance(name, str) else n.inputs[name]
            if isinstance(value, bpy.types.NodeSocket):
                self.tree.links.new(value, sock)
            else:
                sock.default_value = value
        return n

    def out(self, node, name: str | int = 0):
        return _socket(node.outputs, name) if isinstance(name, str) else node.outputs[name]

    def math(self, op: str, a, b=None):
        inputs = {0: a} if b is None else {0: a, 1: b}
        return self.out(self.node("ShaderNodeMath", inputs, operation=op), 0)

    def vmath(self, op: str, a, b=None, out: str = "Vector"):
        inputs = {0: a} if b is None else {0: a, 1: b}
        return self.out(self.node("ShaderNodeVectorMath", inputs, operation=op), out)

    def named(self, name: str, data_type: str):
        n = self.node("GeometryNodeInputNamedAttribute", {"Name": name}, data_type=data_type)
        return self.out(n, "Attribute")


def group_name(joints: Sequence[str]) -> str:
    """One group per skeleton: FLAME's keeps the plain name, others add a digest of their joints."""
    if tuple(joints) == FLAME_JOINTS:
        return GROUP_NAME
    return f"{GROUP_NAME} [{hashlib.sha1(chr(0).join(joints).encode()).hexdigest()[:8]}]"


def group_joints(tree: bpy.types.NodeTree) -> tuple[str, ...]:
    return tuple(tree.get(PROP_JOINTS, FLAME_JOINTS))


def bone_inputs(tree: bpy.types.NodeTree) -> tuple[str, ...]:
    """The group's bone-rotation inputs, named as the bones (in joint order)."""
    return tuple(naming.bone_name(j) for j in group_joints(tree))


def _new_group(joints: Sequence[str]) -> bpy.types.NodeTree:
    tree = bpy.data.node_groups.new(group_name(joints), "GeometryNodeTree")
    tree[PROP_JOINTS] = list(joints)
    if hasattr(tree, "is_modifier"):
        tree.is_modifier = True
    iface = tree.interface
    iface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    iface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    s = iface.new_socket(IN_SIZE, in_out="INPUT", socket_type="NodeSocketFloat")
    s.default_value, s.min_value, s.max_value = DEFAULTS[IN_SIZE], 0.0, 100.0
    s.description = "Multiplies every Gaussian's standard deviations"
    s = iface.new_socket(IN_CUTOFF, in_out="INPUT", socket_type="NodeSocketFloat")
    s.default_value, s.min_value, s.max_value = DEFAULTS[IN_CUTOFF], 0.0, 1.0
    s.description = "Points with a lower opacity are not drawn"
    s = iface.new_socket(IN_BUDGET, in_out="INPUT", socket_type="NodeSocketInt")
    s.default_value, s.min_value = DEFAULTS[IN_BUDGET], 0
    s.description = "At most this many points (a random subset) in the viewport; renders use all"
    s = iface.new_socket(IN_FOLLOW, in_out="INPUT", socket_type="NodeSocketBool")
    s.default_value = DEFAULTS[IN_FOLLOW]
    s.description = "Rotate the Gaussians with the skinning (the blended rotation of their bones)"
    panel = iface.new_panel(RIG_PANEL, default_closed=True)
    s = iface.new_socket(IN_RIG, in_out="INPUT", socket_type="NodeSocketObject")
    s.description = "The avatar's armature"
    iface.move_to_parent(s, panel, 0)
    for i, bone in enumerate(bone_inputs(tree)):
        s = iface.new_socket(bone, in_out="INPUT", socket_type="NodeSocketRotation")
        s.description = f"World rotation of bone '{bone}' (driven; do not edit)"
        iface.move_to_parent(s, panel, i + 1)
    tree[PROP_VERSION] = GROUP_VERSION
    return tree


def _blended_rotation(b: _Builder, gin):
    """Field: the skinning rotation of each point, normalize(sum_j w_j q_j) ~ R(A).

    q_j is bone j's deformation rotation in the mesh's space, G_j = Y (R_arm^-1 B_j) Y^-1,
    from its driven world rotation B_j, the rig's world rotation R_arm and the rig's
    rotation relative to this object Y = R_mesh^-1 R_arm (Object Info, relative). The
    quaternions (sign-aligned to w >= 0) are blended with the ``lam_lbs_*`` weights.
    """
    rig_world = b.out(b.node("GeometryNodeObjectInfo", {"Object": b.out(gin, IN_RIG)}, transform_space="ORIGINAL"),
                      "Rotation")
    rig_rel = b.out(b.node("GeometryNodeObjectInfo", {"Object": b.out(gin, IN_RIG)}, transform_space="RELATIVE"),
                    "Rotation")
    rig_world_inv = b.out(b.node("FunctionNodeInvertRotation", {"Rotation": rig_world}), "Rotation")
    rig_rel_inv = b.out(b.node("FunctionNodeInvertRotation", {"Rotation": rig_rel}), "Rotation")
    w_sum = None
    xyz_sum = None
    for joint in group_joints(b.tree):
        bone = naming.bone_name(joint)
        pose = b.out(b.node("FunctionNodeRotateRotation", {"Rotation": b.out(gin, bone), "Rotate By": rig_world_inv},
                            rotation_space="GLOBAL"), "Rotation")  # R_arm^-1 B_j
        g = b.out(b.node("FunctionNodeRotateRotation", {"Rotation": pose, "Rotate By": rig_rel},
                         rotation_space="GLOBAL"), "Rotation")  # Y (.)
        g = b.out(b.node("FunctionNodeRotateRotation", {"Rotation": g, "Rotate By": rig_rel_inv},
                         rotation_space="LOCAL"), "Rotation")  # (.) Y^-1
        quat = b.node("FunctionNodeRotationToQuaternion", {"Rotation": g})
        sign = b.math("SUBTRACT", 1.0, b.math("MULTIPLY", b.math("LESS_THAN", b.out(quat, "W"), 0.0), 2.0))
        weight = b.named(naming.lbs_attr(joint), "FLOAT")
        ws = b.math("MULTIPLY", weight, sign)
        w_term = b.math("MULTIPLY", ws, b.out(quat, "W"))
        xyz = b.out(b.node("ShaderNodeCombineXYZ", {"X": b.out(quat, "X"), "Y": b.out(quat, "Y"),
                                                    "Z": b.out(quat, "Z")}), "Vector")
        xyz_term = b.vmath("SCALE", xyz, None)
        b.tree.links.new(ws, _socket(xyz_term.node.inputs, "Scale"))
        w_sum = w_term if w_sum is None else b.math("ADD", w_sum, w_term)
        xyz_sum = xyz_term if xyz_sum is None else b.vmath("ADD", xyz_sum, xyz_term)
    w_sum = b.math("ADD", w_sum, 1e-12)  # no weights at all (not an avatar): the identity, not NaN
    sep = b.node("ShaderNodeSeparateXYZ", {"Vector": xyz_sum})
    return b.out(b.node("FunctionNodeQuaternionToRotation", {"W": w_sum, "X": b.out(sep, "X"), "Y": b.out(sep, "Y"),
                                                             "Z": b.out(sep, "Z")}), "Rotation")


def _build(tree: bpy.types.NodeTree, material: bpy.types.Material) -> None:
    b = _Builder(tree)
    gin = b.node("NodeGroupInput")
    gout = b.node("NodeGroupOutput")
    mesh = b.out(gin, "Geometry")

    # Rotation: R * q. The switch takes a single value (the modifier input), so with
    # "Follow Deformation" off the blend is never evaluated.
    q = b.named(naming.ATTR_ROTATION, "QUATERNION")
    rotated = b.out(b.node("FunctionNodeRotateRotation", {"Rotation": q, "Rotate By": _blended_rotation(b, gin)},
                           rotation_space="GLOBAL"), "Rotation")
    final_rot = b.out(b.node("GeometryNodeSwitch", {"Switch": b.out(gin, IN_FOLLOW), "False": q, "True": rotated},
                             input_type="ROTATION"), "Output")

    # Skip faint points, and in the viewport keep a random subset within the budget.
    opacity = b.named(naming.ATTR_OPACITY, "FLOAT")
    faint = b.math("LESS_THAN", opacity, b.out(gin, IN_CUTOFF))
    count = b.out(b.node("GeometryNodeAttributeDomainSize", {"Geometry": mesh}, component="MESH"), "Point Count")
    keep_p = b.math("DIVIDE", b.out(gin, IN_BUDGET), b.math("MAXIMUM", count, 1.0))
    keep = b.out(b.node("FunctionNodeRandomValue", {"Probability": keep_p, "Seed": 17}, data_type="BOOLEAN"),
                 "Value")
    viewport = b.out(b.node("GeometryNodeIsViewport"), "Is Viewport")
    over = b.out(b.node("FunctionNodeBooleanMath", {0: viewport, 1: keep}, operation="NIMPLY"), 0)
    drop = b.out(b.node("FunctionNodeBooleanMath", {0: faint, 1: over}, operation="OR"), 0)
    show = b.out(b.node("FunctionNodeBooleanMath", {0: drop}, operation="NOT"), 0)

    ico = b.out(b.node("GeometryNodeMeshIcoSphere", {"Radius": ICO_RADIUS, "Subdivisions": ICO_SUBDIVISIONS}),
                "Mesh")
    ico = b.out(b.node("GeometryNodeSetMaterial", {"Geometry": ico, "Material": material}), "Geometry")
    scale = b.vmath("SCALE", b.named(naming.ATTR_SCALE, "FLOAT_VECTOR"), None)
    tree.links.new(b.out(gin, IN_SIZE), _socket(scale.node.inputs, "Scale"))
    # Instancing straight on the mesh's points (no copy to a point cloud): the output is
    # the instances only, with the points' attributes on the instance domain.
    inst = b.out(b.node("GeometryNodeInstanceOnPoints", {"Points": mesh, "Selection": show, "Instance": ico,
                                                         "Rotation": final_rot, "Scale": scale}), "Instances")
    tree.links.new(inst, _socket(gout.inputs, "Geometry"))


def get_node_group(material: bpy.types.Material, joints: Sequence[str] = FLAME_JOINTS) -> bpy.types.NodeTree:
    """The splat node group shared by avatars with these ``joints`` (built once per file;
    rebuilt if from an older add-on version)."""
    joints = tuple(joints)
    name = group_name(joints)
    tree = bpy.data.node_groups.get(name)
    if (tree is not None and tree.get(PROP_VERSION) == GROUP_VERSION and tree.bl_idname == "GeometryNodeTree"
            and group_joints(tree) == joints):
        return tree
    if tree is not None:
        tree.name = name + " (old)"
    tree = _new_group(joints)
    _build(tree, material)
    return tree


def input_identifier(tree: bpy.types.NodeTree, name: str) -> str:
    """The modifier key of the group input ``name`` (``modifier[identifier] = value`` works on 4.2 to 5.x)."""
    for item in tree.interface.items_tree:
        if getattr(item, "item_type", "SOCKET") == "SOCKET" and item.in_out == "INPUT" and item.name == name:
            return item.identifier
    raise KeyError(name)
