"""The measurement core: the one timer behind the CLI runner and the pytest benchmarks.

Rules (docs/design.md "Measurement rules"):

* one untimed first call absorbs JIT compilation and autotuning;
* warm-up and repetition counts come from a time budget and a per-call estimate taken from a
  few calls (as ``triton.testing.do_bench`` does), clamped to ``[min_reps, max_reps]``;
* on CUDA, an event pair brackets each repetition and one synchronize follows the loop
  (syncing every repetition inflates short kernels; no sync times only the launch);
* cold L2: a buffer of twice the L2 size is zeroed between repetitions, outside the events;
* host time is not device time: every CUDA case is timed eagerly (what a PyTorch user's call
  costs, Python launches included) and, with ``cuda_graph`` on (the default), again as replays
  of a captured CUDA graph (what the GPU needs); a capture failure is recorded with its reason;
* every sample is kept; median, IQR, min, mean, count and 1.5-IQR outliers are reported;
* the CPU timer (``time.perf_counter`` per repetition) has the same interface and statistics.

:func:`measure_case` turns one (implementation, params, dtype, mode) into a
:class:`suite.results.Row`: availability, correctness check, timing, throughput, memory, NVML,
optional profile; OOM, unsupported cases and errors become the row's ``status``. Callers pass
hooks (``prepare`` on the built workload, ``profiler``) instead of this module importing them.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch

from kernels.params import Params
from kernels.registry import DTYPES, Implementation, Workload, tolerance_for
from suite.case import L2_FLUSH_CHOICES as L2_FLUSH_CHOICES
from suite.case import Case as Case
from suite.case import TimingError as TimingError
from suite.case import TimingSettings
from suite.nvml import NvmlSampler
from suite.results import Row, case_id

ESTIMATE_CALLS = 5  # calls timed to estimate the per-call time before choosing the counts
COPY_BYTES = 512 * 2**20  # buffer for the device-to-device copy ceiling
# A case is host-bound when its eager median exceeds the graph-replay median by more than this
# fraction and by more than the timings' noise: its eager time then measures Python launches.
HOST_BOUND_MARGIN = 0.10


@dataclass
class Timing:
    """The result of :func:`measure`: every sample (ms) and robust statistics of them."""

    samples_ms: list[float]
    median_ms: float
    iqr_ms: float  # q3 - q1, quartiles linearly interpolated (as numpy / pandas)
    min_ms: float
    mean_ms: float
    n: int
    outliers: int  # samples beyond 1.5 IQR outside the quartiles
    timer: str = ""  # "cuda-events", "cuda-graph" or "cpu-perf-counter"
    l2_flush: bool = False
    peak_mem_bytes: int | None = None  # CUDA: max allocated during a call after the first (compile/autotune)
    message: str = ""

    @classmethod
    def from_samples(cls, samples_ms: list[float], **details: Any) -> Timing:
        if not samples_ms:
            raise ValueError("Timing.from_samples: no samples")
        data = np.asarray(samples_ms, dtype=np.float64)
        q1, median, q3 = (float(q) for q in np.percentile(data, [25, 50, 75]))  # linear interpolation
        iqr = q3 - q1
        low, high = q1 - 1.5 * iqr, q3 + 1.5 * iqr
        return cls(samples_ms=[float(s) for s in samples_ms], median_ms=median, iqr_ms=iqr, min_ms=float(data.min()),
                   mean_ms=float(data.mean()), n=int(data.size), outliers=int(((data < low) | (data > high)).sum()),
                   **details)


def repetition_counts(estimate_ms: float, settings: TimingSettings) -> tuple[int, int]:
    """(warm-up calls, timed repetitions) that fill the warm-up and timing budgets."""
    per_call = max(estimate_ms, 1e-6)
    warmup = max(1, int(settings.warmup_ms / per_call)) if settings.warmup_ms > 0 else 0
    reps = int(settings.budget_ms / per_call)
    return min(warmup, settings.max_reps), max(settings.min_reps, min(settings.max_reps, reps))


# ---- steps -----------------------------------------------------------------------------------


def tensor_outputs(result: Any) -> list[torch.Tensor]:
    """All output tensors of a workload call (a tensor, or a tuple/list of them)."""
    items = list(result) if isinstance(result, (tuple, list)) else [result]
    for item in items:
        if not isinstance(item, torch.Tensor):
            raise TypeError(f"workload returned {type(item).__name__}, expected a tensor or a tuple of tensors")
    return items


def first_output(result: Any) -> torch.Tensor:
    """The output tensor of a workload call (``fn`` may return a tuple whose first item is it)."""
    if isinstance(result, (tuple, list)):
        result = result[0]
    if not isinstance(result, torch.Tensor):
        raise TypeError(f"workload returned {type(result).__name__}, expected a tensor or a tuple starting with one")
    return result


def upstream_gradient(output: torch.Tensor) -> torch.Tensor:
    """The fixed random upstream gradient of ``fwd+bwd``: standard normal, seed 0, ``output``'s shape,
    dtype and device. The timed step and the gradient check draw the same one."""
    generator = torch.Generator(device=output.device).manual_seed(0)
    return torch.randn(output.shape, generator=generator, device=output.device, dtype=output.dtype)


def make_step(workload: Workload, mode: str) -> Callable[[], None]:
    """A zero-argument callable that runs one repetition of ``mode``.

    ``fwd`` runs ``fn`` under ``no_grad``. ``fwd+bwd`` sets the gradients of the workload's
    inputs and parameters to None, runs the forward and back-propagates one fixed random
    upstream gradient (drawn once, so every repetition does the same work).
    """
    if mode == "fwd":

        def forward() -> None:
            with torch.no_grad():
                workload.fn()

        return forward
    if mode != "fwd+bwd":
        raise ValueError(f"mode: {mode!r} is not one of fwd, fwd+bwd")
    leaves = [t for t in [*workload.inputs, *workload.parameters] if t.requires_grad]
    if not leaves:
        raise ValueError("fwd+bwd: the workload has no inputs or parameters that require grad")
    upstream = upstream_gradient(first_output(workload.fn()))

    def forward_backward() -> None:
        for t in leaves:
            t.grad = None
        first_output(workload.fn()).backward(upstream)

    return forward_backward


# ---- timers ----------------------------------------------------------------------------------


def measure(step: Callable[[], None], device: torch.device | str, settings: TimingSettings,
            bytes_ideal: float | None = None) -> Timing:
    """Time ``step`` on ``device`` with the budget in ``settings`` (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        return measure_cuda(step, device, settings, bytes_ideal)
    return measure_cpu(step, settings)


def measure_cpu(step: Callable[[], None], settings: TimingSettings) -> Timing:
    """``time.perf_counter`` around each repetition; same counts and statistics as CUDA."""
    step()  # first call: lazy initialization, Triton interpreter setup, allocator warm-up
    start = time.perf_counter()
    calls = 0
    while calls < ESTIMATE_CALLS and (calls == 0 or (time.perf_counter() - start) * 1e3 < settings.budget_ms / 4):
        step()
        calls += 1
    estimate_ms = (time.perf_counter() - start) * 1e3 / calls
    warmup, reps = repetition_counts(estimate_ms, settings)
    for _ in range(max(0, warmup - calls)):  # the estimate calls already warmed up
        step()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        samples.append((time.perf_counter() - t0) * 1e3)
    return Timing.from_samples(samples, timer="cpu-perf-counter")


def l2_cache_bytes(device: torch.device) -> int:
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 50 * 2**20)


