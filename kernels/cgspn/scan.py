"""Triton kernels of the C-GSPN propagation (paper Eq. 1-2, 4-6): forward and backward.

Layout and axes. Every tensor is channels-last ``(B, H, W, C)`` (gates ``(B, H, W, 3, C)``) with
unit stride on C and any other strides, so the layer's views of one fused head output
``Linear(C_c, 5*C_c)`` are read in place. A kernel sees one *scan axis* of length L (the rows it
steps through) and one *state axis* of length P (the row it holds): vertical scans (tb, bt) use
(L, P) = (H, W), horizontal scans (lr, rl) use (W, H). The host passes the strides of that view,
so one kernel serves both axes without a transpose, and reverse directions only walk the rows
backwards. l and r weight the state at p-1 and p+1; the gate normalization (Eq. 2) drops l at
p=0 and r at p=P-1, which is exactly the per-axis rule of :mod:`kernels.cgspn.reference`.

Programs. One program owns (batch b, BC channels) and keeps a whole row of BP >= P positions x BC
channels of fp32 state in registers, stepping L times. The neighbour terms h[p-1], h[p+1] are
register shifts: ``SHIFT=0`` uses ``tl.gather`` (Triton >= 3.2) and ``SHIFT=1`` a round trip
through a per-program fp32 scratch tile with ``tl.debug_barrier``; the GPU bench compares them.

The sublayer (``cgspn_scan``) uses the *quad* design by default: one launch for the four directions
(grid axis 2 = direction: 4x the programs of an axis-pair launch), each program loading the inputs
of row t + DEPTH (1 or 2, autotuned) before it computes row t (software pipelining), storing its
direction's h in the input dtype; a combine kernel writes ``y = u * sum_d h_d`` (fp32 sum). Gate
normalization is recomputed from the raw gates in registers at every visit (no normalized-gate
tensor in memory). Traffic per (b, pixel, channel) in bf16: 4 x 10 B of inputs, 4 x 2 B of h, 12 B
for the combine: ~60 B vs the ideal 14 B (7 elements); NOTES.md says why a global four-direction
scan with row programs cannot read its inputs only once. Indexing: program, batch and direction
indices and row bases are int64 scalars; the [BP, BC] tile offsets inside one row are int32 (half
the registers of int64 pointer tiles) unless the host finds a row extent past 2^31 (``WIDE``).
The default variant ``auto`` replaces the quad forward by the CUDA forward of :mod:`kernels.cgspn.cuda_scan`
(same ``hs`` contract, so the same Triton backward) for bfloat16/float16 on sm_90 when it can run.
The older designs stay selectable for the bench: ``pairs-*`` (one launch per axis, both directions
per program, an fp32 accumulator ordered by one barrier) and ``directions-*`` (four single-direction
launches, merged in PyTorch).

Backward. The adjoint of one direction is the same recurrence run in reverse with transposed
gates: a[s] = dh[s] + l'[p+1] a'[p+1] + m'[p] a'[p] + r'[p-1] a'[p-1] (primes: the next row in scan
order). Gate gradients need the forward state of the previous row, so the forward **stores h**
of each direction (input dtype) when a gradient is required, instead of recomputing it: recompute
would need a checkpoint-and-replay pass per direction, stored h costs one write + one read per
direction. The quad backward is three launches: a prologue (dh = dy * u, du = dy * sum_d h_d),
the four adjoints in one launch (per-direction adjoint and raw-gate gradient, plain stores), and an
epilogue (dx = lam * sum_d a_d, dlam = x * sum_d a_d, dgates = sum_d dgates_d), every sum in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.cgspn import cuda_scan
from kernels.cgspn.reference import AXIS_OF, check_direction
from kernels.cgspn.triton_support import INTERPRET, check_runnable, configs, fast_rcp

__all__ = ["cgspn_scan", "cgspn_scan_head", "head_views", "propagate", "scan_backend", "SCAN_VARIANTS"]

# Variants the GPU bench compares: design (quad: four directions in one pipelined launch; pairs: one
# launch per axis; directions: four launches + PyTorch merge) x shift method. quad-scratch is the fastest
# Triton design on an H200 (results/h200/2026-11-27/scan-variant-ab: 0.31 vs 0.41 ms at
# grid 74 and 1.43 vs 1.92 ms at grid 147 for quad-gather, B=32, C_c=64, bf16, forward).
# ``cuda-fast``: the CUDA forward of :mod:`kernels.cgspn.cuda_scan` (sm_90, CuPy) with the quad-scratch
# Triton backward, wherever it can run (``cuda_scan.unavailable_reason``); elsewhere quad-scratch.
# ``auto`` (the default): cuda-fast for bfloat16/float16, quad-scratch for float32, as measured on an H200
# (NOTES.md "Round 5", B=32: cuda-fast forward 1.16-1.6x faster in bf16, fwd+bwd 1.03-1.16x; float32 0.86-0.89x).
SCAN_VARIANTS = ("auto", "quad-scratch", "quad-gather", "pairs-gather", "pairs-scratch", "directions-gather",
                 "directions-scratch", "cuda-fast")
FAST_VARIANT = "cuda-fast"
DEFAULT_VARIANT = "auto"
_FAST_DTYPES = (torch.bfloat16, torch.float16)  # where "auto" takes the fast path
SHIFT_GATHER, SHIFT_SCRATCH = 0, 1
_MAX_BC = 32

ELEMENTS_PER_THREAD = 8  # of each [BP, BC] row tile: 8 bf16 channels = one 16-byte load per thread


def _scan_warps(BP: int, BC: int) -> int:
    return max(1, min(16, BP * BC // (32 * ELEMENTS_PER_THREAD)))


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
# kernel helpers
# ---------------------------------------------------------------------------------------------
@triton.jit
def _shift(b_h, o_p, P, p_scratch, DELTA: tl.constexpr, SHIFT: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr):
    """b_h[p + DELTA] for every p of a [BP, BC] tile; 0 where p + DELTA is outside [0, P)."""
    idx = o_p + DELTA
    valid = (idx >= 0) & (idx < P)
    if SHIFT == 0:
        idx = tl.where(valid, idx, 0)
        shifted = tl.where(valid[:, None], tl.gather(b_h, tl.broadcast_to(idx[:, None], (BP, BC)).to(tl.int32), 0), 0.0)
    else:
        # the caller stored b_h at p_scratch and put a barrier after the store; the masked load
        # gives the 0 outside [0, P) itself (a select after it cost two instructions per element)
        shifted = tl.load(p_scratch + idx[:, None] * BC + tl.arange(0, BC)[None, :], mask=valid[:, None], other=0.0)
    return shifted


@triton.jit
def _neighbours(a, b, o_p, P, p_scratch, SAME: tl.constexpr, SHIFT: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr):
    """(a[p-1], b[p+1]) of two state tiles (SAME: a and b are one tile, stored once)."""
    p_b = p_scratch if SAME else p_scratch + BP * BC
    if SHIFT == 1:
        tl.store(p_scratch + o_p[:, None] * BC + tl.arange(0, BC)[None, :], a)
        if not SAME:
            tl.store(p_b + o_p[:, None] * BC + tl.arange(0, BC)[None, :], b)
        tl.debug_barrier()
    left = _shift(a, o_p, P, p_scratch, -1, SHIFT, BP, BC)
    right = _shift(b, o_p, P, p_b, 1, SHIFT, BP, BC)
    if SHIFT == 1:
        tl.debug_barrier()  # nobody overwrites the scratch tiles before everyone has read them
    return left, right


@triton.jit
def _load_gates(p_g, s_gk, o_p, P, mask, NORMALIZE: tl.constexpr):
    """Gates (l, m, r) of one row as fp32; with NORMALIZE, raw logits -> Eq. 2 in registers."""
    b_l = tl.load(p_g, mask=mask, other=0).to(tl.float32)
    b_m = tl.load(p_g + s_gk, mask=mask, other=0).to(tl.float32)
    b_r = tl.load(p_g + 2 * s_gk, mask=mask, other=0).to(tl.float32)
    if NORMALIZE:
        b_l, b_m, b_r = tl.sigmoid(b_l), tl.sigmoid(b_m), tl.sigmoid(b_r)
        d = b_m + tl.where((o_p > 0)[:, None], b_l, 0.0) + tl.where((o_p < P - 1)[:, None], b_r, 0.0)
        inv = 1.0 / tl.maximum(d, 1e-7)
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


@triton.jit
def _raw_gate_grads(d_l, d_m, d_r, w_l, w_m, w_r, sg_l, sg_m, sg_r, inv, d, has_l, has_r):
    """Gradients of the raw gate logits from those of the normalized weights (l, m, r), through Eq. 2.

    With D = m + [p>0] l + [p<P-1] r (sigmoids s_k) and inv = 1/max(D, eps):
    d sigma_k = inv (dg_k - [k counted] [D > eps] sum_j dg_j w_j), d raw_k = d sigma_k s_k (1 - s_k).
    """
    live = d > 1e-7  # below the clamp D is constant
    dot = tl.where(live, d_l * w_l + d_m * w_m + d_r * w_r, 0.0)
    # m is always counted; d_m - dot is written with 1 - w_m = (l + r counted) / D so that it is
    # exactly 0 when m is alone (P = 1), where the normalized m is identically 1
    rest_m = (tl.where(has_l, sg_l, 0.0) + tl.where(has_r, sg_r, 0.0)) * inv
    d_m_net = tl.where(live, d_m * rest_m - d_l * w_l - d_r * w_r, d_m)
    return ((d_l - tl.where(has_l, dot, 0.0)) * inv * sg_l * (1.0 - sg_l),
            d_m_net * inv * sg_m * (1.0 - sg_m),
            (d_r - tl.where(has_r, dot, 0.0)) * inv * sg_r * (1.0 - sg_r))


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------
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
            d = sg_m + tl.where(has_l, sg_l, 0.0) + tl.where(has_r, sg_r, 0.0)
            inv = 1.0 / tl.maximum(d, 1e-7)
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
# quad kernels: all four directions in one launch, one program per (direction, batch, BC channels)
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
    d = s_m + tl.where(has_l, s_l, 0.0) + tl.where(has_r, s_r, 0.0)
    inv = tl.where(mask, fast_rcp(tl.maximum(d, 1e-7)), 0.0)  # padded lanes: zero weights keep the padded state 0
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
def _scan_strides(t: torch.Tensor, axis: str) -> tuple[int, ...]:
    """(batch, scan-row, state-position) strides of a (B, H, W, ...) tensor for ``axis``, plus
    the gate stride for 5-d gate tensors."""
    sb, sh, sw = t.stride()[:3]
    out = (sb, sh, sw) if axis == "vertical" else (sb, sw, sh)
    return out + ((t.stride(3),) if t.dim() == 5 else ())


def _axis_lengths(x: torch.Tensor, axis: str) -> tuple[int, int]:
    _, H, W, _ = x.shape
    return (H, W) if axis == "vertical" else (W, H)


def _scratch(x: torch.Tensor, P: int, shift: int, copies: int) -> torch.Tensor:
    """fp32 tiles for the scratch shift: one [BP, BC] tile per program and direction."""
    if shift != SHIFT_SCRATCH:
        return x.new_empty(1, dtype=torch.float32)
    B, C = x.shape[0], x.shape[-1]
    return x.new_empty(B * (C + _MAX_BC) * copies * triton.next_power_of_2(P), dtype=torch.float32)


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


def _scan_directions_fwd(x, lam, u, gates, shift: int):
    """Baseline: four single-direction launches, merged and scaled by u in PyTorch (fp32)."""
    hs = torch.stack([_propagate_fwd(x, lam, gates, d, True, shift) for d in ("tb", "bt", "lr", "rl")])
    total = hs.float().sum(0)
    return (u.float() * total).to(x.dtype), total, hs


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


# ---------------------------------------------------------------------------------------------
# autograd
# ---------------------------------------------------------------------------------------------
class _CgspnScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lam, u, gates, design: str, shift: int, store_h: bool):
        if design in ("quad", "cuda"):
            y, hs = cuda_scan.scan_forward(x, lam, u, gates) if design == "cuda" else _scan_quad_fwd(x, lam, u, gates, shift)
            total = hs.new_empty(0)  # du sums the stored h in the backward
        elif design == "pairs":
            y, total, hs = _scan_pairs_fwd(x, lam, u, gates, store_h, shift)
        else:
            y, total, hs = _scan_directions_fwd(x, lam, u, gates, shift)
        if store_h:
            ctx.save_for_backward(x, lam, u, gates, total, hs)
        ctx.shift, ctx.design = shift, design
        return y

    @staticmethod
    def backward(ctx, dy):
        x, lam, u, gates, total, hs = ctx.saved_tensors
        if ctx.design in ("quad", "cuda"):  # the fast path stores hs exactly like the quad forward
            # dh in the input dtype (one rounding, read by four directions); every sum in fp32 registers
            dx, dlam, du, dg = _scan_quad_bwd(x, lam, u, gates, hs, _unit_channel_stride(dy), ctx.shift)
            return dx, dlam, du, dg, None, None, None
        dy = dy.float()
        dh = (dy * u.float()).contiguous()  # every direction receives d(y)/d(h_d) = dy * u
        du = (dy * total).to(u.dtype)
        dx = torch.empty(x.shape, device=x.device, dtype=torch.float32)
        dlam = torch.empty_like(dx)
        dg = torch.empty(gates.shape, device=x.device, dtype=torch.float32)
        for k, direction in enumerate(("tb", "bt", "lr", "rl")):
            _propagate_bwd(x, lam, gates, hs[k], dh, (dx, dlam, dg), direction, True, k > 0, ctx.shift)
        return dx.to(x.dtype), dlam.to(lam.dtype), du, dg.to(gates.dtype), None, None, None


def head_views(head: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lam, u, gates) of the C-GSPN layer's fused head output ``(B, H, W, 5, C)`` = [u, lam, l, m, r]
    (``kernels.cgspn.layer.HEADS``), as strided views."""
    return head[..., 1, :], head[..., 0, :], head[..., 2:5, :]


