"""The original GSPN scan (one launch per step) against the PyTorch reference, chunked and global.

The reference is ``propagate_reference`` (direction ``"lr"`` on the channels-last view) run on
each chunk separately; forward and every gradient are compared with one shared random upstream
gradient, on non-power-of-two shapes, with outputs poisoned by NaN-filled ``torch.empty`` being
impossible to pass unnoticed (the relative RMS of :func:`suite.measure.compare` fails on NaN).
On CPU the Triton kernels run under ``TRITON_INTERPRET=1`` at tiny shapes.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first triton import

from kernels.gspn.original_scan import chunk_length, original_scan, original_scan_reference  # noqa: E402
from suite.tests.helpers import assert_rel_rms  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REL_RMS = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert_rel_rms(out, ref, REL_RMS[dtype], f"{what} ({dtype})")


def random_inputs(shape, dtype, seed=0):
    """x, lambda and three positive gates (rows roughly stochastic, like normalized gates)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    lam = torch.rand(shape, generator=gen, dtype=torch.float64)
    gates = torch.rand((3, *shape), generator=gen, dtype=torch.float64)
    gates = gates / gates.sum(0, keepdim=True)
    return [t.to(DEVICE) for t in (x, lam, *gates)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape,chunk", [
    ((2, 3, 5, 7), None),  # global propagation
    ((2, 3, 5, 7), 3),  # L % chunk != 0: a short last chunk
    ((1, 2, 6, 9), 9),  # chunk == L is global
    ((3, 1, 1, 4), 2),  # P = 1: no vertical neighbours
    ((1, 2, 7, 1), None),  # L = 1: one step
], ids=["5x7-global", "5x7-chunk3", "6x9-chunk9", "1x4-chunk2", "7x1-global"])
def test_original_scan_matches_reference(shape, chunk, dtype):
    exact = random_inputs(shape, dtype)
    leaves = [t.detach().to(dtype).requires_grad_() for t in exact]
    ref_leaves = [t.detach().to(dtype).double().requires_grad_() for t in exact]  # same rounded inputs
    out = original_scan(*leaves, chunk=chunk)
    ref = original_scan_reference(*ref_leaves, chunk=chunk)
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close(out, ref, dtype, "h")
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(DEVICE)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    for name, a, b in zip(("x", "lam", "g1", "g2", "g3"), leaves, ref_leaves, strict=True):
        assert_close(a.grad, b.grad, dtype, f"d{name}")


def test_chunks_restart_the_state():
    """With chunk=1 every step is its own chunk: h = lam * x exactly (no propagation)."""
    x, lam, g1, g2, g3 = (t.float() for t in random_inputs((2, 2, 4, 5), torch.float32))
    h = original_scan(x, lam, g1, g2, g3, chunk=1)
    assert_close(h, lam * x, torch.float32, "h with chunk=1")


def test_chunk_length_and_errors():
    assert chunk_length(74, None) == 74 and chunk_length(74, 8) == 8 and chunk_length(5, 8) == 5
    with pytest.raises(ValueError, match="chunk"):
        chunk_length(5, 0)
    x = torch.zeros(1, 2, 3, 4, device=DEVICE)
    with pytest.raises(ValueError, match="lam: expected shape"):
        original_scan(x, torch.zeros(1, 2, 3, 5, device=DEVICE), x, x, x)
    with pytest.raises(ValueError, match="g1: dtype"):
        original_scan(x, x, x.double(), x, x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="int64 indexing at >2^31 elements needs a large CUDA GPU")
def test_original_scan_int64_indexing():
    """B*C*P*L > 2^31 (the original's int32 arithmetic overflows here): the last elements are right."""
    C, P, L = 4608, 147, 147  # 99.6M elements per batch item...
    B = (2**31 // (C * P * L)) + 1  # ...times enough batch items to pass 2^31
    free, _ = torch.cuda.mem_get_info()
    need = B * C * P * L * (2 + 2 + 4 + 2)  # two bf16 inputs, fp32 state, bf16 output
    if need > 0.8 * free:
        pytest.skip(f"needs {need / 2**30:.0f} GiB free GPU memory")
    x = torch.ones(B, C, P, L, device="cuda", dtype=torch.bfloat16)
    g = torch.full_like(x, 1 / 3)
    h = original_scan(x, x, g, g, g, chunk=2)  # two steps per chunk: h = 1 then 1 + (sum of gates) * 1
    assert h[-1, -1, P // 2, 1].item() == pytest.approx(2.0, rel=1e-2)
    assert h[-1, -1, 0, 1].item() == pytest.approx(1 + 2 / 3, rel=1e-2)  # one neighbour missing at p=0
