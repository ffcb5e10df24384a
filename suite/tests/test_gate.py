"""The regression gate on synthetic runs: planted slowdowns, noise, correctness failures, other cards.

Runs are written with the real schema (suite.results.Row / RunDir) and judged through the real
CLI entry (``suite.gate.cli.main``), so the tests exercise what CI runs. Timings are drawn from
seeded lognormal distributions: the planted effects (20% slowdown, a shift inside the IQR) are
set relative to the drawn spread, never tuned to a particular verdict.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kernels.registry import Workload
from suite.gate.baseline import Snapshot
from suite.gate.cli import main
from suite.gate.compare import GpuMismatch, compare_snapshots, merge_rows
from suite.gate.decision import DecisionRule, compare_samples
from suite.gate.slowdown import ENV_VAR, SlowdownError, apply_test_slowdown, parse_slowdown, was_slowed
from suite.gate.thresholds import ThresholdError, Thresholds, parse_percent
from suite.results import Row, RunDir, case_id
from suite.tests.helpers import load_sample_impls

H100 = "NVIDIA H100 80GB HBM3"
H200 = "NVIDIA H200"
CASES = [  # (implementation, level, mode, params, median ms)
    ("cgspn-scan", "sublayer", "fwd", {"batch": 32, "grid": 74, "channels": 1152, "compression": 18}, 0.21),
    ("attention-cudnn", "sublayer", "fwd", {"batch": 32, "grid": 27, "channels": 1152, "heads": 16}, 0.30),
    ("cgspn", "block", "fwd+bwd", {"batch": 8, "grid": 37, "channels": 1152}, 4.1),
]


def samples(median: float, spread: float, n: int, seed: int) -> list[float]:
    """``n`` lognormal timings around ``median`` with log-sd ``spread`` (0.02 = ~2% jitter)."""
    rng = np.random.default_rng(seed)
    return (median * np.exp(rng.normal(0.0, spread, n))).tolist()


def make_row(impl: str, level: str, mode: str, params: dict, timings: list[float], device: str = H100, **fields) -> Row:
    row = Row(case_id=case_id(impl, level, mode, "bfloat16", params), implementation=impl, family=impl.split("-")[0],
              level=level, mode=mode, dtype="bfloat16", params=params, samples_ms=list(timings), n=len(timings),
              device=device, correctness={"passed": True, "rel_rms": 1e-3, "tolerance": 2e-2}, **fields)
    if timings:
        arr = np.asarray(timings)
        q1, q3 = np.percentile(arr, [25, 75])
        row.median_ms, row.iqr_ms = float(np.median(arr)), float(q3 - q1)
        row.min_ms, row.mean_ms = float(arr.min()), float(arr.mean())
    return row


def write_run(path, rows: list[Row], gpu: str = H100, commit: str = "a" * 40) -> str:
    run = RunDir(path)
    run.write_meta({"environment": {"gpu": {"name": gpu}, "device": "cuda", "git": {"commit": commit, "dirty": False}}})
    for row in rows:
        run.append(row)
    return str(path)


def standard_run(path, seed: int, scale: dict[str, float] | None = None, spread: float = 0.02, n: int = 60,
                 gpu: str = H100) -> str:
    """The three CASES, each implementation's median multiplied by ``scale[impl]`` (default 1)."""
    scale = scale or {}
    rows = [make_row(impl, level, mode, params, samples(med * scale.get(impl, 1.0), spread, n, seed + i), device=gpu)
            for i, (impl, level, mode, params, med) in enumerate(CASES)]
    return write_run(path, rows, gpu=gpu)


