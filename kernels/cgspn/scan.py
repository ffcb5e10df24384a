"""The C-GSPN sublayer scan (paper Eq. 1-2, 4-6): variants, backend selection, custom operators, public API.

Layout and axes. Every tensor is channels-last ``(B, H, W, C)`` (gates ``(B, H, W, 3, C)``) with
unit stride on C and any other strides, so the layer's views of one fused head output
``Linear(C_c, 5*C_c)`` are read in place. A kernel sees one *scan axis* of length L (the rows it
steps through) and one *state axis* of length P (the row it holds): vertical scans (tb, bt) use
(L, P) = (H, W), horizontal scans (lr, rl) use (W, H). l and r weight the state at p-1 and p+1; the
gate normalization (Eq. 2) drops l at p=0 and r at p=P-1, the per-axis rule of
:mod:`kernels.cgspn.reference`. Normalization is recomputed from the raw gates in registers.

One design per file:

- :mod:`kernels.cgspn.scan_quad` - the Triton quad scan (default Triton design): four directions in one
  pipelined launch + combine; its three-launch backward;
- :mod:`kernels.cgspn.cuda_scan` (+ ``cuda_scan_source``) - the CUDA fast path (sm_90, CuPy): the row forward
  and its backward (adjoint rows + one elementwise pass), the same ``hs`` contract as the quad scan;
- :mod:`kernels.cgspn.scan_directions` - one direction per launch (``propagate``; the ``directions-*`` variants);
- :mod:`kernels.cgspn.scan_pairs` - one launch per axis (``pairs-*``, round 1's design, kept for A/B);
- :mod:`kernels.cgspn.scan_common` - the neighbour shift, Eq. 2's raw-gate gradient, input checks.

Custom operators. The scan is a PyTorch custom operator so that ``torch.compile`` traces the C-GSPN layer
without graph breaks and CUDA graphs capture it: ``cgspn::scan`` (x, lam, u, gates) and ``cgspn::scan_head``
(x and the layer's fused head output), each with a fake (meta) implementation and an autograd formula that
calls ``cgspn::scan_backward`` / ``cgspn::scan_head_backward``. The variant name is an operator argument;
the backend (CUDA fast path or the Triton quad-scratch fallback, for ``auto`` / ``cuda-fast``) is resolved
inside the operator at run time, so a compiled graph keeps the same run-time choice as eager code. An eager
call that records no autograd (inference) calls the operator's implementation directly (:func:`_forward`):
the operator's own dispatch costs more host time than the scan takes at small grids.
Outputs: y, and the per-direction states ``hs`` the backward reads (plus, for the pairs/directions designs,
their fp32 four-direction sum); only y is differentiable. Design notes: NOTES.md; docs/design.md.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode

from kernels.cgspn import cuda_image, cuda_scan
from kernels.cgspn.scan_common import SHIFT_GATHER, SHIFT_SCRATCH, _check_head, _check_inputs, _unit_channel_stride
from kernels.cgspn.scan_directions import _scan_by_directions_bwd, _scan_directions_fwd, propagate
from kernels.cgspn.scan_pairs import _scan_pairs_fwd
from kernels.cgspn.scan_quad import _scan_quad_bwd, _scan_quad_fwd

__all__ = ["cgspn_scan", "cgspn_scan_head", "head_views", "propagate", "scan_backend", "SCAN_VARIANTS",
           "DEFAULT_VARIANT", "FAST_VARIANT", "SHIFT_GATHER", "SHIFT_SCRATCH"]

# Variants the GPU bench compares: design (quad: four directions in one pipelined launch; pairs: one
# launch per axis; directions: four launches + PyTorch merge) x shift method. quad-scratch is the fastest
# Triton design on an H200 (results/h200/2026-11-27-scan-variant-ab: 0.31 vs 0.41 ms at
# grid 74 and 1.43 vs 1.92 ms at grid 147 for quad-gather, B=32, C_c=64, bf16, forward).
# ``cuda-fast``: the CUDA forward and backward of :mod:`kernels.cgspn.cuda_scan` (sm_90, CuPy) wherever they can
# run (``cuda_scan.unavailable_reason``); elsewhere quad-scratch. ``cuda-fwd-triton-bwd``: the CUDA forward with
# the quad-scratch Triton backward (round 5's fast path), kept for the backward A/B.
# ``auto`` (the default): cuda-fast for bfloat16/float16, quad-scratch for float32, as measured on an H200
# (NOTES.md "Round 5", B=32: the CUDA forward 1.16-1.6x faster in bf16; float32 0.86-0.89x; Round 7: the backward).
# ``cuda-image``: the CUDA image forward (:mod:`kernels.cgspn.cuda_image`) where the inputs are planar and it can
# run, else as cuda-fast; opt-in: slower than cuda-fast at B=32 on an H200 (NOTES.md "Round 6": 1.35 vs 0.84 ms
# at 147, instruction-bound at one element per thread and step), faster at B=1 (0.088 vs 0.170 ms).
SCAN_VARIANTS = ("auto", "quad-scratch", "quad-gather", "pairs-gather", "pairs-scratch", "directions-gather",
                 "directions-scratch", "cuda-fast", "cuda-fwd-triton-bwd", "cuda-image")
FAST_VARIANT = "cuda-fast"
FAST_FWD_VARIANT = "cuda-fwd-triton-bwd"
IMAGE_VARIANT = "cuda-image"
DEFAULT_VARIANT = "auto"
_FAST_DTYPES = (torch.bfloat16, torch.float16)  # where "auto" takes the fast path


# ---------------------------------------------------------------------------------------------
# variant selection
# ---------------------------------------------------------------------------------------------
def _variant_options(name: str, variant: str) -> tuple[str, int]:
    """(design, shift method) of a :data:`SCAN_VARIANTS` name, e.g. ``"quad-scratch"`` -> ("quad", SHIFT_SCRATCH)."""
    if variant not in SCAN_VARIANTS:
        raise ValueError(f"{name}: variant {variant!r} is not one of {', '.join(SCAN_VARIANTS)}")
    if variant in _CUDA_DESIGNS:  # the Triton backward's (and fallback's) shift
        return _CUDA_DESIGNS[variant], SHIFT_SCRATCH
    design, shift_name = variant.split("-")
    return design, SHIFT_GATHER if shift_name == "gather" else SHIFT_SCRATCH


# variant name -> design of the CUDA-capable variants: cuda (CUDA forward and backward), cuda-fwd (CUDA forward,
# Triton backward), image (the image forward on planar inputs, else as cuda), auto (cuda for 16-bit inputs)
_CUDA_DESIGNS = {FAST_VARIANT: "cuda", FAST_FWD_VARIANT: "cuda-fwd", IMAGE_VARIANT: "image", "auto": "auto"}
_CUDA_BACKWARD_DESIGNS = ("cuda", "auto")  # the designs whose backward is CUDA where the fast path runs


def _fast_path_reason(design: str, x: torch.Tensor, *others: torch.Tensor) -> str | None:
    """For the CUDA-capable designs: None when the row CUDA path runs on these inputs, else why not (then the
    quad-scratch Triton path runs). Other designs: None."""
    if design == "auto" and x.dtype not in _FAST_DTYPES:
        return f"{str(x.dtype).replace('torch.', '')}: the Triton forward measured faster (NOTES.md Round 5)"
    return cuda_scan.unavailable_reason(x, *others) if design in _CUDA_DESIGNS.values() else None


def _resolve(design: str, x: torch.Tensor, *others: torch.Tensor) -> str:
    """``cuda`` when the row fast path runs these inputs, ``quad`` for a CUDA-capable request it does not; else as
    given (an ``image`` request that reaches here did not take the image kernel)."""
    if design in _CUDA_DESIGNS.values():
        return "cuda" if _fast_path_reason(design, x, *others) is None else "quad"
    return design


def _cuda_backward(design: str, x: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether the CUDA backward runs (the ``cuda`` and ``auto`` designs where the fast path runs); it reads the
    same ``hs`` as the Triton one, so it does not depend on which forward stored it."""
    return design in _CUDA_BACKWARD_DESIGNS and _fast_path_reason(design, x, *others) is None


