"""The quad design of the C-GSPN scan (the Triton default): forward and backward kernels and their launchers.

Forward (``_scan_quad_fwd_kernel`` + ``_combine_kernel``): one launch for the four directions (grid axis 2 =
direction, 4x the programs of an axis-pair launch), each program loading the inputs of row t + DEPTH (1 or 2,
autotuned) before it computes row t, storing its direction's h in the input dtype as ``hs (4, B, H, W, C)``;
the combine kernel writes ``y = u * sum_d h_d`` (fp32 sum). Eq. 2 is recomputed from the raw gates in registers.
Backward: a prologue (dh = dy * u, du = dy * sum_d h_d), the four adjoints in one launch (per-direction adjoint
and raw-gate gradient, plain stores), an epilogue (dx, dlam, summed gate gradients), every sum in fp32. The
CUDA fast path (:mod:`kernels.cgspn.cuda_scan`) writes the same ``hs``, so it shares this backward.
Indexing: program, batch and direction indices and row bases are int64 scalars; the [BP, BC] tile offsets are
int32 unless a row's extent passes 2^31 (``WIDE``). Design notes and measurements: NOTES.md, docs/design.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.cgspn.scan_common import _MAX_BC, _neighbours, _raw_gate_grads, _scan_warps, _scratch
from kernels.cgspn.triton_support import INTERPRET, configs, fast_rcp, gate_denominator


def _prune_quad_configs(configs, named_args, **kwargs):
    """Per channel block, the 8-elements-per-thread warp count, and for BC 8/16 also half of it
    (16 elements per thread: more independent loads per thread, more programs per SM; with one row
    of prefetch only, two would not fit the registers)."""
    def keep(c):
        full = _scan_warps(kwargs["BP"], c.kwargs["BC"])
        half = c.kwargs["BC"] in (8, 16) and full > 1 and c.num_warps == full // 2 and c.kwargs.get("DEPTH", 1) == 1
        return c.num_warps == full or half
    return [c for c in configs if keep(c)]


# The quad launch has 4x the programs of a pair launch, so smaller channel blocks (BC=4: 8-byte
# bf16 rows per pixel, sectors shared with the neighbouring program through L2) are candidates.
_QUAD_TUNING = dict(
    configs=configs(
        [triton.Config({"BC": bc}, num_warps=w) for bc in (4, 8, 16, 32) for w in (1, 2, 4, 8, 16)],
        triton.Config({"BC": 8}, num_warps=4),
    ),
    prune_configs_by=None if INTERPRET else {"early_config_prune": _prune_quad_configs},
)
# The forward also tunes its prefetch depth (rows of loads in flight ahead of the computed row):
# 2 doubles the bytes in flight per program for 5 more packed tiles of registers.
_QUAD_FWD_TUNING = dict(
    configs=configs(
        [triton.Config({"BC": bc, "DEPTH": d}, num_warps=w) for bc in (4, 8, 16, 32) for w in (1, 2, 4, 8, 16)
         for d in (1, 2)],
        triton.Config({"BC": 8, "DEPTH": 2}, num_warps=4),
    ),
    prune_configs_by=_QUAD_TUNING["prune_configs_by"],
)


# ---------------------------------------------------------------------------------------------
# kernels: all four directions in one launch, one program per (channel block, batch, direction)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _axis_view(H, W, i_d):
    """Scan-axis lengths and direction of program axis 2: d = 0 tb, 1 bt, 2 lr, 3 rl."""
    vertical = i_d < 2
    L = tl.where(vertical, H, W)
    P = tl.where(vertical, W, H)
    return vertical, (i_d % 2) == 1, L, P


@triton.jit
def _row_strides(vertical, s_h, s_w):
    """(scan-row, state-position) strides of one tensor for the program's axis; the row stride in
    int64 (it multiplies the row index into the scalar base), the position stride as passed."""
    return tl.where(vertical, s_h, s_w).to(tl.int64), tl.where(vertical, s_w, s_h)


@triton.jit
def _tile_offsets(o_p, o_c, s_p, WIDE: tl.constexpr):
    """Element offsets of one [BP, BC] row tile from its row's base: int32 (half the registers of
    int64 pointer tiles, which the loop keeps live), or int64 when WIDE (the host decides: a row's
    extent past 2^31 elements). Row and batch parts stay in the int64 scalar base."""
    if WIDE:
        offsets = o_p.to(tl.int64)[:, None] * s_p.to(tl.int64) + o_c.to(tl.int64)[None, :]
    else:
        offsets = o_p[:, None] * s_p.to(tl.int32) + o_c[None, :]
    return offsets


@triton.jit
def _scratch_tile(scratch, i_d, i_b, i_c, BP: tl.constexpr, BC: tl.constexpr):
    """This program's two [BP, BC] fp32 scratch tiles (the scratch neighbour shift)."""
    return scratch + ((i_d * tl.num_programs(1) + i_b) * tl.num_programs(0) + i_c) * 2 * BP * BC


