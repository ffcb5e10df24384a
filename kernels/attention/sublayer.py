"""Attention sublayers: ``softmax(Q K^T / sqrt(d)) V`` on ``(B, heads, N, head_dim)`` tensors.

Backends (tritonbench-style: optional imports set ``HAS_*`` flags, each backend is resolved once
per device into an :class:`AttentionKernel` whose ``fn(q, k, v)`` is the only thing timed):

- ``math``: explicit ``Q K^T`` in the input dtype, softmax in float32, then ``P V`` — the
  textbook quadratic-memory attention; it runs everywhere and runs out of memory first.
- ``flash``: the flash-attn package when importable (FA3 ``flash_attn_interface`` on Hopper,
  else FA2 ``flash_attn``), otherwise PyTorch SDPA restricted to its FLASH_ATTENTION backend (its
  bundled FA2, or FA3/FA4 when activated through ``torch.nn.attention``; torch is asked which).
  ``AttentionKernel.detail`` records which one it is.
- ``cudnn`` / ``mem-efficient``: PyTorch SDPA restricted to ``CUDNN_ATTENTION`` /
  ``EFFICIENT_ATTENTION``.

SDPA backends are always pinned with ``torch.nn.attention.sdpa_kernel`` to exactly one backend,
so a case the backend cannot run raises instead of silently falling back to math;
:func:`backend_unavailable` turns that into the reason recorded for an ``unsupported`` row.

FLOPs (forward): ``4 * B * heads * N^2 * head_dim`` (two GEMMs); backward counted as 2.5x
forward (five GEMMs incl. the recomputed ``Q K^T``), the FlashAttention convention.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

try:  # FlashAttention-3 (Hopper build of the flash-attn repository)
    import flash_attn_interface

    HAS_FLASH_ATTN_3 = True
except (ImportError, OSError):
    flash_attn_interface = None
    HAS_FLASH_ATTN_3 = False

try:  # FlashAttention-2
    import flash_attn

    HAS_FLASH_ATTN_2 = True
except (ImportError, OSError):
    flash_attn = None
    HAS_FLASH_ATTN_2 = False

BACKENDS = ("math", "flash", "cudnn", "mem-efficient")
SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "mem-efficient": SDPBackend.EFFICIENT_ATTENTION,
}
BWD_FLOP_FACTOR = 2.5

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AttentionKernel:
    """One resolved backend: ``fn(q, k, v) -> o`` on ``(B, heads, N, head_dim)``."""

    backend: str  # one of BACKENDS (or "reference")
    detail: str  # what actually runs, e.g. "sdpa-flash FA2 (bundled) (torch 2.11.0)"
    fn: AttentionFn


def attention_flops(batch: int, heads: int, tokens: int, head_dim: int) -> float:
    """Forward FLOPs of one attention over ``tokens`` keys and queries: QK^T and PV."""
    return 4.0 * batch * heads * tokens * tokens * head_dim


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Shapes must agree and be 4-D ``(B, heads, N, head_dim)``; the message names the tensor."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be (B, heads, N, head_dim), got shape {tuple(t.shape)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"attention: q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Explicit attention: ``S = (Q / sqrt(d)) K^T`` in the input dtype (the GEMM a naive model
    runs), ``P = softmax(S)`` in float32 (so bf16 does not saturate), ``O = P V`` in the input
    dtype (float64 inputs stay float64 throughout). Materializes the ``(B, heads, N, N)`` scores:
    memory grows as N^2."""
    scores = torch.matmul(q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(-2, -1))
    softmax_dtype = torch.promote_types(q.dtype, torch.float32)  # fp32 for half types, fp64 stays fp64
    probs = torch.softmax(scores.to(softmax_dtype), dim=-1).to(q.dtype)
    return torch.matmul(probs, v)


