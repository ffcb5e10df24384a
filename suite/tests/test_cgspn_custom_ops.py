"""The C-GSPN scans as PyTorch custom operators (``torch.ops.cgspn.*``): registration, fake tensors, autograd,
and ``torch.compile(fullgraph=True)`` of the C-GSPN layer and block.

``torch.library.opcheck`` runs each operator's schema, fake-tensor, autograd-registration and AOT-dispatch
(static and dynamic shapes) checks on tiny shapes: on CPU through Triton's interpreter, like the other scan
tests. The compile tests trace the layer with dynamo (``fullgraph=True``: a graph break fails) and run it with
the ``eager`` and ``aot_eager`` backends, whose output and gradients must equal eager execution bitwise (the
same kernels run on the same inputs). Kernels are opaque to the compiler: inductor would not fuse into them,
so it adds nothing to test here. On a GPU a CUDA-graph capture and replay of the layer's forward+backward is
checked against eager too.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined

from kernels.cgspn import cgspn_scan, cgspn_scan_head, propagate  # noqa: E402,F401 - registers the operators
from kernels.cgspn.layer import CGSPNLayer  # noqa: E402
from kernels.vit import Block  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
gpu_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA-graph capture)")
OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_static",
                 "test_aot_dispatch_dynamic")


def tensors(shape, *, head=False, seed=0, grad=True):
    B, H, W, C = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H, W, C, generator=gen)
    rest = [torch.randn(B, H, W, 5, C, generator=gen)] if head else \
        [torch.randn(B, H, W, C, generator=gen), torch.randn(B, H, W, C, generator=gen),
         torch.randn(B, H, W, 3, C, generator=gen)]
    return [t.to(DEVICE).requires_grad_(grad) for t in (x, *rest)]


@pytest.mark.parametrize("variant", ["auto", "quad-gather", "pairs-scratch", "directions-scratch"])
def test_opcheck_scan(variant):
    x, lam, u, gates = tensors((1, 3, 4, 2))
    torch.library.opcheck(torch.ops.cgspn.scan.default, (x, lam, u, gates, variant, True), test_utils=OPCHECK_TESTS)


def test_opcheck_scan_inference_pairs_without_stored_h():
    """The pairs design skips storing h without a backward: a different ``hs`` shape the fake must know."""
    args = (*tensors((1, 3, 4, 2), grad=False), "pairs-gather", False)
    torch.library.opcheck(torch.ops.cgspn.scan.default, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("variant", ["auto", "cuda-fast", "quad-scratch"])
def test_opcheck_scan_head(variant):
    x, head = tensors((2, 3, 4, 2), head=True)
    torch.library.opcheck(torch.ops.cgspn.scan_head.default, (x, head, variant), test_utils=OPCHECK_TESTS)


def test_opcheck_scan_head_on_strided_head():
    """A head with unit channel stride but (B, 5, H, W, C) in memory, as a permuted producer leaves it."""
    x, _ = tensors((1, 3, 4, 2), head=True)
    head = torch.randn(1, 5, 3, 4, 2, device=DEVICE).permute(0, 2, 3, 1, 4).requires_grad_(True)
    torch.library.opcheck(torch.ops.cgspn.scan_head.default, (x, head, "auto"), test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("direction,normalize", [("tb", True), ("rl", False)])
def test_opcheck_propagate(direction, normalize):
    x, lam, _, gates = tensors((1, 3, 4, 2))
    torch.library.opcheck(torch.ops.cgspn.propagate.default, (x, lam, gates, direction, normalize, 1),
                          test_utils=OPCHECK_TESTS)


def test_backward_operators_have_fakes():
    x, lam, u, gates = (t.detach() for t in tensors((1, 3, 4, 2)))
    y, total, hs = torch.ops.cgspn.scan(x, lam, u, gates, "quad-scratch", True)
    dy = torch.randn_like(y)
    torch.library.opcheck(torch.ops.cgspn.scan_backward.default, (x, lam, u, gates, total, hs, dy, "quad-scratch"),
                          test_utils=("test_schema", "test_faketensor"))
    y, total, hs = torch.ops.cgspn.scan(x, lam, u, gates, "directions-gather", True)
    torch.library.opcheck(torch.ops.cgspn.scan_backward.default, (x, lam, u, gates, total, hs, dy, "directions-gather"),
                          test_utils=("test_schema", "test_faketensor"))
    xh, head = (t.detach() for t in tensors((1, 3, 4, 2), head=True))
    y, hs = torch.ops.cgspn.scan_head(xh, head, "auto")
    torch.library.opcheck(torch.ops.cgspn.scan_head_backward.default, (xh, head, hs, dy, "auto"),
                          test_utils=("test_schema", "test_faketensor"))


def test_only_y_is_differentiable():
    """hs (and the fp32 sum) are outputs the backward reads, not results: no gradient flows into them and
    autograd does not zero-fill gradients for them."""
    x, lam, u, gates = tensors((1, 3, 4, 2))
    y, total, hs = torch.ops.cgspn.scan(x, lam, u, gates, "quad-scratch", True)
    assert y.requires_grad and not hs.requires_grad and not total.requires_grad
    y2, hs2 = torch.ops.cgspn.scan_head(*tensors((1, 3, 4, 2), head=True), "auto")
    assert y2.requires_grad and not hs2.requires_grad


def run_module(module, x, dy):
    x = x.detach().clone().requires_grad_(True)
    for p in module.parameters():
        p.grad = None
    y = module(x)
    y.backward(dy)
    return [y.detach(), x.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("fused_norm", [True, False], ids=["fused-norm", "eager-norm"])
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_layer_matches_eager(backend, fused_norm):
    """torch.compile(layer, fullgraph=True): no graph break around the scan operators; output and every
    gradient (input and weights) bitwise equal to eager execution."""
    torch.manual_seed(0)
    layer = CGSPNLayer(36, compression=12, fused_norm=fused_norm).to(DEVICE)
    x = torch.randn(2, 5, 7, 36, device=DEVICE)
    dy = torch.randn(2, 5, 7, 36, device=DEVICE)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    ours, ref = run_module(compiled, x, dy), run_module(layer, x, dy)
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b)


def test_compiled_block_has_no_graph_break():
    """The pre-norm ViT block around the layer, traced whole; output and input gradient equal eager."""
    torch.manual_seed(1)
    block = Block(CGSPNLayer(36, compression=12), 36, 72).to(DEVICE)
    x = torch.randn(1, 4, 6, 36, device=DEVICE)
    dy = torch.randn(1, 4, 6, 36, device=DEVICE)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(block)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    ours, ref = run_module(torch.compile(block, fullgraph=True, backend="aot_eager"), x, dy), run_module(block, x, dy)
    for a, b in zip(ours[:2], ref[:2], strict=True):
        assert torch.equal(a, b)


def test_compiled_scan_functions_without_grad():
    """Inference (no stored h for the pairs design) and a non-default variant, through the public functions."""
    x, lam, u, gates = (t.detach() for t in tensors((1, 4, 3, 2)))

    def fn(x, lam, u, gates):
        return cgspn_scan(x, lam, u, gates, variant="pairs-scratch") + cgspn_scan(x, lam, u, gates)

    torch._dynamo.reset()
    with torch.no_grad():
        assert torch.equal(torch.compile(fn, fullgraph=True, backend="aot_eager")(x, lam, u, gates), fn(x, lam, u, gates))


@gpu_only
def test_cuda_graph_capture_of_layer_fwd_bwd():
    """One fwd+bwd step of the layer captured in a CUDA graph and replayed equals the eager step."""
    torch.manual_seed(2)
    layer = CGSPNLayer(1152, compression=18).to(DEVICE, torch.bfloat16)
    x = torch.randn(4, 27, 27, 1152, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn_like(x)

    def step():
        for p in layer.parameters():
            p.grad = None
        x.grad = None
        y = layer(x)
        y.backward(dy)
        return y

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm up: compile, autotune, allocate
            step()
    torch.cuda.current_stream().wait_stream(side)
    eager_y, eager_dx = step().detach().clone(), x.grad.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = step()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, eager_y) and torch.equal(x.grad, eager_dx)


def test_eager_inference_skips_the_operator_dispatch():
    """An eager call that records no autograd runs the operator's implementation directly (host time); a call
    that needs a gradient, one under a dispatch mode (fake tensors) or on a tensor subclass goes through the
    operator. Both give the same output."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from kernels.cgspn import scan as scan_module

    op, implementation = scan_module._scan_head_op, scan_module._scan_head_forward
    x, head = tensors((1, 3, 4, 8), head=True, grad=False)
    assert scan_module._forward(op, implementation, x, head) is implementation
    assert scan_module._forward(op, implementation, x, head.detach().requires_grad_(True)) is op
    with torch.no_grad():
        assert scan_module._forward(op, implementation, x, head.detach().requires_grad_(True)) is implementation
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(x)
        assert scan_module._forward(op, implementation, fake, mode.from_tensor(head)) is op
    assert scan_module._forward(op, implementation, x.as_subclass(torch.nn.Parameter), head) is op
    direct = cgspn_scan_head(x, head)
    through_op = torch.ops.cgspn.scan_head(x, head, "auto")[0]
    torch.testing.assert_close(direct, through_op, rtol=0, atol=0)