class _CgspnScanHeadFunction(torch.autograd.Function):
    """The quad scan with u, lam and the gates taken from one head tensor, so that the backward
    returns d(head) as one tensor: the prologue writes du and the epilogue dlam and dgates straight
    into their slices. With three view inputs instead, autograd builds each view's gradient as a
    zero-filled head-sized tensor, copies into it and sums the three (three fills, three copies,
    two adds of the whole head: ~1.9 ms of a 6.1 ms fwd+bwd at B=32, 147x147, C_c=64, H200)."""

    @staticmethod
    def forward(ctx, x, head, shift: int, store_h: bool, fast: bool):
        lam, u, gates = head_views(head)
        y, hs = cuda_scan.scan_forward(x, lam, u, gates) if fast else _scan_quad_fwd(x, lam, u, gates, shift)
        if store_h:
            ctx.save_for_backward(x, head, hs)
        ctx.shift = shift
        return y

    @staticmethod
    def backward(ctx, dy):
        x, head, hs = ctx.saved_tensors
        dhead = torch.empty(head.shape, device=head.device, dtype=head.dtype)
        dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
        d_lam, d_u, d_gates = head_views(dhead)
        _scan_quad_bwd(x, *head_views(head), hs, _unit_channel_stride(dy), ctx.shift, out=(dx, d_lam, d_u, d_gates))
        return dx, dhead, None, None, None


