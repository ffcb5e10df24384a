"""What the C-GSPN Triton kernels share: launch guards, autotune lists, the fast reciprocal and Eq. 2's sum.

Triton runs on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` is set before triton
is imported (the CPU test suite). The interpreter runs a kernel once per autotune config, so under
it every kernel gets a single config to stay fast.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from kernels.cgspn.reference import GATE_EPS

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_FAST_RCP = tl.constexpr(not INTERPRET)
GATE_EPS_TL = tl.constexpr(GATE_EPS)  # the one gate epsilon (reference.GATE_EPS), as a Triton constant


@triton.jit
def fast_rcp(x):
    """1/x in fp32 with the GPU's approximate division (``div.approx.ftz.f32``: a MUFU.RCP and a
    multiply, max error 2 ulp) instead of ``div.full.f32`` (the same reciprocal plus ~5 range-fixup
    instructions). The scan's normalization divides four times per element and step, so the fixups
    were ~30% of the forward's instructions (SASS, sm_90). Under the CPU interpreter, which has no
    libdevice, an exact division."""
    if _FAST_RCP:
        return libdevice.fast_dividef(1.0, x)
    else:
        return 1.0 / x


@triton.jit
def gate_denominator(s_l, s_m, s_r, has_l, has_r):
    """Eq. 2's denominator from the three sigmoids: ``D = m + [has l] l + [has r] r`` and ``max(D, GATE_EPS)``.

    Every Triton path (the fused normalization, the single-direction and quad scans, their backward)
    takes the normalized weights as ``sigmoid * 1 / max(D, eps)`` from here; each chooses its own
    reciprocal (exact, or ``fast_rcp`` in the quad scan). The backward also needs D itself
    (below the clamp D is constant)."""
    d = s_m + tl.where(has_l, s_l, 0.0) + tl.where(has_r, s_r, 0.0)
    return d, tl.maximum(d, GATE_EPS_TL)


def configs(full: list[triton.Config], interpreted: triton.Config) -> list[triton.Config]:
    """The autotune list: ``full`` on a GPU, only ``interpreted`` under the CPU interpreter."""
    return [interpreted] if INTERPRET else full


def check_runnable(name: str, *tensors: torch.Tensor) -> None:
    """Fail early, naming the argument, when a Triton kernel cannot run on these tensors."""
    device = tensors[0].device
    for t in tensors:
        if t.device != device:
            raise ValueError(f"{name}: all inputs must be on one device, got {device} and {t.device}")
    if device.type == "cpu" and not INTERPRET:
        raise RuntimeError(f"{name}: Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 set before importing triton)")
    if device.type not in ("cuda", "cpu"):
        raise RuntimeError(f"{name}: unsupported device {device.type}; Triton runs on cuda")


def runnable(device: torch.device | str) -> bool:
    """Whether the Triton path can run on ``device`` here."""
    return torch.device(device).type == "cuda" or INTERPRET
