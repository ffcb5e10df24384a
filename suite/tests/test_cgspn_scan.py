"""The Triton C-GSPN scans (``cgspn_scan``, ``propagate``) against the float64 PyTorch reference.

Forward output and every input gradient, with one shared random upstream gradient, on awkward
shapes (1x1, 1xW, Hx1, odd non-square grids, batch 1 and 3, channels 1/3/40/64), per dtype, for
every scan variant; adversarial gates (sigmoid saturation at +-30, all-equal logits); layer-like
strided views. ``torch.empty``/``empty_like``/``new_empty`` are poisoned with NaN, so an element
a kernel forgot to write fails. CPU runs use Triton's interpreter at tiny shapes; the GPU class
repeats the checks at full shapes (B=32, 147x147, 64 channels) and the > 2^31-element index test.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined

from kernels.cgspn import DIRECTIONS, SCAN_VARIANTS, cgspn_scan, cgspn_scan_reference, propagate, propagate_reference  # noqa: E402
from kernels.cgspn import scan as scan_module  # noqa: E402
from kernels.cgspn import scan_quad as quad_module  # noqa: E402
from kernels.cgspn.reference import AXIS_OF, normalize_gates_eager  # noqa: E402
from suite.tests.helpers import poison_empty, relative_rms  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# relative RMS error allowed against the float64 reference: a few units of the dtype's rounding
TOLERANCE = {
    torch.float32: 1e-5,
    torch.float16: 4 * torch.finfo(torch.float16).eps,
    torch.bfloat16: 4 * torch.finfo(torch.bfloat16).eps,
}
gpu_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (full-size shapes)")


def assert_close(name: str, out: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = relative_rms(out, ref)
    assert err <= tol, f"{name}: relative RMS error {err:.3e} > {tol:.1e}"


@pytest.fixture(autouse=True)
def nan_poisoned_empty(monkeypatch):
    poison_empty(monkeypatch)


def make_inputs(shape, dtype, gate_fill=None, seed=0):
    """x, lam, u ``(B, H, W, C)`` and raw gates ``(B, H, W, 3, C)``, random (never zeros)."""
    B, H, W, C = shape
    gen = torch.Generator().manual_seed(seed)
    x, lam, u = (torch.randn(B, H, W, C, generator=gen) for _ in range(3))
    gates = torch.randn(B, H, W, 3, C, generator=gen) if gate_fill is None else gate_fill(B, H, W, C, gen)
    return [t.to(device=DEVICE, dtype=dtype) for t in (x, lam, u, gates)]


def run_with_grads(fn, inputs, dy, dtype):
    """fn(*inputs) and the gradients of every input for upstream gradient ``dy``."""
    leaves = [t.detach().clone().to(dtype).requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    out.backward(dy.to(dtype))
    return [out] + [t.grad for t in leaves]


def check_scan(shape, dtype, variant=scan_module.DEFAULT_VARIANT, gate_fill=None):
    inputs = make_inputs(shape, dtype, gate_fill)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    ours = run_with_grads(lambda *a: cgspn_scan(*a, variant=variant), inputs, dy, dtype)
    ref = run_with_grads(cgspn_scan_reference, inputs, dy, torch.float64)
    for name, a, b in zip(("y", "dx", "dlam", "du", "dgates"), ours, ref, strict=True):
        assert a.dtype == dtype, f"{name}: dtype {a.dtype} != {dtype}"
        assert_close(f"{variant} {tuple(shape)} {name}", a, b, TOLERANCE[dtype])


SHAPES = [(1, 1, 1, 1), (1, 1, 7, 3), (1, 6, 1, 3), (3, 5, 7, 1), (1, 3, 5, 40), (1, 4, 3, 64)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}xH{}xW{}xC{}".format(*s))
def test_scan_matches_reference_fp32(shape):
    check_scan(shape, torch.float32)


@pytest.mark.parametrize("variant", SCAN_VARIANTS)
def test_scan_variants_agree_with_reference(variant):
    check_scan((1, 4, 5, 3), torch.float32, variant)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_scan_low_precision(dtype):
    check_scan((1, 5, 7, 40), dtype)


class _FixedConfig:
    """Stands in for an autotuned kernel: launches the underlying kernel with fixed meta-parameters
    (the interpreter's autotune list has one config; these reach the others)."""

    def __init__(self, tuned, **meta):
        self.fn, self.meta = tuned.fn, meta

    def __getitem__(self, grid):
        grid = grid(self.meta) if callable(grid) else grid
        return lambda *args, **kwargs: self.fn[grid](*args, **kwargs, **self.meta)


@pytest.mark.parametrize("depth,wide,bc", [(1, False, 4), (2, True, 8), (1, True, 4)], ids=lambda v: str(v))
def test_quad_prefetch_depths_and_wide_offsets(monkeypatch, depth, wide, bc):
    """Both prefetch depths of the quad forward, and the int64 tile offsets (WIDE) of forward and
    backward, which only rows past 2^31 elements select on their own."""
    monkeypatch.setattr(quad_module, "_scan_quad_fwd_kernel", _FixedConfig(quad_module._scan_quad_fwd_kernel, BC=bc, DEPTH=depth))
    monkeypatch.setattr(quad_module, "_scan_quad_bwd_kernel", _FixedConfig(quad_module._scan_quad_bwd_kernel, BC=bc))
    monkeypatch.setattr(quad_module, "_wide_rows", lambda tensors, side: wide)
    check_scan((2, 5, 7, 6), torch.float32, "quad-scratch")
    check_scan((1, 3, 1, 5), torch.float32, "quad-gather")


GATE_FILLS = {
    "saturated+-30": lambda B, H, W, C, gen: 30.0 * torch.sign(torch.randn(B, H, W, 3, C, generator=gen)),
    "all-equal": lambda B, H, W, C, gen: torch.full((B, H, W, 3, C), 0.7),
    "all-very-negative": lambda B, H, W, C, gen: torch.full((B, H, W, 3, C), -30.0),  # neighbour sum below the clamp
}


@pytest.mark.parametrize("fill", GATE_FILLS, ids=str)
def test_scan_adversarial_gates(fill):
    check_scan((1, 6, 5, 2), torch.float32, gate_fill=GATE_FILLS[fill])


def test_scan_reads_layer_views_in_place():
    """u, lam, gates as views of one fused head output (B, H, W, 5, C), as the C-GSPN layer passes them."""
    B, H, W, C = 2, 4, 6, 17
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(B, H, W, C, generator=gen).to(DEVICE)
    head = torch.randn(B, H, W, 5, C, generator=gen).to(DEVICE)
    dy = torch.randn(B, H, W, C, generator=gen).to(DEVICE)

    def split(fn):
        def run(x, head):
            return fn(x, head[..., 1, :], head[..., 0, :], head[..., 2:5, :])
        return run

    ours = run_with_grads(split(cgspn_scan), [x, head], dy, torch.float32)
    ref = run_with_grads(split(cgspn_scan_reference), [x, head], dy, torch.float64)
    for name, a, b in zip(("y", "dx", "dhead"), ours, ref, strict=True):
        assert_close(name, a, b, TOLERANCE[torch.float32])


HEAD_LAYOUTS = {
    "contiguous": lambda B, H, W, C, gen: torch.randn(B, H, W, 5, C, generator=gen),
    # unit channel stride but (B, 5, H, W, C) in memory: every stride of the head and its views differs
    "heads-outer": lambda B, H, W, C, gen: torch.randn(B, 5, H, W, C, generator=gen).permute(0, 2, 3, 1, 4),
}


@pytest.mark.parametrize("variant", ["quad-scratch", "quad-gather", "pairs-scratch"])
@pytest.mark.parametrize("layout", HEAD_LAYOUTS, ids=str)
def test_scan_head_matches_reference(variant, layout):
    """cgspn_scan_head: y and the gradients of x and of the whole head (written as one tensor by the
    quad backward, through views for the other designs) vs the float64 reference on head views."""
    B, H, W, C = 2, 5, 7, 6
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(B, H, W, C, generator=gen).to(DEVICE)
    head = HEAD_LAYOUTS[layout](B, H, W, C, gen).to(DEVICE)
    dy = torch.randn(B, H, W, C, generator=gen).to(DEVICE)

    def leaves(dtype):
        x_leaf = x.detach().to(dtype).requires_grad_(True)
        head_leaf = head.detach().to(dtype)  # .to keeps the layout of the strided head
        head_leaf = (head_leaf.clone() if dtype != head.dtype else head_leaf).requires_grad_(True)
        return x_leaf, head_leaf

    xo, ho = leaves(torch.float32)
    y = scan_module.cgspn_scan_head(xo, ho, variant=variant)
    fused = "cgspn_scan_head" in type(y.grad_fn).__name__  # the head operator's autograd node
    assert fused == variant.startswith("quad"), f"{variant}: grad_fn {type(y.grad_fn).__name__}"
    y.backward(dy)
    xr, hr = leaves(torch.float64)
    y_ref = cgspn_scan_reference(xr, *scan_module.head_views(hr))
    y_ref.backward(dy.double())
    for name, a, b in (("y", y, y_ref), ("dx", xo.grad, xr.grad), ("dhead", ho.grad, hr.grad)):
        assert_close(f"{variant} {layout} {name}", a, b, TOLERANCE[torch.float32])


def test_scan_head_rejects_wrong_head_shape():
    x = torch.randn(1, 3, 4, 2, device=DEVICE)
    with pytest.raises(ValueError, match=r"head must be \(B, H, W, 5, C\)"):
        scan_module.cgspn_scan_head(x, torch.randn(1, 3, 4, 3, 2, device=DEVICE))
    with pytest.raises(ValueError, match="variant"):
        scan_module.cgspn_scan_head(x, torch.randn(1, 3, 4, 5, 2, device=DEVICE), variant="fastest")


def test_scan_without_grad_matches_training_forward():
    """Inference skips storing h; it must compute the same y."""
    inputs = make_inputs((2, 5, 3, 3), torch.float32)
    with torch.no_grad():
        y_infer = cgspn_scan(*inputs)
    y_train = cgspn_scan(*[t.clone().requires_grad_(True) for t in inputs])
    ref = cgspn_scan_reference(*[t.double() for t in inputs])
    assert_close("no-grad y", y_infer, ref, TOLERANCE[torch.float32])
    assert torch.equal(y_infer, y_train.detach())


PROPAGATE_CASES = [(d, normalize, "gather") for d in DIRECTIONS for normalize in (True, False)]
PROPAGATE_CASES += [("bt", True, "scratch"), ("lr", False, "scratch")]


@pytest.mark.parametrize("direction,normalize,shift", PROPAGATE_CASES,
                         ids=lambda v: {True: "raw-gates", False: "normalized-gates"}.get(v, v) if isinstance(v, bool) else v)
def test_propagate_matches_reference(direction, normalize, shift):
    x, lam, _, gates = make_inputs((2, 4, 5, 3), torch.float32)
    if not normalize:  # any weights: the GSPN layer passes its own eagerly normalized gates
        gates = torch.rand_like(gates)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(DEVICE)

    def reference(x, lam, g):
        weights = normalize_gates_eager(g, AXIS_OF[direction]) if normalize else g
        return propagate_reference(x, lam, weights, direction)

    ours = run_with_grads(lambda x, lam, g: propagate(x, lam, g, direction, normalize, shift=shift), [x, lam, gates], dy,
                          torch.float32)
    ref = run_with_grads(reference, [x, lam, gates], dy, torch.float64)
    for name, a, b in zip(("h", "dx", "dlam", "dgates"), ours, ref, strict=True):
        assert_close(f"{direction} {name}", a, b, TOLERANCE[torch.float32])


def test_propagate_bf16_non_square():
    x, lam, _, gates = make_inputs((3, 4, 9, 20), torch.bfloat16)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    ours = run_with_grads(lambda x, lam, g: propagate(x, lam, g, "rl"), [x, lam, gates], dy, torch.bfloat16)
    ref = run_with_grads(lambda x, lam, g: propagate_reference(x, lam, normalize_gates_eager(g, "horizontal"), "rl"),
                         [x, lam, gates], dy, torch.float64)
    for name, a, b in zip(("h", "dx", "dlam", "dgates"), ours, ref, strict=True):
        assert_close(name, a, b, TOLERANCE[torch.bfloat16])


def test_bad_inputs_name_the_argument():
    x, lam, u, gates = make_inputs((1, 3, 4, 2), torch.float32)
    with pytest.raises(ValueError, match="variant"):
        cgspn_scan(x, lam, u, gates, variant="fastest")
    with pytest.raises(ValueError, match="gates has shape"):
        cgspn_scan(x, lam, u, gates[..., :2, :])
    with pytest.raises(ValueError, match="u has shape"):
        cgspn_scan(x, lam, u[:, :2], gates)
    with pytest.raises(ValueError, match="float64"):
        cgspn_scan(*(t.double() for t in (x, lam, u, gates)))
    with pytest.raises(ValueError, match="direction"):
        propagate(x, lam, gates, "up")


@gpu_only
class TestFullShapesGPU:
    """The same checks at the benchmark's shapes (reference in fp32 on the GPU for the big ones)."""

    def test_2k_grid_bf16_fwd_bwd(self):
        shape = (32, 147, 147, 64)
        inputs = make_inputs(shape, torch.bfloat16)
        dy = torch.randn(shape, device=DEVICE)
        ours = run_with_grads(cgspn_scan, inputs, dy, torch.bfloat16)
        ref = run_with_grads(cgspn_scan_reference, [t.float() for t in inputs], dy, torch.float32)
        for name, a, b in zip(("y", "dx", "dlam", "du", "dgates"), ours, ref, strict=True):
            assert_close(name, a, b, TOLERANCE[torch.bfloat16])

    @pytest.mark.parametrize("variant", SCAN_VARIANTS)
    def test_37x54_fp32_variants(self, variant):
        check_scan((3, 37, 54, 64), torch.float32, variant)

    @pytest.mark.parametrize("fill", GATE_FILLS, ids=str)
    def test_2k_grid_adversarial(self, fill):
        check_scan((2, 147, 147, 64), torch.float32, gate_fill=GATE_FILLS[fill])

    def test_index_math_past_2_31_elements(self):
        """B*H*W*C > 2^31: the last batch element lives past int32 offsets; compare it alone."""
        B, H, W, C = 32, 147, 147, 3200
        assert B * H * W * C > 2**31
        gen = torch.Generator(device=DEVICE).manual_seed(0)
        x, lam, u = (torch.randn(B, H, W, C, device=DEVICE, dtype=torch.bfloat16, generator=gen) for _ in range(3))
        gates = torch.randn(B, H, W, 3, C, device=DEVICE, dtype=torch.bfloat16, generator=gen)
        with torch.no_grad():
            y = cgspn_scan(x, lam, u, gates)
            last = slice(B - 1, B)
            ref = cgspn_scan_reference(x[last].float(), lam[last].float(), u[last].float(), gates[last].float())
        assert_close("y[last batch]", y[last], ref, TOLERANCE[torch.bfloat16])

    def test_backward_buffers_past_2_31_elements(self):
        """fwd+bwd at B=32, 147x147, C=384: each per-direction buffer fits int32 offsets but the
        four-direction gate-gradient buffer (4 x B*H*W*3*C = 3.2e9 elements) does not, which is
        where a direction index multiplied in int32 once wrote out of bounds (found by a sweep).
        The last batch element's output and gradients are compared with the reference on it alone."""
        B, H, W, C = 32, 147, 147, 384
        assert 4 * B * H * W * 3 * C > 2**31 > B * H * W * 3 * C
        gen = torch.Generator(device=DEVICE).manual_seed(0)  # on the GPU: 1.1e9 random numbers
        inputs = [torch.randn(B, H, W, C, device=DEVICE, dtype=torch.bfloat16, generator=gen) for _ in range(3)]
        inputs.append(torch.randn(B, H, W, 3, C, device=DEVICE, dtype=torch.bfloat16, generator=gen))
        dy = torch.randn(B, H, W, C, device=DEVICE, generator=gen)
        ours = run_with_grads(cgspn_scan, inputs, dy, torch.bfloat16)
        last = slice(B - 1, B)
        ref = run_with_grads(cgspn_scan_reference, [t[last].float() for t in inputs], dy[last], torch.float32)
        for name, a, b in zip(("y", "dx", "dlam", "du", "dgates"), ours, ref, strict=True):
            assert_close(f"{name}[last batch]", a[last], b, TOLERANCE[torch.bfloat16])


def test_kernels_compile_for_hopper_without_spills():
    """Lower every kernel to PTX for sm_90 (no GPU needed): the interpreter skips this step."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "kernels.cgspn.compile_check", "--arch", "90"], capture_output=True, text=True,
                          env=env, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