class _PropagateFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lam, gates, direction: str, normalize: bool, shift: int):
        h = _propagate_fwd(x, lam, gates, direction, normalize, shift)
        ctx.save_for_backward(x, lam, gates, h)
        ctx.options = (direction, normalize, shift)
        return h

    @staticmethod
    def backward(ctx, dh):
        x, lam, gates, h = ctx.saved_tensors
        direction, normalize, shift = ctx.options
        if dh.stride(-1) != 1:
            dh = dh.contiguous()
        grads = (torch.empty_like(x), torch.empty_like(lam), torch.empty_like(gates))
        _propagate_bwd(x, lam, gates, h, dh, grads, direction, normalize, False, shift)
        return (*grads, None, None, None)


# ---------------------------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------------------------
_FLOAT_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _check_inputs(name: str, grids: dict[str, torch.Tensor], gates: torch.Tensor) -> None:
    first = next(iter(grids.values()))
    if first.dim() != 4:
        raise ValueError(f"{name}: x must be (B, H, W, C), got shape {tuple(first.shape)}")
    for key, t in grids.items():
        if t.shape != first.shape:
            raise ValueError(f"{name}: {key} has shape {tuple(t.shape)}, expected {tuple(first.shape)} like x")
        if t.dtype != first.dtype:
            raise ValueError(f"{name}: {key} has dtype {t.dtype}, expected {first.dtype} like x")
    expected = (*first.shape[:3], 3, first.shape[3])
    if tuple(gates.shape) != expected:
        raise ValueError(f"{name}: gates has shape {tuple(gates.shape)}, expected (B, H, W, 3, C) = {expected}")
    if gates.dtype != first.dtype:
        raise ValueError(f"{name}: gates has dtype {gates.dtype}, expected {first.dtype} like x")
    if first.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name}: dtype {first.dtype} not supported; allowed: {', '.join(_FLOAT_DTYPES.values())} "
                         "(float64: use the reference)")
    check_runnable(name, *grids.values(), gates)


