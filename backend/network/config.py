"""LAM configuration: the official ``config.json`` schema, validated, plus the DINOv2 arch it implies.

Stdlib only (no torch): the random-checkpoint writer used by torch-free tests reads it too.

The Hugging Face ``config.json`` of LAM holds the ``model:`` section of LAM's inference yaml (flat keys).
The DINOv2 backbone is not described there: the reference derives it from ``encoder_model_name``
(e.g. ``dinov2_vitl14_reg``). Test fixtures carry an extra ``fixture_dinov2_arch`` dict instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import BadInputError

# name letter -> (embed_dim, depth, num_heads, ffn_layer, fused block indices)
_DINOV2_ARCHS: dict[str, tuple[int, int, int, str, tuple[int, ...]]] = {
    "s": (384, 12, 6, "mlp", (2, 5, 8, 11)),
    "b": (768, 12, 12, "mlp", (2, 5, 8, 11)),
    "l": (1024, 24, 16, "mlp", (4, 11, 17, 23)),
    "g": (1536, 40, 24, "swiglufused", (9, 19, 29, 39)),
}

#: Head output channels (fixed by the reference: RGB, 3 scales, 3 offsets, opacity, wxyz quaternion).
HEAD_CHANNELS: dict[str, int] = {"shs": 3, "scaling": 3, "xyz": 3, "opacity": 1, "rotation": 4}


@dataclass(frozen=True)
class DinoArch:
    """DINOv2 ViT backbone hyper-parameters."""

    embed_dim: int
    depth: int
    num_heads: int
    intermediate_layer_idx: tuple[int, ...]
    img_size: int = 518
    patch_size: int = 14
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    ffn_layer: str = "mlp"
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    layerscale: bool = True
    layernorm_eps: float = 1e-6
    interpolate_antialias: bool = True
    interpolate_offset: float = 0.0

    @property
    def pos_grid(self) -> int:
        """Side of the stored position-embedding grid (37 for 518 px / 14)."""
        return self.img_size // self.patch_size

    @property
    def mlp_hidden(self) -> int:
        hidden = int(self.embed_dim * self.mlp_ratio)
        if self.ffn_layer == "swiglufused":
            hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        return hidden


@dataclass(frozen=True)
class LamConfig:
    """Every dimension of the LAM network (see LAM_SPEC.md section 1)."""

    dino: DinoArch
    encoder_feat_dim: int
    pcl_dim: int
    transformer_dim: int
    transformer_heads: int
    transformer_layers: int
    gs_query_dim: int
    mlp_neurons: int
    mlp_hidden_layers: int
    mlp_activation: str
    gs_xyz_offset_max_step: float
    gs_clip_scaling: float
    flame_subdivide_num: int
    encoder_model_name: str
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def head_dim(self) -> int:
        return self.transformer_dim // self.transformer_heads


def dino_arch_from_name(name: str) -> DinoArch:
    """The reference's DINOv2 arch for ``dinov2_vit{s,b,l,g}14[_reg]``."""
    m = re.fullmatch(r"dinov2_vit([sblg])14(_reg)?", name)
    if not m:
        raise BadInputError(
            f"unknown encoder_model_name {name!r}: expected dinov2_vits14_reg, dinov2_vitb14_reg, "
            "dinov2_vitl14_reg or dinov2_vitg14_reg (or a 'fixture_dinov2_arch' entry)"
        )
    dim, depth, heads, ffn, idx = _DINOV2_ARCHS[m.group(1)]
    return DinoArch(
        embed_dim=dim, depth=depth, num_heads=heads, intermediate_layer_idx=idx, ffn_layer=ffn,
        num_register_tokens=4 if m.group(2) else 0,
    )


