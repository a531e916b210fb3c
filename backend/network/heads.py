"""The Gaussian heads (``renderer.mlp_net``, ``renderer.gs_net.out_layers``) and their activations."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import HEAD_CHANNELS, LamConfig

Capture = Callable[[str, torch.Tensor], None]


class MlpNet(nn.Module):
    """``layers``: Linear+SiLU x n_hidden_layers, then Linear (keys layers.0, 2, 4, ...)."""

    def __init__(self, dim: int, neurons: int, hidden_layers: int):
        super().__init__()
        dims = [dim] + [neurons] * hidden_layers + [dim]
        mods: list[nn.Module] = []
        for k in range(len(dims) - 1):
            mods.append(nn.Linear(dims[k], dims[k + 1]))
            if k < len(dims) - 2:
                mods.append(nn.SiLU())
        self.layers = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GSNet(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.out_layers = nn.ModuleDict({name: nn.Linear(dim, ch) for name, ch in HEAD_CHANNELS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: layer(x) for name, layer in self.out_layers.items()}


class Renderer(nn.Module):
    """Named like the reference's renderer; here it only holds the heads (rendering lives in backend.render)."""

    def __init__(self, cfg: LamConfig):
        super().__init__()
        self.mlp_net = MlpNet(cfg.gs_query_dim, cfg.mlp_neurons, cfg.mlp_hidden_layers)
        self.gs_net = GSNet(cfg.gs_query_dim)
        self.offset_max_step = cfg.gs_xyz_offset_max_step
        self.clip_scaling = cfg.gs_clip_scaling

    def forward(
        self, tokens: torch.Tensor, query_points: torch.Tensor, capture: Capture | None = None
    ) -> dict[str, torch.Tensor]:
        """tokens B,N,D, query_points B,N,3 -> float32 dict: xyz, offset, rgb (B,N,3), opacity (B,N,1),
        scaling (B,N,3, sigma in metres, <= clip), rotation (B,N,4 unit wxyz)."""
        h = self.mlp_net(tokens)
        if capture:
            capture("mlp_net_out", h)
        raw = {k: v.float() for k, v in self.gs_net(h).items()}
        if capture:
            for k, v in raw.items():
                capture(f"raw_{k}", v)
        offset = (torch.sigmoid(raw["xyz"]) - 0.5) * self.offset_max_step
        return {
            "xyz": query_points.float() + offset,
            "offset": offset,
            "rgb": torch.sigmoid(raw["shs"]),
            "opacity": torch.sigmoid(raw["opacity"]),
            "scaling": torch.clamp(torch.exp(raw["scaling"]), max=self.clip_scaling),
            "rotation": F.normalize(raw["rotation"], dim=-1, eps=1e-12),
        }