def _variant_options(name: str, variant: str) -> tuple[str, int]:
    """(design, shift method) of a :data:`SCAN_VARIANTS` name, e.g. ``"quad-scratch"`` -> ("quad", SHIFT_SCRATCH)."""
    if variant not in SCAN_VARIANTS:
        raise ValueError(f"{name}: variant {variant!r} is not one of {', '.join(SCAN_VARIANTS)}")
    if variant in (FAST_VARIANT, "auto"):
        return ("cuda" if variant == FAST_VARIANT else "auto"), SHIFT_SCRATCH  # the Triton backward's (and fallback's) shift
    design, shift_name = variant.split("-")
    return design, SHIFT_GATHER if shift_name == "gather" else SHIFT_SCRATCH


def _fast_path_reason(design: str, x: torch.Tensor, *others: torch.Tensor) -> str | None:
    """For the ``cuda`` and ``auto`` designs: None when the CUDA forward runs on these inputs, else why
    not (then the quad-scratch Triton path runs). Other designs: None."""
    if design == "auto" and x.dtype not in _FAST_DTYPES:
        return f"{str(x.dtype).replace('torch.', '')}: the Triton forward measured faster (NOTES.md Round 5)"
    return cuda_scan.unavailable_reason(x, *others) if design in ("cuda", "auto") else None


