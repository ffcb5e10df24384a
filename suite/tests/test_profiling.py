"""Profiling: CPU traces and tables, category rules, trace linking, ncu and Triton metadata paths."""

from __future__ import annotations

import json
import os

import pytest
import torch

from kernels.vit import Block
from suite.profiling import categorize, profile_step
from suite.profiling.categories import (
    ATTENTION,
    CATEGORIES,
    ELEMENTWISE,
    GATE_NORM,
    MLP,
    NORMALIZATION,
    OTHER,
    PROJECTION,
    PROPAGATION,
    KernelContext,
    OpFrame,
    short_kernel_name,
)
from suite.profiling.events import load_trace
from suite.profiling.ncu import find_ncu, ncu_case, parse_ncu_csv, summarize
from suite.profiling.trace import analyze_trace
from suite.profiling.triton_meta import match_launch, triton_kernel_metadata

# ---- profile_step on CPU -------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu_block():
    """A real pre-norm ViT block (identity mixer) at a tiny non-power-of-two shape, MLP width 40."""
    torch.manual_seed(0)
    block = Block(torch.nn.Identity(), channels=24, mlp_hidden=40).requires_grad_(False)
    x = torch.randn(2, 5, 7, 24)
    return lambda: block(x)


def test_profile_step_cpu_writes_trace_and_table(cpu_block, tmp_path):
    result = profile_step(cpu_block, device="cpu", trace_dir=tmp_path, name="vit block/cpu", reps=2, mlp_hidden=40)
    trace = result["trace"]
    # tensorboard_trace_handler layout: <trace_dir>/<run>/<worker>.<ns>.pt.trace.json
    assert os.path.dirname(trace) == str(tmp_path / "vit_block_cpu")
    assert trace.endswith(".pt.trace.json")
    events = load_trace(trace)["traceEvents"]
    assert result["source"] == "cpu-ops" and result["reps"] == 2
    kernels = result["kernels"]
    assert kernels and all(set(k) >= {"name", "category", "calls", "total_ms", "mean_ms", "share"} for k in kernels)
    assert sum(k["share"] for k in kernels) == pytest.approx(1.0, abs=1e-9)
    assert sum(result["categories"].values()) == pytest.approx(result["device_time_ms"], rel=1e-9)
    assert list(result["categories"]) == list(CATEGORIES)
    # self times of ops nest inside the profiled steps: their sum cannot exceed the steps' span
    steps_ms = sum(e["dur"] for e in events if e.get("name", "").startswith("ProfilerStep#")) / 1e3
    assert 0 < result["device_time_ms"] * result["reps"] <= steps_ms * (1 + 1e-9)
    by_name = {(k["name"], k["category"]) for k in kernels}
    assert ("aten::addmm", MLP) in by_name  # fc1/fc2: a 40-wide operand
    assert ("aten::native_layer_norm", NORMALIZATION) in by_name
    assert ("aten::gelu", MLP) in by_name
    layer_norm = next(k for k in kernels if k["name"] == "aten::native_layer_norm")
    assert layer_norm["calls"] == 2  # norm1 + norm2 per repetition
    assert result["occupancy"] == [] and result["notes"]


def test_profile_step_gzip_and_reanalysis(cpu_block, tmp_path):
    result = profile_step(cpu_block, device="cpu", trace_dir=tmp_path, name="gz", reps=1, gzip=True, mlp_hidden=40)
    assert result["trace"].endswith(".pt.trace.json.gz")
    again = analyze_trace(result["trace"], mlp_hidden=40)  # a stored trace gives the same table
    assert again["reps"] == 1
    assert again["device_time_ms"] == pytest.approx(result["device_time_ms"])


def test_profile_step_rejects_bad_arguments(cpu_block, tmp_path):
    with pytest.raises(ValueError, match="reps"):
        profile_step(cpu_block, device="cpu", trace_dir=tmp_path, name="x", reps=0)
    with pytest.raises(ValueError, match="name"):
        profile_step(cpu_block, device="cpu", trace_dir=tmp_path, name="///")