def scan_backend(variant: str, x: torch.Tensor, *others: torch.Tensor) -> str:
    """What :func:`cgspn_scan` / :func:`cgspn_scan_head` run for ``variant`` on these inputs, in words
    (a workload's ``backend_detail``): ``"cuda-fast-path (fwd CUDA, bwd CUDA)"``, ``"cuda-fast-path (fwd CUDA,
    bwd triton quad-scratch)"``, or ``"triton quad-scratch (fast path not used: <reason>)"``, or ``"triton <variant>"``."""
    design, _ = _variant_options("scan_backend", variant)
    if design not in _CUDA_DESIGNS.values():
        return f"triton {variant}"
    image_reason = cuda_image.unavailable_reason(x, *others) if design == "image" else None
    reason = _fast_path_reason(design, x, *others)
    if design == "image" and image_reason is None:  # its backward: the row CUDA one on channels-last copies
        return f"cuda-image (fwd CUDA image kernel, planar inputs; bwd {'CUDA' if reason is None else 'triton quad-scratch'})"
    backward = "CUDA" if design in _CUDA_BACKWARD_DESIGNS else "triton quad-scratch"
    backend = (f"cuda-fast-path (fwd CUDA, bwd {backward})" if reason is None
               else f"triton quad-scratch (fast path not used: {reason})")
    return backend + (f" (image kernel not used: {image_reason})" if design == "image" else "")


