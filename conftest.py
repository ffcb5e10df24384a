"""pytest wiring for cgspn-bench.

Options:
  --scenario PATH   scenario file(s) whose cases become benchmark tests (repeatable; default:
                    scenarios/attention.yaml with CUDA, scenarios/smoke-cpu.yaml without)
  --device D        cuda | cpu (default: cuda if available, else cpu)
  --bench-out DIR   also append each benchmark's row to the run directory DIR
  --bench-profile   also profile each benchmark case (kernel table in extra_info["profile"])
  --bench-allow-other-gpu  compare with benchmarks saved on another GPU model (warns instead of refusing)

pytest-benchmark integration (suite/bench_pytest.py): the GPU and software versions go into
``machine_info``; comparing with benchmarks of another GPU model is refused; ``--benchmark-max-time``
and ``--benchmark-min-rounds`` set the timing budget and minimum repetitions, and the options
that time pytest-benchmark's own rounds are refused with the reason.

Without CUDA (or with --device cpu) ``TRITON_INTERPRET=1`` is set here, before any test module
imports a Triton kernel, so the kernels run in Triton's interpreter on the CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from suite.triton_mode import interpret_on_cpu

ROOT = Path(__file__).resolve().parent
GPU_SCENARIO = ROOT / "scenarios" / "attention.yaml"
CPU_SCENARIO = ROOT / "scenarios" / "smoke-cpu.yaml"

interpret_on_cpu(not torch.cuda.is_available())


_PARSER: list[pytest.Parser] = []  # kept to read pytest-benchmark's option defaults in pytest_configure


def pytest_addoption(parser: pytest.Parser) -> None:
    _PARSER.append(parser)
    group = parser.getgroup("cgspn-bench")
    group.addoption("--scenario", action="append", default=None, metavar="PATH",
                    help="scenario file for the benchmark tests (repeatable); default: a GPU scenario with CUDA, "
                         "scenarios/smoke-cpu.yaml without")
    group.addoption("--device", choices=("cuda", "cpu"), default=None, help="device for benchmarks (default: cuda if available)")
    group.addoption("--bench-out", default=None, metavar="DIR", help="append each benchmark's row to this run directory")
    group.addoption("--bench-profile", action="store_true",
                    help="also profile each benchmark case (torch.profiler, outside timing); traces go to --bench-out "
                         "or results/runs/pytest-benchmarks")
    group.addoption("--bench-allow-other-gpu", action="store_true",
                    help="with --benchmark-compare: compare against benchmarks saved on another GPU model (a loud warning "
                         "instead of an error)")


def bench_device(config: pytest.Config) -> str:
    return config.getoption("--device") or ("cuda" if torch.cuda.is_available() else "cpu")


def bench_scenarios(config: pytest.Config) -> list[str]:
    chosen = config.getoption("--scenario")
    if chosen:
        return chosen
    return [str(GPU_SCENARIO if bench_device(config) == "cuda" else CPU_SCENARIO)]


def pytest_configure(config: pytest.Config) -> None:
    # Read by suite/test_benchmarks.py from the config (importing this conftest by name is
    # ambiguous when subfolders have their own conftest.py).
    config.cgspn_device = bench_device(config)
    config.cgspn_scenarios = bench_scenarios(config)
    interpret_on_cpu(config.cgspn_device == "cpu")
    from suite.bench_pytest import changed_options, refusals

    changed = changed_options(config, _PARSER[-1].parse_known_args([])) if _PARSER else {}
    refused = refusals(changed)
    if refused:
        raise pytest.UsageError("cgspn-bench times every case with its own timer (CUDA events), so these pytest-benchmark "
                                "options cannot apply:\n  " + "\n  ".join(refused))
    config.cgspn_timing_options = changed


@pytest.hookimpl(optionalhook=True)  # without pytest-benchmark (-p no:benchmark) these hooks simply never run
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    from suite.bench_pytest import machine_info as gpu_machine_info

    machine_info.update(gpu_machine_info(config.cgspn_device))


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_compare_machine_info(config: pytest.Config, benchmarksession, machine_info: dict,
                                          compared_benchmark: dict) -> None:
    """Refuse (or, with --bench-allow-other-gpu, loudly warn about) a comparison across GPU models."""
    from suite.bench_pytest import gpu_mismatch

    problem = gpu_mismatch(machine_info, compared_benchmark.get("machine_info") or {})
    if problem is None:
        return
    if not config.getoption("--bench-allow-other-gpu"):
        raise pytest.UsageError(f"--benchmark-compare: {problem}. Pass --bench-allow-other-gpu to compare anyway.")
    benchmarksession.logger.warning(f"COMPARING ACROSS GPU MODELS: {problem}")


def pytest_report_header(config: pytest.Config) -> list[str]:
    device = bench_device(config)
    scenarios = ", ".join(os.path.relpath(p, config.rootpath) for p in bench_scenarios(config))
    note = "" if device == "cuda" else " (no CUDA: smoke shapes, Triton interpreted; real benchmarks need a GPU)"
    return [f"cgspn-bench: benchmark scenario(s) {scenarios} on {device}{note}"]
