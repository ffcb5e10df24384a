"""Selection and fallback of the C-GSPN scan's CUDA fast path (``kernels.cgspn.cuda_scan``), on CPU.

CI has no GPU and no CuPy, so these tests check what decides the path and what the caller sees:
the reasons the fast path is not used (device, architecture, missing CuPy, failed build, switch,
dtype and shape limits), the backend string a workload reports, that ``auto`` picks the fast path only
for 16-bit inputs, which backward each variant runs, and that forward and backward pair through the shared
``hs`` layout (stand-ins that run the Triton quad forward / backward, under the interpreter). The CUDA
backward's decomposition (adjoint rows, then one pass forming every gradient from a_d and the previous
row's h) is mirrored in float64 PyTorch against autograd of the reference. The CUDA source is compiled
with ``nvcc -arch=sm_90`` where nvcc exists (registers, no spills).
GPU correctness and timing: ``suite/gpu/cgspn_fast_path_check.py`` (needs an sm_90 GPU).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined

from kernels.cgspn import cgspn_scan, cgspn_scan_reference, cuda_scan  # noqa: E402
from kernels.cgspn import scan as scan_module  # noqa: E402
from suite.tests.helpers import relative_rms  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="fakes a CUDA device; meaningful on a CPU-only machine")
gpu_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the fast path's GPU checks: "
                              "suite/gpu/cgspn_fast_path_check.py)")


@contextmanager
def fake_cuda(monkeypatch, capability=(9, 0), cupy_error: Exception | None = None, build_error: Exception | None = None):
    """torch.cuda reports one device of ``capability``; CuPy imports (or raises ``cupy_error``), the
    build succeeds (or raises ``build_error``). The probe cache is cleared before and after."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)

    class FakeDevice:
        def __init__(self, index):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class FakeCupy:
        class cuda:  # noqa: N801 - mirrors cupy.cuda
            Device = FakeDevice

    def fake_cupy():
        if cupy_error is not None:
            raise cupy_error
        return FakeCupy

    def fake_module(expression, source=None):
        if build_error is not None:
            raise build_error
        return expression

    monkeypatch.setattr(cuda_scan, "_cupy", fake_cupy)
    monkeypatch.setattr(cuda_scan, "_module", fake_module)
    cuda_scan._probe.cache_clear()
    cuda_scan._cuda_device_reason.cache_clear()
    try:
        yield
    finally:
        cuda_scan._probe.cache_clear()
        cuda_scan._cuda_device_reason.cache_clear()


def test_cpu_tensors_never_take_the_fast_path():
    x = torch.zeros(1, 3, 4, 8)
    assert cuda_scan.device_unavailable_reason("cpu") == "device cpu is not CUDA"
    assert cuda_scan.unavailable_reason(x) == "device cpu is not CUDA"
    backend = scan_module.scan_backend("cuda-fast", x)
    assert backend == "triton quad-scratch (fast path not used: device cpu is not CUDA)"
    assert scan_module.scan_backend("quad-gather", x) == "triton quad-gather"


def test_environment_switch_disables(monkeypatch):
    monkeypatch.setenv(cuda_scan.ENV_SWITCH, "0")
    assert cuda_scan.device_unavailable_reason("cuda") == f"disabled by {cuda_scan.ENV_SWITCH}=0"


@cpu_only
@pytest.mark.parametrize("capability", [(8, 0), (10, 0), (8, 9)])
def test_other_architectures_fall_back(monkeypatch, capability):
    with fake_cuda(monkeypatch, capability=capability):
        reason = cuda_scan.device_unavailable_reason("cuda")
    assert reason == f"sm_{capability[0]}{capability[1]} is not a verified architecture (sm_90 only)"


@cpu_only
def test_missing_cupy_and_failed_build_are_reasons(monkeypatch):
    with fake_cuda(monkeypatch, cupy_error=ImportError("No module named 'cupy'")):
        assert cuda_scan.device_unavailable_reason("cuda") == "cupy not importable (ImportError: No module named 'cupy')"
    with fake_cuda(monkeypatch, build_error=RuntimeError("nvrtc: error: bad\nmore")):
        assert cuda_scan.device_unavailable_reason("cuda") == "CUDA build failed (RuntimeError: nvrtc: error: bad)"
    with fake_cuda(monkeypatch):
        assert cuda_scan.device_unavailable_reason("cuda") is None


@cpu_only
def test_shape_and_dtype_limits(monkeypatch):
    """Checked on meta tensors that claim a CUDA device index through a stand-in."""
    with fake_cuda(monkeypatch):
        monkeypatch.setattr(cuda_scan, "device_unavailable_reason", lambda device: None)
        assert cuda_scan.unavailable_reason(torch.zeros(2, 5, 7, 8, dtype=torch.bfloat16)) is None
        assert cuda_scan.unavailable_reason(torch.zeros(1, 3, 513, 1)) == "grid side 513 > 512"
        assert "float64" in cuda_scan.unavailable_reason(torch.zeros(1, 2, 2, 1, dtype=torch.float64))


