"""Plain PyTorch reference of the C-GSPN propagation: the ground truth for every test.

Layout is channels-last: ``x, lam, u`` are ``(B, H, W, C)``, raw gates are ``(B, H, W, 3, C)``
(the logits of l, m, r). One direction, top->bottom, for every batch b and channel c
(docs/design.md "The propagation, exactly", paper Eq. 1)::

    h[-1] = 0
    h[i][j] = l[i][j] h[i-1][j-1] + m[i][j] h[i-1][j] + r[i][j] h[i-1][j+1] + lam[i][j] x[i][j]

Neighbours outside the grid contribute 0. The other directions are the same recurrence on the
flipped (``bt``) or transposed (``lr``, ``rl``) grid; l and r always weight the lower and the
higher index of the axis *perpendicular* to the scan (j for vertical scans, i for horizontal).

Gate normalization (paper Eq. 2) therefore depends on the scan axis: vertical scans
(``tb``, ``bt``) drop the missing neighbour at j=0 / j=W-1, horizontal scans (``lr``, ``rl``) at
i=0 / i=H-1. ``normalize_gates_eager(gates, axis)`` returns the normalized gates of one axis.

The code loops over the scan steps and vectorizes over everything else; it is float64-capable
and differentiable by autograd. It is meant to be obviously right, not fast.
"""

from __future__ import annotations

import torch

DIRECTIONS = ("tb", "bt", "lr", "rl")
AXES = ("vertical", "horizontal")
AXIS_OF = {"tb": "vertical", "bt": "vertical", "lr": "horizontal", "rl": "horizontal"}
GATE_EPS = 1e-7  # clamp of the neighbour sum (paper Eq. 2): the one value every path uses (eager, Triton, CUDA)


def check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: {direction!r} is not one of {', '.join(DIRECTIONS)}")


def check_axis(axis: str) -> None:
    if axis not in AXES:
        raise ValueError(f"axis: {axis!r} is not one of {', '.join(AXES)}")


def normalize_gates_eager(gates: torch.Tensor, axis: str) -> torch.Tensor:
    """Paper Eq. 2 in eager PyTorch, in the dtype of ``gates`` (what a PyTorch layer would run).

    gates: raw logits ``(B, H, W, 3, C)`` (l, m, r on dim -2). ``axis`` is the scan axis the gates
    are normalized for: ``"vertical"`` (tb/bt: the missing neighbours are at j=0 and j=W-1) or
    ``"horizontal"`` (lr/rl: at i=0 and i=H-1). Returns ``sigmoid(g) / max(sum over existing
    neighbours of sigmoid(g), GATE_EPS)``, same shape and dtype. The one eager Eq. 2: the
    gate-normalization module and the original-GSPN layer use it too.
    """
    check_axis(axis)
    if gates.dim() != 5 or gates.shape[3] != 3:
        raise ValueError(f"gates: expected shape (B, H, W, 3, C), got {tuple(gates.shape)}")
    sig = torch.sigmoid(gates)
    l, m, r = sig.unbind(dim=3)
    perp_dim = 2 if axis == "vertical" else 1  # the axis the state spans (the neighbours' axis)
    length = gates.shape[perp_dim]
    index = torch.arange(length, device=gates.device)
    view = [1, 1, 1, 1]
    view[perp_dim] = length
    has_left = (index > 0).view(view).to(sig.dtype)
    has_right = (index < length - 1).view(view).to(sig.dtype)
    denom = (m + has_left * l + has_right * r).clamp_min(GATE_EPS)
    return sig / denom.unsqueeze(3)


def _to_scan_layout(t: torch.Tensor, direction: str) -> torch.Tensor:
    """View a ``(B, H, W, ...)`` tensor as ``(B, L, P, ...)`` with the scan running along L forward."""
    if AXIS_OF[direction] == "horizontal":
        t = t.transpose(1, 2)
    if direction in ("bt", "rl"):
        t = t.flip(1)
    return t


def _from_scan_layout(t: torch.Tensor, direction: str) -> torch.Tensor:
    if direction in ("bt", "rl"):
        t = t.flip(1)
    if AXIS_OF[direction] == "horizontal":
        t = t.transpose(1, 2)
    return t


def propagate_reference(x: torch.Tensor, lam: torch.Tensor, gates_normalized: torch.Tensor, direction: str) -> torch.Tensor:
    """One propagation direction; returns the hidden state ``h`` ``(B, H, W, C)``.

    x, lam: ``(B, H, W, C)``; gates_normalized: ``(B, H, W, 3, C)`` (already normalized for the
    axis of ``direction``; any weights work, normalization is not applied here). direction: one
    of ``tb``, ``bt``, ``lr``, ``rl``. Computes in the promoted dtype of the inputs.
    """
    check_direction(direction)
    xs = _to_scan_layout(x, direction)
    lams = _to_scan_layout(lam, direction)
    gs = _to_scan_layout(gates_normalized, direction)
    batch, steps, width, channels = xs.shape
    h = xs.new_zeros(batch, width, channels, dtype=torch.promote_types(x.dtype, gates_normalized.dtype))
    zero = h.new_zeros(batch, 1, channels)
    rows = []
    for s in range(steps):
        from_left = torch.cat([zero, h[:, :-1]], dim=1)  # h[p-1]
        from_right = torch.cat([h[:, 1:], zero], dim=1)  # h[p+1]
        g = gs[:, s]
        h = g[:, :, 0] * from_left + g[:, :, 1] * h + g[:, :, 2] * from_right + lams[:, s] * xs[:, s]
        rows.append(h)
    return _from_scan_layout(torch.stack(rows, dim=1), direction)


def cgspn_scan_reference(x: torch.Tensor, lam: torch.Tensor, u: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """The C-GSPN sublayer (paper Eq. 1-2, 4-6): ``u * (h_tb + h_bt + h_lr + h_rl)``.

    x, lam, u: ``(B, H, W, C)``; gates: raw logits ``(B, H, W, 3, C)`` shared by the four
    directions (Eq. 4), normalized per scan axis. Computes in float32 (float64 for float64
    inputs) and returns the dtype of ``x``.
    """
    out_dtype = x.dtype
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, lam, u, gates = (t.to(compute) for t in (x, lam, u, gates))
    total = torch.zeros_like(x)
    for axis, pair in (("vertical", ("tb", "bt")), ("horizontal", ("lr", "rl"))):
        normalized = normalize_gates_eager(gates, axis)
        for direction in pair:
            total = total + propagate_reference(x, lam, normalized, direction)
    return (u * total).to(out_dtype)
