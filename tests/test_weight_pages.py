"""Memory-mapped weights are returned to the OS after use, without changing a value."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from backend.network.weight_pages import release_file_pages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page release is Linux-only (madvise)")


def _resident_kb(path: Path) -> int:
    """Resident kB of this process's mappings of ``path`` (from /proc/self/smaps)."""
    target, total, inside = str(path.resolve()), 0, False
    for line in open("/proc/self/smaps", encoding="utf-8"):
        head = line.split(None, 5)
        if head and "-" in head[0] and ":" not in head[0]:
            inside = len(head) == 6 and head[5].strip() == target
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def _mapped_module(tmp_path: Path) -> tuple[nn.Module, Path, dict[str, np.ndarray], object]:
    path = tmp_path / "w.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({"a.weight": torch.randn(512, 1024, generator=g), "b.weight": torch.randn(300, 7, generator=g)}, str(path))
    handle = safe_open(str(path), framework="pt", device="cpu")
    module = nn.Module()
    module.a = nn.Parameter(handle.get_tensor("a.weight"), requires_grad=False)
    module.b = nn.Parameter(handle.get_tensor("b.weight"), requires_grad=False)
    copies = {"a": module.a.numpy().copy(), "b": module.b.numpy().copy()}
    return module, path, copies, handle


def test_release_drops_resident_pages_and_keeps_values(tmp_path):
    module, path, copies, _handle = _mapped_module(tmp_path)
    float(module.a.sum() + module.b.sum())  # touch every page
    before = _resident_kb(path)
    assert before >= 2000  # the 2 MB tensor is resident
    released = release_file_pages(module, path)
    assert released >= 2_000_000
    assert _resident_kb(path) <= before - 1900
    np.testing.assert_array_equal(module.a.numpy(), copies["a"])  # faulted in again from the file
    np.testing.assert_array_equal(module.b.numpy(), copies["b"])


def test_a_written_mapping_is_left_alone(tmp_path):
    module, path, copies, _handle = _mapped_module(tmp_path)
    with torch.no_grad():
        module.a[0, 0] += 1.0  # copy-on-write: releasing now would silently undo this
    assert release_file_pages(module, path) == 0
    assert module.a[0, 0].item() == pytest.approx(copies["a"][0, 0] + 1.0)


def test_tensors_not_mapped_from_the_file_are_untouched(tmp_path):
    _module, path, _copies, _handle = _mapped_module(tmp_path)
    other = nn.Linear(1024, 1024)
    weights = other.weight.detach().clone()
    assert release_file_pages(other, path) == 0  # anonymous memory: never madvised
    assert torch.equal(other.weight, weights)
    assert release_file_pages(other, tmp_path / "missing.safetensors") == 0


def test_predict_releases_each_stage_and_repeats_exactly(tmp_path, monkeypatch):
    from factories.checkpoint import make_tiny_weights_dir

    import backend.network.model as model_mod
    from backend.network import load_lam, predict

    weights_dir = make_tiny_weights_dir(tmp_path, seed=1)
    model, _ = load_lam(weights_dir, device="cpu")
    assert Path(model.weights_file) == weights_dir / "model.safetensors"
    released: list[tuple[str, int]] = []

    def spy(module, path):
        n = release_file_pages(module, path)
        released.append((type(module).__name__, n))
        return n

    monkeypatch.setattr(model_mod, "release_file_pages", spy)
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (504, 504, 3)).astype(np.float32)
    points = (rng.normal(size=(200, 3)) * 0.1).astype(np.float32)
    first = predict(model, image, points)
    stages = [name for name, _ in released]
    assert stages == ["Encoder"] + ["JointBlock"] * len(model.transformer.layers)
    assert sum(n for _, n in released) > 0
    second = predict(model, image, points)  # the released pages come back from the file
    np.testing.assert_array_equal(first.xyz, second.xyz)
    np.testing.assert_array_equal(first.rgb, second.rgb)
    np.testing.assert_array_equal(first.scale, second.scale)


def test_other_systems_release_nothing(tmp_path, monkeypatch):
    module, path, _copies, _handle = _mapped_module(tmp_path)
    monkeypatch.setattr(sys, "platform", "darwin")  # no /proc/self/smaps there
    assert release_file_pages(module, path) == 0
