"""The LAM network: image + query points -> one Gaussian per point. Module tree named like the official one."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .config import LamConfig
from .fusion import Encoder
from .heads import Renderer
from .point_embed import PointEmbed
from .transformer import Transformer
from .weight_pages import release_file_pages

Capture = Callable[[str, torch.Tensor], None]
#: on_block(stage, done, total) with stage "encoder" or "transformer"; may raise to cancel.
StageHook = Callable[[str, int, int], None]


class LamModel(nn.Module):
    """``encoder`` (DINOv2 + fusion), ``pcl_embed``, ``transformer``, ``renderer`` (heads).

    ``capture(name, tensor)`` receives the intermediates under the golden-fixture names
    (``dino_block3_out``, ``transformer_layer0_x``, ``raw_xyz``...).
    """

    def __init__(self, cfg: LamConfig, qk_norm_context: bool = True):
        super().__init__()
        self.config = cfg
        self.qk_norm_context = qk_norm_context
        self.encoder = Encoder(cfg)
        self.pcl_embed = PointEmbed(cfg.pcl_dim)
        self.transformer = Transformer(cfg, qk_norm_context)
        self.renderer = Renderer(cfg)
        #: Set by the loader when the CPU weights are memory-mapped from this file: the forward then
        #: returns each stage's weight pages to the OS after use (weight_pages.py).
        self.weights_file: str | None = None

    def set_qk_norm(self, enabled: bool) -> None:
        self.transformer.set_qk_norm(enabled)

    def forward(
        self,
        image: torch.Tensor,
        query_points: torch.Tensor,
        capture: Capture | None = None,
        on_block: StageHook | None = None,
    ) -> dict[str, torch.Tensor]:
        """image B,3,H,W in [0,1] (not normalised); query_points B,N,3 -> see :meth:`Renderer.forward`."""
        enc_hook = (lambda i, n: on_block("encoder", i, n)) if on_block else None

        def tf_hook(done: int, total: int) -> None:
            self._release_pages(self.transformer.layers[done - 1])
            if on_block:
                on_block("transformer", done, total)

        tokens = self.encoder(image, capture=capture, on_block=enc_hook)
        self._release_pages(self.encoder)
        x = self.pcl_embed(query_points)
        if capture:
            capture("pcl_embed_out", x)
        x = self.transformer(x, tokens, capture=capture, on_block=tf_hook)
        out = self.renderer(x, query_points, capture=capture)
        if on_block:
            on_block("heads", 1, 1)
        return out

    def _release_pages(self, module: nn.Module) -> None:
        if self.weights_file:
            release_file_pages(module, self.weights_file)
