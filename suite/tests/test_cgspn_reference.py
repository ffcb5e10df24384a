"""The PyTorch reference itself: checked against a scalar transcription of docs/design.md's equations.

``naive_direction`` writes each direction's recurrence literally, element by element (no flips,
no transposes), so a mistake in the reference's flip/transpose bookkeeping or in the per-axis
gate normalization shows up here. Plus gradcheck of the float64 sublayer reference.
"""

from __future__ import annotations

import pytest
import torch

from kernels.cgspn import DIRECTIONS, cgspn_scan_reference, normalize_gates_eager, propagate_reference


def naive_direction(x, lam, g, direction):
    """h for one direction, scalar loops. g: normalized (B, H, W, 3, C); l/r = lower/higher index
    of the axis perpendicular to the scan."""
    B, H, W, C = x.shape
    h = torch.zeros_like(x)

    def at(b, i, j, c):
        return h[b, i, j, c] if 0 <= i < H and 0 <= j < W else 0.0

    rows = range(H) if direction != "bt" else range(H - 1, -1, -1)
    cols = range(W) if direction != "rl" else range(W - 1, -1, -1)
    order = [(i, j) for i in rows for j in range(W)] if direction in ("tb", "bt") else [(i, j) for j in cols for i in range(H)]
    for b in range(B):
        for c in range(C):
            for i, j in order:
                l, m, r = g[b, i, j, 0, c], g[b, i, j, 1, c], g[b, i, j, 2, c]
                if direction == "tb":
                    prev = (at(b, i - 1, j - 1, c), at(b, i - 1, j, c), at(b, i - 1, j + 1, c))
                elif direction == "bt":
                    prev = (at(b, i + 1, j - 1, c), at(b, i + 1, j, c), at(b, i + 1, j + 1, c))
                elif direction == "lr":
                    prev = (at(b, i - 1, j - 1, c), at(b, i, j - 1, c), at(b, i + 1, j - 1, c))
                else:
                    prev = (at(b, i - 1, j + 1, c), at(b, i, j + 1, c), at(b, i + 1, j + 1, c))
                h[b, i, j, c] = l * prev[0] + m * prev[1] + r * prev[2] + lam[b, i, j, c] * x[b, i, j, c]
    return h


def inputs(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    B, H, W, C = shape
    x, lam, u = (torch.randn(B, H, W, C, generator=gen, dtype=torch.float64) for _ in range(3))
    return x, lam, u, torch.randn(B, H, W, 3, C, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("shape", [(2, 3, 4, 2), (1, 1, 5, 1), (1, 4, 1, 1)], ids=lambda s: "x".join(map(str, s)))
def test_propagate_reference_matches_scalar_equations(direction, shape):
    x, lam, _, raw = inputs(shape)
    g = normalize_gates_eager(raw, "vertical" if direction in ("tb", "bt") else "horizontal")
    torch.testing.assert_close(propagate_reference(x, lam, g, direction), naive_direction(x, lam, g, direction))


def test_sublayer_reference_is_u_times_sum_of_directions():
    x, lam, u, raw = inputs((2, 4, 3, 2))
    gv, gh = normalize_gates_eager(raw, "vertical"), normalize_gates_eager(raw, "horizontal")
    total = sum(naive_direction(x, lam, gv if d in ("tb", "bt") else gh, d) for d in DIRECTIONS)
    torch.testing.assert_close(cgspn_scan_reference(x, lam, u, raw), u * total)


def test_normalized_rows_sum_to_one_inside():
    """Eq. 2: away from the boundary the three weights of a pixel sum to 1."""
    _, _, _, raw = inputs((1, 4, 5, 3))
    v = normalize_gates_eager(raw, "vertical")
    torch.testing.assert_close(v[:, :, 1:-1].sum(3), torch.ones_like(v[:, :, 1:-1, 0]))


def test_gradcheck_sublayer_reference():
    args = tuple(t.requires_grad_(True) for t in inputs((1, 3, 4, 2)))
    assert torch.autograd.gradcheck(cgspn_scan_reference, args)


def test_reference_keeps_low_precision_dtype():
    x, lam, u, raw = (t.to(torch.bfloat16) for t in inputs((1, 2, 3, 2)))
    assert cgspn_scan_reference(x, lam, u, raw).dtype == torch.bfloat16


def test_unknown_direction_is_named():
    x, lam, _, raw = inputs((1, 2, 2, 1))
    with pytest.raises(ValueError, match="direction: 'up'"):
        propagate_reference(x, lam, raw, "up")
