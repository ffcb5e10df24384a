"""ViT scaffolding shared by every token mixer: MLP, pre-norm block, patch embedding, encoder.

Token mixers (attention layers, GSPN layers, C-GSPN layers) all take and return channels-last
grids ``(B, H, W, C)``: attention flattens them to sequences, propagation scans them in place.
The block is the paper's pre-norm ViT block ``x + layer(LN(x))``, then ``x + MLP(LN(x))`` with
the SigLIP-SO400M MLP (4304 hidden, GELU-tanh).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


class MLP(nn.Module):
    """``fc2(gelu_tanh(fc1(x)))``; forward FLOPs 2 * 2 * tokens * C * hidden."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm ViT block around any token mixer: ``x + mixer(LN(x))``, ``x + MLP(LN(x))``.

    ``forward`` takes ``(B, H, W, C)``. ``taps`` (if a dict) receives the post-propagation
    (``"pp"``: the mixer output) and post-block (``"pb"``) features, for distillation.
    """

    def __init__(self, mixer: nn.Module, channels: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(channels, eps=1e-6)
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(channels, eps=1e-6)
        self.mlp = MLP(channels, mlp_hidden)

    def forward(self, x: torch.Tensor, taps: dict | None = None) -> torch.Tensor:
        mixed = self.mixer(self.norm1(x))
        x = x + mixed
        x = x + self.mlp(self.norm2(x))
        if taps is not None:
            taps["pp"], taps["pb"] = mixed, x
        return x


class PatchEmbed(nn.Module):
    """Patch-14 embedding: images ``(B, 3, H*p, W*p)`` -> tokens ``(B, H, W, C)``."""

    def __init__(self, channels: int, patch: int = 14, in_chans: int = 3):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_chans, channels, kernel_size=patch, stride=patch)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).permute(0, 2, 3, 1)


def attention_positions(depth: int, attn_blocks: int) -> list[int]:
    """Indices of the ``attn_blocks`` attention blocks evenly spaced among ``depth`` (hybrid).

    Each attention block sits at the end of its segment, e.g. 3 of 27 -> [8, 17, 26].
    """
    if not 0 <= attn_blocks <= depth:
        raise ValueError(f"attn_blocks must be in [0, depth={depth}], got {attn_blocks}")
    return [((k + 1) * depth) // attn_blocks - 1 for k in range(attn_blocks)]


class VisionEncoder(nn.Module):
    """Patch embedding + ``depth`` blocks; the mixer of block ``i`` is ``make_mixer(i)``.

    No positional embedding: propagation does not need one, and for attention it is a
    negligible add that the benchmark leaves out for both families alike.
    """

    def __init__(self, make_mixer: Callable[[int], nn.Module], channels: int, depth: int, mlp_hidden: int, patch: int = 14):
        super().__init__()
        self.embed = PatchEmbed(channels, patch)
        self.blocks = nn.ModuleList(Block(make_mixer(i), channels, mlp_hidden) for i in range(depth))
        self.norm = nn.LayerNorm(channels, eps=1e-6)

    def forward(self, images: torch.Tensor, taps: list | None = None) -> torch.Tensor:
        x = self.embed(images)
        for block in self.blocks:
            tap = {} if taps is not None else None
            x = block(x, tap)
            if taps is not None:
                taps.append(tap)
        return self.norm(x)


def mlp_flops(tokens: int, channels: int, hidden: int) -> float:
    """Forward FLOPs of the MLP (the block's floor, docs/design.md "Floors")."""
    return 2.0 * 2.0 * tokens * channels * hidden
