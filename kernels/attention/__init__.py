"""The attention family: math, FlashAttention, cuDNN, memory-efficient and tiled FlashAttention.

``sublayer`` holds the kernels (``(B, heads, N, head_dim)`` in and out), ``tiled`` the tiling,
``variants`` maps registry names to grid-aware kernels, ``layer`` the ``(B, H, W, C)`` token
mixer, ``entries`` the registry entries at sublayer, layer, block and network level.
"""

from kernels.attention.layer import AttentionLayer, set_variant
from kernels.attention.sublayer import (
    BACKENDS,
    HAS_FLASH_ATTN_2,
    HAS_FLASH_ATTN_3,
    attention_flops,
    backend_unavailable,
    fastest_backend,
    math_attention,
    reference_attention,
    resolve,
)
from kernels.attention.tiled import DEFAULT_TILE, tiled_attention, tiled_flops
from kernels.attention.variants import VARIANTS, grid_attention, variant_unavailable

__all__ = [
    "AttentionLayer",
    "BACKENDS",
    "DEFAULT_TILE",
    "HAS_FLASH_ATTN_2",
    "HAS_FLASH_ATTN_3",
    "VARIANTS",
    "attention_flops",
    "backend_unavailable",
    "fastest_backend",
    "grid_attention",
    "math_attention",
    "reference_attention",
    "resolve",
    "set_variant",
    "tiled_attention",
    "tiled_flops",
    "variant_unavailable",
]
