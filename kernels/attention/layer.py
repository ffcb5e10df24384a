"""Attention as a ViT token mixer: QKV projection, an attention variant, output projection.

``AttentionLayer`` is the paper's attention *layer* (sublayer + projections). It takes and
returns channels-last grids ``(B, H, W, C)`` like every mixer in :mod:`kernels.vit`, so the
attention block is ``kernels.vit.Block(AttentionLayer(...), C, mlp_hidden)`` and the network is
``kernels.vit.VisionEncoder``.
"""

from __future__ import annotations

import torch
from torch import nn

from kernels.attention.tiled import DEFAULT_TILE
from kernels.attention.variants import check_variant, grid_attention


class AttentionLayer(nn.Module):
    """``proj(attention(split_heads(qkv(x))))`` on ``(B, H, W, C)``.

    Args:
        channels: model width C (divisible by ``heads``).
        heads: attention heads; head_dim = C // heads (SO400M: 16 x 72).
        variant: ``math | flash | cudnn | mem-efficient | tiled-flash`` (or the internal
            ``reference`` / ``tiled-reference``); it can be changed after construction, e.g. to
            run the same weights through another backend.
        tile: tile side in tokens for the tiled variants.
    """

    def __init__(self, channels: int, heads: int, variant: str = "math", tile: int = DEFAULT_TILE):
        super().__init__()
        if channels % heads:
            raise ValueError(f"AttentionLayer: channels={channels} is not divisible by heads={heads}")
        check_variant(variant)
        self.channels, self.heads, self.variant, self.tile = channels, heads, variant, tile
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def attention(self, device: torch.device):
        return grid_attention(self.variant, device.type, self.tile)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        # (B, N, 3, heads, d) -> three (B, heads, N, d) views; every backend accepts the strides
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        o = self.attention(x.device).fn(q, k, v, (h, w))
        if o.dtype != x.dtype:  # the fp32/fp64 reference variants upcast
            o = o.to(x.dtype)
        return self.proj(o.transpose(1, 2).reshape(b, h, w, c))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, heads={self.heads}, variant={self.variant!r}, tile={self.tile}"


def set_variant(module: nn.Module, variant: str) -> nn.Module:
    """Switch every :class:`AttentionLayer` inside ``module`` to ``variant`` (same weights)."""
    check_variant(variant)
    for m in module.modules():
        if isinstance(m, AttentionLayer):
            m.variant = variant
    return module


def layer_flops(tokens: int, channels: int) -> float:
    """Projection FLOPs of one attention layer over ``tokens`` (B*N): QKV (C->3C) and out (C->C)."""
    return 2.0 * tokens * channels * 4 * channels
