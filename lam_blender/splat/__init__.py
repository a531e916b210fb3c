"""The splat node path: renders an avatar mesh's points as Gaussians in EEVEE and Cycles.

``attach(mesh_obj)`` adds a Geometry Nodes modifier (after the Armature
modifier, so it sees the deformed points) that instances one Gaussian primitive
per point (``nodes.py``) with the Gaussian material (``material.py``).
"""

from __future__ import annotations

import bpy

from .. import naming
from . import drivers, material, nodes

MODIFIER_NAME = "LAM Splats"


def attach(mesh_obj: bpy.types.Object, scene: bpy.types.Scene | None = None) -> bpy.types.NodesModifier:
    """Add (or refresh) the splat modifier on ``mesh_obj``, last in its stack; returns it.

    The armature of the mesh's Armature modifier (if any) drives the group's bone inputs
    (``drivers.py``: the Gaussians turn with the skinning). Also makes sure the scene's
    Cycles transparent-bounce limits suit stacked Gaussians.
    """
    if mesh_obj is None or mesh_obj.type != "MESH":
        raise TypeError("the splat node path needs a mesh object")
    mat = material.get_material()
    joints = _weighted_joints(mesh_obj)
    group = nodes.get_node_group(mat, joints)
    mod = mesh_obj.modifiers.get(MODIFIER_NAME)
    if mod is None or mod.type != "NODES":
        mod = mesh_obj.modifiers.new(MODIFIER_NAME, "NODES")
    mod.node_group = group
    for name, value in nodes.DEFAULTS.items():
        mod[nodes.input_identifier(group, name)] = value
    arm_obj = next((m.object for m in mesh_obj.modifiers if m.type == "ARMATURE" and m.object is not None), None)
    if arm_obj is not None:
        mod[nodes.input_identifier(group, nodes.IN_RIG)] = arm_obj
    drivers.drive_bones(mod, arm_obj)
    material.ensure_render_settings(scene or bpy.context.scene)
    return mod


def _weighted_joints(mesh_obj) -> tuple[str, ...]:
    """The avatar's joints that carry skinning weight (a LAM ZIP's skeleton has unweighted
    ancestors such as the hips: they would only add nodes and drivers to the group)."""
    import numpy as np

    joints = tuple(mesh_obj.get(naming.PROP_JOINT_NAMES, nodes.FLAME_JOINTS))
    if joints == nodes.FLAME_JOINTS:
        return joints  # our avatars share one group
    w = np.empty(len(mesh_obj.data.vertices), np.float32)
    kept = []
    for j in joints:
        attr = mesh_obj.data.attributes.get(naming.lbs_attr(j))
        if attr is not None:
            attr.data.foreach_get("value", w)
            if (w > 0).any():
                kept.append(j)
    return tuple(kept)


def set_inputs(mod: bpy.types.NodesModifier, **values) -> None:
    """Set modifier inputs by name: ``set_inputs(mod, **{"Size": 1.5, "Viewport Points": 5000})``."""
    for name, value in values.items():
        mod[nodes.input_identifier(mod.node_group, name)] = value
    mod.id_data.update_tag()


def find_modifier(mesh_obj: bpy.types.Object) -> bpy.types.NodesModifier | None:
    mod = mesh_obj.modifiers.get(MODIFIER_NAME)
    return mod if mod is not None and mod.type == "NODES" else None
