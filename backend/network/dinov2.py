"""DINOv2 ViT with register tokens (LAM's image backbone), built on transformers' ``Dinov2WithRegistersBackbone``.

Expected key layout: the OFFICIAL DINOv2 layout under ``encoder.model.`` in the LAM checkpoint
(layout.dino_layout: ``cls_token``, ``pos_embed``, ``register_tokens``, ``patch_embed.proj.*``,
``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1/fc2 (ViT-g: mlp.w12/w3), ls2.gamma}``,
``norm.*``), not the ``facebook/dinov2-with-registers-*`` Hugging Face layout. :class:`DinoVisionTransformer`
holds the transformers module as ``backbone`` and translates between the two at the state-dict boundary:

* loading (``load_state_dict`` pre-hook): each official key is renamed to the transformers name
  (``embeddings.position_embeddings``, ``encoder.layer.N.attention.attention.query``...); ``attn.qkv`` is split
  into ``query``/``key``/``value`` as three row slices, i.e. views: with ``assign=True`` the parameters stay
  views of the memory-mapped checkpoint (weight_pages.py releases their pages after the encoder ran);
* saving (``state_dict`` post-hook): back to the official names and order (``qkv`` re-concatenated).

So ``LamModel.state_dict()`` is the official LAM layout. transformers' unused ``mask_token`` is removed (LAM
has none). The four fused blocks come from the backbone's ``out_indices`` with ``apply_layernorm`` (the final
norm), CLS and registers dropped here. Position embeddings: transformers resizes them with bicubic,
``antialias=True``, to an explicit ``size`` in float32, which is the reference's ``interpolate_offset=0`` path.

Attention runs through :func:`lam_attention`, registered with transformers' ``AttentionInterface`` and
selected in the config: it calls attention.attention (PyTorch SDPA in float32; in CPU fast mode the bf16
kernel attention.py runs for the transformer too, e.g. the bf16-GEMM one). Per-block progress, cancellation and the golden-fixture captures use forward hooks. Unlike our
previous own implementation, every block runs (as in the reference), also any after the last fused one; in
all LAM archs the last block is fused. Cost of the q/k/v split: three GEMMs per block instead of one fused
qkv GEMM (float32 results are bit-identical; bench/bench_encoder.py compares the encoder stage).
Tested with transformers 4.51.0 and 4.57.6 (backend/requirements.txt: >=4.51,<5; 4.51 added AttentionInterface).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, Dinov2WithRegistersBackbone, Dinov2WithRegistersConfig

from ..core.errors import BadInputError
from . import attention as attention_mod
from .config import DinoArch
from .layout import dino_layout

Capture = Callable[[str, torch.Tensor], None]
BlockHook = Callable[[int, int], None]

#: Name of our attention function in transformers' registry (AttentionInterface).
ATTN_IMPLEMENTATION = "lam_head"

_QKV = ("query", "key", "value")
_TOP = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "register_tokens": "embeddings.register_tokens",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_IN_BLOCK = {
    "norm1": "norm1",
    "attn.proj": "attention.output.dense",
    "ls1": "layer_scale1",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.w12": "mlp.weights_in",
    "mlp.w3": "mlp.weights_out",
    "ls2": "layer_scale2",
}
_LEAF = {"gamma": "lambda1"}
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)\.([a-z_0-9]+)")


def transformers_names(official: str) -> list[str]:
    """transformers name(s) of an official DINOv2 key (both relative to the backbone module).

    One name, or three for ``blocks.N.attn.qkv.{weight,bias}`` (query, key, value: thirds along dim 0).
    """
    if official in _TOP:
        return [_TOP[official]]
    m = _BLOCK_KEY.fullmatch(official)
    if m is None:
        raise KeyError(official)
    block, module, leaf = m.groups()
    base = f"encoder.layer.{block}"
    if module == "attn.qkv":
        return [f"{base}.attention.attention.{q}.{leaf}" for q in _QKV]
    if module not in _IN_BLOCK:
        raise KeyError(official)
    return [f"{base}.{_IN_BLOCK[module]}.{_LEAF.get(leaf, leaf)}"]


def lam_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function interface on attention.attention: q, k, v B,H,N,d -> (B,N,H,d, None).

    Unmasked softmax attention with scale 1/sqrt(d), as DINOv2 uses it; anything else is refused rather than
    silently computed differently.
    """
    if attention_mask is not None or dropout:
        raise ValueError("lam_head attention supports neither masks nor dropout")
    if scaling is not None and not math.isclose(scaling, query.shape[-1] ** -0.5, rel_tol=1e-6):
        raise ValueError(f"lam_head attention uses scale 1/sqrt(d), got {scaling}")
    return attention_mod.attention(query, key, value).transpose(1, 2), None