def head_views(head: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lam, u, gates) of the C-GSPN layer's fused head output ``(B, H, W, 5, C)`` = [u, lam, l, m, r]
    (``kernels.cgspn.layer.HEADS``), as strided views."""
    return head.select(3, 1), head.select(3, 0), head.narrow(3, 2, 3)


def _uses_quad_backward(design: str) -> bool:
    """The quad, CUDA (row and image) and auto designs store ``hs`` and use the quad backward or its CUDA twin."""
    return design in ("quad", *_CUDA_DESIGNS.values())


# ---------------------------------------------------------------------------------------------
# custom operators: cgspn::scan (x, lam, u, gates) and cgspn::scan_head (x, fused head output)
# ---------------------------------------------------------------------------------------------
def _scan_forward(x: torch.Tensor, lam: torch.Tensor, u: torch.Tensor, gates: torch.Tensor, variant: str,
                  store_h: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, total, hs) of :func:`cgspn_scan` on checked inputs with unit channel stride. ``total`` is the fp32
    four-direction sum of the pairs/directions designs (empty for the others, whose backward sums ``hs``);
    ``hs`` holds each direction's h (the pairs design stores it only with ``store_h``)."""
    design, shift = _variant_options("cgspn_scan", variant)
    design = _resolve(design, x, lam, u, gates)  # cuda/auto -> cuda, or the quad-scratch fallback
    if design in ("quad", "cuda"):
        y, hs = cuda_scan.scan_forward(x, lam, u, gates) if design == "cuda" else _scan_quad_fwd(x, lam, u, gates, shift)
        return y, hs.new_empty(0), hs  # du sums the stored h in the backward
    if design == "pairs":
        return _scan_pairs_fwd(x, lam, u, gates, store_h, shift)
    y, total, hs = _scan_directions_fwd(x, lam, u, gates, shift)
    return y.contiguous(), total, hs


_scan_op = torch.library.custom_op("cgspn::scan", _scan_forward, mutates_args=())


@_scan_op.register_fake
def _(x, lam, u, gates, variant, store_h):
    design, _ = _variant_options("cgspn_scan", variant)
    B, H, W, C = x.shape
    y = x.new_empty(B, H, W, C)
    if _uses_quad_backward(design):
        return y, x.new_empty(0), x.new_empty(4, B, H, W, C)
    hs = x.new_empty(4, B, H, W, C) if store_h or design != "pairs" else x.new_empty(4, 1, 1, 1, 1)
    return y, x.new_empty(B, H, W, C, dtype=torch.float32), hs


@torch.library.custom_op("cgspn::scan_backward", mutates_args=())
def _scan_backward_op(x: torch.Tensor, lam: torch.Tensor, u: torch.Tensor, gates: torch.Tensor, total: torch.Tensor,
                      hs: torch.Tensor, dy: torch.Tensor, variant: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                                  torch.Tensor]:
    """(dx, dlam, du, dgates) of ``cgspn::scan`` from its saved inputs and outputs."""
    design, shift = _variant_options("cgspn_scan", variant)
    if _uses_quad_backward(design):  # the fast path stores hs exactly like the quad forward
        dy = _unit_channel_stride(dy)
        if _cuda_backward(design, x, lam, u, gates, dy):
            return cuda_scan.scan_backward(x, lam, u, gates, hs, dy)
        # dh in the input dtype (one rounding, read by four directions); every sum in fp32 registers
        return _scan_quad_bwd(x, lam, u, gates, hs, dy, shift)
    dx, dlam, du, dg = _scan_by_directions_bwd(x, lam, u, gates, total, hs, dy, shift)
    return dx, dlam, du.contiguous(), dg


