"""The DINOv2 encoder runs on transformers' Dinov2WithRegistersBackbone, loaded from the official key layout.

Parity with the official LAM code is tests/test_network_golden.py (every golden fixture); here: the key
mapping both ways, memory-mapped views instead of copies, the registered attention function, variants no
golden fixture covers (ViT-g's SwiGLU, no registers, no LayerScale, no proj bias) against a direct
computation from the official tensors, and progress/cancel hooks.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from factories.checkpoint import make_tiny_weights_dir
from transformers import Dinov2WithRegistersBackbone

from backend.core.errors import BadInputError, CancelledError, CancelToken
from backend.network import load_lam, predict
from backend.network.config import DinoArch, parse_config, tiny_config
from backend.network.dinov2 import ATTN_IMPLEMENTATION, DinoVisionTransformer, lam_attention, transformers_names
from backend.network.layout import dino_layout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = make_tiny_weights_dir(tmp_path_factory.mktemp("dino"), seed=5)
    model, _ = load_lam(d, device="cpu")
    return d, model


def _reference(state: dict[str, torch.Tensor], a: DinoArch, image: torch.Tensor) -> list[torch.Tensor]:
    """DINOv2 with registers computed directly from the official tensors (LAM_SPEC 1.1, fixtures README)."""
    e, nh, p = a.embed_dim, a.num_heads, a.patch_size
    b, _, h, w = image.shape
    gh, gw = h // p, w // p
    x = F.conv2d(image, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=p)
    x = x.flatten(2).transpose(1, 2)
    pos = state["pos_embed"]
    m = a.pos_grid
    grid = pos[:, 1:].reshape(1, m, m, e).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", antialias=True, align_corners=False)
    pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, e)], dim=1)
    x = torch.cat([state["cls_token"].expand(b, -1, -1), x], dim=1) + pos
    if a.num_register_tokens:
        x = torch.cat([x[:, :1], state["register_tokens"].expand(b, -1, -1), x[:, 1:]], dim=1)

    def ln(t, name):
        return F.layer_norm(t, (e,), state[f"{name}.weight"], state[f"{name}.bias"], a.layernorm_eps)

    def lin(t, name):
        return F.linear(t, state[f"{name}.weight"], state.get(f"{name}.bias"))

    def scale(t, name):
        return t * state[name] if a.layerscale else t

    outs = {}
    for i in range(a.depth):
        k = f"blocks.{i}"
        n = x.shape[1]
        q, kk, v = lin(ln(x, f"{k}.norm1"), f"{k}.attn.qkv").reshape(b, n, 3, nh, e // nh).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ kk.transpose(-1, -2) / (e // nh) ** 0.5, dim=-1) @ v
        x = x + scale(lin(att.transpose(1, 2).reshape(b, n, e), f"{k}.attn.proj"), f"{k}.ls1.gamma")
        y = ln(x, f"{k}.norm2")
        if a.ffn_layer == "mlp":
            y = lin(F.gelu(lin(y, f"{k}.mlp.fc1")), f"{k}.mlp.fc2")
        else:
            u, g = lin(y, f"{k}.mlp.w12").chunk(2, dim=-1)
            y = lin(F.silu(u) * g, f"{k}.mlp.w3")
        x = x + scale(y, f"{k}.ls2.gamma")
        outs[i] = x
    return [ln(outs[i], "norm")[:, 1 + a.num_register_tokens :] for i in a.intermediate_layer_idx]


def _random_official_state(a: DinoArch, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for entry in dino_layout(a):
        t = torch.randn(entry.shape, generator=g) * (0.2 if len(entry.shape) > 1 else 0.05)
        is_norm_scale = entry.name.endswith(("norm1.weight", "norm2.weight", "norm.weight"))
        state[entry.name] = t + 1.0 if is_norm_scale else t
    return state


def test_the_encoder_is_transformers_dinov2_with_registers(tiny):
    _, model = tiny
    dino = model.encoder.model
    assert isinstance(dino.backbone, Dinov2WithRegistersBackbone)
    c = dino.backbone.config
    assert (c.image_size, c.patch_size, c.num_register_tokens, c.layer_norm_eps, c.hidden_act) == (518, 14, 4, 1e-6, "gelu")
    assert c.apply_layernorm and not c.reshape_hidden_states
    assert dino.backbone.out_indices == [1, 2]  # tiny config fuses blocks [0, 1, 1, 1]
    assert c._attn_implementation == ATTN_IMPLEMENTATION
    assert not any("mask_token" in n for n, _ in dino.named_parameters())
    assert all(layer.layer_scale1.lambda1.shape == (c.hidden_size,) for layer in dino.backbone.encoder.layer)


def test_official_keys_map_onto_transformers_names_and_back(tiny):
    d, model = tiny
    dino = model.encoder.model
    theirs = dict(dino.backbone.named_parameters())
    official = [e.name for e in dino_layout(model.config.dino)]
    mapped = [n for name in official for n in transformers_names(name)]
    assert sorted(mapped) == sorted(theirs)  # a bijection (up to the qkv split), nothing left at defaults
    assert transformers_names("blocks.3.attn.qkv.weight") == [
        f"encoder.layer.3.attention.attention.{q}.weight" for q in ("query", "key", "value")]
    assert transformers_names("pos_embed") == ["embeddings.position_embeddings"]
    assert transformers_names("blocks.0.ls2.gamma") == ["encoder.layer.0.layer_scale2.lambda1"]
    # the state dict is the official layout, in the official order, with the file's values
    from safetensors.torch import load_file

    stored = load_file(d / "model.safetensors")
    state = model.encoder.model.state_dict(prefix="encoder.model.")
    assert list(state) == [f"encoder.model.{n}" for n in official]
    for k, v in state.items():
        assert torch.equal(v, stored[k]), k
    with pytest.raises(KeyError):
        transformers_names("mask_token")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_encoder_parameters_are_views_of_the_mapped_checkpoint(tiny):
    """No copy at load: every transformers parameter lies inside the file's mapping; q, k, v are qkv's rows."""
    from backend.network.weight_pages import _file_mappings

    d, model = tiny
    maps = _file_mappings(d / "model.safetensors")
    assert maps
    for name, t in model.encoder.named_parameters():
        lo, hi = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
        assert any(m_lo <= lo and hi <= m_hi for m_lo, m_hi in maps), name
    attn = model.encoder.model.backbone.encoder.layer[0].attention.attention
    nbytes = attn.query.weight.numel() * 4
    assert attn.key.weight.data_ptr() == attn.query.weight.data_ptr() + nbytes
    assert attn.value.weight.data_ptr() == attn.query.weight.data_ptr() + 2 * nbytes


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"ffn_layer": "swiglufused", "num_register_tokens": 0},
        {"layerscale": False, "proj_bias": False, "ffn_bias": False, "qkv_bias": False},
    ],
    ids=["vit_reg", "swiglu_no_registers", "no_layerscale_no_biases"],
)
def test_variants_match_a_direct_computation_and_round_trip(changes):
    arch = dataclasses.replace(
        DinoArch(embed_dim=32, depth=3, num_heads=4, intermediate_layer_idx=(0, 2, 2, 1)), **changes)
    state = _random_official_state(arch, seed=2)
    with torch.device("meta"):
        dino = DinoVisionTransformer(arch)
    dino.load_state_dict(state, strict=True, assign=True)
    dino.eval()
    image = torch.rand(1, 3, 56, 70, generator=torch.Generator().manual_seed(0))  # 4 x 5 patches, not square
    with torch.inference_mode():
        got = dino(image)
        want = _reference(state, arch, image)
    assert len(got) == 4
    for g, w in zip(got, want):
        assert g.shape == w.shape == (1, 20, 32)
        torch.testing.assert_close(g, w, atol=2e-5, rtol=0)
    saved = dino.state_dict()
    assert list(saved) == list(state)
    assert all(torch.equal(saved[k], state[k]) for k in state)


def test_unsupported_position_resize_is_refused(tmp_path):
    cfg = tiny_config()
    cfg["fixture_dinov2_arch"]["interpolate_offset"] = 0.1
    with pytest.raises(BadInputError, match="interpolate_offset"):
        with torch.device("meta"):
            DinoVisionTransformer(parse_config(cfg).dino)


def test_registered_attention_is_sdpa_in_fp32_and_refuses_masks():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    assert ALL_ATTENTION_FUNCTIONS[ATTN_IMPLEMENTATION] is lam_attention
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 9, 8, generator=g) for _ in range(3))
    out, weights = lam_attention(None, q, k, v, None, scaling=8**-0.5)
    assert weights is None and out.shape == (1, 9, 2, 8)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v).transpose(1, 2))
    with pytest.raises(ValueError, match="mask"):
        lam_attention(None, q, k, v, torch.ones(1, 2, 9, 9))
    with pytest.raises(ValueError, match="scale"):
        lam_attention(None, q, k, v, None, scaling=1.0)


def test_cancel_during_the_encoder_leaves_no_hooks_behind(tiny):
    _, model = tiny
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (504, 504, 3)).astype(np.float32)
    points = (rng.normal(size=(50, 3)) * 0.1).astype(np.float32)
    token = CancelToken()
    seen = []

    def progress(stage, frac, msg=""):
        seen.append((stage, frac))
        if stage == "encoder":
            token.cancel()

    with pytest.raises(CancelledError):
        predict(model, image, points, progress=progress, cancel=token)
    assert seen == [("encoder", 0.5)]  # stopped after the first of the two blocks
    layers = model.encoder.model.backbone.encoder.layer
    assert not any(layer._forward_hooks for layer in layers)
    assert not model.encoder.model.backbone.embeddings._forward_hooks
    a = predict(model, image, points)
    b = predict(model, image, points, progress=lambda *args: None)
    np.testing.assert_array_equal(a.xyz, b.xyz)