AttentionInterface.register(ATTN_IMPLEMENTATION, lam_attention)


def transformers_config(arch: DinoArch) -> Dinov2WithRegistersConfig:
    """The ``Dinov2WithRegistersConfig`` of a LAM DINOv2 arch: outputs = the fused blocks through the final norm."""
    if arch.interpolate_offset or not arch.interpolate_antialias:
        raise BadInputError(
            "DINOv2 position-embedding resize: only antialiased bicubic to an explicit size is supported "
            f"(interpolate_offset 0, interpolate_antialias true); got offset {arch.interpolate_offset}, "
            f"antialias {arch.interpolate_antialias}"
        )
    if arch.ffn_layer not in ("mlp", "swiglufused"):
        raise BadInputError(f"DINOv2 ffn_layer {arch.ffn_layer!r} is not supported (mlp or swiglufused)")
    return Dinov2WithRegistersConfig(
        hidden_size=arch.embed_dim,
        num_hidden_layers=arch.depth,
        num_attention_heads=arch.num_heads,
        mlp_ratio=arch.mlp_ratio,
        hidden_act="gelu",  # exact (erf) GELU
        layer_norm_eps=arch.layernorm_eps,
        image_size=arch.img_size,
        patch_size=arch.patch_size,
        num_channels=3,
        qkv_bias=arch.qkv_bias,
        layerscale_value=1.0,
        drop_path_rate=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        use_swiglu_ffn=arch.ffn_layer != "mlp",
        num_register_tokens=arch.num_register_tokens,
        # stage k is the output of block k-1 (stage 0: the embeddings); duplicates are allowed in LAM, not here
        out_indices=sorted({i + 1 for i in arch.intermediate_layer_idx}),
        apply_layernorm=True,
        reshape_hidden_states=False,
        attn_implementation=ATTN_IMPLEMENTATION,
    )


def _constant_for(name: str, shape: torch.Size, like: torch.Tensor | None) -> torch.Tensor | None:
    """Value of a transformers-only entry that the official layout leaves out (the arch has no such tensor)."""
    kw: dict[str, Any] = {"dtype": like.dtype, "device": like.device} if like is not None else {}
    if name.endswith(".lambda1"):  # no LayerScale: multiply by one
        return torch.ones(shape, **kw)
    if name.endswith(".bias") or name == "embeddings.register_tokens":  # no bias / no registers (0 tokens)
        return torch.zeros(shape, **kw)
    return None