def gate(tmp_path, baseline: str, current: str, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "verdicts.json"
    code = main(["gate", "--baseline", baseline, "--current", current, "--json", str(out), *extra])
    return code, (json.loads(out.read_text()) if out.exists() else {})


def verdicts(result: dict) -> dict[str, str]:
    return {c["implementation"]: c["verdict"] for c in result["cases"]}


def test_planted_20_percent_slowdown_fails(tmp_path):
    base = standard_run(tmp_path / "base", seed=0)
    cur = standard_run(tmp_path / "cur", seed=100, scale={"cgspn-scan": 1.20})
    code, result = gate(tmp_path, base, cur)
    assert code == 1 and result["passed"] is False
    assert verdicts(result) == {"cgspn-scan": "regression", "attention-cudnn": "unchanged", "cgspn": "unchanged"}
    scan = next(c for c in result["cases"] if c["implementation"] == "cgspn-scan")
    assert scan["ratio"] == pytest.approx(1.20, rel=0.03)  # 2% jitter, 60 samples: the median ratio is close
    assert scan["ci"][0] > 1.0 and scan["p_value"] < 0.01
    summary = tmp_path / "summary.md"
    assert main(["gate", "--baseline", base, "--current", cur, "--markdown", str(summary)]) == 1
    failing = [line for line in summary.read_text().splitlines() if line.startswith("| **regression**")]
    assert len(failing) == 1 and "cgspn-scan sublayer fwd bfloat16" in failing[0]


def test_same_distribution_passes(tmp_path):
    base = standard_run(tmp_path / "base", seed=0)
    cur = standard_run(tmp_path / "cur", seed=100)
    code, result = gate(tmp_path, base, cur)
    assert code == 0 and result["passed"] is True
    assert set(verdicts(result).values()) == {"unchanged"}


def test_shift_within_iqr_noise_passes_but_same_shift_on_quiet_card_fails(tmp_path):
    # A noisy card: log-sd 0.25, so the IQR is ~1.35 * 25% = ~34% of the median. A 15% shift exceeds
    # the 10% threshold but sits inside that spread: not a regression (at most inconclusive).
    spread, shift = 0.25, 1.15
    base = standard_run(tmp_path / "base", seed=0, spread=spread, n=40)
    cur = standard_run(tmp_path / "cur", seed=100, spread=spread, n=40, scale={"cgspn-scan": shift})
    snap_b, snap_c = Snapshot.from_run(base), Snapshot.from_run(cur)
    scan_b = next(r for r in snap_b.rows if r.implementation == "cgspn-scan")
    scan_c = next(r for r in snap_c.rows if r.implementation == "cgspn-scan")
    assert scan_c.median_ms - scan_b.median_ms < (scan_b.iqr_ms + scan_c.iqr_ms) / 2  # the premise: inside the IQR
    code, result = gate(tmp_path, base, cur)
    assert code == 0 and verdicts(result)["cgspn-scan"] in ("unchanged", "inconclusive")
    # The same 15% on a quiet card (2% jitter) is beyond the noise: a regression.
    quiet_b = standard_run(tmp_path / "qb", seed=0, spread=0.02)
    quiet_c = standard_run(tmp_path / "qc", seed=100, spread=0.02, scale={"cgspn-scan": shift})
    code, result = gate(tmp_path, quiet_b, quiet_c)
    assert code == 1 and verdicts(result)["cgspn-scan"] == "regression"


def test_planted_correctness_failure_fails(tmp_path):
    base = standard_run(tmp_path / "base", seed=0)
    impl, level, mode, params, med = CASES[1]
    failed = make_row(impl, level, mode, params, [], status="failed-check", message="relative RMS error 0.4 exceeds 0.02")
    failed.correctness = {"passed": False, "rel_rms": 0.4, "tolerance": 2e-2}
    other = [make_row(i, lv, m, p, samples(md, 0.02, 60, 7)) for i, lv, m, p, md in (CASES[0], CASES[2])]
    code, result = gate(tmp_path, base, write_run(tmp_path / "cur", [failed, *other]))
    assert code == 1 and verdicts(result)["attention-cudnn"] == "failed-check"
    # An ok-status row whose check says passed=False fails just the same.
    flagged = make_row(impl, level, mode, params, samples(med, 0.02, 60, 8))
    flagged.correctness = {"passed": False, "rel_rms": 0.4, "tolerance": 2e-2}
    code, result = gate(tmp_path, base, write_run(tmp_path / "cur2", [flagged, *other]))
    assert code == 1 and verdicts(result)["attention-cudnn"] == "failed-check"


def test_missing_and_new_cases_are_listed(tmp_path):
    base = standard_run(tmp_path / "base", seed=0)
    kept = [make_row(i, lv, m, p, samples(md, 0.02, 60, 9)) for i, lv, m, p, md in CASES[:2]]
    extra = make_row("attention-flash", "sublayer", "fwd", {"batch": 32, "grid": 27, "channels": 1152, "heads": 16},
                     samples(0.48, 0.02, 60, 10))
    cur = write_run(tmp_path / "cur", [*kept, extra])
    code, result = gate(tmp_path, base, cur)
    assert code == 0
    assert verdicts(result) == {"cgspn-scan": "unchanged", "attention-cudnn": "unchanged", "cgspn": "missing",
                                "attention-flash": "new"}
    assert result["counts"]["missing"] == 1 and result["counts"]["new"] == 1
    code, result = gate(tmp_path, base, cur, "--fail-on-missing")
    assert code == 1 and result["failures"] == [case_id("cgspn", "block", "fwd+bwd", "bfloat16", CASES[2][3])]


def test_errors_and_oom_that_the_baseline_did_not_have_fail(tmp_path):
    base = standard_run(tmp_path / "base", seed=0)
    impl, level, mode, params, _ = CASES[2]
    oom = make_row(impl, level, mode, params, [], status="oom", message="CUDA out of memory")
    others = [make_row(i, lv, m, p, samples(md, 0.02, 60, 11)) for i, lv, m, p, md in CASES[:2]]
    code, result = gate(tmp_path, base, write_run(tmp_path / "cur", [*others, oom]))
    assert code == 1 and verdicts(result)["cgspn"] == "broken"
    # The same OOM in baseline and current is a known outcome, not a failure.
    code, result = gate(tmp_path, write_run(tmp_path / "b2", [*others, oom]), write_run(tmp_path / "c2", [*others, oom]))
    assert code == 0 and verdicts(result)["cgspn"] == "skipped"


def test_improvement_is_reported_and_passes(tmp_path):
    base = standard_run(tmp_path / "base", seed=0)
    cur = standard_run(tmp_path / "cur", seed=100, scale={"cgspn": 0.7})
    code, result = gate(tmp_path, base, cur)
    assert code == 0 and verdicts(result)["cgspn"] == "improvement"


def test_other_gpu_baseline_is_refused_unless_allowed(tmp_path, capsys):
    base = standard_run(tmp_path / "base", seed=0, gpu=H200)
    cur = standard_run(tmp_path / "cur", seed=100)
    code, result = gate(tmp_path, base, cur)
    out = capsys.readouterr().out
    assert code == 2 and result == {}
    assert H200 in out and H100 in out and "--allow-other-gpu" in out
    with pytest.raises(GpuMismatch, match="H200"):
        compare_snapshots(Snapshot.from_run(base), Snapshot.from_run(cur))
    code, result = gate(tmp_path, base, cur, "--allow-other-gpu")
    assert code == 0 and result["warnings"] and H200 in result["warnings"][0]


def test_thresholds_file_loosens_one_case(tmp_path):
    base = standard_run(tmp_path / "base", seed=0)
    cur = standard_run(tmp_path / "cur", seed=100, scale={"cgspn-scan": 1.20})
    rules = tmp_path / "thresholds.yaml"
    rules.write_text("default: 10%\nrules:\n  - implementation: cgspn-scan\n    params: {grid: 74}\n    max_slowdown: 30%\n")
    code, result = gate(tmp_path, base, cur, "--thresholds", str(rules))
    assert code == 0 and verdicts(result)["cgspn-scan"] == "unchanged"
    scan = next(c for c in result["cases"] if c["implementation"] == "cgspn-scan")
    assert scan["threshold"] == pytest.approx(0.30)
    # --max-slowdown overrides only the default; the rule still applies to its case
    code, result = gate(tmp_path, base, cur, "--thresholds", str(rules), "--max-slowdown", "50%")
    assert next(c for c in result["cases"] if c["implementation"] == "cgspn")["threshold"] == pytest.approx(0.50)


def test_thresholds_validation_names_the_field(tmp_path):
    with pytest.raises(ThresholdError, match=r"rules\[0\]: max_slowdown is required"):
        Thresholds.from_dict({"rules": [{"implementation": "cgspn-scan"}]})
    with pytest.raises(ThresholdError, match=r"rules\[0\]: unknown key\(s\) \['implementaton'\]"):
        Thresholds.from_dict({"rules": [{"implementaton": "x", "max_slowdown": 5}]})
    with pytest.raises(ThresholdError, match="default: expected a percentage"):
        Thresholds.from_dict({"default": "fast"})
    assert parse_percent("12.5%", "x") == pytest.approx(0.125) and parse_percent(10, "x") == pytest.approx(0.10)
    bad = tmp_path / "bad.yaml"
    bad.write_text("default: -5%\n")
    assert main(["gate", "--baseline", str(tmp_path), "--current", str(tmp_path), "--thresholds", str(bad)]) == 2


def test_decision_rule_needs_enough_samples():
    rule = DecisionRule(min_samples=5)
    result = compare_samples([1.0, 1.0, 1.0], [2.0, 2.0, 2.0], rule)
    assert result.verdict == "inconclusive" and "too few samples" in result.reason
    with pytest.raises(ValueError, match="current samples"):
        compare_samples([1.0] * 5, [1.0, float("nan"), 1.0, 1.0, 1.0], rule)


def test_rows_of_one_case_are_pooled():
    impl, level, mode, params, med = CASES[0]
    a, b = samples(med, 0.02, 30, 1), samples(med, 0.02, 20, 2)
    merged = merge_rows([make_row(impl, level, mode, params, a), make_row(impl, level, mode, params, b)])
    assert merged.n == 50 and merged.median_ms == pytest.approx(float(np.median(a + b)))
    failed = make_row(impl, level, mode, params, [], status="failed-check")
    assert merge_rows([make_row(impl, level, mode, params, a), failed]).status == "failed-check"


def test_slowdown_switch_is_off_unless_set_and_adds_real_work(monkeypatch):
    calls = []
    x = torch.randn(16, 16)

    def fn():
        calls.append(1)
        return x @ x

    monkeypatch.delenv(ENV_VAR, raising=False)
    workload = Workload(fn=fn)
    assert apply_test_slowdown("cgspn-scan", workload).fn is fn and workload.backend_detail == ""
    monkeypatch.setenv(ENV_VAR, "cgspn-scan=3, attention-math=2@block")
    expected = x @ x
    slowed = apply_test_slowdown("cgspn-scan", Workload(fn=fn, backend_detail="triton"))
    out = slowed.fn()
    assert len(calls) == 3 and torch.equal(out, expected)  # three forwards, the output unchanged
    assert was_slowed(slowed.backend_detail) and slowed.backend_detail.startswith("triton; ")
    assert apply_test_slowdown("attention-math", Workload(fn=fn), level="sublayer").fn is fn  # only @block
    assert apply_test_slowdown("attention-math", Workload(fn=fn), level="block").fn is not fn
    with pytest.raises(SlowdownError, match=ENV_VAR):
        parse_slowdown("cgspn-scan=fast")
    with pytest.raises(SlowdownError, match="K must be >= 1"):
        parse_slowdown("cgspn-scan=0")


def test_slowdown_leaves_output_and_gradients_unchanged(monkeypatch):
    from kernels import registry
    from kernels.params import Params
    from suite.measure import make_step

    impl = registry.get("attention-math", "sublayer")
    params = Params(batch=1, channels=16, heads=2, grid_h=3, grid_w=5)

    def grads(slowdown: str | None) -> list[torch.Tensor]:
        if slowdown:
            monkeypatch.setenv(ENV_VAR, slowdown)
        else:
            monkeypatch.delenv(ENV_VAR, raising=False)
        torch.manual_seed(0)
        workload = apply_test_slowdown(impl.name, impl.build(params, torch.float64, torch.device("cpu"), "fwd+bwd"))
        make_step(workload, "fwd+bwd")()
        return [t.grad.clone() for t in workload.inputs]

    plain, slowed = grads(None), grads("attention-math=3")
    assert len(plain) == 3 and all(torch.equal(a, b) for a, b in zip(plain, slowed, strict=True))


def test_json_output_is_strict_json(tmp_path):
    base = standard_run(tmp_path / "base", seed=0, n=3)  # too few samples: no CI, no p-value
    cur = standard_run(tmp_path / "cur", seed=1, n=3)
    code, result = gate(tmp_path, base, cur)
    text = (tmp_path / "verdicts.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert code == 0 and {c["verdict"] for c in result["cases"]} == {"inconclusive"}
    assert all(c["ci"] == [None, None] and c["p_value"] is None for c in result["cases"])


# ---- --confirm: re-measure first-pass regressions, settle by majority ------------------------

@pytest.fixture
def sample_impls(monkeypatch):
    """The test-only implementations (test-sleep sleeps ``grid`` ms per call) in the registry for one test."""
    return load_sample_impls(monkeypatch)


def sleep_runs(tmp_path, monkeypatch) -> tuple[str, str]:
    """A baseline run and a run with test-sleep slowed 2x (CGSPN_BENCH_TEST_SLOWDOWN), both by the real runner on CPU."""
    import os

    from rich.console import Console

    from suite.runner import RunOptions, run_scenarios
    from suite.scenario import load_scenario

    path = tmp_path / "sleep.yaml"
    path.write_text("name: confirm-sleep\ndescription: gate confirm test\ndevice: any\nimplementations: [test-sleep]\n"
                    "levels: [sublayer]\nmodes: [fwd]\ndtypes: [float32]\nparams: {batch: 2, grid: 4}\n"
                    "timing: {budget_ms: 40, warmup_ms: 4, min_reps: 8, max_reps: 12}\nmetrics: [latency]\n")
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - closed with the process
    monkeypatch.delenv(ENV_VAR, raising=False)
    run_scenarios([load_scenario(path)], RunOptions(out=tmp_path / "base", device="cpu"), console=quiet)
    monkeypatch.setenv(ENV_VAR, "test-sleep=2")
    run_scenarios([load_scenario(path)], RunOptions(out=tmp_path / "slow", device="cpu"), console=quiet)
    return str(tmp_path / "base"), str(tmp_path / "slow")


def test_confirm_clears_a_flagged_case_that_is_fast_again(sample_impls, tmp_path, monkeypatch):
    base, slow = sleep_runs(tmp_path, monkeypatch)
    code, first = gate(tmp_path, base, slow)
    assert code == 1 and verdicts(first) == {"test-sleep": "regression"}  # the first pass alone fails
    monkeypatch.delenv(ENV_VAR)  # the re-measurements run at full speed: the "slowdown" was transient
    code, result = gate(tmp_path, base, slow, "--confirm", "3")
    case = result["cases"][0]
    assert code == 0 and result["passed"] and case["verdict"] == "cleared"
    assert case["first_pass"]["verdict"] == "regression" and result["first_pass_failures"] == [case["case_id"]]
    assert case["confirmation"]["runs"] == 3 and case["confirmation"]["regressions"] < 2
    assert result["confirm"]["cleared"] == [case["case_id"]]
    rows = RunDir(slow).rows()
    confirm_rows = [r for r in rows if r.message.startswith("gate-confirm")]
    assert len(rows) == 4 and [r.message.split(":")[0] for r in confirm_rows] == ["gate-confirm 1/3", "gate-confirm 2/3",
                                                                                  "gate-confirm 3/3"]
    assert all(r.status == "ok" and not was_slowed(r.backend_detail) and r.case_id == case["case_id"] for r in confirm_rows)
    assert len(Snapshot.from_run(slow).rows) == 1  # judging the run again sees the run as measured
    meta = json.loads((tmp_path / "slow" / "run.json").read_text())
    assert meta["gate_confirm"][-1]["cases"] == {case["case_id"]: "cleared"}


def test_confirm_keeps_a_persistent_slowdown_failed(sample_impls, tmp_path, monkeypatch):
    base, slow = sleep_runs(tmp_path, monkeypatch)  # the switch stays on: the re-measurements are slow too
    code, result = gate(tmp_path, base, slow, "--confirm", "3")
    case = result["cases"][0]
    assert code == 1 and case["verdict"] == "regression" and case["reason"].startswith("confirmed")
    assert case["confirmation"]["regressions"] >= 2 and case["first_pass"]["verdict"] == "regression"
    confirm_rows = [r for r in RunDir(slow).rows() if r.message.startswith("gate-confirm")]
    assert len(confirm_rows) == 3 and all(was_slowed(r.backend_detail) for r in confirm_rows)


def fake_measure(base_median: float, scales: list[float], status: str = "ok"):
    """A deterministic stand-in for the measurement core: the k-th re-measurement's samples are the
    baseline's distribution scaled by ``scales[k-1]`` (real Row objects, seeded draws)."""
    def measure(request, device, k):
        params = request["params"]
        row = make_row(request["implementation"], request["level"], request["mode"], params,
                       samples(base_median * scales[k - 1], 0.02, 60, 100 + k), device=H100)
        if status != "ok" and k == 2:
            row.status, row.correctness = status, {"passed": False, "rel_rms": 0.5, "tolerance": 2e-2}
        return row

    return measure


def synthetic_pair(tmp_path, slow_scale: float) -> tuple[Snapshot, Snapshot, str, str]:
    """Baseline and current runs of one test-sleep case whose run.json records its scenario."""
    from suite.scenario import parse_scenario

    text = ("name: confirm-synthetic\ndescription: x\nimplementations: [test-sleep]\nlevels: [sublayer]\nmodes: [fwd]\n"
            "dtypes: [float32]\nparams: {batch: 2, grid: 3}\n")
    case = parse_scenario(text).cases[0]
    runs = []
    for name, scale, seed in (("base", 1.0, 1), ("cur", slow_scale, 2)):
        row = make_row("test-sleep", "sublayer", "fwd", case.values, samples(3.0 * scale, 0.02, 60, seed))
        row.dtype, row.case_id = "float32", case.id
        path = write_run(tmp_path / name, [row])
        meta = RunDir(path).meta() | {"run_id": name, "scenarios": [{"name": "confirm-synthetic", "contents": text}],
                                      "settings": {"device": "cpu", "budget_scale": 0.5, "check": True}}
        RunDir(path).write_meta(meta)
        runs.append(path)
    return Snapshot.from_run(runs[0]), Snapshot.from_run(runs[1]), runs[0], runs[1]


@pytest.mark.parametrize(("scales", "expected", "regressions"), [
    ([1.3, 1.0, 1.0], "cleared", 1),      # persisted in 1 of 3: a transient
    ([1.3, 1.3, 1.0], "regression", 2),   # persisted in a majority
    ([1.0, 1.0, 1.0, 1.3, 1.3], "cleared", 2),
])
def test_confirm_majority_of_independent_re_measurements(sample_impls, tmp_path, scales, expected, regressions):
    from suite.gate.confirm import confirm_regressions

    baseline, current, _, cur_path = synthetic_pair(tmp_path, 1.3)
    rule = DecisionRule()
    report = compare_snapshots(baseline, current, rule=rule)
    assert [c.verdict for c in report.cases] == ["regression"]
    requests = []

    def measure(request, device, k):
        requests.append((request, device))
        return fake_measure(3.0, scales)(request, device, k)

    confirm_regressions(report, baseline, current, cur_path, len(scales), rule=rule, measure=measure)
    case = report.cases[0]
    assert case.verdict == expected and case.confirmation["regressions"] == regressions
    assert report.passed == (expected == "cleared")
    request, device = requests[0]  # rebuilt from run.json: the run's device, budget scale and check
    assert device == "cpu" and request["check"] is True and request["timing"]["budget_ms"] == pytest.approx(0.5 * 300.0)
    assert sum(r.message.startswith("gate-confirm") for r in RunDir(cur_path).rows()) == len(scales)


def test_confirm_correctness_failure_on_re_measurement_fails(sample_impls, tmp_path):
    from suite.gate.confirm import confirm_regressions

    baseline, current, _, cur_path = synthetic_pair(tmp_path, 1.3)
    report = compare_snapshots(baseline, current)
    confirm_regressions(report, baseline, current, cur_path, 3, rule=DecisionRule(),
                        measure=fake_measure(3.0, [1.0, 1.0, 1.0], status="failed-check"))
    assert report.cases[0].verdict == "failed-check" and not report.passed


def test_confirm_leaves_an_unrebuildable_case_failed_and_is_refused_in_ab_mode(tmp_path, capsys):
    base = standard_run(tmp_path / "base", seed=1)
    cur = standard_run(tmp_path / "cur", seed=2, scale={"cgspn-scan": 1.3})  # run.json without scenarios
    for device in ([], ["--device", "cpu"]):  # the run's own device (cuda, not here or another model), then one that is here
        code, result = gate(tmp_path, base, cur, "--confirm", "3", *device)
        case = next(c for c in result["cases"] if c["implementation"] == "cgspn-scan")
        assert code == 1 and case["verdict"] == "regression" and case["first_pass"]["verdict"] == "regression"
        assert "not confirmed" in case["reason"] or "confirmation not run" in " ".join(result["warnings"])
    assert "not confirmed: cannot rebuild the case" in case["reason"]
    assert len(RunDir(cur).rows()) == len(CASES)  # nothing measured, nothing appended
    assert main(["gate", "--ab", "HEAD", "--confirm", "3"]) == 2
    assert "--confirm is for the stored-baseline mode" in capsys.readouterr().out


# ---- device time (graph replays) vs eager time ----------------------------------------------

def timed_row(impl: str, eager_ms: float, graph_ms: float, seed: int, spread: float = 0.02, n: int = 40) -> Row:
    """A CASES row with eager samples around ``eager_ms`` and graph-replay samples around ``graph_ms``."""
    level, mode, params = next((lvl, m, p) for name, lvl, m, p, _ in CASES if name == impl)
    row = make_row(impl, level, mode, params, samples(eager_ms, spread, n, seed))
    graph = samples(graph_ms, spread / 4, n, seed + 100)  # replays: no host jitter, a tighter spread
    q1, q3 = np.percentile(graph, [25, 75])
    row.graph_samples_ms, row.graph_median_ms, row.graph_iqr_ms, row.graph_n = graph, float(np.median(graph)), float(q3 - q1), n
    row.host_overhead_ms = row.median_ms - row.graph_median_ms
    row.host_bound = row.median_ms > 1.1 * row.graph_median_ms
    return row


def test_host_bound_case_on_a_slower_host_passes_on_device_time(tmp_path):
    """The launch-bound scan sublayer: eager 3x slower on another machine's host, the GPU work unchanged."""
    base = write_run(tmp_path / "base", [timed_row("cgspn-scan", 0.10, 0.05, seed=1)])
    cur = write_run(tmp_path / "cur", [timed_row("cgspn-scan", 0.33, 0.05, seed=2)])
    thresholds = tmp_path / "t.yaml"
    thresholds.write_text("default: 5%\neager: 15%\nhost_bound: off\n")
    code, result = gate(tmp_path, base, cur, "--thresholds", str(thresholds))
    case = result["cases"][0]
    assert code == 0 and case["verdict"] == "unchanged" and case["timer"] == "graph" and case["host_bound"]
    assert case["eager"]["verdict"] == "not judged" and case["eager"]["ratio"] > 2.5  # reported, not failing
    # the same eager slowdown fails where the thresholds file judges host-bound eager time
    thresholds.write_text("default: 5%\nhost_bound: 50%\n")
    code, result = gate(tmp_path, base, cur, "--thresholds", str(thresholds))
    assert code == 1 and result["cases"][0]["reason"].startswith("eager (host-bound)")


def test_ten_percent_slower_device_time_fails_at_five_percent(tmp_path):
    base = write_run(tmp_path / "base", [timed_row("attention-cudnn", 0.32, 0.30, seed=3)])
    cur = write_run(tmp_path / "cur", [timed_row("attention-cudnn", 0.35, 0.33, seed=4)])
    code, result = gate(tmp_path, base, cur, "--max-slowdown", "5%")
    case = result["cases"][0]
    assert code == 1 and case["verdict"] == "regression" and case["timer"] == "graph"
    assert case["ratio"] == pytest.approx(1.10, abs=0.02)


def test_eager_regression_of_a_device_bound_case_fails_by_the_eager_limit(tmp_path):
    """Device time unchanged, the eager time 40% slower (a new host-side cost in the call): judged by ``eager``."""
    base = write_run(tmp_path / "base", [timed_row("cgspn", 4.1, 4.0, seed=5)])
    cur = write_run(tmp_path / "cur", [timed_row("cgspn", 5.7, 4.0, seed=6)])
    thresholds = tmp_path / "t.yaml"
    thresholds.write_text("default: 5%\neager: 15%\nrules:\n  - implementation: cgspn\n    eager_max_slowdown: 'off'\n")
    assert gate(tmp_path, base, cur)[0] == 0  # without a thresholds file the eager time is reported only
    assert gate(tmp_path, base, cur, "--thresholds", str(thresholds))[0] == 0  # the rule switched it off for cgspn
    thresholds.write_text("default: 5%\neager: 15%\n")
    code, result = gate(tmp_path, base, cur, "--thresholds", str(thresholds))
    assert code == 1 and result["cases"][0]["reason"].startswith("eager (device-bound)")


def test_rows_without_graph_samples_are_judged_on_eager_time(tmp_path):
    base = standard_run(tmp_path / "base", seed=0)
    cur = write_run(tmp_path / "cur", [timed_row(impl, med, med, seed=i) for i, (impl, *_, med) in enumerate(CASES)])
    code, result = gate(tmp_path, base, cur)
    assert code == 0 and {c["timer"] for c in result["cases"]} == {"eager"}  # the old baseline has eager samples only


def test_pooled_rows_keep_their_graph_samples():
    rows = [timed_row("cgspn-scan", 0.10, 0.05, seed=s) for s in (1, 2)]
    pooled = merge_rows(rows)
    assert pooled.graph_n == 80 and len(pooled.graph_samples_ms) == 80 and pooled.host_bound
    assert pooled.host_overhead_ms == pytest.approx(pooled.median_ms - pooled.graph_median_ms)


def test_thresholds_file_eager_keys_and_off():
    t = Thresholds.from_dict({"default": "5%", "eager": "15%", "host_bound": "off",
                              "rules": [{"implementation": "cgspn-scan", "eager_max_slowdown": "30%"}]})
    scan, cudnn = (make_row(impl, lvl, m, p, [1.0]) for impl, lvl, m, p, _ in CASES[:2])
    assert t.for_row(scan) == pytest.approx(0.05) and t.eager_for_row(cudnn, host_bound=False) == pytest.approx(0.15)
    assert t.eager_for_row(cudnn, host_bound=True) is None and t.eager_for_row(scan, host_bound=True) == pytest.approx(0.30)
    with pytest.raises(ThresholdError, match="host_bound: expected a percentage like '15%' or off, got 'sometimes'"):
        Thresholds.from_dict({"host_bound": "sometimes"})
    with pytest.raises(ThresholdError, match=r"unknown key\(s\) \['eagre'\]; allowed: default, eager, host_bound, rules"):
        Thresholds.from_dict({"eagre": "10%"})


def test_fractional_slowdown_spins_for_the_fraction_of_the_step(monkeypatch):
    import time

    def fn():
        deadline = time.perf_counter() + 2e-3  # a 2 ms step
        while time.perf_counter() < deadline:
            pass
        return torch.ones(1)

    monkeypatch.setenv(ENV_VAR, "test-busy=1.5")
    slowed = apply_test_slowdown("test-busy", Workload(fn=fn), mode="fwd", device="cpu")
    assert "x1.5" in slowed.backend_detail and "spin" in slowed.backend_detail and was_slowed(slowed.backend_detail)
    start = time.perf_counter()
    assert torch.equal(slowed.fn(), torch.ones(1))
    assert time.perf_counter() - start >= 2e-3 + 0.5 * 2e-3  # the step plus at least half a step of spin
    assert parse_slowdown("a=1.1, b=2@block") == {("a", None): 1.1, ("b", "block"): 2}
    with pytest.raises(SlowdownError, match="K must be >= 1"):
        parse_slowdown("a=0.9")