def test_launch_configuration_choice():
    assert repr(cuda_scan.pick_config(147, 147, 64, 8)) == "FastConfig(smem, nv=2, ppt=1, depth=3, fast_sigmoid=False)"
    assert cuda_scan.pick_config(27, 27, 8, 8).nv == 1  # one vector of channels: nothing to pair
    wide = cuda_scan.pick_config(17, 300, 64, 8)
    assert (wide.nv, wide.ppt) == (1, 2)
    # the adjoint's two blocks per SM allow 320 threads: two vectors up to 160 positions
    assert cuda_scan.pick_config(147, 147, 64, 8, adjoint=True).nv == 2
    assert cuda_scan.pick_config(161, 20, 64, 8, adjoint=True).nv == 1
    # small batches: one vector where the two-vector grid fills at most half the SMs (132 on an H100/H200):
    # B=4, C=64 bf16 gives 4 x 4 x 4 = 64 two-vector blocks -> 128 one-vector blocks; B=8 -> 128 stays at two
    assert [cuda_scan.pick_config(147, 147, 64, 8, batch=b, sms=132).nv for b in (1, 4, 8, 32)] == [1, 1, 2, 2]
    assert [cuda_scan.pick_config(74, 74, 64, 8, adjoint=True, batch=b, sms=132).nv for b in (1, 4, 8)] == [1, 1, 2]
    assert cuda_scan.pick_config(147, 147, 384, 8, batch=1, sms=132).nv == 2  # 24 pairs x 4 directions: 2 x 96 > 132
    assert cuda_scan.pick_config(147, 147, 64, 8, batch=1).nv == 2  # no SM count given: the two-vector rule alone
    hits = cuda_scan.pick_config.cache_info().hits
    assert cuda_scan.pick_config(147, 147, 64, 8, batch=1) is cuda_scan.pick_config(147, 147, 64, 8, batch=1)
    assert cuda_scan.pick_config.cache_info().hits > hits  # memoized: every eager call asks (host time)
    with pytest.raises(ValueError, match="adjoint"):
        cuda_scan._fwd_expression(1, cuda_scan.FastConfig("regs", nv=1), adjoint=True)
    with pytest.raises(ValueError, match="FastConfig"):
        cuda_scan.FastConfig("regs", nv=2)


@pytest.fixture
def fast_forward_stand_in(monkeypatch):
    """The fast path 'available' and its forward replaced by the Triton quad forward (same (y, hs)
    contract), recording each call; under the interpreter on CPU."""
    calls = []

    def forward(x, lam, u, gates, config=None):
        calls.append(x.dtype)
        return scan_module._scan_quad_fwd(x, lam, u, gates, scan_module.SHIFT_SCRATCH)

    def backward(x, lam, u, gates, hs, dy, out=None, config=None):
        calls.append("cuda backward")
        return scan_module._scan_quad_bwd(x, lam, u, gates, hs, dy, scan_module.SHIFT_SCRATCH, out=out)

    monkeypatch.setattr(cuda_scan, "unavailable_reason", lambda x, *others: None)
    monkeypatch.setattr(cuda_scan, "scan_forward", forward)
    monkeypatch.setattr(cuda_scan, "scan_backward", backward)
    return calls


def _grads(fn, inputs, dy):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    out.backward(dy.to(out.dtype))
    return [out] + [t.grad for t in leaves]


@pytest.mark.parametrize("variant", ["cuda-fast", "cuda-fwd-triton-bwd"])
@pytest.mark.parametrize("head", [False, True], ids=["split", "head"])
def test_fast_forward_pairs_with_either_backward(fast_forward_stand_in, head, variant):
    """cuda-fast routes the forward to cuda_scan.scan_forward and the backward to cuda_scan.scan_backward;
    cuda-fwd-triton-bwd back-propagates through the Triton quad backward on the hs the fast forward returns.
    y and every gradient match the float64 reference."""
    gen = torch.Generator().manual_seed(0)
    B, H, W, C = 2, 4, 5, 8
    x = torch.randn(B, H, W, C, generator=gen)
    hd = torch.randn(B, H, W, 5, C, generator=gen)
    dy = torch.randn(B, H, W, C, generator=gen)

    def split(fn):
        return lambda x, hd: fn(x, hd[..., 1, :], hd[..., 0, :], hd[..., 2:5, :])

    fast = (lambda x, hd: scan_module.cgspn_scan_head(x, hd, variant=variant)) if head else \
        split(lambda *a: cgspn_scan(*a, variant=variant))
    ours = _grads(fast, [x.to(DEVICE), hd.to(DEVICE)], dy.to(DEVICE))
    ref = _grads(split(cgspn_scan_reference), [x.double(), hd.double()], dy.double())
    assert fast_forward_stand_in[0] == torch.float32, "the fast forward was not called"
    assert ("cuda backward" in fast_forward_stand_in) == (variant == "cuda-fast")
    for name, a, b in zip(("y", "dx", "dhead"), ours, ref, strict=True):
        assert relative_rms(a.cpu(), b) <= 1e-5, name