def _attend_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v for one chunk, in the dtype of its arguments."""
    return torch.matmul(torch.softmax(torch.matmul(q * scale, k.transpose(-2, -1)), dim=-1), v)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype | None = None,
                        max_scores: int = 1 << 28) -> torch.Tensor:
    """Math attention in ``dtype`` (default float64 on CPU or for float64 inputs, else float32), chunked over
    (batch x head) slices and query rows so that at most ``max_scores`` scores exist at once:
    the reference of a 2K-resolution case must not run out of memory where FlashAttention fits.
    Returns ``dtype``. Differentiable when grad is enabled and an input requires it (the harness's
    gradient check): each chunk is checkpointed, so the graph keeps the chunk's inputs and the
    backward recomputes its scores, still at most ``max_scores`` at once."""
    check_qkv(q, k, v)
    if dtype is None:
        dtype = torch.float64 if q.device.type == "cpu" or q.dtype == torch.float64 else torch.float32
    b, h, n, d = q.shape
    differentiable = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    qs, ks, vs = (t.reshape(b * h, n, d) for t in (q, k, v))
    out = None if differentiable else torch.empty(b * h, n, d, device=q.device, dtype=dtype)
    rows = max(1, min(n, max_scores // n))  # query rows per slice that fit in the budget
    slices = max(1, max_scores // (rows * n))  # (batch x head) slices per chunk
    scale = 1.0 / math.sqrt(d)
    pieces = []  # differentiable: the chunks, concatenated at the end (cat's backward only slices)
    for s0 in range(0, b * h, slices):
        kc = ks[s0:s0 + slices].to(dtype)
        vc = vs[s0:s0 + slices].to(dtype)
        for r0 in range(0, n, rows):
            qc = qs[s0:s0 + slices, r0:r0 + rows].to(dtype)
            if differentiable:
                pieces.append(checkpoint(_attend_chunk, qc, kc, vc, scale, use_reentrant=False))
            else:
                out[s0:s0 + slices, r0:r0 + rows] = _attend_chunk(qc, kc, vc, scale)
    if differentiable:
        per_slice = -(-n // rows)  # query-row chunks per (batch x head) chunk
        out = torch.cat([torch.cat(pieces[i:i + per_slice], dim=1) for i in range(0, len(pieces), per_slice)], dim=0)
    return out.reshape(b, h, n, d)


def _sdpa(backend: SDPBackend) -> AttentionFn:
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(backend):  # exactly one backend: no silent fallback to math
            return F.scaled_dot_product_attention(q, k, v)

    return attend


def _flash_attn_package(func: Callable) -> AttentionFn:
    """flash-attn takes ``(B, N, heads, d)``; transposed views keep the last dim contiguous,
    which is all it needs. FA3 versions return ``(out, lse)``, FA2 returns ``out``."""

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        if isinstance(out, tuple):
            out = out[0]
        return out.transpose(1, 2)

    return attend


def _version(module) -> str:
    return getattr(module, "__version__", "unknown version")


BUNDLED = "FA2 (bundled)"


def sdpa_flash_impl() -> str:
    """The FlashAttention implementation behind SDPA's FLASH_ATTENTION backend, as torch reports it:
    ``torch.nn.attention.current_flash_attention_impl()`` ("FA3"/"FA4" once activated, None for
    the bundled FA2) where this torch has it; older torch always runs its bundled FA2."""
    import torch.nn.attention as attention

    current = attention.current_flash_attention_impl() if hasattr(attention, "current_flash_attention_impl") else None
    return current or BUNDLED


def activate_sdpa_flash_impl(name: str) -> str:
    """Make SDPA's FLASH_ATTENTION backend run the FlashAttention implementation ``name`` (e.g. "FA3",
    "FA4", registered with ``torch.nn.attention`` by their packages) for the rest of this process;
    returns what torch then reports. Activation cannot be undone in a process, which is why it is a
    run option (``cgspn-bench run --sdpa-flash-impl``) and not a per-case one. Raises ValueError
    naming what is allowed when torch or the implementation's package cannot do it."""
    import torch.nn.attention as attention

    if not hasattr(attention, "activate_flash_attention_impl"):
        raise ValueError(f"torch {torch.__version__} cannot switch SDPA's FlashAttention implementation "
                         "(torch.nn.attention.activate_flash_attention_impl is missing); it runs its bundled FA2")
    available = list(attention.list_flash_attention_impls())
    if name not in available:
        raise ValueError(f"{name!r} is not registered with torch {torch.__version__}; allowed: {', '.join(available) or 'none'}")
    try:
        attention.activate_flash_attention_impl(name)
    except Exception as exc:  # the provider's import or registration: usually its package is missing
        raise ValueError(f"{name} could not be activated ({type(exc).__name__}: {exc}); install the package that "
                         "provides it") from None
    return sdpa_flash_impl()


