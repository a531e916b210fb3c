"""Drivers that feed the bones' world rotations into the splat modifier.

Geometry Nodes cannot read pose bones, so each bone's world-space rotation
(Euler XYZ, as the modifier's Rotation inputs store it) is driven from the
armature: three AVERAGE drivers per bone, each one Transform Channel variable
(no Python expressions, so they run with auto-run scripts disabled too).
"""

from __future__ import annotations

import bpy

from . import nodes

_CHANNELS = ("ROT_X", "ROT_Y", "ROT_Z")


def drive_bones(mod: bpy.types.NodesModifier, arm_obj: bpy.types.Object) -> int:
    """(Re)create the drivers of ``mod``'s bone inputs from ``arm_obj``; returns how many
    bones were driven (inputs whose bone the armature lacks stay at identity)."""
    obj = mod.id_data
    group = mod.node_group
    driven = 0
    for bone in nodes.bone_inputs(group):
        path = f'modifiers["{bpy.utils.escape_identifier(mod.name)}"]["{nodes.input_identifier(group, bone)}"]'
        for axis in range(3):
            obj.driver_remove(path, axis)
        if arm_obj is None or bone not in arm_obj.pose.bones:
            mod[nodes.input_identifier(group, bone)] = (0.0, 0.0, 0.0)
            continue
        for axis, channel in enumerate(_CHANNELS):
            driver = obj.driver_add(path, axis).driver
            driver.type = "AVERAGE"
            var = driver.variables.new()
            var.name = "rot"
            var.type = "TRANSFORMS"
            target = var.targets[0]
            target.id = arm_obj
            target.bone_target = bone
            target.transform_type = channel
            target.rotation_mode = "XYZ"
            target.transform_space = "WORLD_SPACE"
        driven += 1
    return driven