def test_auto_takes_the_fast_path_for_16_bit_only(fast_forward_stand_in):
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(1, 3, 4, 8, generator=gen) for _ in range(3)] + [torch.randn(1, 3, 4, 3, 8, generator=gen)]
    with torch.no_grad():
        cgspn_scan(*(t.to(DEVICE) for t in inputs), variant="auto")
        assert fast_forward_stand_in == []  # float32: Triton
        cgspn_scan(*(t.to(DEVICE, torch.bfloat16) for t in inputs), variant="auto")
        assert fast_forward_stand_in == [torch.bfloat16]
        cgspn_scan(*(t.to(DEVICE) for t in inputs), variant="cuda-fast")  # explicit: wherever it can run
        assert fast_forward_stand_in == [torch.bfloat16, torch.float32]
    x32 = inputs[0].to(DEVICE)
    assert scan_module.scan_backend("auto", x32).startswith("triton quad-scratch (fast path not used: float32: the Triton")
    assert scan_module.scan_backend("auto", x32.bfloat16()) == "cuda-fast-path (fwd CUDA, bwd CUDA)"
    assert scan_module.scan_backend("cuda-fwd-triton-bwd", x32) == "cuda-fast-path (fwd CUDA, bwd triton quad-scratch)"


def test_default_variant_is_auto():
    assert scan_module.DEFAULT_VARIANT == "auto"
    assert {"auto", "cuda-fast"} <= set(scan_module.SCAN_VARIANTS)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA toolkit) to compile the fast path's source")
