"""The original GSPN scan (GSPN v1, NVlabs), reproduced for its execution structure and cost.

What it computes, on channels-first tensors ``(B, C, P, L)`` (the original's ``(N, C, H, W)``),
scanning along the last axis L (the original scans left -> right along W) for every
``(b, c, p)``, with the state restarting every ``chunk`` steps (the original's
``items_each_chunk``; ``chunk=None`` or ``chunk >= L`` is global propagation)::

    h[p, s] = g1[p, s] h[p-1, s-1] + g2[p, s] h[p, s-1] + g3[p, s] h[p+1, s-1] + lam[p, s] x[p, s]

with ``h[., s-1] = 0`` at the first step of each chunk and neighbours outside ``0..P-1``
contributing 0. g1/g2/g3 are the *already normalized* gates (the original normalizes them in
eager PyTorch before the call). In the direction vocabulary of :mod:`kernels.cgspn.reference`
this is the ``"lr"`` scan of the channels-last grid ``x.permute(0, 2, 3, 1)`` with
``(l, m, r) = (g1, g2, g3)``.

How it mirrors the original's cost (``gaterecurrent2dnoind_kernel.cu``):
  * one kernel launch per scan step: ``chunk`` launches forward, ``chunk`` backward in reverse
    order (every chunk advances one step per launch, in parallel);
  * one thread per element: a 1D grid over ``B x C x P x n_chunks`` with 512 threads per block
    (``BLOCK=512``, ``num_warps=16``: one element per thread), the flat index decomposed in the
    original's order (chunk fastest, then p, then c, then b), so neighbouring threads touch
    addresses ``L`` apart - the same uncoalesced gathers;
  * per-step stores of h to global memory, re-read by the next launch.
Triton rather than a CUDA extension: it builds on every GPU box of the suite without a compiler
toolchain, runs on CPU under ``TRITON_INTERPRET=1`` for the tests, and a 1D elementwise kernel
compiles to the same loads/stores the original's SIMT code issues.

What it does *not* inherit (STYLE.md): int32 index arithmetic (program ids and offsets are
int64 here, so 147x147 x 4608 channels x batch 32 works), bf16 state (the original stores
``h`` in the input dtype and rounds it at every step; here the state and its per-step stores
are fp32 and only the returned output is cast once), the backward writing into the incoming
gradient (a separate fp32 buffer is used), chunk boundaries that differ between forward and
backward when ``L % chunk != 0`` (the same chunks are used both ways), and the ignored current
stream (Triton launches on the current stream).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.cgspn.reference import propagate_reference
from kernels.cgspn.triton_support import check_runnable

BLOCK = 512  # the original's THREADS_PER_BLOCK: one element per thread
NUM_WARPS = BLOCK // 32


@triton.jit
def _step_position(t, n_chunks, chunk, P, L, n_elements, BLOCK: tl.constexpr):
    """This program's elements at step ``t``: the flat index decomposed in the original's order
    (chunk fastest, then p, then b*C + c); returns p, the chunk start, the position s along L,
    the validity mask and the flat offset of (bc, p, s)."""
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    in_range = idx < n_elements
    k = idx % n_chunks  # chunk index varies fastest, as in the original
    rest = idx // n_chunks
    p = rest % P
    bc = rest // P
    start = k * chunk
    s = start + t
    valid = in_range & (s < L)
    off = bc * P * L + p * L + s
    return p, start, s, valid, off


@triton.jit(do_not_specialize=["t", "n_chunks", "chunk", "P", "L", "n_elements"])
def _original_scan_fwd_step(
    x, lam, g1, g2, g3, h,
    t, n_chunks, chunk, P, L, n_elements,
    BLOCK: tl.constexpr,
):
    """Step ``t`` of every chunk: one element per thread, fp32 state read from/stored to ``h``."""
    p, start, s, valid, off = _step_position(t, n_chunks, chunk, P, L, n_elements, BLOCK)
    # (block-shaped comparisons: the CPU interpreter cannot combine a scalar condition with a mask)
    has_prev = valid & (s > start)  # the state restarts at the first step of each chunk
    up = has_prev & (p > 0)
    down = has_prev & (p < P - 1)
    h_l = tl.load(h + off - L - 1, mask=up, other=0.0)
    h_m = tl.load(h + off - 1, mask=has_prev, other=0.0)
    h_r = tl.load(h + off + L - 1, mask=down, other=0.0)
    w_l = tl.load(g1 + off, mask=up, other=0.0).to(tl.float32)
    w_m = tl.load(g2 + off, mask=has_prev, other=0.0).to(tl.float32)
    w_r = tl.load(g3 + off, mask=down, other=0.0).to(tl.float32)
    xv = tl.load(x + off, mask=valid, other=0.0).to(tl.float32)
    lv = tl.load(lam + off, mask=valid, other=0.0).to(tl.float32)
    tl.store(h + off, w_l * h_l + w_m * h_m + w_r * h_r + lv * xv, mask=valid)


@triton.jit(do_not_specialize=["t", "n_chunks", "chunk", "P", "L", "n_elements"])
def _original_scan_bwd_step(
    x, lam, g1, g2, g3, h, dy, dh,
    dx, dlam, dg1, dg2, dg3,
    t, n_chunks, chunk, P, L, n_elements,
    BLOCK: tl.constexpr,
):
    """Step ``t`` of the adjoint (run for t = chunk-1 .. 0): the same recurrence reversed with the
    gates of the next step, ``dh[p, s] = dy[p, s] + g3[p-1, s+1] dh[p-1, s+1] + g2[p, s+1] dh[p, s+1]
    + g1[p+1, s+1] dh[p+1, s+1]``; then the input and gate gradients of step s."""
    p, start, s, valid, off = _step_position(t, n_chunks, chunk, P, L, n_elements, BLOCK)
    has_next = valid & (s + 1 < start + chunk) & (s + 1 < L)
    up_next = has_next & (p > 0)
    down_next = has_next & (p < P - 1)
    acc = tl.load(dy + off, mask=valid, other=0.0).to(tl.float32)
    nxt = off + 1  # (p, s+1); its neighbours above/below are nxt -/+ L
    acc += tl.load(dh + nxt - L, mask=up_next, other=0.0) * tl.load(g3 + nxt - L, mask=up_next, other=0.0).to(tl.float32)
    acc += tl.load(dh + nxt, mask=has_next, other=0.0) * tl.load(g2 + nxt, mask=has_next, other=0.0).to(tl.float32)
    acc += tl.load(dh + nxt + L, mask=down_next, other=0.0) * tl.load(g1 + nxt + L, mask=down_next, other=0.0).to(tl.float32)
    tl.store(dh + off, acc, mask=valid)
    xv = tl.load(x + off, mask=valid, other=0.0).to(tl.float32)
    lv = tl.load(lam + off, mask=valid, other=0.0).to(tl.float32)
    tl.store(dx + off, (lv * acc).to(dx.dtype.element_ty), mask=valid)
    tl.store(dlam + off, (xv * acc).to(dlam.dtype.element_ty), mask=valid)
    has_prev = valid & (s > start)
    h_l = tl.load(h + off - L - 1, mask=has_prev & (p > 0), other=0.0)
    h_m = tl.load(h + off - 1, mask=has_prev, other=0.0)
    h_r = tl.load(h + off + L - 1, mask=has_prev & (p < P - 1), other=0.0)
    tl.store(dg1 + off, (acc * h_l).to(dg1.dtype.element_ty), mask=valid)
    tl.store(dg2 + off, (acc * h_m).to(dg2.dtype.element_ty), mask=valid)
    tl.store(dg3 + off, (acc * h_r).to(dg3.dtype.element_ty), mask=valid)


def chunk_length(L: int, chunk: int | None) -> int:
    """Steps per chunk (= launches per pass): the original's ``min(W, items_each_chunk)``."""
    if chunk is None:
        return L
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk: expected a positive integer or None (global propagation), got {chunk!r}")
    return min(L, chunk)


