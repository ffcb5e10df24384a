"""What the Triton scan designs of the C-GSPN propagation share (quad, single direction, pairs).

Kernel side: the neighbour shift of a ``[BP, BC]`` row tile (``SHIFT_GATHER``: ``tl.gather``;
``SHIFT_SCRATCH``: a round trip through a per-program fp32 scratch tile with barriers) and the gradient of
the raw gate logits through Eq. 2. Host side: input checks, the unit-channel-stride rule and the scratch
tiles. Layout, axes and the designs: :mod:`kernels.cgspn.scan`; docs/design.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.cgspn.triton_support import GATE_EPS_TL, check_runnable

SHIFT_GATHER, SHIFT_SCRATCH = 0, 1
_MAX_BC = 32

ELEMENTS_PER_THREAD = 8  # of each [BP, BC] row tile: 8 bf16 channels = one 16-byte load per thread


def _scan_warps(BP: int, BC: int) -> int:
    return max(1, min(16, BP * BC // (32 * ELEMENTS_PER_THREAD)))


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
def _raw_gate_grads(d_l, d_m, d_r, w_l, w_m, w_r, sg_l, sg_m, sg_r, inv, d, has_l, has_r):
    """Gradients of the raw gate logits from those of the normalized weights (l, m, r), through Eq. 2.

    With D = m + [p>0] l + [p<P-1] r (sigmoids s_k) and inv = 1/max(D, eps):
    d sigma_k = inv (dg_k - [k counted] [D > eps] sum_j dg_j w_j), d raw_k = d sigma_k s_k (1 - s_k).
    """
    live = d > GATE_EPS_TL  # below the clamp D is constant
    dot = tl.where(live, d_l * w_l + d_m * w_m + d_r * w_r, 0.0)
    # m is always counted; d_m - dot is written with 1 - w_m = (l + r counted) / D so that it is
    # exactly 0 when m is alone (P = 1), where the normalized m is identically 1
    rest_m = (tl.where(has_l, sg_l, 0.0) + tl.where(has_r, sg_r, 0.0)) * inv
    d_m_net = tl.where(live, d_m * rest_m - d_l * w_l - d_r * w_r, d_m)
    return ((d_l - tl.where(has_l, dot, 0.0)) * inv * sg_l * (1.0 - sg_l),
            d_m_net * inv * sg_m * (1.0 - sg_m),
            (d_r - tl.where(has_r, dot, 0.0)) * inv * sg_r * (1.0 - sg_r))


def _scratch(x: torch.Tensor, P: int, shift: int, copies: int) -> torch.Tensor:
    """fp32 tiles for the scratch shift: one [BP, BC] tile per program and direction."""
    if shift != SHIFT_SCRATCH:
        return x.new_empty(1, dtype=torch.float32)
    B, C = x.shape[0], x.shape[-1]
    return x.new_empty(B * (C + _MAX_BC) * copies * triton.next_power_of_2(P), dtype=torch.float32)


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
    _check_dtype(name, first.dtype)
    check_runnable(name, *grids.values(), gates)


def _check_head(name: str, x: torch.Tensor, head: torch.Tensor) -> None:
    """:func:`_check_inputs` for x and a fused head already known to be ``(B, H, W, 5, C)``."""
    if head.dtype != x.dtype:
        raise ValueError(f"{name}: head has dtype {head.dtype}, expected {x.dtype} like x")
    _check_dtype(name, x.dtype)
    check_runnable(name, x, head)


def _check_dtype(name: str, dtype: torch.dtype) -> None:
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name}: dtype {dtype} not supported; allowed: {', '.join(_FLOAT_DTYPES.values())} "
                         "(float64: use the reference)")


def _unit_channel_stride(t: torch.Tensor) -> torch.Tensor:
    """The kernels address channels with unit stride; other layouts are copied once."""
    return t if t.stride(-1) == 1 else t.contiguous()