# ---- category rules ------------------------------------------------------------------------

GELU = ("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl(at::TensorIteratorBase&, "
        "at::native::GeluType)::{lambda()#3}::operator()() const::{lambda(c10::BFloat16)#1}, at::detail::Array<char*, 2> >"
        "(int, at::native::GeluCUDAKernelImpl(at::TensorIteratorBase&, at::native::GeluType)::{lambda()#3}, "
        "at::detail::Array<char*, 2>)")
ADD = ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>, "
       "at::detail::Array<char*, 3> >(int, at::native::CUDAFunctor_add<c10::BFloat16>, at::detail::Array<char*, 3>)")
SUM = ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t<float, "
       "at::native::sum_functor<float, float, float>::operator()(at::TensorIterator&)::{lambda(float, float)#1}>, "
       "unsigned int, float, 4, 4> >(at::native::ReduceOp<float, ...>)")
AMPERE_GEMM = "ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_32x5_tn"
NVJET = "nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNT"

NAMED = [
    ("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_32x6_tn_align8>"
     "(cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_32x6_tn_align8::Params)", PROJECTION),
    (AMPERE_GEMM, PROJECTION),
    (NVJET, PROJECTION),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1_execute_segment_k_off_kernel__5x_cublas",
     PROJECTION),
    (ADD, ELEMENTWISE),
    (GELU, ELEMENTWISE),  # GELU outside the MLP context (no shapes) is plain elementwise
    ("flash_fwd_kernel", ATTENTION),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<72, 128, 64, 4, false, false, cutlass::bfloat16_t>>"
     "(pytorch_flash::Flash_fwd_params)", ATTENTION),
    ("void cutlass::device_kernel<flash::enable_sm90_or_later<flash::FlashAttnFwdSm90<...>>>(...)", ATTENTION),
    ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<cutlass::bfloat16_t>::Params)",
     ATTENTION),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x128_4x1x1_kernel0_0", ATTENTION),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, c10::BFloat16, float, c10::BFloat16>(...)", ATTENTION),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>(int, float, "
     "c10::BFloat16 const*, c10::BFloat16 const*, c10::BFloat16 const*, float*, float*, c10::BFloat16*)", NORMALIZATION),
    ("_cgspn_scan_fwd_kernel", PROPAGATION),
    ("_propagate_fwd_kernel", PROPAGATION),
    ("_scan_pair_fwd_kernel", PROPAGATION),
    ("_original_scan_fwd_step", PROPAGATION),
    ("_gspn_original_step_kernel", PROPAGATION),
    ("_normalize_gates_kernel", GATE_NORM),
    ("_gate_norm_fwd_kernel", GATE_NORM),
    ("_cgspn_gate_norm_kernel", GATE_NORM),  # gate normalization wins over the "cgspn" scan rule
    ("void at::native::vectorized_elementwise_kernel<4, at::native::sigmoid_kernel_cuda(at::TensorIteratorBase&)"
     "::{lambda()#2}::operator()() const::{lambda(c10::BFloat16)#1}, at::detail::Array<char*, 2> >(...)", GATE_NORM),
    ("void cub::DeviceScanKernel<cub::DeviceScanPolicy<long>::Policy900, long const*, long*>(...)", OTHER),
    ("triton_poi_fused_add_mul_0", ELEMENTWISE),
    ("Memcpy DtoD (Device -> Device)", OTHER),
    ("Memset (Device)", OTHER),
    ("some_unknown_kernel", OTHER),
]


@pytest.mark.parametrize("name, expected", NAMED, ids=[short_kernel_name(n, 40) for n, _ in NAMED])
def test_category_from_kernel_name(name, expected):
    assert categorize(name) == expected


def _ctx(*frames: tuple[str, list]) -> KernelContext:
    return KernelContext(tuple(OpFrame(name, tuple(tuple(d) for d in dims)) for name, dims in frames))


N = 32 * 74 * 74  # tokens of a B=32, 1036 px case


