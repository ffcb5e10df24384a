"""Benchmarks as pytest tests: one test per case of the ``--scenario`` files (see conftest.py).

    pytest suite --benchmark-only                          # the benchmarks
    pytest suite --benchmark-only --benchmark-json=b.json  # machine-readable
    pytest suite --benchmark-only --benchmark-compare --benchmark-compare-fail=median:10%

Each case is measured once by :func:`suite.measure.measure_case` — the same timer as
``cgspn-bench run`` (CUDA events, one sync, budgeted repetitions, cold L2). Its samples are then
handed to pytest-benchmark (:func:`suite.bench_pytest.record_samples`), so pytest-benchmark's
min/median/IQR/outliers, its JSON and its comparisons describe the CUDA-event samples; nothing
pytest-benchmark times itself is kept (its own clock around an asynchronous GPU call would measure
only the launch). ``params`` is the case id and the case's parameters as plain JSON; ``options``
the timing actually used. The whole row (statistics, NVML summary, correctness, backend) is in
``extra_info``.

Outcomes: unsupported and out-of-memory cases skip with the reason; a failed correctness check
or an error fails the test.
"""

from __future__ import annotations

import dataclasses

import pytest

from suite.bench_pytest import apply_timing, case_params, record_samples, used_options
from suite.gate.slowdown import prepare_hook
from suite.measure import measure_case
from suite.profiling import profile_step
from suite.results import RunDir
from suite.scenario import Case, load_scenarios


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    scenarios, errors = load_scenarios(config.cgspn_scenarios)
    if errors:
        raise pytest.UsageError("scenario errors:\n" + "\n".join(errors))
    cases: dict[str, Case] = {}
    for scenario in scenarios:
        if scenario.runs_on(config.cgspn_device):
            for case in scenario.cases:
                cases.setdefault(case.id, case)
    metafunc.parametrize("case", list(cases.values()), ids=[c.label for c in cases.values()])


def test_case(benchmark, case: Case, request: pytest.FixtureRequest) -> None:
    config = request.config
    out = config.getoption("--bench-out")
    profile = case.profile or config.getoption("--bench-profile")
    timing = apply_timing(case.timing, getattr(config, "cgspn_timing_options", {}))
    row = measure_case(dataclasses.replace(case, timing=timing, profile=profile), config.cgspn_device,
                       run_dir=out or ("results/runs/pytest-benchmarks" if profile else None), prepare=prepare_hook,
                       profiler=profile_step)
    benchmark.extra_info.update(dataclasses.asdict(row))
    benchmark.group = f"{case.implementation.level}/{case.mode}/{case.dtype}"
    if out:
        RunDir(out).append(row)
    if row.status in ("unsupported", "oom"):
        pytest.skip(f"{row.status}: {row.message}")
    if row.status != "ok":
        pytest.fail(f"{row.status}: {row.message}", pytrace=False)
    record_samples(benchmark, row, case_params(case), used_options(timing, row))