@triton.jit
def _before(o_p, t, L):
    """[BP, 1] tile of (t < L): a tile, so that it combines with masks on GPU and in the interpreter."""
    return ((o_p * 0 + t) < L)[:, None]


@triton.jit
def _load_inputs(p_x, p_lam, p_g, s_gk, mask):
    """x, lam and the three raw gate logits of one row, in the input dtype (kept packed while in flight)."""
    return (tl.load(p_x, mask=mask, other=0), tl.load(p_lam, mask=mask, other=0), tl.load(p_g, mask=mask, other=0),
            tl.load(p_g + s_gk, mask=mask, other=0), tl.load(p_g + 2 * s_gk, mask=mask, other=0))


@triton.jit
def _load_raw_gates(p_g, s_gk, mask):
    return tl.load(p_g, mask=mask, other=0), tl.load(p_g + s_gk, mask=mask, other=0), tl.load(p_g + 2 * s_gk, mask=mask, other=0)


@triton.jit
def _normalized(r_l, r_m, r_r, has_l, has_r, mask):
    """Eq. 2 in registers from raw logits: sigmoids via exp2, one reciprocal for the three weights,
    every reciprocal the approximate one (``fast_rcp``).

    Returns (l, m, r, sigmoids, inv, D) so the backward can reuse the pieces."""
    LOG2E: tl.constexpr = 1.4426950408889634
    s_l = fast_rcp(1.0 + tl.exp2(-LOG2E * r_l.to(tl.float32)))
    s_m = fast_rcp(1.0 + tl.exp2(-LOG2E * r_m.to(tl.float32)))
    s_r = fast_rcp(1.0 + tl.exp2(-LOG2E * r_r.to(tl.float32)))
    d, clamped = gate_denominator(s_l, s_m, s_r, has_l, has_r)
    inv = tl.where(mask, fast_rcp(clamped), 0.0)  # padded lanes: zero weights keep the padded state 0
    return s_l * inv, s_m * inv, s_r * inv, s_l, s_m, s_r, inv, d


