"""The pairs design of the C-GSPN scan (variants ``pairs-gather`` / ``pairs-scratch``): one launch per axis.

A program runs both directions of one axis (rows t and L-1-t at step t) and adds them into an fp32
accumulator ordered by one barrier at the crossing; the horizontal launch's second visit of a row writes
``y = u * total``. Round 1's design, kept for A/B against the quad design (NOTES.md); its backward is the
four single-direction adjoints of :mod:`kernels.cgspn.scan_directions`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.cgspn.scan_common import _scratch
from kernels.cgspn.scan_directions import _SCAN_TUNING, _axis_lengths, _grid, _scan_strides, _step


@triton.jit
def _finish_row(total, p_acc, p_u, p_y, mask, FINAL: tl.constexpr, STORE_ACC: tl.constexpr):
    """Last visit of a row by this launch: keep the running sum, or write y = u * total."""
    if FINAL:
        b_u = tl.load(p_u, mask=mask, other=0).to(tl.float32)
        tl.store(p_y, (b_u * total).to(p_y.dtype.element_ty), mask=mask)
        if STORE_ACC:  # the backward needs the four-direction sum for du
            tl.store(p_acc, total, mask=mask)
    else:
        tl.store(p_acc, total, mask=mask)


@triton.autotune(**_SCAN_TUNING, key=["L", "P", "C", "FIRST", "FINAL", "STORE_H", "SHIFT"], restore_value=["acc"])
@triton.jit(do_not_specialize=["L"])
def _scan_pair_fwd_kernel(
    x, lam, u, g, acc, y, h_fwd, h_rev, scratch,
    L, P, C,
    s_xb, s_xs, s_xp, s_lb, s_ls, s_lp, s_ub, s_us, s_up, s_gb, s_gs, s_gp, s_gk,
    s_ab, s_as, s_ap, s_yb, s_ys, s_yp, s_hb, s_hs, s_hp,
    FIRST: tl.constexpr, FINAL: tl.constexpr, STORE_H: tl.constexpr, SHIFT: tl.constexpr,
    BP: tl.constexpr, BC: tl.constexpr,
):
    """Both directions of one axis, with raw gates normalized in registers.

    At step t the forward direction computes row t and the reverse one row L-1-t. A row's first
    visit (by either direction) adds its h into ``acc`` (FIRST: the accumulator is empty, store
    only); its second visit adds the other h and finishes the row (``_finish_row``). All first
    visits happen before step (L+1)//2 and all second ones from it on, so one barrier there
    orders the stores and loads of the accumulator between the threads of the program.
    """
    i_c, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_p = tl.arange(0, BP).to(tl.int64)
    o_c = i_c * BC + tl.arange(0, BC)
    mask = (o_p < P)[:, None] & (o_c < C)[None, :]
    last = (L - 1).to(tl.int64)
    # row pointers of the forward (f) and reverse (r) direction
    p_xf = x + i_b * s_xb + o_p[:, None] * s_xp + o_c[None, :]
    p_lf = lam + i_b * s_lb + o_p[:, None] * s_lp + o_c[None, :]
    p_gf = g + i_b * s_gb + o_p[:, None] * s_gp + o_c[None, :]
    p_uf = u + i_b * s_ub + o_p[:, None] * s_up + o_c[None, :]
    p_af = acc + i_b * s_ab + o_p[:, None] * s_ap + o_c[None, :]
    p_yf = y + i_b * s_yb + o_p[:, None] * s_yp + o_c[None, :]
    p_hf = h_fwd + i_b * s_hb + o_p[:, None] * s_hp + o_c[None, :]
    p_xr, p_lr, p_gr = p_xf + last * s_xs, p_lf + last * s_ls, p_gf + last * s_gs
    p_ur, p_ar, p_yr = p_uf + last * s_us, p_af + last * s_as, p_yf + last * s_ys
    p_hr = h_rev + i_b * s_hb + last * s_hs + o_p[:, None] * s_hp + o_c[None, :]
    p_scratch_f = scratch + (i_b * tl.num_programs(0) + i_c) * 4 * BP * BC
    p_scratch_r = p_scratch_f + 2 * BP * BC
    b_hf = tl.zeros([BP, BC], dtype=tl.float32)
    b_hr = tl.zeros([BP, BC], dtype=tl.float32)
    half = (L + 1) // 2
    for t in range(0, L):
        b_hf = _step(b_hf, p_xf, p_lf, p_gf, s_gk, o_p, P, mask, p_scratch_f, True, SHIFT, BP, BC)
        b_hr = _step(b_hr, p_xr, p_lr, p_gr, s_gk, o_p, P, mask, p_scratch_r, True, SHIFT, BP, BC)
        if STORE_H:
            tl.store(p_hf, b_hf.to(p_hf.dtype.element_ty), mask=mask)
            tl.store(p_hr, b_hr.to(p_hr.dtype.element_ty), mask=mask)
        if 2 * t + 1 < L:  # first visits of rows t and L-1-t
            if FIRST:
                tl.store(p_af, b_hf, mask=mask)
                tl.store(p_ar, b_hr, mask=mask)
            else:
                tl.store(p_af, tl.load(p_af, mask=mask, other=0) + b_hf, mask=mask)
                tl.store(p_ar, tl.load(p_ar, mask=mask, other=0) + b_hr, mask=mask)
        elif 2 * t + 1 == L:  # the middle row: both directions at once
            total = b_hf + b_hr
            if not FIRST:
                total += tl.load(p_af, mask=mask, other=0)
            _finish_row(total, p_af, p_uf, p_yf, mask, FINAL, STORE_H)
        else:  # second visits
            if t == half:
                tl.debug_barrier()
            _finish_row(tl.load(p_af, mask=mask, other=0) + b_hf, p_af, p_uf, p_yf, mask, FINAL, STORE_H)
            _finish_row(tl.load(p_ar, mask=mask, other=0) + b_hr, p_ar, p_ur, p_yr, mask, FINAL, STORE_H)
        p_xf, p_lf, p_gf, p_uf = p_xf + s_xs, p_lf + s_ls, p_gf + s_gs, p_uf + s_us
        p_af, p_yf, p_hf = p_af + s_as, p_yf + s_ys, p_hf + s_hs
        p_xr, p_lr, p_gr, p_ur = p_xr - s_xs, p_lr - s_ls, p_gr - s_gs, p_ur - s_us
        p_ar, p_yr, p_hr = p_ar - s_as, p_yr - s_ys, p_hr - s_hs


def _scan_pairs_fwd(x, lam, u, gates, store_h: bool, shift: int):
    """Two launches (vertical pair, then horizontal pair). Returns y, the fp32 four-direction
    sum (only meaningful with ``store_h``) and the stored h per direction (tb, bt, lr, rl)."""
    B, H, W, C = x.shape
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    acc = x.new_empty(B, H, W, C, dtype=torch.float32)
    hs = x.new_empty(4, B, H, W, C) if store_h else x.new_empty(4, 1, 1, 1, 1)
    for k, axis in enumerate(("vertical", "horizontal")):
        L, P = _axis_lengths(x, axis)
        h_strides = _scan_strides(hs[2 * k], axis) if store_h else (0, 0, 0)
        _scan_pair_fwd_kernel[_grid(B, C)](
            x, lam, u, gates, acc, y, hs[2 * k], hs[2 * k + 1], _scratch(x, P, shift, 4), L, P, C,
            *_scan_strides(x, axis), *_scan_strides(lam, axis), *_scan_strides(u, axis), *_scan_strides(gates, axis),
            *_scan_strides(acc, axis), *_scan_strides(y, axis), *h_strides,
            FIRST=k == 0, FINAL=k == 1, STORE_H=store_h, SHIFT=shift, BP=triton.next_power_of_2(P),
        )
    return y, acc, hs
