"""Tiled attention: the token grid cut into non-overlapping tiles, attention inside each tile.

The high-resolution baseline of the paper (Fig. 5 "tiled FlashAttention"): an ``H x W`` token
grid is cut into ``tile x tile`` tiles (default 27, the 378-px grid); each tile attends only to
itself; the tiles are stacked on the batch axis, run through one attention call, and the outputs
are stitched back into the grid.

Grids not divisible by the tile use a **ragged last tile** (no padding, no mask): the last row
band is ``H mod tile`` tokens tall and the last column band ``W mod tile`` wide, exactly the
tiles an image tiler produces. Tiles of equal shape are batched together, so a grid yields at
most four attention calls (interior, right edge, bottom edge, corner). Ragged tiles were chosen
over pad-and-mask because FlashAttention kernels take no arbitrary mask, and padded keys would
change the softmax of the real tokens.

Cost: ``4 * B * heads * sum_tiles(n_tile^2) * head_dim`` FLOPs, plus one gather of q, k, v into
tile order and one scatter of the output (both are part of what tiling costs).
"""

from __future__ import annotations

import torch

from kernels.attention.sublayer import AttentionFn, check_qkv

DEFAULT_TILE = 27


def bands(length: int, tile: int) -> list[tuple[int, int, int]]:
    """Cut ``[0, length)`` into full tiles and one ragged remainder: ``(start, stop, tile_len)``."""
    if tile < 1:
        raise ValueError(f"tile: must be >= 1, got {tile}")
    full = (length // tile) * tile
    out = [(0, full, tile)] if full else []
    if full < length:
        out.append((full, length, length - full))
    return out


def tile_shapes(grid: tuple[int, int], tile: int) -> list[tuple[int, int, int]]:
    """``(n_tiles, tile_h, tile_w)`` of every group of equal tiles (one attention call each)."""
    h, w = grid
    return [((r1 - r0) // th * ((c1 - c0) // tw), th, tw) for r0, r1, th in bands(h, tile) for c0, c1, tw in bands(w, tile)]


def tiled_flops(batch: int, heads: int, head_dim: int, grid: tuple[int, int], tile: int) -> float:
    """Forward FLOPs of tiled attention: QK^T and PV inside each tile only."""
    return sum(4.0 * batch * heads * n * (th * tw) ** 2 * head_dim for n, th, tw in tile_shapes(grid, tile))


def _to_tiles(x: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """``(B, heads, h, w, d)`` with ``h % th == w % tw == 0`` -> ``(B * tiles, heads, th * tw, d)``."""
    b, heads, h, w, d = x.shape
    x = x.reshape(b, heads, h // th, th, w // tw, tw, d).permute(0, 2, 4, 1, 3, 5, 6)
    return x.reshape(b * (h // th) * (w // tw), heads, th * tw, d)


def _from_tiles(t: torch.Tensor, b: int, h: int, w: int, th: int, tw: int) -> torch.Tensor:
    """Inverse of :func:`_to_tiles`: ``(B * tiles, heads, th * tw, d)`` -> ``(B, heads, h, w, d)``."""
    heads, d = t.shape[1], t.shape[-1]
    t = t.reshape(b, h // th, w // tw, heads, th, tw, d).permute(0, 3, 1, 4, 2, 5, 6)
    return t.reshape(b, heads, h, w, d)


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: tuple[int, int], tile: int,
                    inner: AttentionFn) -> torch.Tensor:
    """Attention within ``tile x tile`` token tiles of an ``H x W`` grid.

    Args:
        q, k, v: ``(B, heads, H*W, head_dim)``, tokens in row-major grid order.
        grid: ``(H, W)``.
        tile: tile side in tokens; edge tiles are ragged (``H mod tile``, ``W mod tile``).
        inner: the attention kernel run on the batched tiles, ``(B', heads, n, d) -> same``.
    Returns:
        ``(B, heads, H*W, head_dim)`` in the dtype ``inner`` returns. Differentiable.

    Example::

        >>> from kernels.attention import math_attention
        >>> q = k = v = torch.randn(2, 4, 30 * 31, 8)
        >>> o = tiled_attention(q, k, v, (30, 31), 27, math_attention)   # 4 calls: 27x27, 27x4, 3x27, 3x4
    """
    check_qkv(q, k, v)
    h, w = grid
    b, heads, n, d = q.shape
    if n != h * w:
        raise ValueError(f"tiled attention: N={n} tokens but grid {h}x{w} has {h * w}")
    q5, k5, v5 = (t.reshape(b, heads, h, w, d) for t in (q, k, v))
    rows = []
    for r0, r1, th in bands(h, tile):
        row = []
        for c0, c1, tw in bands(w, tile):
            qt, kt, vt = (_to_tiles(t[:, :, r0:r1, c0:c1], th, tw) for t in (q5, k5, v5))
            row.append(_from_tiles(inner(qt, kt, vt), b, r1 - r0, c1 - c0, th, tw))
        rows.append(row[0] if len(row) == 1 else torch.cat(row, dim=3))
    out = rows[0] if len(rows) == 1 else torch.cat(rows, dim=2)
    return out.reshape(b, heads, n, d)
