"""DINOv2 ViT with register tokens (LAM's image backbone), our own implementation.

Why not transformers' ``Dinov2WithRegistersModel``: its module names differ from the official
``encoder.model.*`` layout (so every key would need renaming), and its position-embedding
interpolation computes scale factors rather than LAM's exact ``size=(36, 36)`` antialiased bicubic
resize. Matching the reference bit-for-bit is simpler with ~100 lines of our own, named like the
official tree (``cls_token``, ``pos_embed``, ``register_tokens``, ``patch_embed.proj``,
``blocks.N.{norm1,attn.qkv,attn.proj,ls1,norm2,mlp.fc1,mlp.fc2,ls2}``, ``norm``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .config import DinoArch

Capture = Callable[[str, torch.Tensor], None]
BlockHook = Callable[[int, int], None]


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image B,3,H,W -> tokens B,(H/p*W/p),dim (row-major)."""
        return self.proj(image).flatten(2).transpose(1, 2)


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool, proj_bias: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 -> exact (erf) GELU -> fc2."""

    def __init__(self, dim: int, hidden: int, bias: bool):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """ViT-g's fused SwiGLU FFN (w12 -> silu(a) * b -> w3). Not covered by a golden fixture."""

    def __init__(self, dim: int, hidden: int, bias: bool):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class Block(nn.Module):
    """Pre-norm ViT block with LayerScale on both branches."""

    def __init__(self, arch: DinoArch):
        super().__init__()
        e = arch.embed_dim
        self.norm1 = nn.LayerNorm(e, eps=arch.layernorm_eps)
        self.attn = SelfAttention(e, arch.num_heads, arch.qkv_bias, arch.proj_bias)
        self.ls1 = LayerScale(e) if arch.layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(e, eps=arch.layernorm_eps)
        ffn = Mlp if arch.ffn_layer == "mlp" else SwiGLU
        self.mlp = ffn(e, arch.mlp_hidden, arch.ffn_bias)
        self.ls2 = LayerScale(e) if arch.layerscale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    """Returns the final-normed patch tokens of the fused blocks (cls/registers dropped)."""

    def __init__(self, arch: DinoArch):
        super().__init__()
        self.arch = arch
        e = arch.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, e))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + arch.pos_grid**2, e))
        if arch.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, arch.num_register_tokens, e))
        else:
            self.register_tokens = None
        self.patch_embed = PatchEmbed(arch.patch_size, e)
        self.blocks = nn.ModuleList(Block(arch) for _ in range(arch.depth))
        self.norm = nn.LayerNorm(e, eps=arch.layernorm_eps)

    def interpolated_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """pos_embed resized to grid_h x grid_w: 1, 1+gh*gw, E (class entry untouched).

        PyTorch bicubic, align_corners=False, antialias as configured, computed in float32 with the
        target given as a size (the reference's interpolate_offset=0 path) or as scale factors
        (size+offset)/M when an offset is configured.
        """
        a = self.arch
        m = a.pos_grid
        pos = self.pos_embed.float()
        if grid_h == m and grid_w == m:
            return pos
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        e = patch_pos.shape[-1]
        grid = patch_pos.reshape(1, m, m, e).permute(0, 3, 1, 2)
        if a.interpolate_offset:
            kwargs = {"scale_factor": ((grid_h + a.interpolate_offset) / m, (grid_w + a.interpolate_offset) / m)}
        else:
            kwargs = {"size": (grid_h, grid_w)}
        grid = F.interpolate(grid, mode="bicubic", antialias=a.interpolate_antialias, align_corners=False, **kwargs)
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, -1, e)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def forward(
        self, image: torch.Tensor, capture: Capture | None = None, on_block: BlockHook | None = None
    ) -> list[torch.Tensor]:
        """image B,3,H,W in [0,1] (H, W multiples of the patch) -> list of B,h*w,E per fused block."""
        a = self.arch
        b, _, h, w = image.shape
        gh, gw = h // a.patch_size, w // a.patch_size
        x = self.patch_embed(image)
        pos = self.interpolated_pos_embed(gh, gw).to(x.dtype)
        if capture:
            capture("dino_pos_embed_interp", pos)
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1) + pos
        n_reg = a.num_register_tokens
        if n_reg:
            x = torch.cat([x[:, :1], self.register_tokens.expand(b, -1, -1).to(x.dtype), x[:, 1:]], dim=1)
        if capture:
            capture("dino_tokens_in", x)
        fused_idx = a.intermediate_layer_idx
        outs: dict[int, torch.Tensor] = {}
        last = max(fused_idx)
        for i, blk in enumerate(self.blocks[: last + 1]):
            x = blk(x)
            if capture:
                capture(f"dino_block{i}_out", x)
            if i in fused_idx:
                outs[i] = x
            if on_block:
                on_block(i + 1, last + 1)
        fused = [self.norm(outs[i])[:, 1 + n_reg :] for i in fused_idx]
        if capture:
            for j, f in enumerate(fused):
                capture(f"dino_fused_in{j}", f)
        return fused
