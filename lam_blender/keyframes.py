"""Write a :class:`MotionPlan` as keyframes: one new action per import, F-curves filled in bulk.

Blender 4.4+ (slotted actions): one action with a slot for the shape keys and one for the
armature, so a take is one NLA-ready action. Older Blender: one action per datablock (the rig's
carries the suffix " (rig)"). Keys are linear: between keyframes a resampled motion is what the
planner computed, not an overshooting Bezier. An action the datablock had before gets a fake user,
so replacing it loses nothing. All or nothing: on failure the new actions are removed and the
previous assignment restored.
"""

from __future__ import annotations

from collections.abc import Callable

import bpy
import numpy as np

from .core import motion_channels

_LINEAR = bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items["LINEAR"].value
_SLOTTED = hasattr(bpy.types, "ActionSlot")
_RIG_SUFFIX = " (rig)"


def _channelbag(action, slot):
    """The channel bag of ``slot`` in ``action``'s first keyframe strip (created if needed)."""
    layer = action.layers[0] if len(action.layers) else action.layers.new("Layer")
    strip = layer.strips[0] if len(layer.strips) else layer.strips.new(type="KEYFRAME")
    return strip.channelbag(slot, ensure=True)


def _new_fcurve(bag, data_path: str, index: int, group: str):
    """``bag.fcurves.new`` with a group: ``group_name`` where the API takes it (5.0, legacy
    actions), else the group set afterwards (4.4/4.5 channel bags)."""
    try:
        return bag.fcurves.new(data_path, index=index, action_group=group)  # legacy Action.fcurves
    except TypeError:
        pass
    try:
        return bag.fcurves.new(data_path, index=index, group_name=group)
    except TypeError:
        fc = bag.fcurves.new(data_path, index=index)
        fc.group = bag.groups.get(group) or bag.groups.new(group)
        return fc


def _assign(id_data, action, slot) -> None:
    ad = id_data.animation_data or id_data.animation_data_create()
    if ad.action is not None and ad.action != action:
        ad.action.use_fake_user = True  # the previous take stays in the file (NLA, Action editor)
    ad.action = action
    if slot is not None:
        ad.action_slot = slot


def write_plan(plan: motion_channels.MotionPlan, key_id, arm_obj, name: str,
               progress: Callable[[float], None] | None = None) -> list[bpy.types.Action]:
    """Key ``plan`` on ``key_id`` (the mesh's shape keys) and ``arm_obj``; returns the new actions."""
    owners = {motion_channels.OWNER_KEYS: key_id, motion_channels.OWNER_RIG: arm_obj}
    used = [o for o in owners if any(c.owner == o for c in plan.channels)]
    before = {o: (owners[o].animation_data.action if owners[o].animation_data else None,
                  getattr(owners[o].animation_data, "action_slot", None) if owners[o].animation_data else None)
              for o in used}
    created: list[bpy.types.Action] = []
    try:
        curves = {}
        if _SLOTTED:
            action = bpy.data.actions.new(name)
            created.append(action)
            for o in used:
                slot = action.slots.new(id_type=owners[o].id_type, name=owners[o].name)
                curves[o] = _channelbag(action, slot)
                _assign(owners[o], action, slot)
        else:
            for o in used:
                action = bpy.data.actions.new(name if o == motion_channels.OWNER_KEYS else name + _RIG_SUFFIX)
                created.append(action)
                curves[o] = action
                _assign(owners[o], action, None)
        frames = plan.frames.astype(np.float64)
        co = np.empty((plan.n_frames, 2), dtype=np.float64)
        co[:, 0] = frames
        interp = np.full(plan.n_frames, _LINEAR, dtype=np.int32)
        for i, ch in enumerate(plan.channels):
            fc = _new_fcurve(curves[ch.owner], ch.data_path, ch.index, ch.group)
            co[:, 1] = ch.values
            fc.keyframe_points.add(plan.n_frames)
            fc.keyframe_points.foreach_set("co", co.ravel())
            fc.keyframe_points.foreach_set("interpolation", interp)
            fc.update()
            if progress is not None:
                progress((i + 1) / len(plan.channels))
    except BaseException:
        for o, (action, slot) in before.items():
            ad = owners[o].animation_data
            if ad is not None:
                ad.action = action
                if action is not None and slot is not None and _SLOTTED:
                    ad.action_slot = slot
        if created:
            bpy.data.batch_remove(created)
        raise
    return created