def should_flush_l2(setting: bool | str, bytes_ideal: float | None, l2_bytes: int) -> bool:
    """``auto`` flushes unless the workload's ideal traffic is well beyond L2 (>= 2x), where a
    flush changes nothing but the run time; unknown traffic is flushed (cold by default)."""
    if setting == "auto":
        return bytes_ideal is None or bytes_ideal < 2 * l2_bytes
    return bool(setting)


def capture_cuda_graph(step: Callable[[], None]) -> tuple[torch.cuda.CUDAGraph | None, str]:
    """Capture ``step`` into a CUDA graph: (graph, "") or (None, why capture failed)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(side):  # warm up on a side stream, as torch.cuda.graphs requires
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
    except Exception as exc:  # capture is impossible for host syncs, CPU work, dynamic shapes...
        torch.cuda.synchronize()
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        return None, f"CUDA-graph capture failed ({type(exc).__name__}: {first_line}); eager time only"
    return graph, ""


def _first_calls(step: Callable[[], None]) -> int:
    """The untimed first call (JIT compile, autotune, whose scratch is not the case's) and a
    steady-state call whose peak allocation is the case's memory footprint; returns that peak."""
    torch.cuda.synchronize()
    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


def _time_events(run: Callable[[], None], device: torch.device, settings: TimingSettings, flush: bool) -> list[float]:
    """Estimate, warm up, then one event pair per repetition and one synchronize after the loop."""
    cache = torch.empty(2 * l2_cache_bytes(device), dtype=torch.int8, device=device) if flush else None

    def flush_l2() -> None:
        if cache is not None:
            cache.zero_()

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(ESTIMATE_CALLS):
        flush_l2()
        run()
    end.record()
    torch.cuda.synchronize()
    warmup, reps = repetition_counts(start.elapsed_time(end) / ESTIMATE_CALLS, settings)
    for _ in range(warmup):
        run()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        flush_l2()  # outside the events: the flush is not part of the sample
        starts[i].record()
        run()
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]


