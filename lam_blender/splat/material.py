"""The splat material: each instanced primitive shows one Gaussian.

On the primitive, object coordinates are the Gaussian's whitened frame (the
instance is rotated by the Gaussian's quaternion and scaled by its standard
deviations, so the Gaussian there is the unit isotropic one). The camera ray
becomes a line in that frame; the Gaussian's peak along the ray is
``exp(-d^2 / 2)`` with ``d`` the distance from the centre to the line:
``d^2 = |p|^2 - (p . u)^2`` for a point ``p`` on the ray (the shading point) and
the unit direction ``u`` (the world incoming vector taken to object space).
Alpha = min(opacity * exp(-d^2 / 2), 0.999), colour = the point's ``lam_rgb``,
emitted (splat colours are radiance: no lighting). Back faces are fully
transparent, so each Gaussian counts once per ray.

Transparency order: Cycles composites every transparent hit front to back along
the ray (exact order, per pixel; the scene needs enough transparent bounces,
see ``ensure_render_settings``). EEVEE uses the Dithered render method
(stochastic/hashed transparency): order-independent and unbiased, it converges
to the same front-to-back composite as render samples accumulate.
"""

from __future__ import annotations

import bpy

from .. import naming

MATERIAL_NAME = "LAM Gaussian Splat"
MATERIAL_VERSION = 1
PROP_VERSION = "lam_splat_version"
MAX_ALPHA = 0.999  # as gsplat (and our CPU renderer) clamp a single Gaussian's alpha
# Cycles' hard maximum. Real LAM heads stack hundreds of Gaussians along rays through the face
# and hair (two hits each); at 512 some paths ran out of hits while still visibly transparent.
MIN_TRANSPARENT_BOUNCES = 1024
# Below this many transparent hits Cycles never ends a path by Russian roulette: stacked
# Gaussians composite deterministically (no speckle). Roulette on dense real heads turned
# the face into white speckle at 64, so it is off for every hit the limit allows.
MIN_TRANSPARENT_NO_ROULETTE = 1024


def _build(mat: bpy.types.Material) -> None:
    if bpy.app.version < (5, 0, 0):  # always on (and deprecated) from 5.0
        mat.use_nodes = True
    tree = mat.node_tree
    tree.nodes.clear()
    x = [0]

    def node(kind, **props):
        n = tree.nodes.new(kind)
        for k, v in props.items():
            setattr(n, k, v)
        n.location = (x[0], 0)
        x[0] += 200
        return n

    def link(a, b):
        tree.links.new(a, b)

    def math(op, a, b=None, clamp=False):
        n = node("ShaderNodeMath", operation=op, use_clamp=clamp)
        for i, v in enumerate((a, b)):
            if v is None:
                continue
            if isinstance(v, bpy.types.NodeSocket):
                link(v, n.inputs[i])
            else:
                n.inputs[i].default_value = v
        return n.outputs[0]

    def vdot(a, b):
        n = node("ShaderNodeVectorMath", operation="DOT_PRODUCT")
        link(a, n.inputs[0])
        link(b, n.inputs[1])
        return n.outputs["Value"]

    coords = node("ShaderNodeTexCoord").outputs["Object"]
    geom = node("ShaderNodeNewGeometry")
    to_obj = node("ShaderNodeVectorTransform", vector_type="VECTOR", convert_from="WORLD", convert_to="OBJECT")
    link(geom.outputs["Incoming"], to_obj.inputs["Vector"])
    unit = node("ShaderNodeVectorMath", operation="NORMALIZE")
    link(to_obj.outputs["Vector"], unit.inputs[0])
    u = unit.outputs["Vector"]
    along = vdot(coords, u)
    d2 = math("SUBTRACT", vdot(coords, coords), math("MULTIPLY", along, along))
    gauss = math("EXPONENT", math("MULTIPLY", math("MAXIMUM", d2, 0.0), -0.5))

    opacity = node("ShaderNodeAttribute", attribute_type="INSTANCER", attribute_name=naming.ATTR_OPACITY)
    rgb = node("ShaderNodeAttribute", attribute_type="INSTANCER", attribute_name=naming.ATTR_RGB)
    alpha = math("MINIMUM", math("MULTIPLY", gauss, opacity.outputs["Fac"]), MAX_ALPHA)
    front = math("SUBTRACT", 1.0, geom.outputs["Backfacing"])
    alpha = math("MULTIPLY", alpha, front)

    emit = node("ShaderNodeEmission")
    link(rgb.outputs["Vector"], emit.inputs["Color"])
    emit.inputs["Strength"].default_value = 1.0
    clear = node("ShaderNodeBsdfTransparent")
    mix = node("ShaderNodeMixShader")
    link(alpha, mix.inputs["Fac"])
    link(clear.outputs[0], mix.inputs[1])
    link(emit.outputs[0], mix.inputs[2])
    out = node("ShaderNodeOutputMaterial")
    link(mix.outputs[0], out.inputs["Surface"])


def _configure(mat: bpy.types.Material) -> None:
    mat.use_backface_culling = True
    if hasattr(mat, "surface_render_method"):  # EEVEE Next (4.2+)
        mat.surface_render_method = "DITHERED"
    elif hasattr(mat, "blend_method"):  # older EEVEE
        mat.blend_method = "HASHED"
    if hasattr(mat, "use_backface_culling_shadow"):
        mat.use_backface_culling_shadow = True
    cycles = getattr(mat, "cycles", None)
    if cycles is not None and hasattr(cycles, "emission_sampling"):
        cycles.emission_sampling = "NONE"  # not a light source: 20k emissive instances would slow every render
    mat.diffuse_color = (0.8, 0.7, 0.6, 1.0)  # solid-mode viewport colour


def get_material() -> bpy.types.Material:
    """The shared splat material (built once per file; rebuilt if from an older add-on version)."""
    mat = bpy.data.materials.get(MATERIAL_NAME)
    if mat is not None and mat.get(PROP_VERSION) == MATERIAL_VERSION:
        return mat
    if mat is not None:
        mat.name = MATERIAL_NAME + " (old)"
    mat = bpy.data.materials.new(MATERIAL_NAME)
    _build(mat)
    _configure(mat)
    mat[PROP_VERSION] = MATERIAL_VERSION
    return mat


def ensure_render_settings(scene: bpy.types.Scene) -> None:
    """Cycles stops a path after ``transparent_max_bounces`` transparent hits; every Gaussian
    along a ray is two hits (front + back face), so raise the limit. Past
    ``min_transparent_bounces`` it ends paths at random by throughput (Russian roulette),
    which turns soft Gaussians into speckle: raise that too. Never lowers either."""
    cycles = getattr(scene, "cycles", None)
    if cycles is None:
        return
    if getattr(cycles, "transparent_max_bounces", MIN_TRANSPARENT_BOUNCES) < MIN_TRANSPARENT_BOUNCES:
        cycles.transparent_max_bounces = MIN_TRANSPARENT_BOUNCES
    if getattr(cycles, "min_transparent_bounces", MIN_TRANSPARENT_NO_ROULETTE) < MIN_TRANSPARENT_NO_ROULETTE:
        cycles.min_transparent_bounces = MIN_TRANSPARENT_NO_ROULETTE
