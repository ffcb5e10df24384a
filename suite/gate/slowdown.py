"""A deliberate-slowdown switch, for testing that the gate catches a slower kernel.

``CGSPN_BENCH_TEST_SLOWDOWN="cgspn-scan=2"`` makes every ``cgspn-scan`` case run its forward
pass twice per step; ``"cgspn=3@block,attention-math=2"`` slows the ``cgspn`` block (only that
level) three times and ``attention-math`` at every level twice; ``"attention-cudnn=1.1"`` makes
every ``attention-cudnn`` step 10% slower.

* Integer K: the forward runs K times per call (K - 1 extra passes under ``torch.no_grad``, results
  dropped): real extra work on the device, the same kernels launched again. A ``fwd`` case gets K
  times slower, a ``fwd+bwd`` case pays K - 1 extra forwards.
* Fractional K (e.g. 1.1): the integer part as above, then each call also spins on the device
  (``torch.cuda._sleep``, a busy-wait kernel; on the CPU a busy-wait loop) for the fraction times
  the step's device time (CUDA-graph replays where capturable), measured once when the workload is
  prepared. A kernel that got 10% slower looks
  exactly like this to every timer, eager and CUDA-graph replays alike, since the spin is captured
  into the graph with the rest of the step.

The workload's output, its reference check and its backward are unchanged. Without the variable
nothing changes; when it applies, the workload's ``backend_detail`` says so (and so the row).
The measurement core never imports this module: the runner, the gate's re-measurements and the
pytest benchmarks pass :func:`prepare_hook` to :func:`suite.measure.measure_case`.
"""

from __future__ import annotations

import math
import os
import time

import torch

from kernels.registry import Implementation, Workload

ENV_VAR = "CGSPN_BENCH_TEST_SLOWDOWN"
MARKER = "test-slowdown"  # written into backend_detail; baselines refuse rows that carry it


class SlowdownError(ValueError):
    """A malformed CGSPN_BENCH_TEST_SLOWDOWN value."""


def parse_slowdown(text: str) -> dict[tuple[str, str | None], float]:
    """``"name=K[@level],..."`` -> {(name, level or None): K}; K is a number >= 1 (how many times slower)."""
    spec: dict[tuple[str, str | None], float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, factor = item.partition("=")
        factor, _, level = factor.partition("@")
        if not sep or not name.strip():
            raise SlowdownError(f"{ENV_VAR}: expected 'implementation=K[@level]' items separated by commas, got {item!r}")
        try:
            k = float(factor)
        except ValueError:
            raise SlowdownError(f"{ENV_VAR}: {item!r}: K must be a number >= 1 (how many times slower)") from None
        if not (k >= 1 and math.isfinite(k)):
            raise SlowdownError(f"{ENV_VAR}: {item!r}: K must be >= 1, got {factor.strip()}")
        spec[(name.strip(), level.strip() or None)] = int(k) if k.is_integer() else k
    return spec


def slowdown_factor(implementation_name: str, level: str | None = None, environ=os.environ) -> float:
    """Forward passes per step requested for this implementation (1 = untouched)."""
    text = environ.get(ENV_VAR, "")
    if not text.strip():
        return 1
    spec = parse_slowdown(text)
    if level is not None and (implementation_name, level) in spec:
        return spec[(implementation_name, level)]
    return spec.get((implementation_name, None), 1)


def apply_test_slowdown(implementation_name: str, workload: Workload, level: str | None = None, mode: str = "fwd",
                        device: torch.device | str = "cpu") -> Workload:
    """Return ``workload`` made K times slower when the variable asks for it (see the module docstring).

    With ``CGSPN_BENCH_TEST_SLOWDOWN`` unset (the normal case) it returns the workload untouched.
    ``mode`` and ``device`` are needed only for a fractional K: the spin is calibrated on the step
    of that mode on that device.
    """
    k = slowdown_factor(implementation_name, level)
    if k == 1:
        return workload
    repeats, fraction = int(k), k - int(k)
    spin_ms = fraction * _step_ms(workload, mode, torch.device(device)) if fraction else 0.0
    fn = workload.fn
    spin = _spinner(torch.device(device), spin_ms)

    def slowed():
        spin()
        with torch.no_grad():
            for _ in range(repeats - 1):
                fn()  # real extra work; the result is dropped
        return fn()

    workload.fn = slowed
    how = f"forward x{repeats}" if repeats > 1 else ""
    how += (" + " if how else "") + f"{spin_ms:.4g} ms spin ({fraction:.3g} x the step)" if spin_ms else ""
    note = f"{MARKER}: x{k} = {how} ({ENV_VAR})"
    workload.backend_detail = f"{workload.backend_detail}; {note}" if workload.backend_detail else note
    return workload


def prepare_hook(impl: Implementation, workload: Workload, mode: str, device: torch.device) -> Workload:
    """The ``prepare`` hook of :func:`suite.measure.measure_case`: apply the switch to this case."""
    return apply_test_slowdown(impl.name, workload, level=impl.level, mode=mode, device=device)


def _step_ms(workload: Workload, mode: str, device: torch.device) -> float:
    """Median device time of the step of ``mode``, in ms, by the measurement core: CUDA-graph replays
    where the step can be captured (so a host-bound case is slowed by a fraction of its GPU time, not
    of its Python time), else eager calls (CPU: ``perf_counter``)."""
    from suite.measure import TimingSettings, make_step, measure, measure_cuda_graph  # the gate sits above the core

    step = make_step(workload, mode)
    settings = TimingSettings(budget_ms=0.0, warmup_ms=0.0, min_reps=10, max_reps=10, l2_flush=False)
    timing = measure_cuda_graph(step, device, settings)[0] if device.type == "cuda" else None
    if timing is None:
        timing = measure(step, device, settings)
    for t in [*workload.inputs, *workload.parameters]:
        t.grad = None
    return timing.median_ms


_CYCLES_PER_MS: dict[int, float] = {}


def _cycles_per_ms(device: torch.device) -> float:
    """Clock cycles of ``torch.cuda._sleep`` per millisecond on ``device``, measured once."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _CYCLES_PER_MS:
        with torch.cuda.device(index):
            cycles = 5_000_000
            torch.cuda._sleep(cycles)  # warm-up: module load, clocks up
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.cuda._sleep(cycles)
            end.record()
            end.synchronize()
            _CYCLES_PER_MS[index] = cycles / start.elapsed_time(end)
    return _CYCLES_PER_MS[index]


def _spinner(device: torch.device, ms: float):
    """A zero-argument callable that keeps ``device`` busy for about ``ms`` milliseconds."""
    if ms <= 0:
        return lambda: None
    if device.type == "cuda":
        cycles = int(ms * _cycles_per_ms(device))
        return lambda: torch.cuda._sleep(cycles)

    def busy_wait() -> None:
        deadline = time.perf_counter() + ms * 1e-3
        while time.perf_counter() < deadline:
            pass

    return busy_wait


def was_slowed(backend_detail: str | None, message: str | None = None) -> bool:
    """Whether a row was measured with the test slowdown applied."""
    return MARKER in (backend_detail or "") or MARKER in (message or "")
