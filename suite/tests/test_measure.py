"""The measurement core: statistics, counts, the CPU timer on known work, steps, correctness, statuses."""

from __future__ import annotations

import math
import time

import pytest
import torch

from kernels import registry
from kernels.params import Params
from suite.measure import (
    Timing,
    TimingError,
    TimingSettings,
    check_correctness,
    compare,
    make_step,
    measure,
    measure_case,
    repetition_counts,
    should_flush_l2,
)
from suite.results import case_id
from suite.tests.helpers import load_sample_impls


@pytest.fixture
def impls(monkeypatch):
    module = load_sample_impls()
    module.install(monkeypatch)
    return module


FAST = TimingSettings(budget_ms=5, warmup_ms=1, min_reps=3, max_reps=10)


# ---- statistics ------------------------------------------------------------------------------


def test_statistics_of_known_samples():
    # sorted: 1..8 and 100; q1 = 3, median = 5, q3 = 7 (linear interpolation, as numpy)
    timing = Timing.from_samples([5, 1, 100, 3, 2, 4, 6, 7, 8])
    assert (timing.median_ms, timing.iqr_ms, timing.min_ms, timing.n) == (5, 4, 1, 9)
    assert timing.mean_ms == pytest.approx(136 / 9)
    assert timing.outliers == 1  # 100 > q3 + 1.5 * IQR = 13
    assert timing.samples_ms == [5, 1, 100, 3, 2, 4, 6, 7, 8]  # every sample kept, in order


