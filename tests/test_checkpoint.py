"""Loading LAM checkpoints: round trip, strictness, clear errors, FLAME buffers, and the predict() contract."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from factories.checkpoint import make_tiny_weights_dir
from safetensors.numpy import load_file, save_file

from backend.core.errors import BadInputError, CancelledError, CancelToken
from backend.network import load_lam, predict, read_flame_buffers, select_device
from backend.network.safetensors_io import read_header

N_POINTS = 300


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_weights_dir(tmp_path_factory.mktemp("ckpt"), seed=3)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(7)
    image = rng.uniform(0, 1, (504, 504, 3)).astype(np.float32)
    points = (rng.normal(size=(N_POINTS, 3)) * [0.08, 0.1, 0.09]).astype(np.float32)
    return image, points


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    return load_lam(tiny_dir, device="cpu")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite(d: Path, edit) -> None:
    tensors = load_file(d / "model.safetensors")
    edit(tensors)
    save_file(tensors, d / "model.safetensors")


def test_loaded_tensors_are_the_file_tensors(tiny_dir, tiny_model):
    model, report = tiny_model
    stored = load_file(tiny_dir / "model.safetensors")
    state = model.state_dict()
    assert set(stored) == set(state)
    for k, v in stored.items():
        np.testing.assert_array_equal(state[k].numpy(), v, err_msg=k)
    assert report.n_parameters == sum(v.size for k, v in stored.items() if k != "pcl_embed.basis")
    assert not any(t.is_meta for t in state.values())


def test_save_load_round_trip_gives_identical_outputs(tmp_path, tiny_dir, tiny_model, inputs):
    from safetensors.torch import save_file as save_torch

    model, _ = tiny_model
    first = predict(model, *inputs)
    again = predict(model, *inputs)
    out = tmp_path / "resaved"
    out.mkdir()
    shutil.copy(tiny_dir / "config.json", out / "config.json")
    save_torch({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    reloaded = predict(load_lam(out, device="cpu")[0], *inputs)
    for field in ("xyz", "offset", "rgb", "opacity", "scale", "rotation"):
        np.testing.assert_array_equal(getattr(first, field), getattr(again, field), err_msg=field)
        np.testing.assert_array_equal(getattr(first, field), getattr(reloaded, field), err_msg=field)


def test_prediction_ranges_and_shapes(tiny_model, inputs):
    model, _ = tiny_model
    p = predict(model, *inputs)
    n = N_POINTS
    assert p.xyz.shape == p.offset.shape == p.rgb.shape == p.scale.shape == (n, 3)
    assert p.opacity.shape == (n,) and p.rotation.shape == (n, 4)
    np.testing.assert_allclose(p.xyz, inputs[1] + p.offset, atol=1e-7)
    assert np.abs(p.offset).max() <= 0.1 and (p.scale > 0).all() and p.scale.max() <= 0.01
    assert ((p.rgb >= 0) & (p.rgb <= 1)).all() and ((p.opacity >= 0) & (p.opacity <= 1)).all()
    np.testing.assert_allclose(np.linalg.norm(p.rotation, axis=1), 1.0, atol=1e-6)


def test_points_are_permutation_equivariant(tiny_model, inputs):
    """No per-point index embedding: permuting the queries permutes the Gaussians (joint attention is a set op)."""
    model, _ = tiny_model
    image, points = inputs
    perm = np.random.default_rng(0).permutation(len(points))
    a = predict(model, image, points)
    b = predict(model, image, points[perm])
    np.testing.assert_allclose(b.xyz, a.xyz[perm], atol=2e-6)
    np.testing.assert_allclose(b.rgb, a.rgb[perm], atol=2e-5)


def test_fast_mode_is_reduced_precision_and_close_to_fp32(tiny_model, inputs):
    model, _ = tiny_model
    ref = predict(model, *inputs)
    fast = predict(model, *inputs, precision="fast")
    assert not np.array_equal(fast.xyz, ref.xyz)  # it really ran in reduced precision
    # bf16 rounding through a random (chaotic) tiny net: a few mm at most; full size measured in bench/
    assert np.abs(fast.xyz - ref.xyz).max() < 1e-2
    assert np.abs(fast.rgb - ref.rgb).max() < 0.05
    np.testing.assert_allclose(np.linalg.norm(fast.rotation, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(fast.xyz, predict(model, *inputs, precision="bf16").xyz)  # CPU fast = bf16 autocast
    with pytest.raises(BadInputError, match="precision"):
        predict(model, *inputs, precision="int4")


def test_progress_per_block_and_cancellation(tiny_model, inputs):
    model, _ = tiny_model
    events = []
    predict(model, *inputs, progress=lambda stage, frac, msg="": events.append((stage, frac)))
    cfg = model.config
    enc = [f for s, f in events if s == "encoder"]
    tf = [f for s, f in events if s == "transformer"]
    assert len(enc) == max(cfg.dino.intermediate_layer_idx) + 1 and len(tf) == cfg.transformer_layers
    assert enc == sorted(enc) and enc[-1] == 1.0 and tf[-1] == 1.0 and events[-1] == ("heads", 1.0)

    token = CancelToken()

    def cancel_after_first_transformer_block(stage, frac, msg=""):
        if stage == "transformer":
            token.cancel()

    with pytest.raises(CancelledError):
        predict(model, *inputs, progress=cancel_after_first_transformer_block, cancel=token)


@pytest.mark.parametrize(
    ("image", "points", "match"),
    [
        (np.zeros((500, 500, 3), np.float32), np.zeros((4, 3), np.float32), "multiple of 14"),
        (np.zeros((504, 504), np.float32), np.zeros((4, 3), np.float32), "H x W x 3"),
        (np.full((504, 504, 3), 255.0, np.float32), np.zeros((4, 3), np.float32), r"\[0, 1\]"),
        (np.zeros((504, 504, 3), np.uint8), np.zeros((4, 3), np.float32), "float"),
        (np.zeros((504, 504, 3), np.float32), np.zeros((4, 2), np.float32), "N x 3"),
        (np.zeros((504, 504, 3), np.float32), np.full((4, 3), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_inputs_are_refused(tiny_model, image, points, match):
    with pytest.raises(BadInputError, match=match):
        predict(tiny_model[0], image, points)


def test_truncated_file_names_the_file(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "trunc")
    path = d / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(BadInputError, match="truncated") as exc:
        load_lam(d, device="cpu")
    assert str(path) in str(exc.value)
    path.write_bytes(data[:20])
    with pytest.raises(BadInputError, match="truncated|not a safetensors"):
        load_lam(d, device="cpu")


@pytest.mark.parametrize("content", [pickle.dumps({"state_dict": 1}), b"PK\x03\x04 a zip", b"hello"])
def test_non_safetensors_file_is_refused_without_unpickling(tmp_path, tiny_dir, content):
    d = _copy(tiny_dir, tmp_path / "bad")
    (d / "model.safetensors").write_bytes(content)
    with pytest.raises(BadInputError, match="not a safetensors file|truncated") as exc:
        load_lam(d, device="cpu")
    assert "model.safetensors" in str(exc.value)


def test_shape_mismatch_names_key_and_shapes(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "wrongcfg")
    cfg = json.loads((d / "config.json").read_text())
    cfg["gs_mlp_network_config"]["n_neurons"] = 24
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BadInputError) as exc:
        load_lam(d, device="cpu")
    msg = str(exc.value)
    assert "renderer.mlp_net.layers.0.weight (checkpoint [16, 32], config expects [24, 32])" in msg
    assert "config.json" in msg


def test_missing_key_strict_and_lenient(tmp_path, tiny_dir, inputs):
    d = _copy(tiny_dir, tmp_path / "missing")
    _rewrite(d, lambda t: t.pop("transformer.layers.0.ff.net.2.bias"))
    with pytest.raises(BadInputError, match=r"1 missing key\(s\): transformer\.layers\.0\.ff\.net\.2\.bias"):
        load_lam(d, device="cpu")
    model, report = load_lam(d, device="cpu", strict=False)
    assert report.missing == ["transformer.layers.0.ff.net.2.bias"]
    assert torch.count_nonzero(model.transformer.layers[0].ff.net[2].bias) == 0
    assert np.isfinite(predict(model, *inputs).xyz).all()


def test_unexpected_key_is_named(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "unexpected")
    _rewrite(d, lambda t: t.update({"encoder.model.mask_token": np.zeros((1, 32), np.float32)}))
    with pytest.raises(BadInputError, match=r"unexpected key\(s\): encoder\.model\.mask_token"):
        load_lam(d, device="cpu")
    _, report = load_lam(d, device="cpu", strict=False)
    assert report.unexpected == ["encoder.model.mask_token"]


def test_checkpoint_without_added_qk_norm_loads_and_differs(tmp_path, tiny_dir, tiny_model, inputs):
    d = make_tiny_weights_dir(tmp_path, seed=3, qk_norm_context=False)
    model, report = load_lam(d, device="cpu")
    assert not report.qk_norm_context and not report.missing
    assert not any("norm_added" in k for k in model.state_dict())
    with_norm = predict(tiny_model[0], *inputs)
    without = predict(model, *inputs)
    assert np.abs(with_norm.xyz - without.xyz).max() > 1e-6  # image-token QK-norm matters when present


def test_partial_added_qk_norm_is_refused(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "partial")
    _rewrite(d, lambda t: t.pop("transformer.layers.1.attn.norm_added_k.weight"))
    with pytest.raises(BadInputError, match="norm_added_k"):
        load_lam(d, device="cpu")


def test_flame_buffers_are_recognised_and_returned(tmp_path, tiny_dir):
    assert read_flame_buffers(tiny_dir) is None
    rng = np.random.default_rng(1)
    bufs = {
        "v_template": rng.normal(size=(50, 3)).astype(np.float32),
        "faces_up": rng.integers(0, 50, size=(20, 3)).astype(np.int64),
        "parents": np.array([-1, 0, 1, 1, 1], np.int64),
    }
    d = make_tiny_weights_dir(tmp_path, seed=3, flame_buffers=bufs)
    model, report = load_lam(d, device="cpu")
    assert report.flame_buffer_keys == sorted(f"renderer.flame_model.{k}" for k in bufs)
    assert not report.unexpected
    got = read_flame_buffers(d)
    assert set(got) == set(bufs)
    for k, v in bufs.items():
        np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype == v.dtype


def test_bad_config_is_named(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "cfg")
    (d / "config.json").write_text("{not json")
    with pytest.raises(BadInputError, match="config.json: not a readable JSON"):
        load_lam(d, device="cpu")
    (d / "config.json").write_text(json.dumps({"encoder_model_name": "dinov2_vitl14_reg"}))
    with pytest.raises(BadInputError, match="missing key 'encoder_feat_dim'"):
        load_lam(d, device="cpu")
    (d / "config.json").unlink()
    with pytest.raises(BadInputError, match="config not found"):
        load_lam(d, device="cpu")
    with pytest.raises(BadInputError, match="weights folder not found"):
        load_lam(tmp_path / "nowhere", device="cpu")


def test_header_reports_tensors(tiny_dir):
    header = read_header(tiny_dir / "model.safetensors")
    assert header["pcl_embed.basis"].shape == (3, 24) and header["pcl_embed.basis"].dtype == "F32"


def test_select_device():
    assert select_device("cpu").type == "cpu"
    auto = select_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    if not torch.cuda.is_available():
        assert auto.type in ("cpu", "mps")
        with pytest.raises(BadInputError, match="CUDA is not available"):
            select_device("cuda")
    with pytest.raises(BadInputError, match="unknown device|not supported"):
        select_device("tpu")


@pytest.mark.cuda
def test_cuda_load_and_autocast(tiny_dir, inputs):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine (CUDA path unmeasured here)")
    model, report = load_lam(tiny_dir, device="cuda")
    assert report.device.startswith("cuda") and next(model.parameters()).is_cuda
    cpu = predict(load_lam(tiny_dir, device="cpu")[0], *inputs)
    for precision in ("fp32", "bf16", "fp16"):
        out = predict(model, *inputs, precision=precision)
        assert np.abs(out.xyz - cpu.xyz).max() < (1e-5 if precision == "fp32" else 2e-3), precision


def test_predict_from_betas_queries_the_shaped_subdivided_template(tiny_model, inputs):
    from factories.flame import make_flame_model

    from backend.flame import build_rig
    from backend.network import predict_from_betas

    model, _ = tiny_model
    flame = make_flame_model(n_vertices=200, n_shape=20, n_expr=10, seed=2)
    betas = np.random.default_rng(4).normal(size=20).astype(np.float32)
    stages = []
    pred, rig = predict_from_betas(model, flame, betas, inputs[0], progress=lambda s, f, m="": stages.append(s))
    expected_rig = build_rig(flame, betas, levels=model.config.flame_subdivide_num)
    np.testing.assert_array_equal(rig.template, expected_rig.template)
    assert len(rig.template) > flame.n_vertices  # subdivided once (flame_subdivide_num = 1)
    direct = predict(model, inputs[0], expected_rig.template)
    np.testing.assert_array_equal(pred.xyz, direct.xyz)
    np.testing.assert_allclose(pred.xyz - pred.offset, rig.template, atol=1e-7)
    assert stages[0] == "flame" and "transformer" in stages


def test_checkpoint_flame_buffers_feed_the_flame_core(tmp_path):
    """read_flame_buffers -> FlameModel.from_arrays rebuilds the same FLAME (the checkpoint as a FLAME source)."""
    from factories.flame import lam_buffers, make_flame_model

    from backend.flame import FlameModel

    flame = make_flame_model(n_vertices=150, n_shape=300, n_expr=100, seed=5)
    bufs = {k.removeprefix("renderer.flame_model."): v for k, v in lam_buffers(flame).items()}
    d = make_tiny_weights_dir(tmp_path, seed=1, flame_buffers=bufs)
    assert not load_lam(d, device="cpu")[1].unexpected
    rebuilt = FlameModel.from_arrays(read_flame_buffers(d))
    np.testing.assert_allclose(rebuilt.v_template, flame.v_template, atol=1e-6)
    np.testing.assert_allclose(rebuilt.shapedirs, flame.shapedirs, atol=1e-6)


def test_cpu_bf16_attention_matches_fp32_attention():
    """The explicit bf16-GEMM attention (CPU fast mode) against float64 softmax(q k^T / sqrt d) v, with query
    blocks that do not divide Nq (700 = 2 x 256 + 188) and Nq != Nk. Logits have unit scale, like q/k after
    the per-head RMSNorm; bf16 inputs, scores and probabilities give ~5e-3 max / ~3e-4 mean error here."""
    from backend.network.attention import attention, cpu_bf16_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 32, generator=g) for n in (700, 530, 530))
    ref = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 32**0.5, dim=-1) @ v.double()
    out = cpu_bf16_attention(q, k, v, rows=256)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 3, 700, 32)
    err = (out.double() - ref).abs()
    assert err.max() < 1.5e-2 and err.mean() < 1e-3, (err.max(), err.mean())
    # attention() routes CPU bf16 here (default block size: the same maths) and leaves float32 on SDPA
    torch.testing.assert_close(
        attention(q.bfloat16(), k.bfloat16(), v.bfloat16()).double(), ref, atol=1.5e-2, rtol=0
    )
    assert torch.equal(attention(q, k, v), torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_fast_mode_on_cpu_uses_the_bf16_matmul_attention(tiny_model, inputs, monkeypatch):
    """With gemm_bf16 chosen (here forced by the env override; attention_choice.py measures the choice), every
    bf16 attention of the forward goes through cpu_bf16_attention."""
    import backend.network.attention as attn_mod

    monkeypatch.setenv("LAM_HEAD_ATTENTION", "gemm_bf16")

    calls = []
    real = attn_mod.cpu_bf16_attention

    def spy(q, k, v, *args):
        calls.append((q.shape[2], k.shape[2]))  # (queries, keys)
        return real(q, k, v, *args)

    monkeypatch.setattr(attn_mod, "cpu_bf16_attention", spy)
    model, _ = tiny_model
    predict(model, *inputs)
    assert calls == []  # float32 keeps PyTorch's SDPA (golden-tested)
    predict(model, *inputs, precision="fast")
    # transformer: points + image tokens attend jointly; the last (context-pre-only) block queries points only
    n_keys = calls[-1][1]  # N points + M image tokens
    joint = [c for c in calls if c[1] == n_keys]
    n_layers = model.config.transformer_layers
    assert n_keys > N_POINTS and joint[-1] == (N_POINTS, n_keys)
    assert len(joint) == n_layers and all(c[0] == n_keys for c in joint[:-1])
    assert len(calls) > n_layers  # the DINOv2 encoder blocks use it too


def test_point_embedding_stays_float32_under_autocast(tiny_model, inputs):
    """bf16 would round the 128*pi Fourier phases by ~0.1 rad and the coordinates by ~0.2 mm."""
    model, _ = tiny_model
    pts = torch.from_numpy(inputs[1])[None]
    with torch.inference_mode():
        ref = model.pcl_embed(pts)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = model.pcl_embed(pts)
    assert amp.dtype == torch.float32
    assert torch.equal(amp, ref)


def test_a_batch_of_photos_equals_each_photo_alone(tiny_model, inputs):
    from backend.network import predict, predict_batch

    model, image, points = tiny_model[0], *inputs
    other = np.ascontiguousarray(image[::-1])
    moved = (points + 0.01).astype(np.float32)
    batch = predict_batch(model, [image, other], [points, moved])
    for got, (img, pts) in zip(batch, [(image, points), (other, moved)], strict=True):
        alone = predict(model, img, pts)
        for name in ("xyz", "rgb", "opacity", "scale", "rotation"):
            np.testing.assert_allclose(getattr(got, name), getattr(alone, name), atol=2e-5)
    np.testing.assert_array_equal(predict_batch(model, [image], [points])[0].xyz, predict(model, image, points).xyz)
    with pytest.raises(BadInputError, match="same number of query points"):
        predict_batch(model, [image, other], [points, points[:5]])