@_scan_backward_op.register_fake
def _(x, lam, u, gates, total, hs, dy, variant):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (x, lam, u, gates))


def _scan_setup(ctx, inputs, output):
    x, lam, u, gates, variant, _ = inputs
    _, total, hs = output
    ctx.mark_non_differentiable(total, hs)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the outputs only the backward reads
    ctx.save_for_backward(x, lam, u, gates, total, hs)
    ctx.variant = variant


def _scan_backward(ctx, dy, _total_grad, _hs_grad):
    dx, dlam, du, dg = _scan_backward_op(*ctx.saved_tensors, dy, ctx.variant)
    return dx, dlam, du, dg, None, None


_scan_op.register_autograd(_scan_backward, setup_context=_scan_setup)


def _scan_head_forward(x: torch.Tensor, head: torch.Tensor, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, hs) of :func:`cgspn_scan_head` for the quad, cuda-fast and auto variants (checked inputs)."""
    design, shift = _variant_options("cgspn_scan_head", variant)
    lam, u, gates = head_views(head)
    if _resolve(design, x, head) == "cuda":
        return cuda_scan.scan_forward(x, lam, u, gates)
    return _scan_quad_fwd(x, lam, u, gates, shift)


_scan_head_op = torch.library.custom_op("cgspn::scan_head", _scan_head_forward, mutates_args=())


@_scan_head_op.register_fake
def _(x, head, variant):
    return x.new_empty(x.shape), x.new_empty(4, *x.shape)


@torch.library.custom_op("cgspn::scan_head_backward", mutates_args=())
def _scan_head_backward_op(x: torch.Tensor, head: torch.Tensor, hs: torch.Tensor, dy: torch.Tensor,
                           variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dhead): the quad backward (or its CUDA twin) writing du, dlam and dgates straight into their slices
    of one head gradient. With three view inputs instead, autograd builds each view's gradient as a zero-filled
    head-sized tensor, copies into it and sums the three (~1.9 ms of a 6.1 ms fwd+bwd at B=32,
    147x147, C_c=64, H200)."""
    design, shift = _variant_options("cgspn_scan_head", variant)
    dhead = torch.empty(head.shape, device=head.device, dtype=head.dtype)
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    d_lam, d_u, d_gates = head_views(dhead)
    dy, out = _unit_channel_stride(dy), (dx, d_lam, d_u, d_gates)
    if _cuda_backward(design, x, head, dy):
        cuda_scan.scan_backward(x, *head_views(head), hs, dy, out=out)
    else:
        _scan_quad_bwd(x, *head_views(head), hs, dy, shift, out=out)
    return dx, dhead


@_scan_head_backward_op.register_fake
def _(x, head, hs, dy, variant):
    return x.new_empty(x.shape), head.new_empty(head.shape)


def _scan_head_setup(ctx, inputs, output):
    x, head, variant = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, head, output[1])
    ctx.variant = variant


def _scan_head_backward(ctx, dy, _hs_grad):
    dx, dhead = _scan_head_backward_op(*ctx.saved_tensors, dy, ctx.variant)
    return dx, dhead, None


_scan_head_op.register_autograd(_scan_head_backward, setup_context=_scan_head_setup)