def measure_cuda(step: Callable[[], None], device: torch.device, settings: TimingSettings,
                 bytes_ideal: float | None = None) -> Timing:
    """Eager calls: CUDA events around each repetition, one synchronize after the loop."""
    flush = should_flush_l2(settings.l2_flush, bytes_ideal, l2_cache_bytes(device))
    with torch.cuda.device(device):
        peak = _first_calls(step)
        samples = _time_events(step, device, settings, flush)
    return Timing.from_samples(samples, timer="cuda-events", l2_flush=flush, peak_mem_bytes=peak)


def measure_cuda_graph(step: Callable[[], None], device: torch.device, settings: TimingSettings,
                       bytes_ideal: float | None = None) -> tuple[Timing | None, str]:
    """Replays of ``step`` captured into a CUDA graph: (timing, "") or (None, why capture failed).

    Same budget, counts, L2 rule and statistics as the eager timer; the graph and its memory pool
    are released before returning."""
    flush = should_flush_l2(settings.l2_flush, bytes_ideal, l2_cache_bytes(device))
    with torch.cuda.device(device):
        graph, message = capture_cuda_graph(step)
        if graph is None:
            return None, message
        try:
            samples = _time_events(graph.replay, device, settings, flush)
        finally:
            del graph
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    return Timing.from_samples(samples, timer="cuda-graph", l2_flush=flush), ""


_COPY_BANDWIDTH: dict[int, float] = {}


def copy_bandwidth_gbps(device: torch.device | str) -> float | None:
    """Measured device-to-device copy bandwidth (read + write bytes / median time), GB/s.

    The ceiling for ``bw_fraction``; measured once per process and device; None on CPU.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _COPY_BANDWIDTH:
        with torch.cuda.device(index):
            src = torch.randn(COPY_BYTES // 4, device=device)
            dst = torch.empty_like(src)
            timing = measure_cuda(lambda: dst.copy_(src), torch.device("cuda", index),
                                  TimingSettings(budget_ms=200, warmup_ms=50, min_reps=10, max_reps=200, l2_flush=False))
            _COPY_BANDWIDTH[index] = 2 * COPY_BYTES / (timing.median_ms * 1e-3) / 1e9
            del src, dst
            torch.cuda.empty_cache()
    return _COPY_BANDWIDTH[index]


# ---- correctness -----------------------------------------------------------------------------


def compare(output: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Relative RMS error ``rms(out - ref) / rms(ref)`` and max error relative to ``max|ref|``
    (elementwise relative error is meaningless near zeros); NaN anywhere makes both NaN."""
    if output.shape != reference.shape:
        raise ValueError(f"output shape {tuple(output.shape)} differs from the reference's {tuple(reference.shape)}")
    out, ref = output.detach().double(), reference.detach().double().to(output.device)
    diff = out - ref
    ref_rms = ref.pow(2).mean().sqrt().clamp_min(1e-30)
    ref_max = ref.abs().max().clamp_min(1e-30)
    rel_rms = (diff.pow(2).mean().sqrt() / ref_rms).item()
    max_rel = (diff.abs().max() / ref_max).item()
    if not torch.isfinite(out).all():
        rel_rms = max_rel = float("nan")
    return {"rel_rms": rel_rms, "max_rel_err": max_rel}


# A gradient is allowed twice the forward's relative RMS error. Chosen from the arithmetic, not
# from any case: the backward starts from the forward's rounded activations and adds rounding of
# its own over about twice the forward's work (``Workload.flops_bwd`` defaults to 2x), so the two
# passes' independent errors sum to about twice the forward's; parameter gradients also sum over
# every token. (The scan tests, test_cgspn_scan.py, hold gradients to their output bound, 4 eps,
# against float64.) The reference's gradients are float32/float64, rounded once to the leaf's dtype
# where autograd casts them back: half an ulp, far below the bound.
GRADIENT_TOLERANCE_FACTOR = 2.0