@pytest.mark.parametrize("name, context, expected", [
    # MLP by shape: fc1 / fc2 GEMMs, GELU, backward mm and bias-grad sum carry the 4304 width
    (NVJET, _ctx(("aten::addmm", [[4304], [N, 1152], [1152, 4304]]), ("aten::linear", [[32, 74, 74, 1152]])), MLP),
    (AMPERE_GEMM, _ctx(("aten::addmm", [[1152], [N, 4304], [4304, 1152]])), MLP),
    (GELU, _ctx(("aten::gelu", [[32, 74, 74, 4304], []])), MLP),
    (AMPERE_GEMM, _ctx(("aten::mm", [[4304, N], [N, 1152]]), ("autograd::engine::evaluate_function: AddmmBackward0", [])),
     MLP),
    (SUM, _ctx(("aten::sum", [[N, 4304], [], [], []])), MLP),
    # the same GEMM on the QKV projection (3456 = 3 x 1152) is a projection
    (NVJET, _ctx(("aten::addmm", [[3456], [N, 1152], [1152, 3456]])), PROJECTION),
    # explicit-math attention: batched product of two activations
    (AMPERE_GEMM, _ctx(("aten::bmm", [[512, 729, 72], [512, 72, 729]]), ("aten::matmul", [])), ATTENTION),
    # eager gate normalization wrapped in a record_function range
    (SUM, _ctx(("aten::sum", [[8, 74, 74, 3, 64], [], []]), ("gate_norm", [])), GATE_NORM),
    (ADD, _ctx(("aten::div", [[8, 74, 74, 3, 64], [8, 74, 74, 1, 64]]),
               ("autograd::engine::evaluate_function: _NormalizeGatesFunctionBackward", [])), GATE_NORM),
    # helper kernels of a layer-norm backward
    ("void at::native::(anonymous namespace)::GammaBetaBackwardCUDAKernel<c10::BFloat16, float>(...)",
     _ctx(("aten::native_layer_norm_backward", [[32, 74, 74, 1152]])), NORMALIZATION),
    # the residual add is not the MLP (only 1152-wide operands)
    (ADD, _ctx(("aten::add", [[32, 74, 74, 1152], [32, 74, 74, 1152], []]), ("ProfilerStep#3", [])), ELEMENTWISE),
])
def test_category_from_context(name, context, expected):
    assert categorize(name, context) == expected


def test_mlp_rule_follows_mlp_hidden():
    context = _ctx(("aten::addmm", [[40], [70, 24], [24, 40]]))
    assert categorize("aten::addmm", context, mlp_hidden=40) == MLP
    assert categorize("aten::addmm", context) == PROJECTION  # default width 4304 is not in these shapes
    assert categorize("aten::addmm", context, mlp_hidden=None) == PROJECTION


def test_short_kernel_name():
    assert short_kernel_name(ADD) == "at::native::vectorized_elementwise_kernel"
    assert short_kernel_name("_propagate_fwd_kernel") == "_propagate_fwd_kernel"


# ---- linking kernels to their ops in a GPU trace -----------------------------------------------


