"""The C-GSPN layer: structure (P_down, one fused head, P_up; views, not copies), forward and
backward of the fused-scan layer against a same-weights copy on the PyTorch reference scan, the
eager-normalization variant, bf16 autocast, the block around it, and argument errors.

Tiny shapes (C=36, s=12 -> C_c=3, grid 5x7) so the interpreted Triton scan stays fast on CPU.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first triton import

from kernels.cgspn.layer import CGSPNLayer, latent_width  # noqa: E402
from kernels.vit import Block  # noqa: E402
from suite.tests.helpers import assert_rel_rms  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REL_RMS = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
SHAPE = (2, 5, 7, 36)


def assert_close(out, ref, dtype, what):
    assert_rel_rms(out, ref, REL_RMS[dtype], f"{what} ({dtype})")


def reference_copy(module: torch.nn.Module) -> torch.nn.Module:
    ref = copy.deepcopy(module)
    for m in ref.modules():
        if isinstance(m, CGSPNLayer):
            m.scan = "reference"
    return ref


def check_against_reference(module: torch.nn.Module, dtype: torch.dtype = torch.float32):
    module = module.to(DEVICE, dtype)
    reference = reference_copy(module).float()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(SHAPE, generator=gen).to(DEVICE)
    xa, xr = x.to(dtype).clone().requires_grad_(), x.clone().requires_grad_()
    out, ref = module(xa), reference(xr)
    assert out.shape == SHAPE and out.dtype == dtype
    assert_close(out, ref, dtype, "output")
    grad = torch.randn(SHAPE, generator=gen).to(DEVICE)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    assert_close(xa.grad, xr.grad, dtype, "dx")
    for (name, p), q in zip(module.named_parameters(), reference.parameters(), strict=True):
        assert_close(p.grad, q.grad, dtype, f"d{name}")


def test_structure_and_views():
    layer = CGSPNLayer(36, compression=12)
    assert layer.latent == 3
    c, cc = 36, 3
    assert sum(p.numel() for p in layer.parameters()) == (c * cc + cc) + (cc * 5 * cc + 5 * cc) + (cc * c + c)
    x_c, lam, u, gates = layer.propagation_inputs(torch.randn(SHAPE))
    assert gates.shape == (2, 5, 7, 3, 3) and lam.shape == u.shape == x_c.shape == (2, 5, 7, 3)
    base = lam.untyped_storage().data_ptr()
    assert u.untyped_storage().data_ptr() == base and gates.untyped_storage().data_ptr() == base  # views of one output
    assert lam.stride(-1) == 1 and gates.stride(-1) == 1
    assert CGSPNLayer(1152).latent == 64 and CGSPNLayer(1152, latent_channels=40).latent == 40


@pytest.mark.parametrize("fused_norm", [True, False], ids=["fused-norm", "eager-norm"])
def test_layer_matches_reference_scan(fused_norm):
    torch.manual_seed(0)
    check_against_reference(CGSPNLayer(36, compression=12, fused_norm=fused_norm))


def test_layer_bf16_weights():
    torch.manual_seed(1)
    check_against_reference(CGSPNLayer(36, compression=12), torch.bfloat16)


def test_layer_under_bf16_autocast():
    """fp32 weights, bf16 autocast: the scan sees bf16 projections; forward and backward agree with fp32."""
    torch.manual_seed(2)
    layer = CGSPNLayer(36, compression=12).to(DEVICE)
    x = torch.randn(SHAPE, device=DEVICE)
    xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = layer(xa)
    assert out.dtype == torch.bfloat16
    grad = torch.randn(SHAPE, device=DEVICE)
    out.float().backward(grad)
    reference = reference_copy(layer)
    reference.zero_grad()
    ref = reference(xr)
    ref.backward(grad)
    assert_close(out.float(), ref, torch.bfloat16, "output")
    assert_close(xa.grad, xr.grad, torch.bfloat16, "dx")
    for (name, p), q in zip(layer.named_parameters(), reference.parameters(), strict=True):
        assert_close(p.grad, q.grad, torch.bfloat16, f"d{name}")


def test_block_forward_backward():
    torch.manual_seed(3)
    check_against_reference(Block(CGSPNLayer(36, compression=18), 36, 20))


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="scan"):
        CGSPNLayer(36, scan="cuda")
    with pytest.raises(ValueError, match="compression"):
        latent_width(36, compression=72)
    with pytest.raises(ValueError, match="latent_channels"):
        latent_width(36, latent_channels=0)
    with pytest.raises(ValueError, match=r"x: expected \(B, H, W, 36\)"):
        CGSPNLayer(36, compression=12)(torch.randn(1, 4, 4, 8))
