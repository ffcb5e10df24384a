"""Selection and fallback of the C-GSPN scan's CUDA fast path (``kernels.cgspn.cuda_scan``), on CPU.

CI has no GPU and no CuPy, so these tests check what decides the path and what the caller sees:
the reasons the fast path is not used (device, architecture, missing CuPy, failed build, switch,
dtype and shape limits), the backend string a workload reports, that ``auto`` picks the fast path only
for 16-bit inputs, and that the fast forward pairs with the Triton backward through the shared ``hs``
layout (a stand-in forward that returns the Triton quad forward's ``(y, hs)``, under the interpreter).
The CUDA source is compiled with ``nvcc -arch=sm_90`` where nvcc exists (registers, no spills).
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

    def fake_module(expression):
        if build_error is not None:
            raise build_error
        return expression

    monkeypatch.setattr(cuda_scan, "_cupy", fake_cupy)
    monkeypatch.setattr(cuda_scan, "_module", fake_module)
    cuda_scan._probe.cache_clear()
    try:
        yield
    finally:
        cuda_scan._probe.cache_clear()


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

    monkeypatch.setattr(cuda_scan, "unavailable_reason", lambda x, *others: None)
    monkeypatch.setattr(cuda_scan, "scan_forward", forward)
    return calls


def _grads(fn, inputs, dy):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    out.backward(dy.to(out.dtype))
    return [out] + [t.grad for t in leaves]


@pytest.mark.parametrize("head", [False, True], ids=["split", "head"])
def test_fast_forward_pairs_with_triton_backward(fast_forward_stand_in, head):
    """cuda-fast routes the forward to cuda_scan.scan_forward and back-propagates through the Triton
    quad backward on the hs it returns: y and every gradient match the float64 reference."""
    gen = torch.Generator().manual_seed(0)
    B, H, W, C = 2, 4, 5, 8
    x = torch.randn(B, H, W, C, generator=gen)
    hd = torch.randn(B, H, W, 5, C, generator=gen)
    dy = torch.randn(B, H, W, C, generator=gen)

    def split(fn):
        return lambda x, hd: fn(x, hd[..., 1, :], hd[..., 0, :], hd[..., 2:5, :])

    fast = (lambda x, hd: scan_module.cgspn_scan_head(x, hd, variant="cuda-fast")) if head else \
        split(lambda *a: cgspn_scan(*a, variant="cuda-fast"))
    ours = _grads(fast, [x.to(DEVICE), hd.to(DEVICE)], dy.to(DEVICE))
    ref = _grads(split(cgspn_scan_reference), [x.double(), hd.double()], dy.double())
    assert fast_forward_stand_in, "the fast forward was not called"
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
    assert scan_module.scan_backend("auto", x32.bfloat16()) == "cuda-fast-path (fwd CUDA, bwd triton quad-scratch)"


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
    assert "template __global__ void cgspn_fwd<1, 2, 1, 3, true, false>" in text