def _op(name, ts, dur, ext, dims=None, cat="cpu_op"):
    args = {"External id": ext}
    if dims is not None:
        args["Input Dims"] = dims
    return {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": 1, "ts": ts, "dur": dur, "args": args}


def _launch(ts, correlation, ext):
    return {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": ts, "dur": 2.0,
            "args": {"External id": ext, "correlation": correlation}}


def _kernel(name, ts, dur, correlation, ext, grid, block, regs, smem, occ):
    return {"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": 7, "ts": ts, "dur": dur,
            "args": {"External id": ext, "correlation": correlation, "device": 0, "stream": 7, "grid": grid, "block": block,
                     "registers per thread": regs, "shared memory": smem, "est. achieved occupancy %": occ}}


GEMM_SM90 = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1_execute_segment_k_off_kernel"
SDPA = "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x128_4x1x1_kernel0_0"
DIV = ("void at::native::vectorized_elementwise_kernel<4, at::native::BinaryFunctor<float, float, float, "
       "at::native::DivFunctor<float>>>")


def _gpu_trace() -> dict:
    """Two profiled repetitions of: fc1 GEMM (MLP), QKV GEMM, cuDNN attention, an eager division
    inside a ``gate_norm`` range, a memset -- shaped like Kineto's export."""
    events = []
    for rep in range(2):
        t = rep * 10_000.0
        c = rep * 100
        events += [
            _op(f"ProfilerStep#{rep + 2}", t, 5000, c + 1, cat="user_annotation"),
            _op("aten::linear", t + 10, 300, c + 2, [[32, 74, 74, 1152], [4304, 1152], [4304]]),
            _op("aten::addmm", t + 20, 200, c + 3, [[4304], [N, 1152], [1152, 4304], [], []]),
            _launch(t + 30, c + 50, c + 3),
            _op("aten::addmm", t + 400, 100, c + 4, [[3456], [N, 1152], [1152, 3456], [], []]),
            _launch(t + 410, c + 51, c + 4),
            _op("aten::_scaled_dot_product_cudnn_attention", t + 600, 100, c + 5, [[32, 16, 5476, 72]] * 3),
            _launch(t + 610, c + 52, c + 5),
            _op("gate_norm", t + 800, 200, c + 6, cat="user_annotation"),
            _op("aten::div", t + 810, 50, c + 7, [[8, 74, 74, 3, 64], [8, 74, 74, 1, 64]]),
            _launch(t + 820, c + 53, c + 7),
            _kernel(GEMM_SM90, t + 1000, 300.0, c + 50, c + 3, [1369, 1, 1], [384, 1, 1], 168, 213248, 19.0),
            _kernel(GEMM_SM90, t + 1400, 100.0, c + 51, c + 4, [1100, 1, 1], [384, 1, 1], 168, 213248, 18.0),
            _kernel(SDPA, t + 1600, 500.0, c + 52, c + 5, [86, 16, 32], [128, 1, 1], 90, 147456, 10.0),
            _kernel(DIV, t + 2200, 50.0, c + 53, c + 7, [16428, 1, 1], [128, 1, 1], 16, 0, 80.0),
            {"ph": "X", "cat": "gpu_memset", "name": "Memset (Device)", "pid": 0, "tid": 7, "ts": t + 2300, "dur": 50.0,
             "args": {"device": 0, "correlation": c + 54}},
        ]
    return {"deviceProperties": [{"id": 0, "name": "NVIDIA H100 80GB HBM3", "computeMajor": 9, "computeMinor": 0,
                                  "numSms": 132, "regsPerMultiprocessor": 65536, "sharedMemPerMultiprocessor": 233472,
                                  "sharedMemPerBlockOptin": 232448, "maxThreadsPerMultiprocessor": 2048}],
            "traceEvents": events}


def test_gpu_trace_table_and_occupancy(tmp_path):
    path = tmp_path / "case.pt.trace.json"
    path.write_text(json.dumps(_gpu_trace()))
    result = analyze_trace(path)
    assert result["source"] == "cuda-kernels" and result["reps"] == 2
    rows = {(r["name"], r["category"]): r for r in result["kernels"]}
    assert rows[(GEMM_SM90, MLP)]["total_ms"] == pytest.approx(0.300)  # per repetition
    assert rows[(GEMM_SM90, PROJECTION)]["calls"] == 1
    assert rows[(SDPA, ATTENTION)]["mean_ms"] == pytest.approx(0.500)
    assert rows[(DIV, GATE_NORM)]["total_ms"] == pytest.approx(0.050)
    assert rows[("Memset (Device)", OTHER)]["total_ms"] == pytest.approx(0.050)
    assert result["device_time_ms"] == pytest.approx(1.0)  # 300 + 100 + 500 + 50 + 50 us
    assert rows[(SDPA, ATTENTION)]["share"] == pytest.approx(0.5)
    assert result["categories"][MLP] == pytest.approx(0.3)
    assert result["limits"]["sm_count"] == 132

    occupancy = {(r["name"], r["grid_blocks"]): r for r in result["occupancy"]}
    fc1 = occupancy[(GEMM_SM90, 1369)]
    # 384 threads = 12 warps; 168 regs -> 5376 per warp -> 65536 // 5376 = 12 warps -> 1 block;
    # smem 213248 + 1024 = 214272 -> 233472 // 214272 = 1 block: both limit to 1 block = 12 warps.
    assert fc1["resident_blocks_per_sm"] == 1
    assert fc1["theoretical_occupancy"] == pytest.approx(12 / 64)
    assert fc1["limiter"] == "registers+shared_memory"
    assert fc1["waves"] == pytest.approx(1369 / 132)
    assert fc1["est_achieved_occupancy"] == pytest.approx(0.19)
    assert fc1["calls"] == 1 and fc1["category"] == MLP
    div = occupancy[(DIV, 16428)]
    # 4 warps, 16 regs: warps allow 16 blocks, registers 32, smem 228, blocks 32 -> 16 blocks = 100 %
    assert div["resident_blocks_per_sm"] == 16 and div["theoretical_occupancy"] == pytest.approx(1.0)
    assert div["waves"] == pytest.approx(16428 / (132 * 16))


def test_legacy_occupancy_key_and_cupti_occupancy(tmp_path):
    trace = _gpu_trace()
    for e in trace["traceEvents"]:
        if e.get("cat") == "kernel" and e["name"] == DIV:
            e["args"]["est. achieved occupancy"] = e["args"].pop("est. achieved occupancy %") / 100.0  # older torch
            e["args"]["occupancy"] = {"activeBlocksPerMultiprocessor": 16, "limitingFactors": "WARPS"}
    path = tmp_path / "legacy.pt.trace.json"
    path.write_text(json.dumps(trace))
    div = next(r for r in analyze_trace(path)["occupancy"] if r["name"] == DIV)
    assert div["est_achieved_occupancy"] == pytest.approx(0.80)
    assert div["cupti_resident_blocks_per_sm"] == div["resident_blocks_per_sm"] == 16


def test_kernel_without_external_id_links_through_its_runtime_call(tmp_path):
    trace = _gpu_trace()
    for e in trace["traceEvents"]:
        if e.get("cat") == "kernel":
            del e["args"]["External id"]
    path = tmp_path / "noexternal.pt.trace.json"
    path.write_text(json.dumps(trace))
    rows = {(r["name"], r["category"]) for r in analyze_trace(path)["kernels"]}
    assert {(GEMM_SM90, MLP), (GEMM_SM90, PROJECTION), (SDPA, ATTENTION), (DIV, GATE_NORM)} <= rows


def test_kernel_without_runtime_event_links_by_external_id(tmp_path):
    trace = _gpu_trace()
    trace["traceEvents"] = [e for e in trace["traceEvents"] if e.get("cat") != "cuda_runtime"]
    path = tmp_path / "noruntime.pt.trace.json"
    path.write_text(json.dumps(trace))
    rows = {(r["name"], r["category"]) for r in analyze_trace(path)["kernels"]}
    assert (GEMM_SM90, MLP) in rows and (GEMM_SM90, PROJECTION) in rows


# ---- Nsight Compute -------------------------------------------------------------------------


def test_ncu_unavailable_returns_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.delenv("CUDA_PATH", raising=False)
    if find_ncu() is not None:  # /usr/local/cuda/bin/ncu exists on this machine
        pytest.skip("ncu is installed under /usr/local/cuda; the unavailable path cannot be reached")
    result = ncu_case("cgspn-scan", "sublayer", {"batch": 2, "grid": 9}, out_dir=tmp_path)
    assert result["available"] is False and "not found" in result["reason"]
    explicit = ncu_case("cgspn-scan", "sublayer", {"batch": 2}, out_dir=tmp_path, ncu="no-such-ncu-binary")
    assert explicit["available"] is False and "no-such-ncu-binary" in explicit["reason"]


NCU_COLUMNS = ["ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream", "Block Size", "Grid Size",
               "Device", "CC", "dram__bytes.sum.per_second", "dram__bytes_read.sum", "dram__bytes_write.sum",
               "dram__throughput.avg.pct_of_peak_sustained_elapsed", "gpu__time_duration.sum", "launch__registers_per_thread",
               "sm__warps_active.avg.pct_of_peak_sustained_active", "lts__t_bytes.sum"]
NCU_UNITS = [""] * 11 + ["byte/second", "byte", "byte", "%", "nsecond", "register/thread", "%", "byte"]
NCU_ROWS = [
    ["0", "4242", "python3.11", "127.0.0.1", "_propagate_fwd_kernel", "1", "7", "(128, 1, 1)", "(37, 64, 1)", "0", "9.0",
     "2,500,000,000,000", "1,000,000", "500,000", "75.5", "600", "96", "40.25", "123"],
    ["1", "4242", "python3.11", "127.0.0.1", "_scan_pair_fwd_kernel", "1", "7", "(256, 1, 1)", "(19, 64, 1)", "0", "9.0",
     "1e+12", "300000", "100000", "30", "400", "128", "20", "7"],
]
# What `ncu --import R --csv --page raw` prints: a log line, a header, a units row, one row per kernel.
NCU_CSV = "==PROF== Disconnected from process 4242\n" + "".join(
    ",".join(f'"{v}"' for v in line) + "\n" for line in [NCU_COLUMNS, NCU_UNITS, *NCU_ROWS])


# the same units as ncu abbreviates them (seen on an H200 with the CUDA 13 ncu: durations in "ns")
NCU_UNITS_SHORT = [""] * 11 + ["B/s", "B", "B", "%", "ns", "register/thread", "%", "B"]
NCU_CSV_SHORT = "==PROF== Disconnected from process 4242\n" + "".join(
    ",".join(f'"{v}"' for v in line) + "\n" for line in [NCU_COLUMNS, NCU_UNITS_SHORT, *NCU_ROWS])


@pytest.mark.parametrize("text", [NCU_CSV, NCU_CSV_SHORT], ids=["full-units", "abbreviated-units"])
def test_parse_ncu_csv_converts_units(text):
    kernels = parse_ncu_csv(text)
    assert [k["name"] for k in kernels] == ["_propagate_fwd_kernel", "_scan_pair_fwd_kernel"]
    first = kernels[0]
    assert first["duration_ms"] == pytest.approx(600e-6)
    assert first["dram_gbps"] == pytest.approx(2500.0)
    assert first["dram_bytes_read"] == pytest.approx(1e6)
    assert first["achieved_occupancy"] == pytest.approx(0.4025)
    assert first["registers_per_thread"] == 96
    assert first["metrics"]["lts__t_bytes.sum"] == 123
    summary = summarize(kernels)
    # (1.5 MB + 0.4 MB) over (600 + 400) ns = 1900 GB/s
    assert summary["dram_gbps"] == pytest.approx(1.9e6 / 1e-6 / 1e9)
    assert summary["achieved_occupancy"] == pytest.approx((0.4025 * 600 + 0.20 * 400) / 1000)


def test_parse_ncu_csv_without_header_names_the_problem():
    with pytest.raises(ValueError, match="header"):
        parse_ncu_csv("==ERROR== no kernels were profiled\n")


# ---- Triton compile metadata -----------------------------------------------------------------


def test_triton_metadata_under_interpreter_says_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    result = triton_kernel_metadata()
    assert result["available"] is False and "interpreter" in result["reason"]


def test_match_launch_uses_block_smem_and_registers():
    variants = [{"num_warps": 4, "shared": 0, "n_regs": 40}, {"num_warps": 8, "shared": 16384, "n_regs": 64},
                {"num_warps": 8, "shared": 16384, "n_regs": None}]
    assert match_launch(variants, 256, 16384, 64) == variants[1:]
    assert match_launch(variants, 128, 0, None) == variants[:1]
    assert match_launch(variants, 512, None, None) == []


# ---- GPU ---------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="profiles CUDA kernels; needs a CUDA GPU")
def test_profile_step_cuda_kernels_and_occupancy(tmp_path):
    a = torch.randn(300, 200, device="cuda")
    b = torch.randn(200, 500, device="cuda")
    result = profile_step(lambda: torch.relu(a @ b), device="cuda", trace_dir=tmp_path, name="cuda-mm", reps=3)
    assert result["source"] == "cuda-kernels" and result["reps"] == 3
    assert sum(k["share"] for k in result["kernels"]) == pytest.approx(1.0)
    assert result["categories"][PROJECTION] > 0
    assert result["occupancy"] and all(0 < r["theoretical_occupancy"] <= 1 for r in result["occupancy"])
    assert result["limits"]["sm_count"] == torch.cuda.get_device_properties(0).multi_processor_count
    for row in result["occupancy"]:
        # where the trace carries CUPTI's own calculation and shared memory does not limit (its carveout
        # is the driver's choice, ours the maximum), both calculators agree
        if row.get("cupti_resident_blocks_per_sm") is not None and "SHARED" not in str(row.get("cupti_limiter")).upper():
            assert row["resident_blocks_per_sm"] == row["cupti_resident_blocks_per_sm"]


def test_triton_kernels_of_the_kernels_package_are_found():
    import kernels.cgspn.gate_norm  # noqa: F401  (defines _normalize_gates_kernel)
    from suite.profiling.triton_meta import compiled_variants, find_triton_kernels

    found = find_triton_kernels()
    assert "_normalize_gates_kernel" in found
    if os.environ.get("TRITON_INTERPRET") == "1":
        assert compiled_variants(found["_normalize_gates_kernel"]) == []  # the interpreter compiles nothing


# ---- ncu target entry point ----------------------------------------------------------------------


def test_ncu_target_builds_and_runs_a_registered_case_on_cpu(capsys):
    from suite.profiling.ncu_target import main

    params = json.dumps({"batch": 1, "grid_h": 3, "grid_w": 5, "channels": 12, "heads": 2, "mlp_hidden": 20})
    assert main(["--implementation", "vit-mlp-half", "--level", "block", "--params", params, "--dtype", "float32",
                 "--device", "cpu", "--reps", "1", "--warmup", "1"]) == 0
    assert "vit-mlp-half/block" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--dtype"):
        main(["--implementation", "vit-mlp-half", "--level", "block", "--dtype", "int8", "--device", "cpu"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="Triton compile metadata exists only for CUDA launches")
def test_profile_of_a_triton_case_carries_compile_metadata(tmp_path):
    from kernels.params import Params
    from kernels.registry import get
    from suite.measure import make_step

    workload = get("cgspn-scan", "sublayer").build(Params(batch=2, channels=144, grid_h=9, grid_w=13), torch.bfloat16,
                                                    torch.device("cuda"), "fwd")
    step = make_step(workload, "fwd")
    step()
    result = profile_step(step, device="cuda", trace_dir=tmp_path, name="cgspn-scan-small")
    assert result["triton"]["available"] is True and result["triton"]["kernels"]
    triton_rows = [r for r in result["occupancy"] if "triton" in r]
    assert triton_rows and any(r["category"] == PROPAGATION for r in triton_rows)
    for row in triton_rows:
        # the launch the trace saw agrees with one compiled variant (registers, warps, shared memory)
        assert any(v["n_regs"] == row["registers_per_thread"] and v["num_warps"] * 32 == row["threads_per_block"]
                   for v in row["triton"])


def test_ncu_command_without_ncu_says_so(monkeypatch, capsys):
    """`cgspn-bench ncu` on a machine without Nsight Compute reports it and exits 2 (no exception)."""
    import suite.profiling.ncu as ncu_module
    from suite.cli import main

    monkeypatch.setattr(ncu_module, "find_ncu", lambda ncu=None: None)
    assert main(["ncu", "cgspn-scan", "sublayer", "--param", "batch=2", "--param", "grid=5"]) == 2
    assert "ncu unavailable" in capsys.readouterr().out
