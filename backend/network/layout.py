"""The official state-dict layout (names, shapes, kinds) implied by a :class:`LamConfig`.

Stdlib only: the torch-free random-checkpoint writer (used by tests that run without torch) needs it.
The torch modules in this package produce exactly this layout (tests/test_network_keys.py checks both
against the full-size LAM-20K key list).
"""

from __future__ import annotations

from typing import NamedTuple

from .config import HEAD_CHANNELS, DinoArch, LamConfig


class Entry(NamedTuple):
    name: str
    shape: tuple[int, ...]
    kind: str  # "parameter" or "buffer"


def state_dict_layout(cfg: LamConfig, qk_norm_context: bool = True) -> list[Entry]:
    """All state-dict entries in the reference's registration order."""
    out: list[Entry] = []

    def p(name: str, *shape: int) -> None:
        out.append(Entry(name, tuple(shape), "parameter"))

    def lin(name: str, fan_in: int, fan_out: int, bias: bool = True) -> None:
        p(f"{name}.weight", fan_out, fan_in)
        if bias:
            p(f"{name}.bias", fan_out)

    d = cfg.dino
    e = d.embed_dim
    out.extend(dino_layout(d, "encoder.model."))
    n_fused = len(d.intermediate_layer_idx)
    for j in range(n_fused):
        p(f"encoder.fusion_head.projects.{j}.weight", e, e, 1, 1)
        p(f"encoder.fusion_head.projects.{j}.bias", e)
    p("encoder.fusion_head.output_conv.weight", cfg.encoder_feat_dim, n_fused * e, 1, 1)
    p("encoder.fusion_head.output_conv.bias", cfg.encoder_feat_dim)

    out.append(Entry("pcl_embed.basis", (3, 24), "buffer"))
    lin("pcl_embed.mlp", 51, cfg.pcl_dim)
    p("pcl_embed.norm.weight", cfg.pcl_dim)
    p("pcl_embed.norm.bias", cfg.pcl_dim)

    t, hd, c = cfg.transformer_dim, cfg.head_dim, cfg.encoder_feat_dim
    for i in range(cfg.transformer_layers):
        last = i == cfg.transformer_layers - 1
        b = f"transformer.layers.{i}"
        for n in ("norm1", "norm1_context"):
            p(f"{b}.{n}.weight", t)
            p(f"{b}.{n}.bias", t)
        p(f"{b}.attn.norm_q.weight", hd)
        p(f"{b}.attn.norm_k.weight", hd)
        for n in ("to_q", "to_k", "to_v", "add_k_proj", "add_v_proj", "add_q_proj"):
            lin(f"{b}.attn.{n}", t, t)
        lin(f"{b}.attn.to_out.0", t, t)
        if not last:
            lin(f"{b}.attn.to_add_out", t, t)
        if qk_norm_context:
            p(f"{b}.attn.norm_added_q.weight", hd)
            p(f"{b}.attn.norm_added_k.weight", hd)
        for ff in ("ff",) if last else ("ff", "ff_context"):
            lin(f"{b}.{ff}.net.0.proj", t, 4 * t)
            lin(f"{b}.{ff}.net.2", 4 * t, t)
    p("transformer.norm.weight", t)
    p("transformer.norm.bias", t)
    lin("transformer.linear_cond_proj", c, t)

    n = cfg.mlp_neurons
    dims = [cfg.gs_query_dim] + [n] * cfg.mlp_hidden_layers + [cfg.gs_query_dim]
    for k in range(len(dims) - 1):
        lin(f"renderer.mlp_net.layers.{2 * k}", dims[k], dims[k + 1])
    for head, ch in HEAD_CHANNELS.items():
        lin(f"renderer.gs_net.out_layers.{head}", cfg.gs_query_dim, ch)
    return out


def dino_layout(d: DinoArch, prefix: str = "") -> list[Entry]:
    """The DINOv2 backbone's entries (``encoder.model.*`` in LAM) in the reference's registration order.

    This is the key layout of the official DINOv2 code (``cls_token``, ``pos_embed``, ``register_tokens``,
    ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj, ls1, norm2, mlp.fc1/fc2 or mlp.w12/w3, ls2}``,
    ``norm``); dinov2.py maps it onto transformers' module names.
    """
    out: list[Entry] = []

    def p(name: str, *shape: int) -> None:
        out.append(Entry(prefix + name, tuple(shape), "parameter"))

    def lin(name: str, fan_in: int, fan_out: int, bias: bool = True) -> None:
        p(f"{name}.weight", fan_out, fan_in)
        if bias:
            p(f"{name}.bias", fan_out)

    e = d.embed_dim
    p("cls_token", 1, 1, e)
    p("pos_embed", 1, 1 + d.pos_grid**2, e)
    if d.num_register_tokens:
        p("register_tokens", 1, d.num_register_tokens, e)
    p("patch_embed.proj.weight", e, 3, d.patch_size, d.patch_size)
    p("patch_embed.proj.bias", e)
    for i in range(d.depth):
        b = f"blocks.{i}"
        p(f"{b}.norm1.weight", e)
        p(f"{b}.norm1.bias", e)
        lin(f"{b}.attn.qkv", e, 3 * e, d.qkv_bias)
        lin(f"{b}.attn.proj", e, e, d.proj_bias)
        if d.layerscale:
            p(f"{b}.ls1.gamma", e)
        p(f"{b}.norm2.weight", e)
        p(f"{b}.norm2.bias", e)
        if d.ffn_layer == "mlp":
            lin(f"{b}.mlp.fc1", e, d.mlp_hidden, d.ffn_bias)
            lin(f"{b}.mlp.fc2", d.mlp_hidden, e, d.ffn_bias)
        else:
            lin(f"{b}.mlp.w12", e, 2 * d.mlp_hidden, d.ffn_bias)
            lin(f"{b}.mlp.w3", d.mlp_hidden, e, d.ffn_bias)
        if d.layerscale:
            p(f"{b}.ls2.gamma", e)
    p("norm.weight", e)
    p("norm.bias", e)
    return out
