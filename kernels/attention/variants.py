"""The attention variants the suite registers, as grid-aware token mixers.

A variant is one of ``math``, ``flash``, ``cudnn``, ``mem-efficient`` (a plain backend, see
:mod:`kernels.attention.sublayer`) or ``tiled-flash`` (FlashAttention inside tiles, see
:mod:`kernels.attention.tiled`); the registry name is ``attention-<variant>``. Two internal
variants serve as references: ``reference`` (chunked math attention in fp32/fp64) and
``tiled-reference`` (the same, per tile).

Every variant resolves to ``fn(q, k, v, grid) -> o`` on ``(B, heads, H*W, head_dim)`` so the
sublayer entry and :class:`~kernels.attention.layer.AttentionLayer` call them the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kernels.attention.sublayer import BACKENDS, backend_unavailable, probe_backend, resolve
from kernels.attention.tiled import DEFAULT_TILE, tiled_attention

VARIANTS = BACKENDS + ("tiled-flash",)
REFERENCE_OF = {v: ("tiled-reference" if v == "tiled-flash" else "reference") for v in VARIANTS}

GridAttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]], torch.Tensor]


@dataclass(frozen=True)
class GridAttention:
    """A resolved variant: ``fn(q, k, v, (H, W))`` and the record of what runs (``detail``)."""

    variant: str
    detail: str
    fn: GridAttentionFn


def check_variant(variant: str) -> None:
    allowed = VARIANTS + ("reference", "tiled-reference")
    if variant not in allowed:
        raise ValueError(f"attention variant {variant!r} unknown; allowed: {', '.join(allowed)}")


@functools.cache
def grid_attention(variant: str, device_type: str, tile: int = DEFAULT_TILE) -> GridAttention:
    """Resolve ``variant`` on ``device_type``. ``tile`` only matters for the tiled variants.

    On CPU ``tiled-flash`` runs PyTorch's CPU FlashAttention-style SDPA kernel inside the tiles;
    ``detail`` says so (the GPU kernel of ``attention-flash`` does not exist there)."""
    check_variant(variant)
    if variant in ("tiled-flash", "tiled-reference"):
        inner = resolve("flash" if variant == "tiled-flash" else "reference", device_type)
        return GridAttention(variant, f"tiled {tile}x{tile} (ragged edge tiles); inner: {inner.detail}",
                             lambda q, k, v, grid: tiled_attention(q, k, v, grid, tile, inner.fn))
    kernel = resolve(variant, device_type)
    return GridAttention(variant, kernel.detail, lambda q, k, v, grid: kernel.fn(q, k, v))


def variant_unavailable(variant: str, dtype: torch.dtype, head_dim: int, device_type: str) -> str | None:
    """Why ``variant`` cannot run here, or None."""
    check_variant(variant)
    if variant in ("reference", "tiled-reference"):
        return None
    if variant == "tiled-flash":
        if device_type == "cpu":
            return probe_backend("flash", dtype, head_dim, "cpu")
        why = backend_unavailable("flash", dtype, head_dim, device_type)
        return None if why is None else f"attention-tiled-flash: inner {why}"
    return backend_unavailable(variant, dtype, head_dim, device_type)