def _worst(errors: list[dict[str, float]]) -> dict[str, float]:
    """The largest of each error over several comparisons; NaN (a failed comparison) is the largest."""
    return {key: max((e[key] for e in errors), key=lambda v: math.inf if math.isnan(v) else v)
            for key in ("rel_rms", "max_rel_err")}


def check_correctness(workload: Workload, dtype: str, level: str = "block", depth: int = 1,
                      mode: str = "fwd") -> dict[str, Any]:
    """Compare the forward output with ``workload.reference()``; ``passed`` is None without one.

    The tolerance is ``workload.tolerance`` or :func:`kernels.registry.tolerance_for` (which
    widens it with the depth of a network). In ``fwd+bwd`` mode a passing forward is followed by
    :func:`check_gradients`, whose ``grad_*`` keys join the result; ``passed`` needs both."""
    tolerance = workload.tolerance if workload.tolerance is not None else tolerance_for(dtype, level, depth)
    if workload.reference is None:
        return {"reference": None, "passed": None, "tolerance": tolerance, "note": "no reference for this workload"}
    with torch.no_grad():
        outputs = tensor_outputs(workload.fn())
        references = tensor_outputs(workload.reference())
    # every output both return (e.g. the vertical and the horizontal normalized gates); the worst counts
    # (a fwd+bwd workload may return only the first output: what it back-propagates)
    pairs = list(zip(outputs, references, strict=False))
    errors = _worst([compare(out, ref) for out, ref in pairs])
    checked = "forward output" if len(pairs) == 1 else f"{len(pairs)} forward outputs"
    del outputs, references, pairs
    passed = math.isfinite(errors["rel_rms"]) and errors["rel_rms"] <= tolerance
    name = getattr(workload.reference, "__qualname__", "reference")
    result = {"reference": name, "checked": checked, **errors, "tolerance": tolerance, "passed": passed}
    if mode == "fwd+bwd":
        if not passed:
            result["gradients"] = "not checked (the forward output failed)"
            return result
        result.update(check_gradients(workload, GRADIENT_TOLERANCE_FACTOR * tolerance))
        if result.get("grad_passed") is False:
            result["passed"] = False
        if result.get("grad_checked"):
            result["checked"] += f" + {result['grad_checked']} gradient{'s' if result['grad_checked'] > 1 else ''}"
    return result


def gradient_leaves(workload: Workload) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every input and parameter that requires grad: ``input <i>``, and the
    parameter's name in ``workload.module`` when there is one, else ``parameter <i>``."""
    names = {id(p): n for n, p in workload.module.named_parameters()} if workload.module is not None else {}
    leaves = [(f"input {i}", t) for i, t in enumerate(workload.inputs) if t.requires_grad]
    leaves += [(names.get(id(p), f"parameter {i}"), p) for i, p in enumerate(workload.parameters) if p.requires_grad]
    return leaves


def _reference_gradients(workload: Workload, tensors: tuple[torch.Tensor, ...],
                         upstream: torch.Tensor) -> tuple[torch.Tensor | None, ...] | None:
    """The reference's gradients of ``tensors`` for ``upstream`` (cast to the reference's dtype);
    None when its output has no autograd path to them."""
    with torch.enable_grad():
        ref = first_output(workload.reference())
        if not ref.requires_grad:
            return None
        return torch.autograd.grad(ref, tensors, upstream.to(ref.dtype), allow_unused=True)


