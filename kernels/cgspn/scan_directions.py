"""The single-direction design: one Triton launch per direction (:func:`propagate`), and the ``directions-*`` scan.

A program owns (batch b, BC channels) and keeps a row of BP >= P positions x BC channels of fp32 state in
registers, stepping L times; the host passes the strides of the (L, P) view of its axis, and reverse
directions walk the rows backwards. ``NORMALIZE`` applies Eq. 2 to raw gates in registers; without it the
gates are weights used as given (the original GSPN layer and the eager-normalization C-GSPN layer pass
their own). Backward: the adjoint of the direction in reverse scan order, optionally accumulating into fp32
buffers (the ``directions-*`` and ``pairs-*`` scans sum four directions that way). ``propagate`` is a
PyTorch custom operator (``cgspn::propagate``, with ``cgspn::propagate_backward``), so ``torch.compile``
traces it without a graph break. Layout and axes: :mod:`kernels.cgspn.scan`; docs/design.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.cgspn.reference import AXIS_OF, DIRECTIONS, check_direction
from kernels.cgspn.scan_common import (
    SHIFT_GATHER,
    SHIFT_SCRATCH,
    _check_inputs,
    _neighbours,
    _raw_gate_grads,
    _scan_warps,
    _scratch,
    _unit_channel_stride,
)
from kernels.cgspn.triton_support import INTERPRET, configs, gate_denominator

__all__ = ["propagate"]


def _prune_scan_configs(configs, named_args, **kwargs):
    """Keep, per channel block BC, the one warp count that gives each thread 8 elements of a row
    tile: enough registers for two states and ten input tiles without spilling, and a short
    autotune (<= 3 candidates per shape)."""
    BP = kwargs["BP"]
    return [c for c in configs if c.num_warps == _scan_warps(BP, c.kwargs["BC"])]


_SCAN_TUNING = dict(
    configs=configs(
        [triton.Config({"BC": bc}, num_warps=w) for bc in (8, 16, 32) for w in (1, 2, 4, 8, 16)],
        triton.Config({"BC": 16}, num_warps=4),
    ),
    prune_configs_by=None if INTERPRET else {"early_config_prune": _prune_scan_configs},
)


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def _load_gates(p_g, s_gk, o_p, P, mask, NORMALIZE: tl.constexpr):
    """Gates (l, m, r) of one row as fp32; with NORMALIZE, raw logits -> Eq. 2 in registers."""
    b_l = tl.load(p_g, mask=mask, other=0).to(tl.float32)
    b_m = tl.load(p_g + s_gk, mask=mask, other=0).to(tl.float32)
    b_r = tl.load(p_g + 2 * s_gk, mask=mask, other=0).to(tl.float32)
    if NORMALIZE:
        b_l, b_m, b_r = tl.sigmoid(b_l), tl.sigmoid(b_m), tl.sigmoid(b_r)
        _, clamped = gate_denominator(b_l, b_m, b_r, (o_p > 0)[:, None], (o_p < P - 1)[:, None])
        inv = 1.0 / clamped
        # padded lanes keep zero weights so the padded state stays exactly zero
        b_l, b_m, b_r = tl.where(mask, b_l * inv, 0.0), tl.where(mask, b_m * inv, 0.0), tl.where(mask, b_r * inv, 0.0)
    return b_l, b_m, b_r


@triton.jit
def _step(b_h, p_x, p_lam, p_g, s_gk, o_p, P, mask, p_scratch,
          NORMALIZE: tl.constexpr, SHIFT: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr):
    """One scan step, Eq. 1: h = l h[p-1] + m h[p] + r h[p+1] + lam x."""
    b_x = tl.load(p_x, mask=mask, other=0).to(tl.float32)
    b_lam = tl.load(p_lam, mask=mask, other=0).to(tl.float32)
    b_l, b_m, b_r = _load_gates(p_g, s_gk, o_p, P, mask, NORMALIZE)
    left, right = _neighbours(b_h, b_h, o_p, P, p_scratch, True, SHIFT, BP, BC)
    return b_l * left + b_m * b_h + b_r * right + b_lam * b_x


@triton.autotune(**_SCAN_TUNING, key=["L", "P", "C", "NORMALIZE", "SHIFT"])
@triton.jit(do_not_specialize=["L"])
def _propagate_fwd_kernel(
    x, lam, g, h, scratch,
    L, P, C,
    s_xb, s_xs, s_xp, s_lb, s_ls, s_lp, s_gb, s_gs, s_gp, s_gk, s_hb, s_hs, s_hp,
    REVERSE: tl.constexpr, NORMALIZE: tl.constexpr, SHIFT: tl.constexpr,
    BP: tl.constexpr, BC: tl.constexpr,
):
    """One direction: h[b, s, p, c] for all rows s, in scan order (s descending if REVERSE)."""
    i_c, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_p = tl.arange(0, BP).to(tl.int64)
    o_c = i_c * BC + tl.arange(0, BC)
    mask = (o_p < P)[:, None] & (o_c < C)[None, :]
    first = (L - 1).to(tl.int64) if REVERSE else (L * 0).to(tl.int64)
    sign = -1 if REVERSE else 1
    p_x = x + i_b * s_xb + first * s_xs + o_p[:, None] * s_xp + o_c[None, :]
    p_lam = lam + i_b * s_lb + first * s_ls + o_p[:, None] * s_lp + o_c[None, :]
    p_g = g + i_b * s_gb + first * s_gs + o_p[:, None] * s_gp + o_c[None, :]
    p_h = h + i_b * s_hb + first * s_hs + o_p[:, None] * s_hp + o_c[None, :]
    p_scratch = scratch + (i_b * tl.num_programs(0) + i_c) * 2 * BP * BC
    b_h = tl.zeros([BP, BC], dtype=tl.float32)
    for _ in range(0, L):
        b_h = _step(b_h, p_x, p_lam, p_g, s_gk, o_p, P, mask, p_scratch, NORMALIZE, SHIFT, BP, BC)
        tl.store(p_h, b_h.to(p_h.dtype.element_ty), mask=mask)
        p_x += sign * s_xs
        p_lam += sign * s_ls
        p_g += sign * s_gs
        p_h += sign * s_hs


@triton.jit
def _accumulate(p, value, mask, ACCUMULATE: tl.constexpr):
    if ACCUMULATE:
        value += tl.load(p, mask=mask, other=0).to(tl.float32)
    tl.store(p, value.to(p.dtype.element_ty), mask=mask)


@triton.autotune(**_SCAN_TUNING, key=["L", "P", "C", "NORMALIZE", "ACCUMULATE", "SHIFT"],
                 restore_value=["dx", "dlam", "dg"])
@triton.jit(do_not_specialize=["L"])
def _propagate_bwd_kernel(
    x, lam, g, h, dh, dx, dlam, dg, scratch,
    L, P, C,
    s_xb, s_xs, s_xp, s_lb, s_ls, s_lp, s_gb, s_gs, s_gp, s_gk, s_hb, s_hs, s_hp, s_db, s_ds, s_dp,
    s_dxb, s_dxs, s_dxp, s_dlb, s_dls, s_dlp, s_dgb, s_dgs, s_dgp, s_dgk,
    REVERSE: tl.constexpr, NORMALIZE: tl.constexpr, ACCUMULATE: tl.constexpr, SHIFT: tl.constexpr,
    BP: tl.constexpr, BC: tl.constexpr,
):
    """Adjoint of one direction, walking its rows in reverse scan order.

    a[t] = dh[t] + (l'[p+1] a'[p+1] + m' a' + r'[p-1] a'[p-1]) with the normalized gates of
    row t+1 (scan order); dx = lam a, dlam = x a, d(l, m, r) = a * (h[p-1], h[p], h[p+1]) of the
    previous row (the stored forward state), then through Eq. 2 to the raw logits if NORMALIZE:
    with D = m + [p>0] l + [p<P-1] r and inv = 1/max(D, eps),
    d sigma_k = inv (dg_k - [k counted] [D > eps] sum_j dg_j g_j), d raw_k = d sigma_k s_k (1 - s_k).
    ACCUMULATE adds into fp32 gradient buffers (the sublayer sums four directions).
    """
    i_c, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_p = tl.arange(0, BP).to(tl.int64)
    o_c = i_c * BC + tl.arange(0, BC)
    mask = (o_p < P)[:, None] & (o_c < C)[None, :]
    # the last row in scan order, and the step that leads back to the previous row
    last = (L * 0).to(tl.int64) if REVERSE else (L - 1).to(tl.int64)
    back = 1 if REVERSE else -1
    tile = o_p[:, None] * 0 + o_c[None, :]
    p_x = x + i_b * s_xb + last * s_xs + o_p[:, None] * s_xp + o_c[None, :]
    p_lam = lam + i_b * s_lb + last * s_ls + o_p[:, None] * s_lp + o_c[None, :]
    p_g = g + i_b * s_gb + last * s_gs + o_p[:, None] * s_gp + o_c[None, :]
    p_hrow = h + i_b * s_hb + (last + back) * s_hs + tile  # previous row of h, p added per load
    p_dh = dh + i_b * s_db + last * s_ds + o_p[:, None] * s_dp + o_c[None, :]
    p_dx = dx + i_b * s_dxb + last * s_dxs + o_p[:, None] * s_dxp + o_c[None, :]
    p_dl = dlam + i_b * s_dlb + last * s_dls + o_p[:, None] * s_dlp + o_c[None, :]
    p_dg = dg + i_b * s_dgb + last * s_dgs + o_p[:, None] * s_dgp + o_c[None, :]
    p_scratch = scratch + (i_b * tl.num_programs(0) + i_c) * 2 * BP * BC
    mask_left = mask & (o_p > 0)[:, None]
    mask_right = mask & (o_p < P - 1)[:, None]
    # adjoint and normalized gates of the row after the current one (scan order)
    b_a = tl.zeros([BP, BC], dtype=tl.float32)
    n_l = tl.zeros([BP, BC], dtype=tl.float32)
    n_m = tl.zeros([BP, BC], dtype=tl.float32)
    n_r = tl.zeros([BP, BC], dtype=tl.float32)
    for t in range(0, L):
        # carry from the next row: l' a' arrives from p+1, r' a' from p-1
        to_left, to_right = _neighbours(n_r * b_a, n_l * b_a, o_p, P, p_scratch, False, SHIFT, BP, BC)
        b_a = tl.load(p_dh, mask=mask, other=0).to(tl.float32) + n_m * b_a + to_left + to_right
        b_x = tl.load(p_x, mask=mask, other=0).to(tl.float32)
        b_lam = tl.load(p_lam, mask=mask, other=0).to(tl.float32)
        _accumulate(p_dx, b_lam * b_a, mask, ACCUMULATE)
        _accumulate(p_dl, b_x * b_a, mask, ACCUMULATE)
        # the previous row's state (zero before the first row)
        has_prev = ((o_p * 0 + t) < L - 1)[:, None]  # a tile, so that it combines with masks everywhere
        prev_l = tl.load(p_hrow + (o_p[:, None] - 1) * s_hp, mask=mask_left & has_prev, other=0).to(tl.float32)
        prev_m = tl.load(p_hrow + o_p[:, None] * s_hp, mask=mask & has_prev, other=0).to(tl.float32)
        prev_r = tl.load(p_hrow + (o_p[:, None] + 1) * s_hp, mask=mask_right & has_prev, other=0).to(tl.float32)
        d_l, d_m, d_r = b_a * prev_l, b_a * prev_m, b_a * prev_r
        r_l = tl.load(p_g, mask=mask, other=0).to(tl.float32)
        r_m = tl.load(p_g + s_gk, mask=mask, other=0).to(tl.float32)
        r_r = tl.load(p_g + 2 * s_gk, mask=mask, other=0).to(tl.float32)
        if NORMALIZE:
            sg_l, sg_m, sg_r = tl.sigmoid(r_l), tl.sigmoid(r_m), tl.sigmoid(r_r)
            has_l, has_r = (o_p > 0)[:, None], (o_p < P - 1)[:, None]
            d, clamped = gate_denominator(sg_l, sg_m, sg_r, has_l, has_r)
            inv = 1.0 / clamped
            n_l, n_m, n_r = tl.where(mask, sg_l * inv, 0.0), tl.where(mask, sg_m * inv, 0.0), tl.where(mask, sg_r * inv, 0.0)
            d_l, d_m, d_r = _raw_gate_grads(d_l, d_m, d_r, n_l, n_m, n_r, sg_l, sg_m, sg_r, inv, d, has_l, has_r)
        else:
            n_l, n_m, n_r = r_l, r_m, r_r
        _accumulate(p_dg, d_l, mask, ACCUMULATE)
        _accumulate(p_dg + s_dgk, d_m, mask, ACCUMULATE)
        _accumulate(p_dg + 2 * s_dgk, d_r, mask, ACCUMULATE)
        p_x += back * s_xs
        p_lam += back * s_ls
        p_g += back * s_gs
        p_hrow += back * s_hs
        p_dh += back * s_ds
        p_dx += back * s_dxs
        p_dl += back * s_dls
        p_dg += back * s_dgs


# ---------------------------------------------------------------------------------------------
# host launchers
# ---------------------------------------------------------------------------------------------
def _scan_strides(t: torch.Tensor, axis: str) -> tuple[int, ...]:
    """(batch, scan-row, state-position) strides of a (B, H, W, ...) tensor for ``axis``, plus
    the gate stride for 5-d gate tensors."""
    sb, sh, sw = t.stride()[:3]
    out = (sb, sh, sw) if axis == "vertical" else (sb, sw, sh)
    return out + ((t.stride(3),) if t.dim() == 5 else ())


def _axis_lengths(x: torch.Tensor, axis: str) -> tuple[int, int]:
    _, H, W, _ = x.shape
    return (H, W) if axis == "vertical" else (W, H)


def _grid(B: int, C: int):
    return lambda meta: (triton.cdiv(C, meta["BC"]), B)


def _propagate_fwd(x, lam, gates, direction: str, normalize: bool, shift: int) -> torch.Tensor:
    axis = AXIS_OF[direction]
    B, _, _, C = x.shape
    L, P = _axis_lengths(x, axis)
    h = torch.empty_like(x, memory_format=torch.contiguous_format)
    _propagate_fwd_kernel[_grid(B, C)](
        x, lam, gates, h, _scratch(x, P, shift, 2), L, P, C,
        *_scan_strides(x, axis), *_scan_strides(lam, axis), *_scan_strides(gates, axis), *_scan_strides(h, axis),
        REVERSE=direction in ("bt", "rl"), NORMALIZE=normalize, SHIFT=shift, BP=triton.next_power_of_2(P),
    )
    return h


def _propagate_bwd(x, lam, gates, h, dh, grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor], direction: str,
                   normalize: bool, accumulate: bool, shift: int) -> None:
    """Write (or add, if ``accumulate``) dx, dlam, dgates of one direction into ``grads``."""
    axis = AXIS_OF[direction]
    B, _, _, C = x.shape
    L, P = _axis_lengths(x, axis)
    dx, dlam, dg = grads
    _propagate_bwd_kernel[_grid(B, C)](
        x, lam, gates, h, dh, dx, dlam, dg, _scratch(x, P, shift, 2), L, P, C,
        *_scan_strides(x, axis), *_scan_strides(lam, axis), *_scan_strides(gates, axis), *_scan_strides(h, axis),
        *_scan_strides(dh, axis), *_scan_strides(dx, axis), *_scan_strides(dlam, axis), *_scan_strides(dg, axis),
        REVERSE=direction in ("bt", "rl"), NORMALIZE=normalize, ACCUMULATE=accumulate, SHIFT=shift,
        BP=triton.next_power_of_2(P),
    )


def _scan_directions_fwd(x, lam, u, gates, shift: int):
    """Baseline: four single-direction launches, merged and scaled by u in PyTorch (fp32)."""
    hs = torch.stack([_propagate_fwd(x, lam, gates, d, True, shift) for d in ("tb", "bt", "lr", "rl")])
    total = hs.float().sum(0)
    return (u.float() * total).to(x.dtype), total, hs


def _scan_by_directions_bwd(x, lam, u, gates, total, hs, dy, shift: int):
    """Backward of the ``directions-*`` and ``pairs-*`` scans: dh = dy * u and du = dy * total in PyTorch,
    then four single-direction adjoints adding into fp32 gradients. Returns (dx, dlam, du, dgates)."""
    dy = dy.float()
    dh = (dy * u.float()).contiguous()  # every direction receives d(y)/d(h_d) = dy * u
    du = (dy * total).to(u.dtype)
    dx = torch.empty(x.shape, device=x.device, dtype=torch.float32)
    dlam = torch.empty_like(dx)
    dg = torch.empty(gates.shape, device=x.device, dtype=torch.float32)
    for k, direction in enumerate(DIRECTIONS):
        _propagate_bwd(x, lam, gates, hs[k], dh, (dx, dlam, dg), direction, True, k > 0, shift)
    return dx.to(x.dtype), dlam.to(lam.dtype), du, dg.to(gates.dtype)


# ---------------------------------------------------------------------------------------------
# custom operator and public function
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("cgspn::propagate", mutates_args=())
def _propagate_op(x: torch.Tensor, lam: torch.Tensor, gates: torch.Tensor, direction: str, normalize: bool,
                  shift: int) -> torch.Tensor:
    """h of one direction (inputs with unit channel stride, checked by :func:`propagate`)."""
    return _propagate_fwd(x, lam, gates, direction, normalize, shift)


@_propagate_op.register_fake
def _(x, lam, gates, direction, normalize, shift):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("cgspn::propagate_backward", mutates_args=())
def _propagate_backward_op(x: torch.Tensor, lam: torch.Tensor, gates: torch.Tensor, h: torch.Tensor, dh: torch.Tensor,
                           direction: str, normalize: bool, shift: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dlam, dgates) of one direction from its stored h and upstream dh."""
    grads = (torch.empty_like(x), torch.empty_like(lam), torch.empty_like(gates))
    _propagate_bwd(x, lam, gates, h, _unit_channel_stride(dh), grads, direction, normalize, False, shift)
    return grads