def test_statistics_match_numpy_quantiles():
    samples = [0.3, 0.1, 0.7, 0.2, 0.9, 0.4]
    timing = Timing.from_samples(samples)
    q1, q2, q3 = torch.quantile(torch.tensor(samples, dtype=torch.float64), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    assert timing.median_ms == pytest.approx(q2.item())
    assert timing.iqr_ms == pytest.approx((q3 - q1).item())


def test_statistics_need_samples():
    with pytest.raises(ValueError, match="no samples"):
        Timing.from_samples([])


def test_repetition_counts_follow_the_budget():
    settings = TimingSettings(budget_ms=100, warmup_ms=20, min_reps=5, max_reps=50)
    assert repetition_counts(1.0, settings) == (20, 50)  # 100 reps fit, capped at max_reps
    assert repetition_counts(10.0, settings) == (2, 10)
    assert repetition_counts(1000.0, settings) == (1, 5)  # slower than the budget: min_reps


@pytest.mark.parametrize(("setting", "bytes_ideal", "expected"), [
    ("auto", 10e6, True),  # fits in 2x of a 50 MB L2: cold-cache timing
    ("auto", 500e6, False),  # streams far more than L2: a flush changes nothing
    ("auto", None, True),  # unknown traffic: cold by default
    (True, 500e6, True),
    (False, 1e3, False),
])
def test_l2_flush_rule(setting, bytes_ideal, expected):
    assert should_flush_l2(setting, bytes_ideal, 50 * 2**20) is expected


@pytest.mark.parametrize(("values", "field"), [
    ({"budget_ms": -1}, "timing.budget_ms"),
    ({"min_reps": 0}, "timing.min_reps"),
    ({"min_reps": 10, "max_reps": 5}, "timing.max_reps"),
    ({"l2_flush": "sometimes"}, "timing.l2_flush"),
    ({"cuda_graph": "yes"}, "timing.cuda_graph"),
    ({"budget": 10}, "timing.budget"),
])
def test_timing_settings_errors_name_the_field(values, field):
    with pytest.raises(TimingError, match=field.replace(".", r"\.")):
        TimingSettings.from_dict(values)


def test_budget_scale_multiplies_times_only():
    scaled = TimingSettings(budget_ms=100, warmup_ms=10, min_reps=4).scaled(0.5)
    assert (scaled.budget_ms, scaled.warmup_ms, scaled.min_reps) == (50, 5, 4)


# ---- the CPU timer on known work ---------------------------------------------------------------


def test_cpu_timer_measures_a_known_sleep():
    sleep_ms = 20.0
    settings = TimingSettings(budget_ms=150, warmup_ms=10, min_reps=3, max_reps=20)
    timing = measure(lambda: time.sleep(sleep_ms * 1e-3), "cpu", settings)
    assert timing.timer == "cpu-perf-counter"
    assert 3 <= timing.n <= 20 and len(timing.samples_ms) == timing.n
    assert sleep_ms <= timing.min_ms <= timing.median_ms
    assert timing.median_ms < sleep_ms * 2  # sleep overshoot is far below 100% even on a loaded CI box


def test_first_call_is_not_timed():
    calls = []

    def step():
        calls.append(time.perf_counter())
        time.sleep(0.05 if len(calls) == 1 else 0.001)  # a slow first call (JIT compile)

    timing = measure(step, "cpu", TimingSettings(budget_ms=10, warmup_ms=0, min_reps=3, max_reps=5))
    assert max(timing.samples_ms) < 40


# ---- steps and correctness ---------------------------------------------------------------------


def test_fwd_bwd_step_resets_grads_and_uses_one_upstream_gradient():
    module = load_sample_impls()
    workload = module.build_linear(Params(batch=3, grid=5), torch.float64, torch.device("cpu"), "fwd+bwd")
    step = make_step(workload, "fwd+bwd")
    step()
    first = [t.grad.clone() for t in workload.inputs + workload.parameters]
    step()  # grads set to None before the repetition: equal, not doubled
    for before, t in zip(first, workload.inputs + workload.parameters, strict=True):
        torch.testing.assert_close(t.grad, before)


def test_fwd_step_builds_no_graph():
    module = load_sample_impls()
    workload = module.build_linear(Params(batch=3, grid=5), torch.float32, torch.device("cpu"), "fwd+bwd")
    outputs = []
    original = workload.fn
    workload.fn = lambda: outputs.append(original()) or outputs[-1]
    make_step(workload, "fwd")()
    assert not outputs[-1].requires_grad


def test_compare_reports_relative_errors_and_nan():
    ref = torch.tensor([1.0, -2.0, 3.0, 4.0], dtype=torch.float64)
    errors = compare(ref * 1.01, ref)
    assert errors["rel_rms"] == pytest.approx(0.01)
    assert errors["max_rel_err"] == pytest.approx(0.04 / 4)
    nan = compare(torch.tensor([1.0, float("nan"), 3.0, 4.0]), ref)
    assert math.isnan(nan["rel_rms"]) and math.isnan(nan["max_rel_err"])


def test_check_correctness_uses_the_dtype_tolerance():
    module = load_sample_impls()
    cpu = torch.device("cpu")
    good = check_correctness(module.build_sleep(Params(batch=2, grid=1), torch.float32, cpu, "fwd"), "float32")
    assert good["passed"] is True and good["tolerance"] == registry.TOLERANCE["float32"]
    wrong = check_correctness(module.build_wrong(Params(batch=2, grid=3), torch.float32, cpu, "fwd"), "float32")
    assert wrong["passed"] is False and wrong["rel_rms"] == pytest.approx(0.1, rel=1e-5)
    nan = check_correctness(module.build_nan(Params(batch=2, grid=3), torch.float32, cpu, "fwd"), "float32")
    assert nan["passed"] is False


# ---- measure_case statuses -------------------------------------------------------------------------


def run_case(name: str, mode: str = "fwd", grid: int = 3, dtype: str = "float32"):
    impl = registry.get(name, "sublayer")
    return measure_case(impl, Params(batch=2, grid=grid), dtype, "cpu", mode, FAST)


def test_ok_row_is_complete(impls):
    row = run_case("test-sleep", grid=2)
    assert row.status == "ok", row.message
    assert row.case_id == case_id("test-sleep", "sublayer", "fwd", "float32", {"batch": 2, "grid": 2})
    assert row.params == {"batch": 2, "grid": 2}
    assert row.n == len(row.samples_ms) >= 3 and row.median_ms >= 2.0
    assert row.timer == "cpu-perf-counter" and row.correctness["passed"] is True
    assert row.flops == 4.0 and row.tflops == pytest.approx(4.0 / (row.median_ms * 1e-3) / 1e12)
    assert row.gbps == pytest.approx(32.0 / (row.median_ms * 1e-3) / 1e9) and row.bw_fraction is None  # no ceiling on CPU
    assert row.nvml["available"] is False and row.nvml["reason"]


def test_fwd_bwd_row(impls):
    row = run_case("test-linear", mode="fwd+bwd", grid=7)
    assert row.status == "ok", row.message
    assert row.flops == pytest.approx(3 * 2.0 * 14 * 7)  # backward counted as 2x forward


@pytest.mark.parametrize(("name", "status", "text"), [
    ("test-oom", "oom", "out of memory"),
    ("test-error", "error", "deliberate failure"),
    ("test-unavailable", "unsupported", "needs absent hardware"),
    ("test-not-implemented", "unsupported", "not supported"),
    ("test-wrong", "failed-check", "exceeds tolerance"),
    ("test-nan", "failed-check", "nan"),
])
def test_failure_statuses(impls, name, status, text):
    row = run_case(name)
    assert row.status == status
    assert text in row.message
    assert row.samples_ms == [] and row.median_ms is None  # a failed case is never reported as fast


def test_unsupported_dtype(impls):
    row = run_case("test-sleep", dtype="bfloat16")
    assert row.status == "unsupported" and "dtype bfloat16 not supported" in row.message


def test_profile_failure_is_recorded_not_raised(impls, tmp_path):
    def broken(step, **kwargs):
        raise RuntimeError("profiler exploded")

    row = measure_case(registry.get("test-sleep", "sublayer"), Params(batch=1, grid=1), "float32", "cpu", "fwd", FAST,
                       profile=True, run_dir=tmp_path, profiler=broken)
    assert row.status == "ok"
    assert row.profile == {"error": "RuntimeError: profiler exploded"}


def test_sample_implementations_are_installed_for_the_test(impls):
    assert "test-sleep" in registry.names()


def test_registry_listing_has_no_test_implementations():
    assert not [n for n in registry.names() if n.startswith("test-")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA events, L2 flush and graphs need a CUDA GPU")
def test_cuda_timers_eager_and_graph_on_a_matmul():
    from suite.measure import measure_cuda_graph

    a = torch.randn(1024, 1024, device="cuda")
    settings = TimingSettings(budget_ms=50, warmup_ms=10, min_reps=5, max_reps=100, l2_flush=True)
    timing = measure(lambda: a @ a, "cuda", settings)
    assert timing.timer == "cuda-events" and timing.l2_flush and timing.n >= 5 and 0 < timing.min_ms <= timing.median_ms
    assert timing.peak_mem_bytes >= a.numel() * 4
    graph, message = measure_cuda_graph(lambda: a @ a, torch.device("cuda"), settings)
    assert message == "" and graph.timer == "cuda-graph" and graph.n >= 5 and graph.l2_flush
    assert 0.5 < graph.median_ms / timing.median_ms < 1.5  # a 1024^3 GEMM is device-bound: same work either way


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_graph_capture_failure_is_recorded_not_fatal():
    from suite.measure import measure_cuda_graph

    a = torch.randn(64, device="cuda")
    graph, message = measure_cuda_graph(lambda: a.sum().item(), torch.device("cuda"), FAST)  # a host sync
    assert graph is None and message.startswith("CUDA-graph capture failed")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_rows_carry_eager_and_graph_times_and_the_host_overhead(impls):
    impl = registry.get("attention-math", "sublayer")
    settings = TimingSettings(budget_ms=30, warmup_ms=5, min_reps=5, max_reps=50)
    row = measure_case(impl, Params(batch=1, channels=32, heads=2, grid=4), "float32", "cuda", "fwd", settings)
    assert row.status == "ok" and row.graph_n >= 5 and row.graph_message == ""
    assert row.host_overhead_ms == pytest.approx(row.median_ms - row.graph_median_ms)
    assert row.device_ms == row.graph_median_ms and row.eager_ms == row.median_ms
    assert row.host_bound is True  # a 16-token attention: a few microseconds of GPU work per Python launch


def test_cpu_rows_say_why_there_is_no_graph_time(impls):
    row = measure_case(registry.get("test-sleep", "sublayer"), Params(batch=1, grid=1), "float32", "cpu", "fwd", FAST)
    assert row.status == "ok" and row.graph_samples_ms == [] and row.graph_median_ms is None
    assert "no CUDA graphs on the CPU" in row.graph_message and row.device_ms == row.median_ms
    assert row.host_bound is None and row.host_overhead_ms is None


@pytest.mark.parametrize(("eager", "eager_iqr", "graph", "graph_iqr", "expected"), [
    (1.00, 0.01, 0.98, 0.01, False),  # one launch on top of device-bound work
    (0.30, 0.02, 0.10, 0.001, True),  # Python launches dominate
    (0.12, 0.10, 0.10, 0.10, False),  # 20% above, but within the spread of the timings
])
def test_host_bound_needs_margin_and_to_exceed_the_noise(eager, eager_iqr, graph, graph_iqr, expected):
    from suite.measure import host_bound

    assert host_bound(eager, eager_iqr, graph, graph_iqr) is expected


def test_availability_probe_that_raises_is_an_error_row_not_a_crash(impls):
    """``Implementation.requires`` may probe the backend (a tiny SDPA call); its exception is the case's outcome."""
    def probe(params, dtype, device):
        raise RuntimeError("backend probe exploded")

    impl = registry.Implementation(name="test-probe", family="vit", level="sublayer", build=impls.build_sleep,
                                   params=("batch", "grid"), dtypes=("float32",), requires=probe)
    row = measure_case(impl, Params(batch=1, grid=1), "float32", "cpu", "fwd", FAST)
    assert row.status == "error" and "backend probe exploded" in row.message
    assert row.samples_ms == [] and row.median_ms is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="peak memory is read from the CUDA caching allocator")
def test_peak_memory_is_the_steady_call_not_first_call_scratch():
    """The first call compiles and autotunes; Triton's autotuner allocates a 256 MiB buffer (do_bench's
    L2 flush) there. That buffer is not the case's footprint; a steady-state call's peak is."""
    x = torch.randn(2**20, device="cuda")  # 4 MiB; each call allocates a 4 MiB output
    calls = []

    def step() -> None:
        if not calls:  # first call only, as autotuning does
            scratch = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
            scratch.zero_()
            del scratch
        calls.append(1)
        x * 2

    torch.cuda.synchronize()
    resident = torch.cuda.memory_allocated()
    timing = measure(step, "cuda", TimingSettings(budget_ms=5, warmup_ms=1, min_reps=2, max_reps=5, l2_flush=False))
    assert x.nbytes <= timing.peak_mem_bytes - resident < 64 * 2**20


def test_correctness_check_compares_every_output():
    """A workload with two outputs fails when only the second one is wrong (e.g. the horizontal gates)."""
    from kernels.registry import Workload
    from suite.measure import check_correctness

    good, wrong = torch.ones(4, 4), torch.full((4, 4), 2.0)
    both_right = Workload(fn=lambda: (good, good), reference=lambda: (good, good))
    second_wrong = Workload(fn=lambda: (good, wrong), reference=lambda: (good, good))
    second_nan = Workload(fn=lambda: (good, torch.full((4, 4), float("nan"))), reference=lambda: (good, good))
    assert check_correctness(both_right, "float32")["passed"] is True
    result = check_correctness(second_wrong, "float32")
    assert result["passed"] is False and result["rel_rms"] == pytest.approx(1.0) and result["checked"] == "2 forward outputs"
    assert check_correctness(second_nan, "float32")["passed"] is False