def check_gradients(workload: Workload, tolerance: float) -> dict[str, Any]:
    """``fwd+bwd`` correctness: the gradients of every input and parameter that requires grad,
    back-propagated by ``fn`` and by ``workload.reference`` from the fixed upstream gradient of
    the timed step (:func:`upstream_gradient`), compared with :func:`compare`; the worst counts.

    Returns flat keys (rows are flattened into tables): ``gradients`` (what happened),
    ``grad_checked`` (how many), ``grad_rel_rms`` / ``grad_max_rel_err`` (the worst),
    ``grad_worst`` (the tensor with the worst relative RMS), ``grad_tolerance``, ``grad_passed``
    and ``grad_unchecked`` (tensors the reference gives no gradient for). A reference without
    an autograd path, or whose backward runs out of memory, leaves ``grad_passed`` None: the
    forward verdict stands and the case is still timed. ``.grad`` is None before and after.
    """
    leaves = gradient_leaves(workload)
    if not leaves:
        return {"gradients": "no input or parameter requires grad"}
    names, tensors = zip(*leaves, strict=True)
    out_of_memory = False
    try:
        for t in tensors:
            t.grad = None
        with torch.enable_grad():
            out = first_output(workload.fn())
            upstream = upstream_gradient(out)
            ours = torch.autograd.grad(out, tensors, upstream, allow_unused=True)
        del out
        try:
            theirs = _reference_gradients(workload, tensors, upstream)
        except torch.cuda.OutOfMemoryError:  # a float32/float64 graph at a big shape can be far larger than the case's
            out_of_memory, theirs = True, None
    finally:
        for t in tensors:
            t.grad = None
    if out_of_memory:  # outside the except clause: its traceback no longer holds the reference's graph
        gc.collect()
        if upstream.device.type == "cuda":
            torch.cuda.empty_cache()
        return {"gradients": "skipped (reference backward out of memory)"}
    if theirs is None or all(g is None for g in theirs):
        return {"gradients": "reference not differentiable"}
    checked, errors, unchecked = [], [], []
    for name, mine, ref in zip(names, ours, theirs, strict=True):
        if ref is None:
            unchecked.append(name)
            continue
        # fn giving no gradient where the reference has one is a missing gradient: compared as zeros
        errors.append(compare(torch.zeros_like(ref) if mine is None else mine, ref))
        checked.append(name)
    worst = _worst(errors)
    by_rel_rms = [math.inf if math.isnan(e["rel_rms"]) else e["rel_rms"] for e in errors]
    result = {"gradients": f"{len(checked)} checked", "grad_checked": len(checked), "grad_rel_rms": worst["rel_rms"],
              "grad_max_rel_err": worst["max_rel_err"], "grad_worst": checked[by_rel_rms.index(max(by_rel_rms))],
              "grad_tolerance": tolerance,
              "grad_passed": math.isfinite(worst["rel_rms"]) and worst["rel_rms"] <= tolerance}
    if unchecked:
        result["grad_unchecked"] = ", ".join(unchecked)
    return result


# ---- one case --------------------------------------------------------------------------------


def _throughput(row: Row, workload: Workload, mode: str, copy_gbps: float | None) -> None:
    """FLOP/s and bytes/s of the device time (graph replays where captured, else eager)."""
    row.flops = workload.flops_for(mode)
    row.bytes_ideal = workload.bytes_for(mode)
    if not row.device_ms:
        return
    seconds = row.device_ms * 1e-3
    if row.flops is not None:
        row.tflops = row.flops / seconds / 1e12
    if row.bytes_ideal is not None:
        row.gbps = row.bytes_ideal / seconds / 1e9
        if copy_gbps:
            row.bw_fraction = row.gbps / copy_gbps


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


PrepareHook = Callable[[Implementation, Workload, str, torch.device], Workload]
# profile_step(step, *, device, trace_dir, name) -> dict, e.g. suite.profiling.profile_step
ProfileHook = Callable[..., dict]


@overload
def measure_case(case: Case, device: torch.device | str, *, run_dir: str | Path | None = None, run_id: str = "",
                 tag: str = "", prepare: PrepareHook | None = None, profiler: ProfileHook | None = None) -> Row: ...


@overload
def measure_case(impl: Implementation, params: Params, dtype: str, device: torch.device | str, mode: str,
                 settings: TimingSettings, check: bool = True, profile: bool = False, *, nvml: bool = True,
                 run_dir: str | Path | None = None, scenario: str = "", run_id: str = "", tag: str = "",
                 prepare: PrepareHook | None = None, profiler: ProfileHook | None = None) -> Row: ...