def _scan_head_planar_forward(x: torch.Tensor, head: torch.Tensor, bias: torch.Tensor | None,
                              x_bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, hs) of the CUDA image forward on planar x and head (checked inputs, :func:`_image_path` true);
    y is a ``(B, H, W, C)`` view of planar storage, hs ``(4, B, C, H, WP)`` (:func:`kernels.cgspn.cuda_image.scan_forward`)."""
    return cuda_image.scan_forward(x, *head_views(head), bias, x_bias)


_scan_head_planar_op = torch.library.custom_op("cgspn::scan_head_planar", _scan_head_planar_forward, mutates_args=())


@_scan_head_planar_op.register_fake
def _(x, head, bias, x_bias):
    return cuda_image.empty_outputs(x)


@torch.library.custom_op("cgspn::scan_head_planar_backward", mutates_args=())
def _scan_head_planar_backward_op(x: torch.Tensor, head: torch.Tensor, bias: torch.Tensor | None, x_bias: torch.Tensor | None,
                                  hs: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                              torch.Tensor]:
    """(dx, dhead, dbias, dx_bias) by the CUDA backward (where the row fast path runs, else the Triton quad
    backward) on channels-last copies of the inputs (biases added) and of hs; dx and dhead come back
    channels-last, dbias / dx_bias (empty without a bias) sum them."""
    B, H, W, C = x.shape

    def channels_last(t, vector, shape):  # one pass: the contiguous copy, with the bias added when given
        out = torch.empty(t.shape, device=t.device, dtype=t.dtype)
        return out.copy_(t) if vector is None else torch.add(t, vector.view(shape), out=out)

    x_cl, head_cl = channels_last(x, x_bias, (C,)), channels_last(head, bias, (5, C))
    dhead = torch.empty_like(head_cl)
    dx = torch.empty_like(x_cl)
    d_lam, d_u, d_gates = head_views(dhead)
    hs_cl, dy, out = cuda_image.hs_channels_last(hs, W), _unit_channel_stride(dy), (dx, d_lam, d_u, d_gates)
    if _cuda_backward("cuda", x_cl, head_cl, dy):
        cuda_scan.scan_backward(x_cl, *head_views(head_cl), hs_cl, dy, out=out)
    else:
        _scan_quad_bwd(x_cl, *head_views(head_cl), hs_cl, dy, SHIFT_SCRATCH, out=out)

    def total(grad, given):  # the gradient of a per-channel bias: the sum over batch and pixels
        return grad.sum((0, 1, 2), dtype=torch.float32).to(grad.dtype).reshape(-1) if given is not None else grad.new_empty(0)

    return dx, dhead, total(dhead, bias), total(dx, x_bias)


@_scan_head_planar_backward_op.register_fake
def _(x, head, bias, x_bias, hs, dy):
    return (x.new_empty(x.shape), head.new_empty(head.shape), head.new_empty(0 if bias is None else bias.numel()),
            x.new_empty(0 if x_bias is None else x_bias.numel()))


def _scan_head_planar_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*inputs, output[1])


def _scan_head_planar_backward(ctx, dy, _hs_grad):
    x, head, bias, x_bias, hs = ctx.saved_tensors
    dx, dhead, dbias, dx_bias = _scan_head_planar_backward_op(x, head, bias, x_bias, hs, dy)
    return dx, dhead, (dbias if bias is not None else None), (dx_bias if x_bias is not None else None)


_scan_head_planar_op.register_autograd(_scan_head_planar_backward, setup_context=_scan_head_planar_setup)


def _image_path(design: str, x: torch.Tensor, *others: torch.Tensor) -> bool:
    """True when a ``cuda-image`` request runs the CUDA image forward on these inputs (planar, 16-bit, fits)."""
    return design == "image" and cuda_image.unavailable_reason(x, *others) is None


def _forward(op, implementation, *tensors: torch.Tensor | None):
    """The custom operator ``op``, or its ``implementation`` called directly for an eager call that records no
    autograd: plain tensors, no dispatch mode (FakeTensor, FlopCounter...), not traced by ``torch.compile``,
    no gradient needed. The operator's dispatch (autograd wrapper, redispatch, a check that outputs do not
    alias inputs) costs ~50 us of host time per call on an H200 machine (NOTES.md Round 7): more than the
    whole scan at small grids, and nothing an inference call uses."""
    if torch.compiler.is_compiling() or _current_dispatch_mode() is not None:
        return op
    tensors = [t for t in tensors if t is not None]
    if any(type(t) is not torch.Tensor for t in tensors):
        return op
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return op
    return implementation


# ---------------------------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------------------------
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
            ``"directions-scratch"`` (four single-direction launches), ``"cuda-fast"`` (the CUDA forward and
            backward of :mod:`kernels.cgspn.cuda_scan`, on sm_90 with CuPy; elsewhere quad-scratch runs,
            :func:`scan_backend` says which and why), ``"cuda-fwd-triton-bwd"`` (its forward with the
            quad-scratch backward); see :data:`SCAN_VARIANTS`.

    Returns:
        y ``(B, H, W, C)`` in the dtype of x; fp32 state and accumulation. Differentiable
        w.r.t. all four inputs (Triton or CUDA backward; the forward stores each direction's h).

    Example::

        B, H, W, C = 2, 27, 27, 64
        x, lam, u = (torch.randn(B, H, W, C, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        gates = torch.randn(B, H, W, 3, C, device="cuda", dtype=torch.bfloat16)
        y = cgspn_scan(x, lam, u, gates)
    """
    _variant_options("cgspn_scan", variant)  # an unknown name fails here, before any check of the tensors
    _check_inputs("cgspn_scan", {"x": x, "lam": lam, "u": u}, gates)
    x, lam, u, gates = (_unit_channel_stride(t) for t in (x, lam, u, gates))
    if x.numel() == 0:
        return torch.zeros_like(x)
    # the forward stores each direction's h only when a backward will need it (the pairs design skips it otherwise)
    store_h = torch.is_grad_enabled() and any(t.requires_grad for t in (x, lam, u, gates))
    return _forward(_scan_op, _scan_forward, x, lam, u, gates)(x, lam, u, gates, variant, store_h)[0]


