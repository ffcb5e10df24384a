"""The fwd+bwd correctness check compares gradients too: a forward-correct workload with a wrong
backward is ``failed-check`` (and fine in fwd mode), registered implementations pass, a reference
without an autograd path or whose backward runs out of memory leaves the forward verdict and the
timing in place. CPU, tiny shapes; the C-GSPN scan runs under Triton's interpreter."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # C-GSPN Triton kernels on CPU; must precede their import

from kernels import registry  # noqa: E402
from kernels.params import Params  # noqa: E402
from kernels.registry import Implementation, Workload  # noqa: E402
from suite.measure import (  # noqa: E402
    GRADIENT_TOLERANCE_FACTOR,
    TimingSettings,
    check_correctness,
    check_gradients,
    make_step,
    measure_case,
    upstream_gradient,
)

FAST = TimingSettings(budget_ms=5, warmup_ms=1, min_reps=3, max_reps=5)
SHAPE = Params(batch=2, grid=3)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class ScaleBy2WrongBackward(torch.autograd.Function):
    """y = 2 x, exact; the backward returns 3 dy instead of 2 dy (a backward-only bug)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return 3 * grad


class ScaleBy2BackwardOutOfMemory(torch.autograd.Function):
    """y = 2 x; the backward raises CUDA out-of-memory, as a float64 reference graph at a big shape can."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 GiB (test reference backward)")


class TimesWeightNoWeightGradient(torch.autograd.Function):
    """y = w x; the backward gives x its gradient and forgets w's (returns None)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w)
        return w * x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (w,) = ctx.saved_tensors
        return grad * w, None


def _x(mode: str) -> torch.Tensor:
    x = torch.randn(SHAPE.batch, SHAPE.grid, generator=torch.Generator().manual_seed(3))
    return x.requires_grad_(mode == "fwd+bwd")


def build_wrong_backward(params, dtype, device, mode) -> Workload:
    x = _x(mode)
    return Workload(fn=lambda: ScaleBy2WrongBackward.apply(x), inputs=[x] if x.requires_grad else [],
                    reference=lambda: 2 * x.double())


def build_detached_reference(params, dtype, device, mode) -> Workload:
    x = _x(mode)
    return Workload(fn=lambda: 2 * x, inputs=[x] if x.requires_grad else [], reference=lambda: 2 * x.detach().double())


def build_reference_backward_oom(params, dtype, device, mode) -> Workload:
    x = _x(mode)
    return Workload(fn=lambda: 2 * x, inputs=[x] if x.requires_grad else [],
                    reference=lambda: ScaleBy2BackwardOutOfMemory.apply(x.double()))


def _impl(name: str, build) -> Implementation:
    return Implementation(name=name, family="vit", level="sublayer", build=build, params=("batch", "grid"),
                          dtypes=("float32",), devices=("cpu",))


def run(build, mode: str):
    return measure_case(_impl(f"test-{build.__name__}", build), SHAPE, "float32", "cpu", mode, FAST, nvml=False)


# ---- a wrong backward is caught ----------------------------------------------------------------


def test_wrong_backward_fails_the_check_in_fwd_bwd_mode():
    row = run(build_wrong_backward, "fwd+bwd")
    assert row.status == "failed-check", row.message
    check = row.correctness
    assert check["rel_rms"] <= check["tolerance"]  # the forward output is right
    assert check["grad_passed"] is False and check["passed"] is False
    assert check["grad_rel_rms"] == pytest.approx(0.5)  # |3 dy - 2 dy| / |2 dy|
    assert check["grad_worst"] == "input 0" and check["checked"] == "forward output + 1 gradient"
    assert "gradient of input 0" in row.message and row.median_ms is None and row.samples_ms == []


def test_wrong_backward_is_ok_in_fwd_mode():
    row = run(build_wrong_backward, "fwd")
    assert row.status == "ok", row.message
    assert row.correctness["passed"] is True and "grad_passed" not in row.correctness


def test_missing_parameter_gradient_fails():
    """fn gives no gradient to a parameter the reference differentiates: compared as zeros."""
    x, w = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    work = Workload(fn=lambda: TimesWeightNoWeightGradient.apply(x, w), inputs=[x], parameters=[w],
                    reference=lambda: w.double() * x.double())
    check = check_correctness(work, "float32", mode="fwd+bwd")
    assert check["passed"] is False and check["grad_worst"] == "parameter 0" and check["grad_rel_rms"] == pytest.approx(1.0)


def test_gradient_tolerance_is_the_widened_forward_tolerance():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    check = check_correctness(Workload(fn=lambda: x * 2, inputs=[x], reference=lambda: x * 2), "float32", "network", 4,
                              mode="fwd+bwd")
    assert check["tolerance"] == registry.tolerance_for("float32", "network", 4)
    assert check["grad_tolerance"] == GRADIENT_TOLERANCE_FACTOR * check["tolerance"]
    assert check["passed"] is True and check["grad_rel_rms"] == 0.0


