"""SD3-style joint-attention transformer without timestep modulation (``transformer.*``).

Points (x) and image tokens (c) attend jointly over [points; image]; the last block is
"context pre-only" (its image-token outputs are never used, so they are not computed).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .config import LamConfig

Capture = Callable[[str, torch.Tensor], None]
BlockHook = Callable[[int, int], None]

#: Point rows per feed-forward call: caps the 4*D hidden activations (20018 x 4096 floats = 328 MB otherwise).
FF_ROW_CHUNK = 4096

class RMSNorm(nn.Module):
    """Per-head RMSNorm (weight only), computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


class FeedForward(nn.Module):
    """``net.0.proj`` -> tanh-GELU -> ``net.2`` (``net.1`` is a parameter-free dropout in the reference)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.ModuleList([_GeluProj(dim, hidden), nn.Identity(), nn.Linear(hidden, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x B,N,D -> B,N,D; rows in chunks (exact: row-wise op) so the 4D hidden never exists for all N."""
        if x.shape[1] <= FF_ROW_CHUNK:
            return self.net[2](self.net[0](x))
        return torch.cat([self.net[2](self.net[0](xc)) for xc in x.split(FF_ROW_CHUNK, dim=1)], dim=1)


class _GeluProj(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class JointAttention(nn.Module):
    def __init__(self, dim: int, heads: int, context_pre_only: bool, qk_norm_context: bool):
        super().__init__()
        hd = dim // heads
        self.heads = heads
        self.context_pre_only = context_pre_only
        self.apply_qk_norm = True
        self.norm_q = RMSNorm(hd)
        self.norm_k = RMSNorm(hd)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.add_k_proj = nn.Linear(dim, dim)
        self.add_v_proj = nn.Linear(dim, dim)
        self.add_q_proj = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.to_add_out = None if context_pre_only else nn.Linear(dim, dim)
        self.norm_added_q = RMSNorm(hd) if qk_norm_context else None
        self.norm_added_k = RMSNorm(hd) if qk_norm_context else None

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, c = t.shape
        return t.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x B,N,D points; c B,M,D image tokens -> (points out B,N,D, image out B,M,D or None)."""
        n = x.shape[1]
        q, k, v = self._heads(self.to_q(x)), self._heads(self.to_k(x)), self._heads(self.to_v(x))
        ck, cv = self._heads(self.add_k_proj(c)), self._heads(self.add_v_proj(c))
        cq = None if self.context_pre_only else self._heads(self.add_q_proj(c))
        if self.apply_qk_norm:
            q, k = self.norm_q(q), self.norm_k(k)
            if self.norm_added_k is not None:
                ck = self.norm_added_k(ck)
                cq = None if cq is None else self.norm_added_q(cq)
        dtype = torch.promote_types(q.dtype, ck.dtype)
        keys = torch.cat([k.to(dtype), ck.to(dtype)], dim=2)
        del k, ck  # free as we go: at 20018 points each of these is ~80 MB
        values = torch.cat([v.to(dtype), cv.to(dtype)], dim=2)
        del v, cv
        queries = q.to(dtype) if cq is None else torch.cat([q.to(dtype), cq.to(dtype)], dim=2)
        del q, cq
        out = attention(queries, keys, values)
        del queries, keys, values
        out = out.transpose(1, 2).flatten(2)
        x_out = self.to_out[0](out[:, :n])
        c_out = None if self.to_add_out is None else self.to_add_out(out[:, n:])
        return x_out, c_out


class JointBlock(nn.Module):
    def __init__(self, dim: int, heads: int, context_pre_only: bool, qk_norm_context: bool):
        super().__init__()
        self.context_pre_only = context_pre_only
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm1_context = nn.LayerNorm(dim, eps=1e-5)
        self.attn = JointAttention(dim, heads, context_pre_only, qk_norm_context)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.ff = FeedForward(dim, 4 * dim)
        if not context_pre_only:
            self.norm2_context = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
            self.ff_context = FeedForward(dim, 4 * dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        a_x, a_c = self.attn(self.norm1(x), self.norm1_context(c))
        x = x + a_x
        x = x + self.ff(self.norm2(x))
        if a_c is None:
            return x, None
        c = c + a_c
        return x, c + self.ff_context(self.norm2_context(c))


class Transformer(nn.Module):
    def __init__(self, cfg: LamConfig, qk_norm_context: bool = True):
        super().__init__()
        d, n = cfg.transformer_dim, cfg.transformer_layers
        self.layers = nn.ModuleList(
            JointBlock(d, cfg.transformer_heads, i == n - 1, qk_norm_context) for i in range(n)
        )
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.linear_cond_proj = nn.Linear(cfg.encoder_feat_dim, d)

    def set_qk_norm(self, enabled: bool) -> None:
        """``False`` reproduces the older attention code that created the RMSNorm weights but never applied them."""
        for layer in self.layers:
            layer.attn.apply_qk_norm = enabled

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, capture: Capture | None = None, on_block: BlockHook | None = None
    ) -> torch.Tensor:
        """x B,N,D point tokens; cond B,M,C image tokens -> B,N,D."""
        c = self.linear_cond_proj(cond)
        if capture:
            capture("transformer_cond_in", c)
        for i, layer in enumerate(self.layers):
            x, c = layer(x, c)
            if capture:
                capture(f"transformer_layer{i}_x", x)
                if c is not None:
                    capture(f"transformer_layer{i}_cond", c)
            if on_block:
                on_block(i + 1, len(self.layers))
        x = self.norm(x)
        if capture:
            capture("transformer_out", x)
        return x