def _resolve(design: str, x: torch.Tensor, *others: torch.Tensor) -> str:
    """``cuda`` when the fast path runs these inputs, ``quad`` for a ``cuda``/``auto`` request it does not; else as given."""
    if design in ("cuda", "auto"):
        return "cuda" if _fast_path_reason(design, x, *others) is None else "quad"
    return design


def scan_backend(variant: str, x: torch.Tensor, *others: torch.Tensor) -> str:
    """What :func:`cgspn_scan` / :func:`cgspn_scan_head` run for ``variant`` on these inputs, in words
    (a workload's ``backend_detail``): ``"cuda-fast-path (fwd CUDA, bwd triton quad-scratch)"``, or
    ``"triton quad-scratch (fast path not used: <reason>)"``, or ``"triton <variant>"``."""
    design, _ = _variant_options("scan_backend", variant)
    if design not in ("cuda", "auto"):
        return f"triton {variant}"
    reason = _fast_path_reason(design, x, *others)
    if reason is None:
        return "cuda-fast-path (fwd CUDA, bwd triton quad-scratch)"
    return f"triton quad-scratch (fast path not used: {reason})"


def _unit_channel_stride(t: torch.Tensor) -> torch.Tensor:
    """The kernels address channels with unit stride; other layouts are copied once."""
    return t if t.stride(-1) == 1 else t.contiguous()