def cgspn_scan_head(x: torch.Tensor, head: torch.Tensor, *, variant: str = DEFAULT_VARIANT,
                    bias: torch.Tensor | None = None, x_bias: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`cgspn_scan` on the C-GSPN layer's fused head output, the way the layer calls it.

    ``head`` is ``(B, H, W, 5, C)`` holding [u, lam, l, m, r] on dim 3 (one ``Linear(C, 5C)``
    output, ``kernels.cgspn.layer.HEADS``); the result equals
    ``cgspn_scan(x, head[..., 1, :], head[..., 0, :], head[..., 2:5, :])``. The difference is the
    backward: the quad variants (and cuda-fast, whose forward is CUDA) return the head's gradient as
    one tensor, written in place by the backward's prologue and epilogue, instead of three view
    gradients that autograd zero-fills, copies and sums (see ``cgspn::scan_head_backward``). Other
    variants go through :func:`cgspn_scan`.

    Planar inputs (unit stride along W, e.g. ``head`` a ``(B, 5, C, H, W)`` tensor viewed with
    ``permute(0, 3, 4, 1, 2)``): with ``variant="cuda-image"`` in bfloat16/float16 on an sm_90 GPU, the CUDA image
    forward (:mod:`kernels.cgspn.cuda_image`; y comes back as a view of planar storage); other paths copy
    them to channels-last once. ``bias``: an optional ``(5 C,)`` head bias in [u, lam, l, m, r] order, added
    to ``head``, and ``x_bias`` an optional ``(C,)`` bias added to x (inside the image kernel; elsewhere by
    PyTorch adds), so the layer's planar GEMMs need no bias pass over their outputs.

    Example::

        head = layer.heads(x_c).unflatten(-1, (5, C))   # (B, H, W, 5, C)
        y = cgspn_scan_head(x_c, head)
    """
    design, _ = _variant_options("cgspn_scan_head", variant)
    if head.dim() != 5 or tuple(head.shape) != (*x.shape[:3], 5, *x.shape[3:]):
        raise ValueError(f"cgspn_scan_head: head must be (B, H, W, 5, C) = {(*x.shape[:3], 5, *x.shape[3:])} for x of shape "
                         f"{tuple(x.shape)} ([u, lam, l, m, r] on dim 3), got {tuple(head.shape)}")
    for name, vector, size in (("bias", bias, 5 * x.shape[-1]), ("x_bias", x_bias, x.shape[-1])):
        if vector is not None and (tuple(vector.shape) != (size,) or vector.dtype != x.dtype or vector.device != x.device):
            raise ValueError(f"cgspn_scan_head: {name} must be ({size},) of {x.dtype} on {x.device} like x, "
                             f"got {tuple(vector.shape)} of {vector.dtype} on {vector.device}")
    image = x.numel() > 0 and _image_path(design, x, head)
    if (bias is not None or x_bias is not None) and not image:
        # the other paths take the biased tensors as inputs
        head = head if bias is None else head + bias.view(5, x.shape[-1])
        x = x if x_bias is None else x + x_bias
        bias = x_bias = None
    if not _uses_quad_backward(design):
        return cgspn_scan(x, *head_views(head), variant=variant)
    _check_head("cgspn_scan_head", x, head)
    if x.numel() == 0:
        return torch.zeros_like(x)
    if image:
        return _forward(_scan_head_planar_op, _scan_head_planar_forward, x, head, bias, x_bias)(x, head, bias, x_bias)[0]
    x, head = _unit_channel_stride(x), _unit_channel_stride(head)
    return _forward(_scan_head_op, _scan_head_forward, x, head)(x, head, variant)[0]
