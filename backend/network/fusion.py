"""LAM's encoder: DINOv2 backbone + multi-layer fusion head (``encoder.model``, ``encoder.fusion_head``)."""

from __future__ import annotations

import torch
from torch import nn

from .config import LamConfig
from .dinov2 import BlockHook, Capture, DinoVisionTransformer


class FusionHead(nn.Module):
    """Per-layer 1x1 conv E->E, channel concat, 1x1 conv (n*E)->C. No activations."""

    def __init__(self, embed_dim: int, n_layers: int, out_dim: int):
        super().__init__()
        self.projects = nn.ModuleList(nn.Conv2d(embed_dim, embed_dim, kernel_size=1) for _ in range(n_layers))
        self.output_conv = nn.Conv2d(n_layers * embed_dim, out_dim, kernel_size=1)

    def forward(self, feats: list[torch.Tensor], grid_h: int, grid_w: int) -> torch.Tensor:
        """feats: n x (B, h*w, E) -> tokens B, h*w, C (row-major)."""
        maps = []
        for proj, f in zip(self.projects, feats):
            b, _, e = f.shape
            maps.append(proj(f.transpose(1, 2).reshape(b, e, grid_h, grid_w)))
        return self.output_conv(torch.cat(maps, dim=1)).flatten(2).transpose(1, 2)


class Encoder(nn.Module):
    def __init__(self, cfg: LamConfig):
        super().__init__()
        self.model = DinoVisionTransformer(cfg.dino)
        self.fusion_head = FusionHead(cfg.dino.embed_dim, len(cfg.dino.intermediate_layer_idx), cfg.encoder_feat_dim)

    def forward(
        self, image: torch.Tensor, capture: Capture | None = None, on_block: BlockHook | None = None
    ) -> torch.Tensor:
        """image B,3,H,W in [0,1] -> image tokens B, (H/14)*(W/14), C."""
        p = self.model.arch.patch_size
        feats = self.model(image, capture=capture, on_block=on_block)
        tokens = self.fusion_head(feats, image.shape[2] // p, image.shape[3] // p)
        if capture:
            capture("encoder_tokens", tokens)
        return tokens