@_propagate_backward_op.register_fake
def _(x, lam, gates, h, dh, direction, normalize, shift):
    return torch.empty_like(x), torch.empty_like(lam), torch.empty_like(gates)


def _propagate_setup(ctx, inputs, output):
    x, lam, gates, direction, normalize, shift = inputs
    ctx.save_for_backward(x, lam, gates, output)
    ctx.options = (direction, normalize, shift)


def _propagate_backward(ctx, dh):
    x, lam, gates, h = ctx.saved_tensors
    dx, dlam, dg = _propagate_backward_op(x, lam, gates, h, dh, *ctx.options)
    return dx, dlam, dg, None, None, None


_propagate_op.register_autograd(_propagate_backward, setup_context=_propagate_setup)


def propagate(x: torch.Tensor, lam: torch.Tensor, gates: torch.Tensor, direction: str, normalize: bool = True, *,
              shift: str = "gather") -> torch.Tensor:
    """One propagation direction in one Triton launch; returns h ``(B, H, W, C)`` in x's dtype.

    Args:
        x, lam: ``(B, H, W, C)``; gates: ``(B, H, W, 3, C)`` raw logits (``normalize=True``: Eq. 2
            applied in registers for the axis of ``direction``) or weights used as given
            (``normalize=False``). Gates are per call, never shared: the original GSPN layer
            stacks its four directions' gates on the channel axis and calls this per direction.
        direction: ``"tb"``, ``"bt"``, ``"lr"`` or ``"rl"``.
        shift: ``"gather"`` or ``"scratch"`` (how the state's neighbour shift is done).

    Differentiable w.r.t. x, lam and gates. Example::

        h = propagate(x, lam, gates, "lr")
    """
    check_direction(direction)
    if shift not in ("gather", "scratch"):
        raise ValueError(f"propagate: shift {shift!r} is not one of gather, scratch")
    _check_inputs("propagate", {"x": x, "lam": lam}, gates)
    x, lam, gates = (_unit_channel_stride(t) for t in (x, lam, gates))
    if x.numel() == 0:
        return torch.zeros_like(x)
    return _propagate_op(x, lam, gates, direction, normalize, SHIFT_GATHER if shift == "gather" else SHIFT_SCRATCH)