def measure_case(case: Case | Implementation, *args: Any, **kwargs: Any) -> Row:
    """Build, check, time and describe one :class:`Case` as a :class:`Row`; never raises for the case's own failures.

    ``measure_case(case, device, ...)``; the older form ``measure_case(impl, params, dtype, device, mode,
    settings, check, profile, nvml=, scenario=, ...)`` (GPU scripts) builds the Case from its fields.
    ``run_dir`` (optional) receives the NVML time series (``nvml/<case_id><tag>.json``) and profiler
    traces (``traces/``); ``tag`` tells apart files of one case measured by several ranks.
    ``prepare(impl, workload, mode, device)`` (optional) may wrap the built workload before it is
    checked and timed (the gate's test slowdown, ``suite.gate.slowdown.prepare_hook``).
    ``profile`` runs ``profiler(step, device=, trace_dir=, name=)`` once more after timing
    (``suite.profiling.profile_step``; the caller passes it, this module never imports the profiler).
    Timing: eager (``samples_ms``) and, on CUDA with ``settings.cuda_graph``, graph replays
    (``graph_samples_ms``); throughput figures use the device time (:attr:`Row.device_ms`).
    Status: ``unsupported`` when ``impl.unavailable`` gives a reason or the builder raises
    NotImplementedError, ``failed-check`` when the output (in ``fwd+bwd`` also a gradient) is off
    the reference (never timed), ``oom`` on CUDA out-of-memory, ``error`` on any other exception.
    """
    if isinstance(case, Case):
        return _measure_case(case, *args, **kwargs)
    case, device, hooks = _case_of_fields(case, *args, **kwargs)
    return _measure_case(case, device, **hooks)


def _case_of_fields(impl: Implementation, params: Params, dtype: str, device: torch.device | str, mode: str,
                    settings: TimingSettings, check: bool = True, profile: bool = False, *, nvml: bool = True,
                    scenario: str = "", **hooks: Any) -> tuple[Case, torch.device | str, dict[str, Any]]:
    """The older field-by-field arguments of :func:`measure_case` as (Case, device, the keyword hooks)."""
    return Case(impl, params, mode, dtype, scenario, settings, check, profile, nvml), device, hooks


def _measure_case(case: Case, device: torch.device | str, *, run_dir: str | Path | None = None, run_id: str = "",
                  tag: str = "", prepare: PrepareHook | None = None, profiler: ProfileHook | None = None) -> Row:
    impl, params, dtype, mode, settings = case.implementation, case.params, case.dtype, case.mode, case.timing
    check, profile, nvml, scenario = case.check, case.profile, case.nvml, case.scenario
    device = torch.device(device)
    values = params.subset(impl.params)
    row = Row(case_id=case_id(impl.name, impl.level, mode, dtype, values), implementation=impl.name, family=impl.family,
              level=impl.level, mode=mode, dtype=dtype, params=values, scenario=scenario, run_id=run_id,
              timestamp=time.time(), device=_device_name(device))
    workload = step = None
    try:
        # the bandwidth ceiling needs ~1 GiB of its own: measure it (once per process) before the
        # workload holds memory, so a case that fits is never turned into an OOM by the ceiling
        ceiling_gbps = copy_bandwidth_gbps(device)
        reason = impl.unavailable(params, dtype, device.type, mode)  # may probe the backend: inside the try
        if reason:
            row.status, row.message = "unsupported", reason
            return row
        workload = impl.build(params, DTYPES[dtype], device, mode)
        if prepare is not None:
            workload = prepare(impl, workload, mode, device)
        row.backend_detail = workload.backend_detail
        if check:
            row.correctness = check_correctness(workload, dtype, impl.level, params.depth, mode)
            if row.correctness["passed"] is False:
                row.status = "failed-check"
                row.message = _check_failure(row.correctness)
                return row
            if mode == "fwd+bwd":
                _release(device)  # the gradient check's graphs: timing starts from a clean allocator
        step = make_step(workload, mode)
        sampler = NvmlSampler(_device_index(device)) if nvml else None
        with sampler if sampler is not None else contextlib.nullcontext():
            _fill_timing(row, measure(step, device, settings, workload.bytes_for(mode)))
            _fill_graph_timing(row, step, device, settings, workload.bytes_for(mode))
        _throughput(row, workload, mode, ceiling_gbps)
        if sampler is not None:
            row.nvml = sampler.summary(median_ms=row.median_ms, images=params.batch)
            if run_dir is not None and sampler.samples:
                row.nvml["series"] = _write_series(Path(run_dir), row.case_id + tag, sampler.samples)
        if profile:
            row.profile = _profile(profiler, step, device, run_dir, row, tag)
    except NotImplementedError as exc:
        row.status, row.message = "unsupported", str(exc) or type(exc).__name__
    except torch.cuda.OutOfMemoryError as exc:
        row.status, row.message = "oom", str(exc).splitlines()[0] if str(exc) else "CUDA out of memory"
    except Exception as exc:  # one case's failure must never end the sweep
        row.status, row.message = "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}".strip()
    finally:
        del workload, step
        try:
            _release(device)
        except Exception as exc:  # a sticky CUDA error (illegal address, ...): the context is gone
            row.status = "error"
            row.message = f"{row.message}\nthe CUDA context is unusable after this case: {type(exc).__name__}: {exc}".strip()
            raise DeviceLostError(row) from exc
    return row


