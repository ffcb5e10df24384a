"""Gate normalization (paper Eq. 2, Sec. 4.1 "fused normalization"): eager PyTorch and one Triton pass.

``(l, m, r) = sigmoid(raw) / max(sum of sigmoid over the neighbours that exist, GATE_EPS)`` (GATE_EPS = 1e-7,
:data:`kernels.cgspn.reference.GATE_EPS`; the Triton kernels take the sum from ``triton_support.gate_denominator``).
Which neighbours exist depends on the scan axis (see :mod:`kernels.cgspn.reference`):
``axis="vertical"`` (tb/bt scans) drops l at j=0 and r at j=W-1, ``axis="horizontal"`` (lr/rl)
drops l at i=0 and r at i=H-1; ``axis="both"`` returns the pair ``(vertical, horizontal)``.

Eager PyTorch runs ~8 elementwise kernels per axis, each a full pass over the gates; the fused
kernel reads the 3 raw gates once and writes the normalized ones (3 per axis), so ``both``
moves 3 + 6 elements per (b, pixel, channel) instead of ~2 x 20. The C-GSPN scan does not use
either: it folds the normalization into the scan (no normalized tensor in memory); these
functions serve the original-GSPN layer, the benchmarks of Sec. 4.1 and the tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.cgspn.reference import AXES, check_axis, normalize_gates_eager
from kernels.cgspn.triton_support import check_runnable, configs, gate_denominator, runnable

__all__ = ["normalize_gates", "normalize_gates_eager", "normalize_gates_fused", "normalize_gates_eager_both"]


@triton.jit
def _store_normalized(p_out, C, b_l, b_m, b_r, has_l, has_r, mask):
    """Eq. 2 for one axis from the sigmoids: (l, m, r) / max(m + [has l] l + [has r] r, eps), stored
    at p_out, p_out + C, p_out + 2 C in the output's dtype."""
    _, clamped = gate_denominator(b_l, b_m, b_r, has_l, has_r)
    inv = 1.0 / clamped
    tl.store(p_out, (b_l * inv).to(p_out.dtype.element_ty), mask=mask)
    tl.store(p_out + C, (b_m * inv).to(p_out.dtype.element_ty), mask=mask)
    tl.store(p_out + 2 * C, (b_r * inv).to(p_out.dtype.element_ty), mask=mask)


