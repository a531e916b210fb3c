"""Fourier point embedding of the query points (``pcl_embed.*``)."""

from __future__ import annotations

import math

import torch
from torch import nn

N_FREQS = 8


def fourier_basis() -> torch.Tensor:
    """3, 24 block-diagonal: columns 8a..8a+7 hold 2^k * float32(pi) for axis a."""
    basis = torch.zeros(3, 3 * N_FREQS)
    freqs = torch.tensor([2.0**k for k in range(N_FREQS)]) * torch.tensor(math.pi, dtype=torch.float32)
    for axis in range(3):
        basis[axis, axis * N_FREQS : (axis + 1) * N_FREQS] = freqs
    return basis


class PointEmbed(nn.Module):
    """[sin(P.B), cos(P.B), P] (51) -> Linear -> LayerNorm eps 1e-5. Permutation equivariant."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("basis", fourier_basis())
        self.mlp = nn.Linear(2 * 3 * N_FREQS + 3, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """points B,N,3 (metres) -> float32 B,N,dim, also under autocast: in bf16 the 128*pi frequencies would
        lose ~0.1 rad and the raw coordinates ~0.2 mm (random LAM-20K weights, 2000 points: this alone takes the
        "fast" mode's max centre error vs float32 from 1.5 mm to 0.7 mm)."""
        with torch.autocast(points.device.type, enabled=False):
            points = points.float()
            proj = points @ self.basis.float()
            return self.norm(self.mlp(torch.cat([proj.sin(), proj.cos(), points], dim=-1)))