@triton.autotune(**_QUAD_FWD_TUNING, key=["H", "W", "C", "SHIFT"])
@triton.jit(do_not_specialize=["H", "W"])
def _scan_quad_fwd_kernel(
    x, lam, g, hs, scratch,
    H, W, C,
    s_xb, s_xh, s_xw, s_lb, s_lh, s_lw, s_gb, s_gh, s_gw, s_gk, s_hd, s_hb, s_hh, s_hw,
    SHIFT: tl.constexpr, WIDE: tl.constexpr, DEPTH: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr,
):
    """Every direction's h, all four in one launch (4x the programs of a pair launch), stored in
    ``hs[d]`` in the input dtype. Software pipelining: the inputs of row t + DEPTH are loaded
    before row t is computed (DEPTH 1 or 2, an autotune choice), so DEPTH rows of loads are in
    flight during the normalization, shift and update of this one."""
    i_c, i_b, i_d = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    vertical, reverse, L, P = _axis_view(H, W, i_d)
    o_p = tl.arange(0, BP)
    o_c = i_c * BC + tl.arange(0, BC)
    mask = (o_p < P)[:, None] & (o_c < C)[None, :]
    has_l, has_r = (o_p > 0)[:, None], (o_p < P - 1)[:, None]
    s_xs, s_xp = _row_strides(vertical, s_xh, s_xw)
    s_ls, s_lp = _row_strides(vertical, s_lh, s_lw)
    s_gs, s_gp = _row_strides(vertical, s_gh, s_gw)
    s_hs, s_hp = _row_strides(vertical, s_hh, s_hw)
    o_x, o_l = _tile_offsets(o_p, o_c, s_xp, WIDE), _tile_offsets(o_p, o_c, s_lp, WIDE)
    o_g, o_h = _tile_offsets(o_p, o_c, s_gp, WIDE), _tile_offsets(o_p, o_c, s_hp, WIDE)
    # int64 scalar bases of this program's batch element (and direction, for hs)
    b_x, b_lam, b_g = x + i_b * s_xb, lam + i_b * s_lb, g + i_b * s_gb
    b_hs = hs + i_d * s_hd + i_b * s_hb
    p_scratch = _scratch_tile(scratch, i_d, i_b, i_c, BP, BC)
    row = tl.where(reverse, L - 1, 0).to(tl.int64)
    sign = tl.where(reverse, -1, 1).to(tl.int64)
    c_x, c_lam, c_l, c_m, c_r = _load_inputs(b_x + row * s_xs + o_x, b_lam + row * s_ls + o_l, b_g + row * s_gs + o_g,
                                             s_gk, mask)
    if DEPTH == 2:
        nxt = row + sign
        n_x, n_lam, n_l, n_m, n_r = _load_inputs(b_x + nxt * s_xs + o_x, b_lam + nxt * s_ls + o_l,
                                                 b_g + nxt * s_gs + o_g, s_gk, mask & _before(o_p, 1, L))
    b_h = tl.zeros([BP, BC], dtype=tl.float32)
    for t in range(0, L):
        # prefetch row t + DEPTH before touching row t
        ahead = row + DEPTH * sign
        f_x, f_lam, f_l, f_m, f_r = _load_inputs(b_x + ahead * s_xs + o_x, b_lam + ahead * s_ls + o_l,
                                                 b_g + ahead * s_gs + o_g, s_gk, mask & _before(o_p, t + DEPTH, L))
        w_l, w_m, w_r, _, _, _, _, _ = _normalized(c_l, c_m, c_r, has_l, has_r, mask)
        left, right = _neighbours(b_h, b_h, o_p, P, p_scratch, True, SHIFT, BP, BC)
        b_h = w_l * left + w_m * b_h + w_r * right + c_lam.to(tl.float32) * c_x.to(tl.float32)
        tl.store(b_hs + row * s_hs + o_h, b_h.to(hs.dtype.element_ty), mask=mask)
        row += sign
        if DEPTH == 2:
            c_x, c_lam, c_l, c_m, c_r = n_x, n_lam, n_l, n_m, n_r
            n_x, n_lam, n_l, n_m, n_r = f_x, f_lam, f_l, f_m, f_r
        else:
            c_x, c_lam, c_l, c_m, c_r = f_x, f_lam, f_l, f_m, f_r