def test_check_uses_the_timed_upstream_gradient_and_leaves_no_grads():
    """fn = 2 x and its reference agree; the gradient fn back-propagates in the timed step equals the
    reference's gradient for the upstream gradient of :func:`upstream_gradient`, and ``.grad`` is clean."""
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    work = Workload(fn=lambda: x * 2, inputs=[x], reference=lambda: x * 2)
    assert check_gradients(work, 1e-12)["grad_passed"] is True and x.grad is None
    make_step(work, "fwd+bwd")()
    torch.testing.assert_close(x.grad, 2 * upstream_gradient(x), rtol=0, atol=0)


# ---- the reference cannot give gradients: noted, forward verdict kept, case timed ----------------


def test_reference_without_autograd_path_is_noted_not_failed():
    row = run(build_detached_reference, "fwd+bwd")
    assert row.status == "ok", row.message
    assert row.correctness["passed"] is True and row.correctness["gradients"] == "reference not differentiable"
    assert row.correctness["checked"] == "forward output" and row.median_ms is not None


def test_reference_backward_out_of_memory_is_skipped_and_the_case_timed():
    row = run(build_reference_backward_oom, "fwd+bwd")
    assert row.status == "ok", row.message
    check = row.correctness
    assert check["passed"] is True and check["gradients"] == "skipped (reference backward out of memory)"
    assert "grad_passed" not in check and row.n >= 3 and row.median_ms is not None


def test_out_of_memory_leaves_grads_clean():
    work = build_reference_backward_oom(SHAPE, torch.float32, torch.device("cpu"), "fwd+bwd")
    assert check_gradients(work, 1e-4) == {"gradients": "skipped (reference backward out of memory)"}
    assert all(t.grad is None for t in work.inputs)


# ---- registered implementations pass -------------------------------------------------------------


@pytest.mark.parametrize(("name", "level", "params", "gradients"), [
    # odd grid and C_c = 3: the fused scan's backward against the PyTorch reference scan (x and the head output)
    ("cgspn-scan", "sublayer", Params(batch=1, channels=12, latent_channels=3, grid_h=3, grid_w=5), 2),
    ("attention-math", "sublayer", Params(batch=1, channels=12, heads=2, grid_h=3, grid_w=5), 3),  # q, k, v
    # the module path: the input and every parameter (qkv, proj, 2 norms, fc1, fc2: 12) by name
    ("attention-tiled-flash", "block", Params(batch=1, channels=12, heads=2, grid_h=3, grid_w=5, tile=2, mlp_hidden=20), 13),
])
def test_registered_implementation_passes_the_gradient_check(name, level, params, gradients):
    impl = registry.get(name, level)
    why = impl.unavailable(params, "float32", DEVICE, "fwd+bwd")
    if why:
        pytest.skip(why)
    row = measure_case(impl, params, "float32", DEVICE, "fwd+bwd", FAST, nvml=False)
    assert row.status == "ok", row.message
    check = row.correctness
    assert check["passed"] is True and check["grad_passed"] is True
    assert check["grad_checked"] == gradients and check["checked"] == f"forward output + {gradients} gradients"
    assert check["grad_rel_rms"] <= check["grad_tolerance"] and "grad_unchecked" not in check


# ---- reports and gate show the gradient part -----------------------------------------------------


def test_correctness_table_and_gate_reason_show_the_gradient_failure(tmp_path):
    from suite.gate.compare import judge_case
    from suite.gate.decision import DecisionRule
    from suite.report.load import Run
    from suite.report.tables import correctness_table

    failed = run(build_wrong_backward, "fwd+bwd")
    noted = run(build_detached_reference, "fwd+bwd")
    frame = correctness_table(Run(path=tmp_path, meta={}, rows=[failed, noted])).frame.set_index("implementation")
    assert frame.loc["test-build_wrong_backward", "failed"] == 1
    assert frame.loc["test-build_wrong_backward", "worst_grad_rel_rms"] == pytest.approx(0.5)
    assert frame.loc["test-build_wrong_backward", "gradients"] == "1 checked"
    assert frame.loc["test-build_detached_reference", "gradients"] == "reference not differentiable"
    verdict = judge_case(None, failed, 0.1, DecisionRule())
    assert verdict.verdict == "failed-check" and "grad_worst=input 0" in verdict.reason


@pytest.mark.parametrize("max_scores", [1 << 28, 7 * 5, 3])  # one chunk; row chunks; one row per chunk
def test_chunked_reference_attention_gradients_match_autograd_of_plain_attention(max_scores):
    """The attention reference is differentiable through its checkpointed chunks: float64 gradients
    equal those of softmax(q k^T / sqrt(d)) v at any chunking (non-power-of-two shapes)."""
    from kernels.attention import reference_attention

    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 3, 7, 5, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    dy = torch.randn(2, 3, 7, 5, generator=gen, dtype=torch.float64)
    chunked = torch.autograd.grad(reference_attention(q, k, v, max_scores=max_scores), (q, k, v), dy)
    plain = torch.autograd.grad(torch.softmax(q @ k.transpose(-2, -1) / 5**0.5, dim=-1) @ v, (q, k, v), dy)
    for name, a, b in zip("qkv", chunked, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"d{name}")
