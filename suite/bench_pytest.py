"""pytest-benchmark as its users expect it, on top of the suite's own timer.

Used by ``conftest.py`` (hooks and options) and ``suite/test_benchmarks.py`` (one test per case):

* ``params`` of each benchmark is plain JSON, stable across runs: the case id plus the case's
  implementation, level, mode, dtype and shape parameters (``--benchmark-group-by=param:case``
  groups the same case across saved runs);
* ``machine_info`` names the GPU (name, UUID, capability), driver and the CUDA, torch, Triton,
  cuDNN and FlashAttention versions; comparing against benchmarks saved on another GPU model is
  refused (``--bench-allow-other-gpu`` turns that into a loud warning);
* the ``--benchmark-*`` timing options are mapped onto the scenario's timing (``--benchmark-max-time``
  is the timing budget, ``--benchmark-min-rounds`` the minimum repetitions) or refused with the
  reason, and the JSON's ``options`` record what was actually used;
* one IQR: pytest-benchmark's quartiles are replaced by the suite's (linear interpolation, as
  numpy and the row's ``iqr_ms``), so its ``iqr``, ``q1``, ``q3`` and IQR outliers agree with the row.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from suite.measure import TimingSettings
from suite.results import Row

# pytest-benchmark options that time its own rounds around a Python call: none of them can apply to
# CUDA-event samples of the suite's timer, so setting one is an error, never silently ignored.
REFUSED = {
    "benchmark_min_time": "--benchmark-min-time (minimum time per round, for calibrating iterations per round): "
                          "every repetition is one call timed by CUDA events",
    "benchmark_timer": "--benchmark-timer: the timer is CUDA events on a GPU, time.perf_counter on the CPU",
    "benchmark_calibration_precision": "--benchmark-calibration-precision: there is no calibration of iterations "
                                       "per round (one call per repetition)",
    "benchmark_warmup": "--benchmark-warmup: the suite always warms up, for the scenario's timing.warmup_ms",
    "benchmark_warmup_iterations": "--benchmark-warmup-iterations: warm-up is set by the scenario's timing.warmup_ms",
    "benchmark_disable_gc": "--benchmark-disable-gc: not applied by the suite's timer",
    "benchmark_precision": "--benchmark-precision: repetitions come from the scenario's timing budget "
                           "(use --benchmark-max-time / --benchmark-min-rounds)",
}
# Honoured: pytest-benchmark option -> TimingSettings field (seconds become milliseconds).
HONOURED = {"benchmark_max_time": "budget_ms", "benchmark_min_rounds": "min_reps"}


def changed_options(config: Any, defaults: Any) -> dict[str, Any]:
    """The timing options (REFUSED and HONOURED) whose value differs from pytest-benchmark's default."""
    out = {}
    for dest in (*REFUSED, *HONOURED):
        value = getattr(config.option, dest, None)
        if value != getattr(defaults, dest, None):
            out[dest] = value
    return out


def refusals(changed: dict[str, Any]) -> list[str]:
    return [REFUSED[dest] for dest in changed if dest in REFUSED]


def apply_timing(timing: TimingSettings, changed: dict[str, Any]) -> TimingSettings:
    """The scenario's timing with the honoured options applied: ``--benchmark-max-time`` S sets the
    budget to S seconds, ``--benchmark-min-rounds`` N the minimum repetitions (max_reps raised to N if lower)."""
    updates: dict[str, Any] = {}
    if "benchmark_max_time" in changed:
        updates["budget_ms"] = float(changed["benchmark_max_time"]) * 1e3
    if "benchmark_min_rounds" in changed:
        updates["min_reps"] = int(changed["benchmark_min_rounds"])
        updates["max_reps"] = max(timing.max_reps, updates["min_reps"])
    return dataclasses.replace(timing, **updates) if updates else timing


def used_options(timing: TimingSettings, row: Row) -> dict[str, Any]:
    """What the benchmark's JSON ``options`` should say: the settings the suite's timer used."""
    return {"timer": row.timer or "not timed", "min_rounds": timing.min_reps, "max_rounds": timing.max_reps,
            "max_time": timing.budget_ms * 1e-3, "warmup_time": timing.warmup_ms * 1e-3, "l2_flush": row.l2_flush,
            "cuda_graph": timing.cuda_graph, "disable_gc": False, "min_time": None, "precision": None, "confidence": None,
            "warmup": timing.warmup_ms > 0}


def case_params(case: Any) -> dict[str, Any]:
    """Plain-JSON ``params`` of a case: its id, implementation, level, mode, dtype and shape values."""
    return {"case": case.id, "implementation": case.implementation.name, "level": case.implementation.level,
            "mode": case.mode, "dtype": case.dtype, **{k: int(v) for k, v in sorted(case.values.items())}}


def quartiles(data: list[float]) -> tuple[float, float]:
    """(q1, q3) with linear interpolation: the definition behind the rows' ``iqr_ms``."""
    q1, q3 = np.percentile(np.asarray(data, dtype=float), [25, 75])
    return float(q1), float(q3)


def record_samples(benchmark: Any, row: Row, params: dict[str, Any], options: dict[str, Any]) -> None:
    """Give pytest-benchmark the row's samples, params and options.

    ``benchmark.pedantic`` runs once on a no-op so the fixture creates its statistics holder through
    its public entry point; the holder then gets fresh statistics of our samples (seconds), with
    the suite's quartiles, and the options that were really used. Nothing pytest-benchmark timed is kept.
    """
    from pytest_benchmark.stats import Stats

    benchmark.params = params  # read by the statistics holder when pedantic creates it
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    if benchmark.stats is None:  # benchmarks disabled (--benchmark-disable)
        return
    stats = Stats()
    stats.data = [s * 1e-3 for s in row.samples_ms]
    stats.__dict__["q1"], stats.__dict__["q3"] = quartiles(stats.data)  # pytest-benchmark's cached properties
    benchmark.stats.stats = stats
    benchmark.stats.params = params
    benchmark.stats.options = options


def machine_info(device: str) -> dict[str, Any]:
    """The measuring machine as pytest-benchmark's ``machine_info`` records it: ``gpu`` (None on the
    CPU), ``driver`` and software versions."""
    import torch

    from suite.environment import _version, driver_version, flash_attention_packages, gpu_info, sdpa_flash

    cuda = device == "cuda" and torch.cuda.is_available()
    info: dict[str, Any] = {"device": device, "torch": torch.__version__, "triton": _version("triton"),
                            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
                            **flash_attention_packages(), **sdpa_flash(), "gpu": None, "driver": None}
    if cuda:
        gpu = gpu_info(torch.cuda.current_device())
        info["gpu"] = {k: gpu.get(k) for k in ("name", "uuid", "capability", "sm_count", "memory_bytes")}
        info["driver"] = driver_version()
    return info


def gpu_mismatch(current: dict[str, Any], saved: dict[str, Any]) -> str | None:
    """Why benchmarks saved with ``saved`` machine_info should not be compared with this run (None: same GPU model)."""
    def name(info: dict[str, Any]) -> str | None:
        gpu = info.get("gpu")
        return gpu.get("name") if isinstance(gpu, dict) else None

    mine, theirs = name(current), name(saved)
    if mine == theirs:
        return None
    return (f"the saved benchmarks were measured on {theirs or 'no GPU (or one not recorded)'}, this run on "
            f"{mine or 'no GPU'}: a comparison across GPU models measures the cards, not the code")