def _geometry(x: torch.Tensor, chunk: int | None) -> tuple[int, int, int, int, int]:
    B, C, P, L = x.shape
    steps = chunk_length(L, chunk)
    n_chunks = triton.cdiv(L, steps)
    return P, L, steps, n_chunks, B * C * P * n_chunks


def original_scan_fwd(x, lam, g1, g2, g3, chunk: int | None) -> torch.Tensor:
    """Forward launches; returns the fp32 hidden state ``(B, C, P, L)``."""
    P, L, steps, n_chunks, n = _geometry(x, chunk)
    h = torch.empty(x.shape, device=x.device, dtype=torch.float32)
    grid = (triton.cdiv(n, BLOCK),)
    for t in range(steps):  # one launch per step, as the original
        _original_scan_fwd_step[grid](x, lam, g1, g2, g3, h, t, n_chunks, steps, P, L, n, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return h


def original_scan_bwd(x, lam, g1, g2, g3, h, dy, chunk: int | None) -> tuple[torch.Tensor, ...]:
    """Backward launches in reverse step order; returns ``(dx, dlam, dg1, dg2, dg3)`` in the input dtypes."""
    P, L, steps, n_chunks, n = _geometry(x, chunk)
    dh = torch.empty(x.shape, device=x.device, dtype=torch.float32)  # never the incoming gradient
    grads = [torch.empty_like(t) for t in (x, lam, g1, g2, g3)]
    grid = (triton.cdiv(n, BLOCK),)
    for t in reversed(range(steps)):
        _original_scan_bwd_step[grid](x, lam, g1, g2, g3, h, dy, dh, *grads, t, n_chunks, steps, P, L, n,
                                      BLOCK=BLOCK, num_warps=NUM_WARPS)
    return tuple(grads)


class _OriginalScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lam, g1, g2, g3, chunk):
        h = original_scan_fwd(x, lam, g1, g2, g3, chunk)
        ctx.save_for_backward(x, lam, g1, g2, g3, h)  # h stored, as the original (no recompute)
        ctx.chunk = chunk
        return h if x.dtype == torch.float32 else h.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, lam, g1, g2, g3, h = ctx.saved_tensors
        grads = original_scan_bwd(x, lam, g1, g2, g3, h, dy.contiguous(), ctx.chunk)
        return (*grads, None)