def cgspn_scan(x: torch.Tensor, lam: torch.Tensor, u: torch.Tensor, gates: torch.Tensor, *,
               variant: str = DEFAULT_VARIANT) -> torch.Tensor:
    """The C-GSPN sublayer: four-direction latent propagation, normalization folded in (Eq. 1-2, 4-6).

    ``y = u * (h_tb + h_bt + h_lr + h_rl)`` where each h follows
    ``h[i] = l h[i-1][p-1] + m h[i-1][p] + r h[i-1][p+1] + lam x`` along its direction, with the
    raw gates shared by the four directions and normalized per scan axis (Eq. 2).

    Args:
        x, lam, u: ``(B, H, W, C)``, float32/bfloat16/float16, any strides; views with unit
            stride on C (e.g. of one fused head output) are read in place, others copied once.
        gates: raw logits ``(B, H, W, 3, C)`` (l, m, r), same dtype.
        variant: ``"auto"`` (default: ``"cuda-fast"`` for bfloat16/float16 where it can run, else
            ``"quad-scratch"``), ``"quad-scratch"`` (the four directions in one pipelined launch, the
            neighbour shift through a per-program scratch tile, then a combine kernel),
            ``"quad-gather"`` (the shift by ``tl.gather``), ``"pairs-gather"``, ``"pairs-scratch"`` (two
            launches, one per axis, both directions per program), ``"directions-gather"``,
            ``"directions-scratch"`` (four single-direction launches), ``"cuda-fast"`` (the CUDA forward
            of :mod:`kernels.cgspn.cuda_scan` with the quad-scratch backward, on sm_90 with CuPy; elsewhere
            quad-scratch runs, :func:`scan_backend` says which and why); see :data:`SCAN_VARIANTS`.

    Returns:
        y ``(B, H, W, C)`` in the dtype of x; fp32 state and accumulation. Differentiable
        w.r.t. all four inputs (Triton backward; the forward stores each direction's h).

    Example::

        B, H, W, C = 2, 27, 27, 64
        x, lam, u = (torch.randn(B, H, W, C, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        gates = torch.randn(B, H, W, 3, C, device="cuda", dtype=torch.bfloat16)
        y = cgspn_scan(x, lam, u, gates)
    """
    design, shift = _variant_options("cgspn_scan", variant)
    _check_inputs("cgspn_scan", {"x": x, "lam": lam, "u": u}, gates)
    x, lam, u, gates = (_unit_channel_stride(t) for t in (x, lam, u, gates))
    if x.numel() == 0:
        return torch.zeros_like(x)
    design = _resolve(design, x, lam, u, gates)  # cuda/auto -> cuda, or the quad-scratch fallback (``scan_backend`` says why)
    # the forward stores each direction's h only when a backward will need it
    store_h = torch.is_grad_enabled() and any(t.requires_grad for t in (x, lam, u, gates))
    return _CgspnScanFunction.apply(x, lam, u, gates, design, shift, store_h)


def cgspn_scan_head(x: torch.Tensor, head: torch.Tensor, *, variant: str = DEFAULT_VARIANT) -> torch.Tensor:
    """:func:`cgspn_scan` on the C-GSPN layer's fused head output, the way the layer calls it.

    ``head`` is ``(B, H, W, 5, C)`` holding [u, lam, l, m, r] on dim 3 (one ``Linear(C, 5C)``
    output, ``kernels.cgspn.layer.HEADS``); the result equals
    ``cgspn_scan(x, head[..., 1, :], head[..., 0, :], head[..., 2:5, :])``. The difference is the
    backward: the quad variants (and cuda-fast, whose forward is CUDA) return the head's gradient as
    one tensor, written in place by the backward's prologue and epilogue, instead of three view
    gradients that autograd zero-fills, copies and sums (see ``_CgspnScanHeadFunction``). Other
    variants go through :func:`cgspn_scan`.

    Example::

        head = layer.heads(x_c).unflatten(-1, (5, C))   # (B, H, W, 5, C)
        y = cgspn_scan_head(x_c, head)
    """
    design, shift = _variant_options("cgspn_scan_head", variant)
    if head.dim() != 5 or tuple(head.shape) != (*x.shape[:3], 5, *x.shape[3:]):
        raise ValueError(f"cgspn_scan_head: head must be (B, H, W, 5, C) = {(*x.shape[:3], 5, *x.shape[3:])} for x of shape "
                         f"{tuple(x.shape)} ([u, lam, l, m, r] on dim 3), got {tuple(head.shape)}")
    lam, u, gates = head_views(head)
    if design not in ("quad", "cuda", "auto"):
        return cgspn_scan(x, lam, u, gates, variant=variant)
    _check_inputs("cgspn_scan_head", {"x": x, "lam": lam, "u": u}, gates)
    x, head = _unit_channel_stride(x), _unit_channel_stride(head)
    if x.numel() == 0:
        return torch.zeros_like(x)
    store_h = torch.is_grad_enabled() and (x.requires_grad or head.requires_grad)
    return _CgspnScanHeadFunction.apply(x, head, shift, store_h, _resolve(design, x, head) == "cuda")


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
    return _PropagateFunction.apply(x, lam, gates, direction, normalize, SHIFT_GATHER if shift == "gather" else SHIFT_SCRATCH)