def test_source_compiles_for_sm90_without_spills(tmp_path):
    """The default launch configurations of every dtype, vector and element loads, through ptxas for sm_90."""
    path = tmp_path / "fast_path.cu"
    configs = [cuda_scan.FastConfig(nv=nv) for nv in (1, 2)]
    cuda_scan.write_source(str(path), configs)
    proc = subprocess.run(["nvcc", "-arch=sm_90", "-Xptxas", "-v", "-c", str(path), "-o", str(tmp_path / "fast_path.o")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spills = re.findall(r"(\d+) bytes spill stores", proc.stderr)
    assert spills and all(int(n) == 0 for n in spills), proc.stderr[-3000:]


def test_source_writer_cli(tmp_path):
    path = tmp_path / "k.cu"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", f"from kernels.cgspn import cuda_scan; cuda_scan.write_source({str(path)!r})"],
                          capture_output=True, text=True, cwd=root)
    assert proc.returncode == 0, proc.stderr
    text = path.read_text()
    assert "template __global__ void cgspn_rows<1, 2, 1, 3, true, false, false>" in text  # forward
    assert "template __global__ void cgspn_rows<1, 2, 1, 3, true, false, true>" in text  # adjoint
    assert "template __global__ void cgspn_bwd_epilogue<1, true>" in text


# ---- the CUDA backward's decomposition, mirrored in float64 ------------------------------------------------------
def _mirror_adjoint(weights: torch.Tensor, dh: torch.Tensor) -> torch.Tensor:
    """``cgspn_rows<..., ADJ=true>`` in scan layout: weights ``(B, L, P, 3, C)`` (normalized), dh ``(B, L, P, C)``;
    rows in reverse, a = dh + c_m + c_r[p-1] + c_l[p+1] with the products c = w a of the row after."""
    B, L, P, C = dh.shape
    zero = dh.new_zeros(B, 1, C)
    c_l = c_m = c_r = dh.new_zeros(B, P, C)
    rows = []
    for s in reversed(range(L)):
        a = dh[:, s] + c_m + torch.cat([zero, c_r[:, :-1]], 1) + torch.cat([c_l[:, 1:], zero], 1)
        w = weights[:, s]
        c_l, c_m, c_r = w[:, :, 0] * a, w[:, :, 1] * a, w[:, :, 2] * a
        rows.append(a)
    return torch.stack(rows[::-1], dim=1)


def _shifted(t: torch.Tensor, di: int, dj: int) -> torch.Tensor:
    """t at pixel (i + di, j + dj) of a (B, H, W, C) tensor, 0 off the grid."""
    H, W = t.shape[1:3]
    out = torch.zeros_like(t)
    out[:, max(0, -di):H - max(0, di), max(0, -dj):W - max(0, dj)] = t[:, max(0, di):H + min(0, di), max(0, dj):W + min(0, dj)]
    return out


def _mirror_backward(x, lam, u, gates, dy):
    """``cuda_scan.scan_backward`` step by step: the four adjoints, then ``cgspn_bwd_epilogue``'s formulas."""
    from kernels.cgspn.reference import _from_scan_layout, _to_scan_layout, normalize_gates_eager, propagate_reference

    H, W = x.shape[1:3]
    hs, adj = [], []
    for axis, pair in (("vertical", ("tb", "bt")), ("horizontal", ("lr", "rl"))):
        weights = normalize_gates_eager(gates, axis)
        for d in pair:
            hs.append(propagate_reference(x, lam, weights, d))
            adj.append(_from_scan_layout(_mirror_adjoint(_to_scan_layout(weights, d), _to_scan_layout(u * dy, d)), d))
    a = sum(adj)
    s = torch.sigmoid(gates)
    sl, sm, sr = s[..., 0, :], s[..., 1, :], s[..., 2, :]
    i = torch.arange(H).view(1, H, 1, 1)
    j = torch.arange(W).view(1, 1, W, 1)
    dg = torch.zeros_like(gates)
    for pair in range(2):
        if pair == 0:  # tb reads row i-1, bt row i+1; the state axis is j
            dw = [adj[0] * _shifted(hs[0], -1, k - 1) + adj[1] * _shifted(hs[1], 1, k - 1) for k in range(3)]
            has_l, has_r = (j > 0).double(), (j < W - 1).double()
        else:  # lr reads column j-1, rl column j+1; the state axis is i
            dw = [adj[2] * _shifted(hs[2], k - 1, -1) + adj[3] * _shifted(hs[3], k - 1, 1) for k in range(3)]
            has_l, has_r = (i > 0).double(), (i < H - 1).double()
        den = sm + has_l * sl + has_r * sr
        w_l, w_m, w_r = sl / den, sm / den, sr / den
        dot = dw[0] * w_l + dw[1] * w_m + dw[2] * w_r
        dg[..., 0, :] += (dw[0] - has_l * dot) / den * sl * (1 - sl)
        dg[..., 1, :] += (dw[1] - dot) / den * sm * (1 - sm)
        dg[..., 2, :] += (dw[2] - has_r * dot) / den * sr * (1 - sr)
    return lam * a, x * a, dy * sum(hs), dg


def test_cuda_backward_decomposition_matches_autograd():
    """The adjoint rows and the elementwise pass of the CUDA backward (float64 mirror) give autograd's
    gradients of the reference, on an odd non-square grid with one-pixel neighbours at every edge."""
    gen = torch.Generator().manual_seed(3)
    B, H, W, C = 2, 5, 7, 3
    x, lam, u, dy = (torch.randn(B, H, W, C, generator=gen, dtype=torch.float64) for _ in range(4))
    gates = 2 * torch.randn(B, H, W, 3, C, generator=gen, dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (x, lam, u, gates)]
    cgspn_scan_reference(*leaves).backward(dy)
    for name, ours, ref in zip(("dx", "dlam", "du", "dgates"), _mirror_backward(x, lam, u, gates, dy), leaves, strict=True):
        torch.testing.assert_close(ours, ref.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_launcher_packs_every_argument_into_its_own_slot(monkeypatch):
    """cuLaunchKernel reads each argument through its own pointer: pointers and int64 values whole, an int32
    from the low 4 bytes of its slot (little-endian), negative values in two's complement."""
    import ctypes

    seen = {}

    class Driver:
        @staticmethod
        def launchKernel(f, gx, gy, gz, bx, by, bz, smem, stream, params, extra):  # noqa: N802 - CuPy's name
            pointers = (ctypes.c_void_p * 3).from_address(params)
            seen["int64"] = [ctypes.c_int64.from_address(p).value for p in pointers]
            seen["int32"] = ctypes.c_int32.from_address(pointers[1]).value
            seen["launch"] = (f, gx, gy, gz, bx, by, bz, smem, stream, extra)

    class FakeCupy:
        class cuda:  # noqa: N801 - mirrors cupy.cuda
            driver = Driver

    monkeypatch.setattr(cuda_scan, "_cupy", lambda: FakeCupy)
    launcher = cuda_scan._Launch(function=None, pointer=1234, nargs=3)
    for args in ((0x7F00_0000_1000, 147, -5), (16, 2**31 - 1, 2**40)):
        launcher((2, 3, 4), 64, 1024, 99, args)
        assert seen["int64"] == list(args)
        assert seen["int32"] == args[1]
        assert seen["launch"] == (1234, 2, 3, 4, 64, 1, 1, 1024, 99, 0)