@triton.autotune(**_QUAD_TUNING, key=["H", "W", "C", "SHIFT"])
@triton.jit(do_not_specialize=["H", "W"])
def _scan_quad_bwd_kernel(
    g, hs, dh, adj, dgs, scratch,
    H, W, C,
    s_gb, s_gh, s_gw, s_gk, s_hd, s_hb, s_hh, s_hw,
    s_db, s_dh, s_dw, s_ad, s_ab, s_ah, s_aw, s_qd, s_qb, s_qh, s_qw, s_qk,
    SHIFT: tl.constexpr, WIDE: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr,
):
    """Adjoint of every direction in one launch, rows in reverse scan order, inputs one step ahead.

    a[t] = dh[t] + l'[p+1] a'[p+1] + m' a' + r'[p-1] a'[p-1] (primes: the next row in scan
    order); stores a (``adj[d]``: dx = lam sum_d a_d, dlam = x sum_d a_d are formed by the host)
    and the raw-gate gradient of the direction (``dgs[d]``): d(l, m, r) = a (h[p-1], h[p], h[p+1])
    of the previous row, through Eq. 2 (see ``_propagate_bwd_kernel``). Plain stores, no
    read-modify-write and no atomics: the four directions never touch the same buffer.
    """
    i_c, i_b, i_d = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    vertical, reverse, L, P = _axis_view(H, W, i_d)
    o_p = tl.arange(0, BP)
    o_c = i_c * BC + tl.arange(0, BC)
    mask = (o_p < P)[:, None] & (o_c < C)[None, :]
    has_l, has_r = (o_p > 0)[:, None], (o_p < P - 1)[:, None]
    mask_left, mask_right = mask & has_l, mask & has_r
    s_gs, s_gp = _row_strides(vertical, s_gh, s_gw)
    s_hs, s_hp = _row_strides(vertical, s_hh, s_hw)
    s_ds, s_dp = _row_strides(vertical, s_dh, s_dw)
    s_as, s_ap = _row_strides(vertical, s_ah, s_aw)
    s_qs, s_qp = _row_strides(vertical, s_qh, s_qw)
    o_g, o_d = _tile_offsets(o_p, o_c, s_gp, WIDE), _tile_offsets(o_p, o_c, s_dp, WIDE)
    o_h, o_a, o_q = _tile_offsets(o_p, o_c, s_hp, WIDE), _tile_offsets(o_p, o_c, s_ap, WIDE), _tile_offsets(o_p, o_c, s_qp, WIDE)
    # int64 scalar bases of this program's batch element and direction
    b_g, b_dh = g + i_b * s_gb, dh + i_b * s_db
    b_hs, a_base, q_base = hs + i_d * s_hd + i_b * s_hb, adj + i_d * s_ad + i_b * s_ab, dgs + i_d * s_qd + i_b * s_qb
    # start at the last row in scan order and step back towards the first
    row = tl.where(reverse, 0, L - 1).to(tl.int64)
    back = tl.where(reverse, 1, -1).to(tl.int64)
    p_scratch = _scratch_tile(scratch, i_d, i_b, i_c, BP, BC)
    # loads of step 0 (the previous row exists unless L == 1)
    c_l, c_m, c_r = _load_raw_gates(b_g + row * s_gs + o_g, s_gk, mask)
    c_dh = tl.load(b_dh + row * s_ds + o_d, mask=mask, other=0)
    p_hm = b_hs + (row + back) * s_hs + o_h  # previous row of h
    m_prev = _before(o_p, 1, L)
    c_hl = tl.load(p_hm - s_hp, mask=mask_left & m_prev, other=0)
    c_hm = tl.load(p_hm, mask=mask & m_prev, other=0)
    c_hr = tl.load(p_hm + s_hp, mask=mask_right & m_prev, other=0)
    b_a = tl.zeros([BP, BC], dtype=tl.float32)
    n_wl = tl.zeros([BP, BC], dtype=tl.float32)
    n_wm = tl.zeros([BP, BC], dtype=tl.float32)
    n_wr = tl.zeros([BP, BC], dtype=tl.float32)
    for t in range(0, L):
        nxt = row + back
        p_hm = b_hs + (nxt + back) * s_hs + o_h
        # prefetch step t+1 (its previous row exists while t + 2 < L)
        m_next = mask & _before(o_p, t + 1, L)
        m_prev = _before(o_p, t + 2, L)
        f_l, f_m, f_r = _load_raw_gates(b_g + nxt * s_gs + o_g, s_gk, m_next)
        f_dh = tl.load(b_dh + nxt * s_ds + o_d, mask=m_next, other=0)
        f_hl = tl.load(p_hm - s_hp, mask=mask_left & m_prev, other=0)
        f_hm = tl.load(p_hm, mask=mask & m_prev, other=0)
        f_hr = tl.load(p_hm + s_hp, mask=mask_right & m_prev, other=0)
        # carry from the next row: l' a' arrives from p+1, r' a' from p-1
        to_left, to_right = _neighbours(n_wr * b_a, n_wl * b_a, o_p, P, p_scratch, False, SHIFT, BP, BC)
        b_a = c_dh.to(tl.float32) + n_wm * b_a + to_left + to_right
        tl.store(a_base + row * s_as + o_a, b_a.to(adj.dtype.element_ty), mask=mask)
        d_l, d_m, d_r = b_a * c_hl.to(tl.float32), b_a * c_hm.to(tl.float32), b_a * c_hr.to(tl.float32)
        n_wl, n_wm, n_wr, sg_l, sg_m, sg_r, inv, d = _normalized(c_l, c_m, c_r, has_l, has_r, mask)
        d_l, d_m, d_r = _raw_gate_grads(d_l, d_m, d_r, n_wl, n_wm, n_wr, sg_l, sg_m, sg_r, inv, d, has_l, has_r)
        p_q = q_base + row * s_qs + o_q
        tl.store(p_q, d_l.to(dgs.dtype.element_ty), mask=mask)
        tl.store(p_q + s_qk, d_m.to(dgs.dtype.element_ty), mask=mask)
        tl.store(p_q + 2 * s_qk, d_r.to(dgs.dtype.element_ty), mask=mask)
        row = nxt
        c_l, c_m, c_r, c_dh, c_hl, c_hm, c_hr = f_l, f_m, f_r, f_dh, f_hl, f_hm, f_hr