@triton.autotune(
    configs=configs(
        [triton.Config({"BN": bn, "BC": bc}, num_warps=w) for bn, bc, w in [(64, 32, 4), (128, 32, 4), (32, 64, 4), (64, 64, 8)]],
        triton.Config({"BN": 16, "BC": 32}, num_warps=4),
    ),
    key=["C", "VERTICAL", "HORIZONTAL"],
)
@triton.jit(do_not_specialize=["N", "H", "W"])
def _normalize_gates_kernel(
    g, out_v, out_h,
    N, H, W, C,
    s_gb, s_gh, s_gw, s_gk,
    VERTICAL: tl.constexpr, HORIZONTAL: tl.constexpr,
    BN: tl.constexpr, BC: tl.constexpr,
):
    """One program: BN pixels x BC channels. g: raw gates with strides (b, h, w, k) and unit C
    stride; out_*: contiguous (N, 3, C)."""
    i_n, i_c = tl.program_id(0).to(tl.int64), tl.program_id(1)
    o_n = i_n * BN + tl.arange(0, BN).to(tl.int64)
    o_c = i_c * BC + tl.arange(0, BC)
    mask = (o_n < N)[:, None] & (o_c < C)[None, :]
    j = o_n % W
    i = (o_n // W) % H
    b = o_n // W // H
    p_g = g + (b * s_gb + i * s_gh + j * s_gw)[:, None] + o_c[None, :]
    b_l = tl.sigmoid(tl.load(p_g, mask=mask, other=0).to(tl.float32))
    b_m = tl.sigmoid(tl.load(p_g + s_gk, mask=mask, other=0).to(tl.float32))
    b_r = tl.sigmoid(tl.load(p_g + 2 * s_gk, mask=mask, other=0).to(tl.float32))
    o_out = (o_n * 3 * C)[:, None] + o_c[None, :]
    if VERTICAL:
        _store_normalized(out_v + o_out, C, b_l, b_m, b_r, (j > 0)[:, None], (j < W - 1)[:, None], mask)
    if HORIZONTAL:
        _store_normalized(out_h + o_out, C, b_l, b_m, b_r, (i > 0)[:, None], (i < H - 1)[:, None], mask)


def _check_gates(gates: torch.Tensor) -> None:
    if gates.dim() != 5 or gates.shape[3] != 3:
        raise ValueError(f"gates: expected shape (B, H, W, 3, C), got {tuple(gates.shape)}")
    if gates.stride(-1) != 1:
        raise ValueError(f"gates: the channel axis must have unit stride, got strides {gates.stride()}")


def _normalize_fwd(gates: torch.Tensor, vertical: bool, horizontal: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    B, H, W, _, C = gates.shape
    out_v = torch.empty(B, H, W, 3, C, device=gates.device, dtype=gates.dtype) if vertical else None
    out_h = torch.empty(B, H, W, 3, C, device=gates.device, dtype=gates.dtype) if horizontal else None
    N = B * H * W
    if N * C == 0:
        return out_v, out_h
    grid = lambda meta: (triton.cdiv(N, meta["BN"]), triton.cdiv(C, meta["BC"]))
    _normalize_gates_kernel[grid](
        gates, out_v if vertical else out_h, out_h if horizontal else out_v,
        N, H, W, C, *gates.stride()[:4], VERTICAL=vertical, HORIZONTAL=horizontal,
    )
    return out_v, out_h


class _NormalizeGatesFunction(torch.autograd.Function):
    """Fused forward; the backward re-derives Eq. 2 with autograd on the eager code (it is
    only used by layers that train through pre-normalized gates, never by the fused scan)."""

    @staticmethod
    def forward(ctx, gates: torch.Tensor, vertical: bool, horizontal: bool):
        ctx.save_for_backward(gates)
        ctx.axes = [a for a, on in zip(AXES, (vertical, horizontal), strict=True) if on]
        out_v, out_h = _normalize_fwd(gates, vertical, horizontal)
        return tuple(t for t in (out_v, out_h) if t is not None)

    @staticmethod
    def backward(ctx, *grads):
        (gates,) = ctx.saved_tensors
        with torch.enable_grad():
            g = gates.detach().float().requires_grad_(True)
            outs = [normalize_gates_eager(g, axis) for axis in ctx.axes]
            pairs = [(o, d.float()) for o, d in zip(outs, grads, strict=True) if d is not None]
            (dg,) = torch.autograd.grad([o for o, _ in pairs], [g], [d for _, d in pairs])
        return dg.to(gates.dtype), None, None


def normalize_gates_fused(gates: torch.Tensor, axis: str) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Paper Eq. 2 in one Triton pass: reads the raw gates once, fp32 math, writes ``gates.dtype``.

    gates: raw logits ``(B, H, W, 3, C)``, any strides with unit stride on C (a view of a fused
    head output is fine). axis: ``"vertical"``, ``"horizontal"`` or ``"both"`` (returns
    ``(vertical, horizontal)`` from one read). Outputs are contiguous ``(B, H, W, 3, C)``.
    Differentiable.

    Example::

        g = torch.randn(2, 5, 7, 3, 16, device="cuda")
        gv, gh = normalize_gates_fused(g, "both")
    """
    if axis != "both":
        check_axis(axis)
    _check_gates(gates)
    check_runnable("normalize_gates_fused", gates)
    vertical, horizontal = axis in ("vertical", "both"), axis in ("horizontal", "both")
    outs = _NormalizeGatesFunction.apply(gates, vertical, horizontal)
    return outs if axis == "both" else outs[0]


def normalize_gates_eager_both(gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eager baseline of ``normalize_gates_fused(gates, "both")``: two independent passes."""
    return normalize_gates_eager(gates, "vertical"), normalize_gates_eager(gates, "horizontal")


def normalize_gates(gates: torch.Tensor, axis: str) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Normalized gates for ``axis`` ("vertical", "horizontal" or "both"): the fused kernel where
    Triton can run (CUDA, or the CPU interpreter), else eager PyTorch."""
    if runnable(gates.device) and gates.dtype != torch.float64:
        return normalize_gates_fused(gates, axis)
    return normalize_gates_eager_both(gates) if axis == "both" else normalize_gates_eager(gates, axis)