class DinoVisionTransformer(nn.Module):
    """Returns the final-normed patch tokens of the fused blocks (cls/registers dropped).

    State dict: the official layout (see the module docstring); the module tree: ``backbone`` (transformers).
    """

    def __init__(self, arch: DinoArch):
        super().__init__()
        self.arch = arch
        self.backbone = Dinov2WithRegistersBackbone(transformers_config(arch))
        self.backbone.embeddings.mask_token = None  # LAM's backbone has no mask token (never used at inference)
        self._official = [e.name for e in dino_layout(arch)]
        mapped = {n for name in self._official for n in transformers_names(name)}
        own = self.backbone.state_dict(keep_vars=True)
        self._transformers_only = {k: v.shape for k, v in own.items() if k not in mapped}
        for k in self._transformers_only:
            if _constant_for(k, torch.Size([0]), None) is None:
                raise BadInputError(f"transformers' DINOv2 has a weight {k!r} that the LAM layout cannot fill")
        self.register_load_state_dict_pre_hook(DinoVisionTransformer._from_official)
        self.register_state_dict_post_hook(DinoVisionTransformer._to_official)

    def _from_official(self, state: dict[str, Any], prefix: str, *_: Any) -> None:
        """load_state_dict pre-hook: official keys -> transformers keys (qkv split into row views)."""
        like = None
        for name in self._official:
            key = prefix + name
            if key not in state:
                continue  # reported as missing (under the transformers name) by load_state_dict
            value = state.pop(key)
            like = value if like is None else like
            targets = transformers_names(name)
            parts = value.chunk(3, dim=0) if len(targets) == 3 else (value,)
            for target, part in zip(targets, parts):
                state[prefix + "backbone." + target] = part
        for name, shape in self._transformers_only.items():
            if prefix + "backbone." + name not in state:
                state[prefix + "backbone." + name] = _constant_for(name, shape, like)

    def _to_official(self, state: dict[str, Any], prefix: str, *_: Any) -> None:
        """state_dict post-hook: transformers keys -> the official keys and order (qkv concatenated)."""
        inner = prefix + "backbone."
        theirs = {k[len(inner):]: state.pop(k) for k in [k for k in state if k.startswith(inner)]}
        for name in self._official:
            targets = transformers_names(name)
            if all(t in theirs for t in targets):
                parts = [theirs[t] for t in targets]
                state[prefix + name] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

    def interpolated_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """pos_embed resized to grid_h x grid_w: 1, 1+gh*gw, E (class entry untouched), as the backbone does it."""
        p = self.arch.patch_size
        shape_only = torch.empty(1, 1 + grid_h * grid_w, self.arch.embed_dim, device="meta")
        return self.backbone.embeddings.interpolate_pos_encoding(shape_only, grid_h * p, grid_w * p)

    def forward(
        self, image: torch.Tensor, capture: Capture | None = None, on_block: BlockHook | None = None
    ) -> list[torch.Tensor]:
        """image B,3,H,W in [0,1] (H, W multiples of the patch) -> list of B,h*w,E per fused block."""
        a = self.arch
        layers = self.backbone.encoder.layer
        handles = []

        def embeddings_done(_module: nn.Module, _args: Any, tokens: torch.Tensor) -> None:
            assert capture is not None
            capture("dino_pos_embed_interp", self.interpolated_pos_embed(image.shape[2] // a.patch_size,
                                                                         image.shape[3] // a.patch_size))
            capture("dino_tokens_in", tokens)

        def block_done(i: int) -> Callable[[nn.Module, Any, torch.Tensor], None]:
            def hook(_module: nn.Module, _args: Any, out: torch.Tensor | tuple[torch.Tensor, ...]) -> None:
                x = out[0] if isinstance(out, tuple) else out  # older 4.x layers return (hidden, attentions)
                if capture:
                    capture(f"dino_block{i}_out", x)
                if on_block:
                    on_block(i + 1, len(layers))  # may raise to cancel

            return hook

        try:
            if capture:
                handles.append(self.backbone.embeddings.register_forward_hook(embeddings_done))
            if capture or on_block:
                handles.extend(layer.register_forward_hook(block_done(i)) for i, layer in enumerate(layers))
            out = self.backbone(image)
        finally:
            for h in handles:
                h.remove()
        stages = dict(zip(self.backbone.out_features, out.feature_maps))
        n_skip = 1 + a.num_register_tokens
        fused = [stages[f"stage{i + 1}"][:, n_skip:] for i in a.intermediate_layer_idx]
        if capture:
            for j, f in enumerate(fused):
                capture(f"dino_fused_in{j}", f)
        return fused