def _dino_arch_from_dict(d: dict[str, Any], where: str) -> DinoArch:
    try:
        return DinoArch(
            embed_dim=int(d["embed_dim"]),
            depth=int(d["depth"]),
            num_heads=int(d["num_heads"]),
            intermediate_layer_idx=tuple(int(i) for i in d["intermediate_layer_idx"]),
            img_size=int(d.get("img_size", 518)),
            patch_size=int(d.get("patch_size", 14)),
            mlp_ratio=float(d.get("mlp_ratio", 4)),
            num_register_tokens=int(d.get("num_register_tokens", 4)),
            ffn_layer=str(d.get("ffn_layer", "mlp")),
            qkv_bias=bool(d.get("qkv_bias", True)),
            proj_bias=bool(d.get("proj_bias", True)),
            ffn_bias=bool(d.get("ffn_bias", True)),
            layerscale=d.get("init_values", 1.0) is not None,
            layernorm_eps=float(d.get("layernorm_eps", 1e-6)),
            interpolate_antialias=bool(d.get("interpolate_antialias", True)),
            interpolate_offset=float(d.get("interpolate_offset", 0.0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInputError(f"{where}: invalid 'fixture_dinov2_arch' ({exc!r})") from exc


def parse_config(raw: dict[str, Any], where: str = "config") -> LamConfig:
    """Validate a config dict (flat, or with the fields under ``"model"``) into a :class:`LamConfig`."""
    if not isinstance(raw, dict):
        raise BadInputError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    if "model" in raw and isinstance(raw["model"], dict) and "transformer_dim" not in raw:
        raw = raw["model"]

    def need(key: str, kind: type = int) -> Any:
        if key not in raw:
            raise BadInputError(f"{where}: missing key {key!r}; is this LAM's config.json?")
        try:
            return kind(raw[key])
        except (TypeError, ValueError) as exc:
            raise BadInputError(f"{where}: key {key!r} has an invalid value {raw[key]!r}") from exc

    for key, expected in (("encoder_type", "dinov2_fusion"), ("transformer_type", "sd3_cond")):
        if raw.get(key, expected) != expected:
            raise BadInputError(f"{where}: {key}={raw[key]!r} is not supported (only {expected!r})")
    name = need("encoder_model_name", str)
    if "fixture_dinov2_arch" in raw:
        dino = _dino_arch_from_dict(raw["fixture_dinov2_arch"], where)
    else:
        dino = dino_arch_from_name(name)
    dims = {k: need(k) for k in ("encoder_feat_dim", "pcl_dim", "transformer_dim", "transformer_heads",
                                 "transformer_layers", "gs_query_dim")}
    mlp = raw.get("gs_mlp_network_config")
    if not isinstance(mlp, dict):
        raise BadInputError(f"{where}: missing or invalid 'gs_mlp_network_config'")
    cfg = LamConfig(
        dino=dino,
        **dims,
        mlp_neurons=int(mlp.get("n_neurons", 0)),
        mlp_hidden_layers=int(mlp.get("n_hidden_layers", 0)),
        mlp_activation=str(mlp.get("activation", "silu")),
        gs_xyz_offset_max_step=need("gs_xyz_offset_max_step", float),
        gs_clip_scaling=need("gs_clip_scaling", float),
        flame_subdivide_num=int(raw.get("flame_subdivide_num", 1)),
        encoder_model_name=name,
        raw=dict(raw),
    )
    _check(cfg, where)
    return cfg


def _check(cfg: LamConfig, where: str) -> None:
    problems = []
    d = cfg.dino
    if d.embed_dim % d.num_heads:
        problems.append(f"DINOv2 embed_dim {d.embed_dim} not divisible by num_heads {d.num_heads}")
    if any(not 0 <= i < d.depth for i in d.intermediate_layer_idx):
        problems.append(f"fused DINOv2 blocks {list(d.intermediate_layer_idx)} outside 0..{d.depth - 1}")
    if d.ffn_layer not in ("mlp", "swiglufused", "swiglu"):
        problems.append(f"DINOv2 ffn_layer {d.ffn_layer!r} unsupported")
    if cfg.transformer_dim % cfg.transformer_heads:
        problems.append(f"transformer_dim {cfg.transformer_dim} not divisible by transformer_heads")
    if cfg.pcl_dim != cfg.transformer_dim:
        problems.append(f"pcl_dim {cfg.pcl_dim} != transformer_dim {cfg.transformer_dim} (the reference has no projection)")
    if cfg.gs_query_dim != cfg.transformer_dim:
        problems.append(f"gs_query_dim {cfg.gs_query_dim} != transformer_dim {cfg.transformer_dim}")
    if cfg.transformer_layers < 1 or cfg.mlp_hidden_layers < 1 or cfg.mlp_neurons < 1:
        problems.append("transformer_layers, gs_mlp n_hidden_layers and n_neurons must be >= 1")
    if cfg.mlp_activation != "silu":
        problems.append(f"gs_mlp activation {cfg.mlp_activation!r} unsupported (only 'silu')")
    if problems:
        raise BadInputError(f"{where}: " + "; ".join(problems))


def load_config(path: str | Path) -> LamConfig:
    """Read and validate ``config.json``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"LAM config not found: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{path}: not a readable JSON file ({exc})") from exc
    return parse_config(raw, where=str(path))


def lam20k_config() -> dict[str, Any]:
    """The official LAM-20K ``config.json`` fields that decide the architecture."""
    return {
        "encoder_type": "dinov2_fusion",
        "encoder_model_name": "dinov2_vitl14_reg",
        "encoder_feat_dim": 1024,
        "encoder_freeze": False,
        "latent_query_points_type": "e2e_flame",
        "pcl_dim": 1024,
        "transformer_type": "sd3_cond",
        "transformer_heads": 16,
        "transformer_dim": 1024,
        "transformer_layers": 10,
        "flame_subdivide_num": 1,
        "flame_type": "flame",
        "gs_query_dim": 1024,
        "gs_use_rgb": True,
        "gs_sh": 3,
        "gs_mlp_network_config": {"n_neurons": 512, "n_hidden_layers": 2, "activation": "silu"},
        "gs_xyz_offset_max_step": 0.2,
        "gs_clip_scaling": 0.01,
        "scale_sphere": False,
        # As in the released config.json (configs/inference/lam-20k-8gpu.yaml). Never used for
        # FLAME: LAM's renderer always builds it with 300 shape + 100 expression components.
        "expr_param_dim": 10,
        "shape_param_dim": 10,
        "add_teeth": False,
        "fix_opacity": False,
        "fix_rotation": False,
    }


def tiny_config() -> dict[str, Any]:
    """A small config in the official layout (for tests: a 20018-point forward takes about a second on CPU)."""
    cfg = lam20k_config()
    cfg.update(
        encoder_model_name="tiny_dinov2_reg",
        encoder_feat_dim=32,
        pcl_dim=32,
        transformer_dim=32,
        transformer_heads=2,
        transformer_layers=2,
        gs_query_dim=32,
        gs_mlp_network_config={"n_neurons": 16, "n_hidden_layers": 2, "activation": "silu"},
        fixture_dinov2_arch={
            "img_size": 518, "patch_size": 14, "mlp_ratio": 2, "num_register_tokens": 4, "init_values": 1.0,
            "interpolate_antialias": True, "interpolate_offset": 0.0, "ffn_layer": "mlp", "layernorm_eps": 1e-6,
            "embed_dim": 32, "depth": 2, "num_heads": 2, "intermediate_layer_idx": [0, 1, 1, 1],
        },
    )
    return cfg
