"""The LAM network reproduces the official implementation's golden data at every stored stage.

Fixtures: ``<repo>/../shared/fixtures/lam_golden_*/`` (config.json, model.safetensors, inputs.npz,
expected.npz[, expected_diffusers030.npz]) made by running the official LAM code. Every dimension is read
from each fixture's config, so new fixtures of the same layout are picked up automatically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from backend.network import load_lam, predict

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
GOLDEN_DIRS = sorted(FIXTURES.glob("lam_golden_*")) if FIXTURES.is_dir() else []
pytestmark = pytest.mark.skipif(not GOLDEN_DIRS, reason=f"no golden fixtures at {FIXTURES}/lam_golden_* (shared/ absent)")

# fixtures/README.md: O(1) features 1e-4; rgb, opacity, rotation 2e-5; xyz, offset 2e-6 m; scaling 2e-7.
FINAL_TOL = {"rgb": 2e-5, "opacity": 2e-5, "rotation": 2e-5, "xyz": 2e-6, "offset": 2e-6, "scaling": 2e-7}
FEATURE_TOL = 1e-4


def _tol(key: str) -> float:
    return FINAL_TOL.get(key, FEATURE_TOL)


def _run(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Forward the fixture's batch through the module, capturing every intermediate by name."""
    got: dict[str, np.ndarray] = {}

    def capture(name: str, t: torch.Tensor) -> None:
        got[name] = t.detach().float().cpu().numpy()

    with torch.inference_mode():
        out = model(torch.from_numpy(inputs["image"]), torch.from_numpy(inputs["query_points"]), capture=capture)
    got.update({k: v.float().cpu().numpy() for k, v in out.items()})
    return got


def _compare(got: dict[str, np.ndarray], expected: np.lib.npyio.NpzFile) -> list[str]:
    failures = []
    for key in expected.files:
        if key not in got:
            failures.append(f"{key}: stage not produced")
            continue
        exp = expected[key]
        if got[key].shape != exp.shape:
            failures.append(f"{key}: shape {got[key].shape} != {exp.shape}")
            continue
        err = float(np.abs(got[key] - exp).max())
        if not err <= _tol(key):
            failures.append(f"{key}: max abs error {err:.3g} > {_tol(key):g}")
    return failures


@pytest.fixture(scope="module", params=GOLDEN_DIRS, ids=lambda p: p.name)
def golden(request):
    d = request.param
    model, report = load_lam(d, device="cpu", strict=True)
    return d, model, report, dict(np.load(d / "inputs.npz"))


def test_every_stage_matches_reference(golden):
    d, model, report, inputs = golden
    expected = np.load(d / "expected.npz")
    # the fixture must actually cover the stages the issue asks for (guards against a thin fixture)
    for stage in ("dino_pos_embed_interp", "dino_tokens_in", "dino_block0_out", "dino_fused_in0", "encoder_tokens",
                  "pcl_embed_out", "transformer_cond_in", "transformer_layer0_x", "transformer_out", "mlp_net_out",
                  "raw_xyz", "xyz", "offset", "rgb", "opacity", "scaling", "rotation"):
        assert stage in expected.files, f"{d.name}/expected.npz lacks {stage}"
    n_blocks = model.config.dino.depth
    n_layers = model.config.transformer_layers
    assert all(f"dino_block{i}_out" in expected.files for i in range(max(model.config.dino.intermediate_layer_idx) + 1))
    assert all(f"transformer_layer{i}_x" in expected.files for i in range(n_layers))
    failures = _compare(_run(model, inputs), expected)
    assert not failures, f"{d.name} ({n_blocks} DINOv2 blocks, {n_layers} layers):\n" + "\n".join(failures)


def test_qk_norm_off_switch_matches_old_attention(golden):
    d, _, _, inputs = golden
    path = d / "expected_diffusers030.npz"
    if not path.is_file():
        pytest.skip(f"{d.name} has no expected_diffusers030.npz")
    model, report = load_lam(d, device="cpu", qk_norm=False)
    assert "QK-norm disabled by request" in report.notes
    expected = np.load(path)
    got = _run(model, inputs)
    failures = _compare(got, expected)
    assert not failures, "\n".join(failures)
    # and the switch really matters: the default run differs from this one beyond tolerance
    default = np.load(d / "expected.npz")
    assert np.abs(default["transformer_out"] - got["transformer_out"]).max() > 10 * FEATURE_TOL


def test_chunked_attention_and_feedforward_match_reference(golden, monkeypatch):
    """At 20018 points attention and feed-forward run in row chunks; force chunking on the small fixture."""
    import backend.network.attention as attention_mod
    import backend.network.transformer as transformer_mod

    d, model, _, inputs = golden
    monkeypatch.setattr(attention_mod, "ATTN_QUERY_CHUNK", 97)
    monkeypatch.setattr(transformer_mod, "FF_ROW_CHUNK", 61)
    failures = _compare(_run(model, inputs), np.load(d / "expected.npz"))
    assert not failures, "\n".join(failures)


def test_public_predict_api_matches_reference(golden):
    """predict() takes H,W,3 numpy and N,3 points, returns per-point numpy arrays equal to the reference."""
    d, model, _, inputs = golden
    expected = np.load(d / "expected.npz")
    image = inputs["image"][0].transpose(1, 2, 0)
    pred = predict(model, image, inputs["query_points"][0])
    pairs = {"xyz": pred.xyz, "offset": pred.offset, "rgb": pred.rgb, "scaling": pred.scale, "rotation": pred.rotation}
    for key, value in pairs.items():
        np.testing.assert_allclose(value, expected[key][0], rtol=0, atol=_tol(key), err_msg=key)
    np.testing.assert_allclose(pred.opacity, expected["opacity"][0, :, 0], rtol=0, atol=_tol("opacity"))
    assert all(v.dtype == np.float32 for v in pairs.values())


def test_report_describes_the_load(golden):
    d, model, report, _ = golden
    assert not report.missing and not report.unexpected and not report.mismatched
    assert report.n_parameters == sum(p.numel() for p in model.parameters())
    assert report.qk_norm_context == any("norm_added_k" in k for k in model.state_dict())


@pytest.mark.cuda
def test_cuda_matches_reference_in_fp32_and_runs_bf16():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine (CUDA path unmeasured here)")
    d = GOLDEN_DIRS[0]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, _ = load_lam(d, device="cuda")
    inputs = dict(np.load(d / "inputs.npz"))
    expected = np.load(d / "expected.npz")
    image = inputs["image"][0].transpose(1, 2, 0)
    pred = predict(model, image, inputs["query_points"][0])
    np.testing.assert_allclose(pred.xyz, expected["xyz"][0], rtol=0, atol=1e-5)
    fast = predict(model, image, inputs["query_points"][0], precision="fast")
    assert np.isfinite(fast.xyz).all()
    assert np.abs(fast.xyz - pred.xyz).max() < 2e-3