def _check_failure(check: dict[str, Any]) -> str:
    """The message of a ``failed-check`` row: which check failed, by how much."""
    if check.get("grad_passed") is False:
        return (f"gradient of {check['grad_worst']}: relative RMS error {check['grad_rel_rms']:.3g} exceeds tolerance "
                f"{check['grad_tolerance']:.3g} (forward output within {check['tolerance']:.3g}); not timed")
    return f"relative RMS error {check['rel_rms']:.3g} exceeds tolerance {check['tolerance']:.3g}; not timed"


class DeviceLostError(RuntimeError):
    """A case left the CUDA context unusable; ``row`` is its (error) row, to be recorded before stopping.

    Nothing more can run in this process: the caller records the row (so ``--resume`` skips the
    case) and ends; a new process resumes the rest.
    """

    def __init__(self, row: Row):
        super().__init__(f"{row.implementation} {row.level} {row.mode} {row.dtype} {row.params}: {row.message}")
        self.row = row


def _fill_graph_timing(row: Row, step: Callable[[], None], device: torch.device, settings: TimingSettings,
                       bytes_ideal: float | None) -> None:
    """Graph-replay samples, the host overhead and the host-bound flag (or why there are none)."""
    if device.type != "cuda":
        row.graph_message = "no CUDA graphs on the CPU: eager time only"
        return
    if not settings.cuda_graph:
        row.graph_message = "timing.cuda_graph is off: eager time only"
        return
    graph, message = measure_cuda_graph(step, device, settings, bytes_ideal)
    if graph is None:
        row.graph_message = message
        return
    row.graph_samples_ms, row.graph_median_ms = graph.samples_ms, graph.median_ms
    row.graph_iqr_ms, row.graph_min_ms, row.graph_n = graph.iqr_ms, graph.min_ms, graph.n
    row.host_overhead_ms = row.median_ms - graph.median_ms
    row.host_bound = host_bound(row.median_ms, row.iqr_ms, graph.median_ms, graph.iqr_ms)


def host_bound(eager_ms: float, eager_iqr_ms: float, graph_ms: float, graph_iqr_ms: float) -> bool:
    """Whether the eager median exceeds the graph-replay median by more than HOST_BOUND_MARGIN and by
    more than the mean half-spread of the two: then the eager time measures the host's launches."""
    return bool(eager_ms > (1 + HOST_BOUND_MARGIN) * graph_ms and eager_ms - graph_ms > (eager_iqr_ms + graph_iqr_ms) / 2)


def _fill_timing(row: Row, timing: Timing) -> None:
    row.samples_ms = timing.samples_ms
    row.median_ms, row.iqr_ms, row.min_ms, row.mean_ms = timing.median_ms, timing.iqr_ms, timing.min_ms, timing.mean_ms
    row.n, row.outliers = timing.n, timing.outliers
    row.timer, row.l2_flush, row.peak_mem_bytes = timing.timer, timing.l2_flush, timing.peak_mem_bytes
    if timing.message:
        row.message = timing.message


def _profile(profiler: ProfileHook | None, step: Callable[[], None], device: torch.device, run_dir: str | Path | None,
             row: Row, tag: str = "") -> dict:
    """Run the caller's profiler hook once more, outside the timed repetitions."""
    if profiler is None:
        return {"error": "profile requested but the caller passed no profiler hook"}
    trace_dir = Path(run_dir) / "traces" if run_dir is not None else Path("results/runs/traces")
    try:
        return profiler(step, device=device, trace_dir=trace_dir, name=f"{row.implementation}-{row.level}-{row.case_id}{tag}")
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _write_series(run_dir: Path, cid: str, samples: list[dict]) -> str:
    folder = run_dir / "nvml"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cid}.json"
    path.write_text(json.dumps(samples, separators=(",", ":")))
    return str(path.relative_to(run_dir))


def _device_index(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine() or "cpu"

