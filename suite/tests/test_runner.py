"""The runner: every status recorded, run.json, CSV, device filtering, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from suite.results import RunDir
from suite.runner import RunError, RunOptions, run_scenarios
from suite.scenario import load_scenario
from suite.tests.helpers import SAMPLE_IMPLS, load_sample_impls

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def impls(monkeypatch):
    return load_sample_impls(monkeypatch)


def write_scenario(folder: Path, name: str, implementations: list[str], grids: list[int], device: str = "any",
                   budget_ms: float = 5, min_reps: int = 2) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\ndescription: runner test\ndevice: {device}\nimplementations: {json.dumps(implementations)}\n"
                    f"levels: [sublayer]\nmodes: [fwd]\ndtypes: [float32]\nparams: {{batch: 2}}\nsweep: {{grid: {grids}}}\n"
                    f"timing: {{budget_ms: {budget_ms}, warmup_ms: 0, min_reps: {min_reps}, max_reps: 50}}\n")
    return path


def quiet() -> Console:
    return Console(file=open(os.devnull, "w"), force_terminal=False)  # noqa: SIM115 - closed with the process


def test_every_status_is_recorded_and_the_sweep_goes_on(impls, tmp_path):
    names = ["test-oom", "test-error", "test-unavailable", "test-wrong", "test-sleep"]
    scenario = load_scenario(write_scenario(tmp_path, "statuses", names, [1, 2]))
    out = tmp_path / "run"
    summary = run_scenarios([scenario], RunOptions(out=out, device="cpu"), console=quiet())
    rows = RunDir(out).rows()
    assert Counter(r.status for r in rows) == {"oom": 2, "error": 2, "unsupported": 2, "failed-check": 2, "ok": 2}
    assert summary.counts == Counter(r.status for r in rows) and summary.total_cases == 10
    assert {r.implementation for r in rows if r.status == "ok"} == {"test-sleep"}
    meta = json.loads((out / "run.json").read_text())
    assert meta["scenarios"][0]["name"] == "statuses" and meta["scenarios"][0]["sha256"] == scenario.sha256
    assert meta["scenarios"][0]["contents"] == scenario.text
    assert meta["environment"]["torch"] and "commit" in meta["environment"]["git"]
    assert meta["settings"]["device"] == "cpu" and meta["status_counts"]["ok"] == 2
    assert all(r.run_id == meta["run_id"] and r.scenario == "statuses" for r in rows)
    table = pd.read_csv(out / "rows.csv")
    assert len(table) == 10 and {"case_id", "status", "median_ms", "p_grid", "correctness_passed"} <= set(table.columns)


def test_existing_rows_need_resume_or_force(impls, tmp_path):
    scenario = load_scenario(write_scenario(tmp_path, "again", ["test-sleep"], [1]))
    options = RunOptions(out=tmp_path / "run", device="cpu")
    run_scenarios([scenario], options, console=quiet())
    with pytest.raises(RunError, match="--resume"):
        run_scenarios([scenario], options, console=quiet())
    options.force = True
    run_scenarios([scenario], options, console=quiet())
    assert len(RunDir(tmp_path / "run").rows()) == 1


def test_resume_measures_only_new_cases(impls, tmp_path):
    out = tmp_path / "run"
    first = load_scenario(write_scenario(tmp_path, "grow", ["test-sleep"], [1, 2]))
    run_scenarios([first], RunOptions(out=out, device="cpu"), console=quiet())
    before = {r.case_id: r.timestamp for r in RunDir(out).rows()}
    grown = load_scenario(write_scenario(tmp_path, "grow", ["test-sleep"], [1, 2, 3]))
    summary = run_scenarios([grown], RunOptions(out=out, device="cpu", resume=True), console=quiet())
    rows = RunDir(out).rows()
    assert summary.already_done == 2 and sum(summary.counts.values()) == 1
    assert len(rows) == 3 and {r.case_id: r.timestamp for r in rows[:2]} == before
    assert len(json.loads((out / "run.json").read_text())["resumed"]) == 1


def test_cuda_scenario_is_skipped_on_cpu(impls, tmp_path):
    gpu = load_scenario(write_scenario(tmp_path, "gpu-only", ["test-sleep"], [1], device="cuda"))
    anywhere = load_scenario(write_scenario(tmp_path, "anywhere", ["test-sleep"], [1]))
    with pytest.raises(RunError, match="no runnable scenario: .*'gpu-only' needs device cuda"):
        run_scenarios([gpu], RunOptions(out=tmp_path / "a", device="cpu"), console=quiet())
    summary = run_scenarios([gpu, anywhere], RunOptions(out=tmp_path / "b", device="cpu"), console=quiet())
    assert len(summary.skipped_scenarios) == 1 and "gpu-only" in summary.skipped_scenarios[0]
    assert [r.scenario for r in RunDir(tmp_path / "b").rows()] == ["anywhere"]


def test_overrides_no_check_and_budget_scale(impls, tmp_path):
    scenario = load_scenario(write_scenario(tmp_path, "overrides", ["test-wrong"], [1], budget_ms=10))
    run_scenarios([scenario], RunOptions(out=tmp_path / "run", device="cpu", check=False, budget_scale=0.5), console=quiet())
    row = RunDir(tmp_path / "run").rows()[0]
    assert row.status == "ok" and row.correctness is None  # --no-check: timed without the reference


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "suite.cli", "run", *args, "--device", "cpu", "--import", str(SAMPLE_IMPLS)]


def test_sigkill_mid_run_then_resume_loses_and_repeats_nothing(tmp_path):
    """A run killed with SIGKILL keeps its rows; --resume measures only the rest, once each."""
    grids = list(range(20, 32))  # 12 cases, each sleeping 20-31 ms x (first + estimate + 5 reps + check)
    path = write_scenario(tmp_path, "slow", ["test-sleep"], grids, budget_ms=100, min_reps=5)
    out = tmp_path / "run"
    proc = subprocess.Popen(cli(str(path), "--out", str(out)), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rows_file = out / "rows.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if rows_file.exists() and len(rows_file.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = RunDir(out).rows()
    assert 3 <= len(before) < len(grids)

    done = subprocess.run(cli(str(path), "--out", str(out), "--resume"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{len(before)} of {len(grids)} cases already measured" in done.stderr
    rows = RunDir(out).rows()
    ids = [r.case_id for r in rows]
    assert len(ids) == len(set(ids)) == len(grids)  # no duplicate, no lost case
    assert sorted(r.params["grid"] for r in rows) == grids
    assert [(r.case_id, r.timestamp) for r in rows[:len(before)]] == [(r.case_id, r.timestamp) for r in before]
    assert all(r.status == "ok" for r in rows)
    assert (out / "rows.csv").exists()


def test_a_case_that_breaks_the_device_is_recorded_and_the_run_stops(impls, tmp_path, monkeypatch):
    """A sticky CUDA error (simulated: releasing the device raises after grid 2) ends the process,
    but that case's row is written first, so --resume skips it and measures only the rest."""
    import suite.measure as measure

    real_release = measure._release
    calls = {"n": 0}

    def release(device):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        real_release(device)

    monkeypatch.setattr(measure, "_release", release)
    scenario = load_scenario(write_scenario(tmp_path, "lost", ["test-sleep"], [1, 2, 3]))
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match="illegal memory access"):
        run_scenarios([scenario], RunOptions(out=out, device="cpu"), console=quiet())
    rows = RunDir(out).rows()
    assert [(r.params["grid"], r.status) for r in rows] == [(1, "ok"), (2, "error")]
    assert "CUDA context is unusable" in rows[1].message
    monkeypatch.setattr(measure, "_release", real_release)
    run_scenarios([scenario], RunOptions(out=out, device="cpu", resume=True), console=quiet())
    assert sorted((r.params["grid"], r.status) for r in RunDir(out).rows()) == [(1, "ok"), (2, "error"), (3, "ok")]