@triton.jit
def _pixel_tile(i_n, i_c, N, C, BN: tl.constexpr, BC: tl.constexpr):
    """(pixels o_n, channels o_c, mask) of one [BN, BC] tile of a (B*H*W, C) elementwise pass."""
    o_n = i_n.to(tl.int64) * BN + tl.arange(0, BN).to(tl.int64)
    o_c = i_c * BC + tl.arange(0, BC)
    return o_n, o_c, (o_n < N)[:, None] & (o_c < C)[None, :]


@triton.jit
def _strided(o_n, o_c, HW, W, s_b, s_h, s_w):
    """[BN, BC] offsets of pixels o_n (flat over B, H, W) of a tensor with strides (s_b, s_h, s_w, 1)."""
    return ((o_n // HW) * s_b + ((o_n % HW) // W) * s_h + (o_n % W) * s_w)[:, None] + o_c[None, :]


@triton.jit
def _direction_sum(p, s_d, mask):
    """fp32 sum of the four per-direction tiles at p, p + s_d, p + 2 s_d, p + 3 s_d."""
    s_d = s_d.to(tl.int64)  # 3 s_d passes 2^31 for the gate-gradient buffer at B=32, 147x147, C=384
    total = tl.load(p, mask=mask, other=0).to(tl.float32)
    total += tl.load(p + s_d, mask=mask, other=0).to(tl.float32)
    total += tl.load(p + 2 * s_d, mask=mask, other=0).to(tl.float32)
    total += tl.load(p + 3 * s_d, mask=mask, other=0).to(tl.float32)
    return total


@triton.jit
def _combine_kernel(hs, u, y, N, HW, W, C, s_hd, s_ub, s_uh, s_uw, BN: tl.constexpr, BC: tl.constexpr):
    """y = u * (h_tb + h_bt + h_lr + h_rl) over (B*H*W, C); hs contiguous, u any strides (unit on C)."""
    o_n, o_c, mask = _pixel_tile(tl.program_id(0), tl.program_id(1), N, C, BN, BC)
    o_flat = o_n[:, None] * C + o_c[None, :]
    total = _direction_sum(hs + o_flat, s_hd, mask)
    b_u = tl.load(u + _strided(o_n, o_c, HW, W, s_ub, s_uh, s_uw), mask=mask, other=0).to(tl.float32)
    tl.store(y + o_flat, (b_u * total).to(y.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_prologue_kernel(dy, u, hs, dh, du, N, HW, W, C, s_hd, s_yb, s_yh, s_yw, s_ub, s_uh, s_uw, s_vb, s_vh, s_vw,
                         BN: tl.constexpr, BC: tl.constexpr):
    """One pass before the adjoint launch: dh = dy * u (what every direction receives, in the
    input dtype) and du = dy * sum_d h_d (fp32 sum of the stored states). dy, u and du any
    strides (unit on C: du may be a slice of the head gradient); hs, dh contiguous."""
    o_n, o_c, mask = _pixel_tile(tl.program_id(0), tl.program_id(1), N, C, BN, BC)
    o_flat = o_n[:, None] * C + o_c[None, :]
    b_dy = tl.load(dy + _strided(o_n, o_c, HW, W, s_yb, s_yh, s_yw), mask=mask, other=0).to(tl.float32)
    b_u = tl.load(u + _strided(o_n, o_c, HW, W, s_ub, s_uh, s_uw), mask=mask, other=0).to(tl.float32)
    tl.store(dh + o_flat, (b_dy * b_u).to(dh.dtype.element_ty), mask=mask)
    total = _direction_sum(hs + o_flat, s_hd, mask)
    tl.store(du + _strided(o_n, o_c, HW, W, s_vb, s_vh, s_vw), (b_dy * total).to(du.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_epilogue_kernel(adj, dgs, x, lam, dx, dlam, dg, N, HW, W, C, s_ad, s_qd,
                         s_xb, s_xh, s_xw, s_lb, s_lh, s_lw, s_ob, s_oh, s_ow, s_mb, s_mh, s_mw, s_gb, s_gh, s_gw, s_gk,
                         BN: tl.constexpr, BC: tl.constexpr):
    """One pass after the adjoint launch: with a = sum_d a_d (fp32), dx = lam * a, dlam = x * a,
    and the raw-gate gradient summed over the four directions, dg[k] = sum_d dgs[d][k]. adj
    (4, N, C) and dgs (4, N, 3, C) contiguous; x, lam and the outputs dx (s_o*), dlam (s_m*),
    dg (s_g*) any strides with unit stride on C (dlam, dg may be slices of the head gradient)."""
    o_n, o_c, mask = _pixel_tile(tl.program_id(0), tl.program_id(1), N, C, BN, BC)
    o_flat = o_n[:, None] * C + o_c[None, :]
    a = _direction_sum(adj + o_flat, s_ad, mask)
    b_x = tl.load(x + _strided(o_n, o_c, HW, W, s_xb, s_xh, s_xw), mask=mask, other=0).to(tl.float32)
    b_lam = tl.load(lam + _strided(o_n, o_c, HW, W, s_lb, s_lh, s_lw), mask=mask, other=0).to(tl.float32)
    tl.store(dx + _strided(o_n, o_c, HW, W, s_ob, s_oh, s_ow), (b_lam * a).to(dx.dtype.element_ty), mask=mask)
    tl.store(dlam + _strided(o_n, o_c, HW, W, s_mb, s_mh, s_mw), (b_x * a).to(dlam.dtype.element_ty), mask=mask)
    o_gate = o_n[:, None] * 3 * C + o_c[None, :]
    p_dg = dg + _strided(o_n, o_c, HW, W, s_gb, s_gh, s_gw)
    for k in tl.static_range(3):
        tl.store(p_dg + k * s_gk, _direction_sum(dgs + o_gate + k * C, s_qd, mask).to(dg.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# host launchers
# ---------------------------------------------------------------------------------------------
def _hwc_strides(t: torch.Tensor) -> tuple[int, ...]:
    """(batch, H, W) strides, plus the gate stride of a 5-d gate tensor; the quad kernels pick the
    axis per program."""
    return tuple(t.stride()[:3]) + ((t.stride(3),) if t.dim() == 5 else ())


def _quad_grid(B: int, C: int):
    return lambda meta: (triton.cdiv(C, meta["BC"]), B, 4)


def _wide_rows(tensors, side: int) -> bool:
    """Whether a row tile's offsets (up to BP positions x the larger H/W stride, + channels and the
    gate stride) can pass 2^31 elements: then the quad kernels use int64 tile offsets."""
    BP = triton.next_power_of_2(side)
    extent = max(BP * max(abs(t.stride(1)), abs(t.stride(2))) + t.shape[-1] + _MAX_BC
                 + (2 * abs(t.stride(3)) if t.dim() == 5 else 0) for t in tensors)
    return extent >= 2**31


_ELEMENTWISE_BN = 64


def _elementwise_grid(N: int, C: int) -> tuple[tuple[int, int], int]:
    BC = triton.next_power_of_2(min(C, 64))
    return (triton.cdiv(N, _ELEMENTWISE_BN), triton.cdiv(C, BC)), BC


def _scan_quad_fwd(x, lam, u, gates, shift: int):
    """One launch for the four directions (each h stored in x's dtype), one to combine: y = u * sum h."""
    B, H, W, C = x.shape
    hs = x.new_empty(4, B, H, W, C)
    _scan_quad_fwd_kernel[_quad_grid(B, C)](
        x, lam, gates, hs, _scratch(x, max(H, W), shift, 8), H, W, C,
        *_hwc_strides(x), *_hwc_strides(lam), *_hwc_strides(gates), *hs.stride()[:4],
        SHIFT=shift, WIDE=_wide_rows((x, lam, gates, hs[0]), max(H, W)), BP=triton.next_power_of_2(max(H, W)),
    )
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    grid, BC = _elementwise_grid(B * H * W, C)
    _combine_kernel[grid](hs, u, y, B * H * W, H * W, W, C, hs.stride(0), *_hwc_strides(u),
                          BN=_ELEMENTWISE_BN, BC=BC, num_warps=4)
    return y, hs


def _scan_quad_bwd(x, lam, u, gates, hs, dy, shift: int, out=None):
    """Three launches: dh = dy * u and du = dy * sum_d h_d (prologue); the four adjoints with their
    raw-gate gradients (one launch, per-direction plain stores); dx = lam * sum_d a_d,
    dlam = x * sum_d a_d, dgates = sum_d dgates_d (epilogue). Returns (dx, dlam, du, dgates),
    written into ``out`` (the same four, any strides with unit stride on C) when given."""
    B, H, W, C = x.shape
    N = B * H * W
    grid, BC = _elementwise_grid(N, C)
    if out is None:
        out = tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (x, lam, u, gates))
    dx, dlam, du, dg = out
    dh = torch.empty_like(x, memory_format=torch.contiguous_format)
    _bwd_prologue_kernel[grid](dy, u, hs, dh, du, N, H * W, W, C, hs.stride(0), *_hwc_strides(dy), *_hwc_strides(u),
                               *_hwc_strides(du), BN=_ELEMENTWISE_BN, BC=BC, num_warps=4)
    adj = x.new_empty(4, B, H, W, C)
    dgs = x.new_empty(4, B, H, W, 3, C)
    _scan_quad_bwd_kernel[_quad_grid(B, C)](
        gates, hs, dh, adj, dgs, _scratch(x, max(H, W), shift, 8), H, W, C,
        *_hwc_strides(gates), *hs.stride()[:4], *_hwc_strides(dh),
        *adj.stride()[:4], *dgs.stride()[:5], SHIFT=shift,
        WIDE=_wide_rows((gates, hs[0], dh, adj[0], dgs[0]), max(H, W)), BP=triton.next_power_of_2(max(H, W)),
    )
    _bwd_epilogue_kernel[grid](adj, dgs, x, lam, dx, dlam, dg, N, H * W, W, C, adj.stride(0), dgs.stride(0),
                               *_hwc_strides(x), *_hwc_strides(lam), *_hwc_strides(dx), *_hwc_strides(dlam),
                               *_hwc_strides(dg), BN=_ELEMENTWISE_BN, BC=BC, num_warps=4)
    return dx, dlam, du, dg