def resolve(backend: str, device_type: str) -> AttentionKernel:
    """The kernel ``backend`` means on ``device_type`` ("cuda" | "cpu"); raises ValueError for an
    unknown backend. For ``flash`` on CUDA: SDPA when an implementation was activated in it
    (:func:`activate_sdpa_flash_impl`: the user asked for it), else the flash-attn package (FA3 on
    compute capability 9.x, else FA2), else SDPA's bundled FA2; torch is asked which runs."""
    return _resolve(backend, device_type, sdpa_flash_impl() if backend == "flash" else "")


@functools.cache
def _resolve(backend: str, device_type: str, sdpa_impl: str) -> AttentionKernel:
    torch_v = f"torch {torch.__version__}"
    if backend == "math":
        return AttentionKernel("math", "math: explicit QK^T, fp32 softmax", math_attention)
    if backend == "reference":
        return AttentionKernel("reference", "reference: chunked math attention in fp32/fp64", reference_attention)
    if backend not in SDPA_BACKENDS:
        raise ValueError(f"attention backend {backend!r} unknown; allowed: {', '.join(BACKENDS)}")
    if backend == "flash" and device_type == "cuda":
        if sdpa_impl != BUNDLED:
            return AttentionKernel("flash", f"sdpa-flash {sdpa_impl} ({torch_v})", _sdpa(SDPBackend.FLASH_ATTENTION))
        if HAS_FLASH_ATTN_3 and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9:
            return AttentionKernel("flash", f"flash-attn-3 ({_version(flash_attn_interface)})",
                                   _flash_attn_package(flash_attn_interface.flash_attn_func))
        if HAS_FLASH_ATTN_2:
            return AttentionKernel("flash", f"flash-attn-2 ({_version(flash_attn)})",
                                   _flash_attn_package(flash_attn.flash_attn_func))
        return AttentionKernel("flash", f"sdpa-flash {sdpa_impl} ({torch_v})", _sdpa(SDPBackend.FLASH_ATTENTION))
    if backend == "flash":  # PyTorch's CPU FlashAttention-style kernel (blockwise online softmax)
        return AttentionKernel("flash", f"sdpa-flash-attention-cpu ({torch_v})", _sdpa(SDPBackend.FLASH_ATTENTION))
    name = {"cudnn": "sdpa-cudnn-attention", "mem-efficient": "sdpa-mem-efficient-attention"}[backend]
    return AttentionKernel(backend, f"{name} ({torch_v})", _sdpa(SDPA_BACKENDS[backend]))


@functools.cache
def probe_backend(backend: str, dtype: torch.dtype, head_dim: int, device_type: str) -> str | None:
    """Run the backend once on a tiny input; the SDPA warnings say why it refused."""
    kernel = resolve(backend, device_type)
    q = torch.randn(1, 1, 16, head_dim, device=device_type, dtype=dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            kernel.fn(q, q, q)
        except (RuntimeError, NotImplementedError, ValueError, TypeError) as err:
            why = "; ".join(str(w.message) for w in caught) or str(err)
            return f"{kernel.detail} cannot run dtype={str(dtype).removeprefix('torch.')} head_dim={head_dim}: {why}"
    return None


def backend_unavailable(backend: str, dtype: torch.dtype, head_dim: int, device_type: str) -> str | None:
    """Why ``backend`` cannot run here (None when it can). FlashAttention and cuDNN attention
    need CUDA and fp16/bf16; everything else is decided by running the pinned backend once."""
    if backend not in BACKENDS:
        return f"attention backend {backend!r} unknown; allowed: {', '.join(BACKENDS)}"
    if backend == "math":
        return None
    if device_type != "cuda":
        return f"attention-{backend}: needs a CUDA GPU (device here: {device_type})"
    if not torch.cuda.is_available():
        return f"attention-{backend}: CUDA is not available"
    if backend in ("flash", "cudnn") and dtype not in (torch.float16, torch.bfloat16):
        return f"attention-{backend}: supports float16/bfloat16 only, not {str(dtype).removeprefix('torch.')}"
    return probe_backend(backend, dtype, head_dim, device_type)


def fastest_backend(device_type: str, dtype: torch.dtype, head_dim: int) -> str:
    """The strongest attention baseline that runs here: cuDNN attention on Hopper (it beats
    FlashAttention-2 there, docs/design.md "Measured here"), else FlashAttention, else
    memory-efficient, else math."""
    order = ["flash", "mem-efficient", "math"]
    if device_type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9:
        order.insert(0, "cudnn")
    for backend in order:
        if backend_unavailable(backend, dtype, head_dim, device_type) is None:
            return backend
    return "math"