def _check(x: torch.Tensor, others: dict[str, torch.Tensor]) -> None:
    if x.dim() != 4:
        raise ValueError(f"x: expected (B, C, P, L), got shape {tuple(x.shape)}")
    for name, t in others.items():
        if t.shape != x.shape:
            raise ValueError(f"{name}: expected shape {tuple(x.shape)} (that of x), got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"{name}: on {t.device}, x on {x.device}")
        if t.dtype != x.dtype:
            raise ValueError(f"{name}: dtype {t.dtype}, x has {x.dtype}; the original kernel takes one dtype")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"x: dtype {x.dtype} not supported; allowed: float32, bfloat16, float16")


def original_scan(x: torch.Tensor, lam: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, g3: torch.Tensor,
                  chunk: int | None = None) -> torch.Tensor:
    """The original GSPN scan, one launch per step (see the module docstring); differentiable.

    x, lam, g1, g2, g3: ``(B, C, P, L)``, one dtype (float32, bfloat16 or float16), gates already
    normalized; scans along L, restarting every ``chunk`` steps (None: global). Returns the
    hidden state ``h`` ``(B, C, P, L)`` in the input dtype (computed with fp32 state).

    Example::

        x, lam, g1, g2, g3 = (torch.rand(2, 8, 5, 7, device="cuda") for _ in range(5))
        h = original_scan(x, lam, g1, g2, g3, chunk=None)
    """
    _check(x, {"lam": lam, "g1": g1, "g2": g2, "g3": g3})
    chunk_length(x.shape[-1], chunk)  # validates chunk
    check_runnable("original_scan", x, lam, g1, g2, g3)
    tensors = [t.contiguous() for t in (x, lam, g1, g2, g3)]
    return _OriginalScanFunction.apply(*tensors, chunk)


def original_scan_reference(x: torch.Tensor, lam: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, g3: torch.Tensor,
                            chunk: int | None = None) -> torch.Tensor:
    """What :func:`original_scan` computes, from the PyTorch reference: ``propagate_reference``
    (direction ``"lr"`` on the channels-last view) run on each chunk of L separately, since the
    state restarts at every chunk. Same shapes; computes in the promoted input dtype; differentiable."""
    steps = chunk_length(x.shape[-1], chunk)
    last = [t.permute(0, 2, 3, 1) for t in (x, lam, g1, g2, g3)]  # (B, P, L, C)
    gates = torch.stack(last[2:], dim=3)  # (B, P, L, 3, C): l, m, r = g1, g2, g3
    pieces = []
    for start in range(0, x.shape[-1], steps):
        part = slice(start, start + steps)
        pieces.append(propagate_reference(last[0][:, :, part], last[1][:, :, part], gates[:, :, part], "lr"))
    return torch.cat(pieces, dim=2).permute(0, 3, 1, 2)
