"""The state dict carries the official LAM names and shapes, so the released checkpoint loads 1:1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backend.core.errors import BadInputError
from backend.network.config import dino_arch_from_name, lam20k_config, parse_config, tiny_config
from backend.network.layout import state_dict_layout
from backend.network.model import LamModel
from backend.network.safetensors_io import read_header

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
KEYS_JSON = FIXTURES / "lam20k_keys.json"


def _meta_entries(cfg, qk_norm_context: bool = True) -> list[tuple[str, tuple[int, ...], str]]:
    with torch.device("meta"):
        model = LamModel(cfg, qk_norm_context=qk_norm_context)
    # the encoder's parameters carry transformers' names internally (dinov2.py maps them at the state-dict
    # boundary), so classify by the buffers, which keep their official names
    buffers = {n for n, _ in model.named_buffers()}
    return [(n, tuple(t.shape), "buffer" if n in buffers else "parameter") for n, t in model.state_dict().items()]


@pytest.mark.skipif(not KEYS_JSON.is_file(), reason=f"{KEYS_JSON} absent (shared/ fixtures not available)")
def test_full_size_lam20k_state_dict_equals_official_key_list():
    ref = json.loads(KEYS_JSON.read_text())
    expected = [(e["name"], tuple(e["shape"]), e["kind"]) for e in ref["state_dict"]]
    ours = _meta_entries(parse_config(lam20k_config()))
    missing = sorted({e[0] for e in expected} - {e[0] for e in ours})
    extra = sorted({e[0] for e in ours} - {e[0] for e in expected})
    assert not missing and not extra, f"missing {missing[:10]}, unexpected {extra[:10]}"
    assert ours == expected  # same names, shapes, kinds, and registration order
    n_learned = sum(torch.Size(s).numel() for _, s, k in ours if k == "parameter")
    assert n_learned == ref["learned_parameter_count"]


@pytest.mark.parametrize("qk", [True, False])
@pytest.mark.parametrize("make", [lam20k_config, tiny_config], ids=["lam20k", "tiny"])
def test_torch_free_layout_equals_module_tree(make, qk):
    """The layout the torch-free random-checkpoint writer uses is exactly what the modules register."""
    cfg = parse_config(make())
    assert [tuple(e) for e in state_dict_layout(cfg, qk)] == _meta_entries(cfg, qk)
    names = [e.name for e in state_dict_layout(cfg, qk)]
    assert any("norm_added_q" in n for n in names) == qk


def test_golden_fixture_keys_are_exactly_our_layout():
    dirs = sorted(FIXTURES.glob("lam_golden_*")) if FIXTURES.is_dir() else []
    if not dirs:
        pytest.skip(f"no golden fixtures under {FIXTURES}")
    from backend.network.config import load_config

    for d in dirs:
        header = read_header(d / "model.safetensors")
        layout = {e.name: e.shape for e in state_dict_layout(load_config(d / "config.json"))}
        assert {k: v.shape for k, v in header.items()} == layout, d.name


@pytest.mark.parametrize(
    ("name", "dim", "depth", "heads", "fused", "regs"),
    [
        ("dinov2_vitl14_reg", 1024, 24, 16, (4, 11, 17, 23), 4),
        ("dinov2_vitb14_reg", 768, 12, 12, (2, 5, 8, 11), 4),
        ("dinov2_vits14_reg", 384, 12, 6, (2, 5, 8, 11), 4),
        ("dinov2_vitg14_reg", 1536, 40, 24, (9, 19, 29, 39), 4),
        ("dinov2_vitl14", 1024, 24, 16, (4, 11, 17, 23), 0),
    ],
)
def test_dino_arch_derived_from_model_name(name, dim, depth, heads, fused, regs):
    a = dino_arch_from_name(name)
    assert (a.embed_dim, a.depth, a.num_heads, a.intermediate_layer_idx, a.num_register_tokens) == (
        dim, depth, heads, fused, regs)
    assert a.pos_grid == 37


def test_unknown_encoder_and_inconsistent_config_are_refused():
    cfg = lam20k_config()
    cfg["encoder_model_name"] = "resnet50"
    with pytest.raises(BadInputError, match="encoder_model_name"):
        parse_config(cfg)
    cfg = lam20k_config()
    cfg["pcl_dim"] = 512
    with pytest.raises(BadInputError, match="pcl_dim"):
        parse_config(cfg)
    cfg = lam20k_config()
    del cfg["transformer_layers"]
    with pytest.raises(BadInputError, match="transformer_layers"):
        parse_config(cfg, where="my/config.json")


def test_nested_model_section_is_accepted():
    assert parse_config({"model": lam20k_config()}).transformer_layers == 10
