"""FLOP and ideal-byte accounting of the registry entries (what a row's tflops, gbps and
bw_fraction are computed from), and what their fwd+bwd cases back-propagate.

Shapes that match docs/design.md's floors are built on the ``meta`` device: the accounting is read
from the workload, nothing is allocated or run.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # C-GSPN Triton kernels on CPU; must precede their import

from kernels import registry  # noqa: E402
from kernels.attention.sublayer import BWD_FLOP_FACTOR, attention_flops  # noqa: E402
from kernels.cgspn.gate_norm import normalize_gates_eager_both  # noqa: E402
from kernels.params import Params  # noqa: E402
from suite.measure import first_output, make_step  # noqa: E402
from suite.tests.helpers import assert_rel_rms  # noqa: E402

META = torch.device("meta")


@pytest.mark.parametrize("resolution, megabytes", [(2058, 620), (1036, 157)])
def test_cgspn_scan_ideal_bytes_are_design_floor(resolution, megabytes):
    """docs/design.md "Floors": read x, lam, u, 3 gates and write y once = 7 x B*C_c*H*W x 2 bytes (bf16)."""
    params = Params(batch=32, channels=1152, compression=18, resolution=resolution)
    work = registry.get("cgspn-scan", "sublayer").build(params, torch.bfloat16, META, "fwd")
    expected = 7 * 32 * 64 * (resolution // 14) ** 2 * 2
    assert work.bytes_ideal == expected
    assert round(work.bytes_ideal / 1e6) == megabytes


@pytest.mark.parametrize("name", ["cgspn-gate-norm-eager", "cgspn-gate-norm-fused"])
def test_gate_norm_backward_bytes_read_the_raw_gates(name):
    """The gradient of Eq. 2 needs sigmoid(raw): read 3 raw gates + 6 upstream grads, write 3."""
    params = Params(batch=2, channels=16, compression=1, grid_h=3, grid_w=5)
    work = registry.get(name, "sublayer").build(params, torch.float32, META, "fwd+bwd")
    numel = 2 * 3 * 5 * 16
    assert work.bytes_ideal == 9 * numel * 4
    assert work.bytes_ideal_bwd == 12 * numel * 4


@pytest.mark.parametrize("name", ["cgspn-gate-norm-eager", "cgspn-gate-norm-fused"])
def test_gate_norm_fwd_bwd_propagates_both_axes(name):
    """The harness back-propagates the first output of ``fn``; a gate-norm case returns two
    (vertical, horizontal) and must back-propagate through both, as a layer that uses both would."""
    impl = registry.get(name, "sublayer")
    params = Params(batch=1, channels=5, compression=1, grid_h=3, grid_w=4)
    if impl.unavailable(params, "float32", "cpu", "fwd+bwd"):
        pytest.skip(impl.unavailable(params, "float32", "cpu", "fwd+bwd"))
    work = impl.build(params, torch.float32, torch.device("cpu"), "fwd+bwd")
    make_step(work, "fwd+bwd")()
    (gates,) = work.inputs
    out = first_output(work.fn())
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype)
    ref = gates.detach().double().requires_grad_(True)
    torch.autograd.backward(list(normalize_gates_eager_both(ref)), [upstream.double()] * 2)
    assert_rel_rms(gates.grad, ref.grad, 1e-5, f"{name}: d gates")


TINY = Params(batch=1, channels=24, heads=2, grid=5, patch=2, compression=3, mlp_hidden=16, depth=3, attn_blocks=1)


@pytest.mark.parametrize("name, level, attention_layers", [
    ("attention-math", "layer", 1),
    ("attention-math", "block", 1),
    ("attention-math", "network", 3),
    ("hybrid", "network", 1),
])
def test_attention_backward_flops_match_the_sublayer_convention(name, level, attention_layers):
    """The attention sublayer counts its backward as 2.5x its forward (FlashAttention convention);
    a layer, block or network holding it must count it the same way (the rest at 2x)."""
    impl = registry.get(name, level)
    if impl.unavailable(TINY, "float32", "cpu", "fwd+bwd"):
        pytest.skip(impl.unavailable(TINY, "float32", "cpu", "fwd+bwd"))
    work = impl.build(TINY, torch.float32, torch.device("cpu"), "fwd+bwd")
    attn = attention_layers * attention_flops(TINY.batch, TINY.heads, TINY.tokens, TINY.head_dim)
    expected = work.flops + 2 * (work.flops - attn) + BWD_FLOP_FACTOR * attn
    assert work.flops_for("fwd+bwd") == pytest.approx(expected, rel=1e-12)
