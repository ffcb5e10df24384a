"""pytest-benchmark integration: plain params, GPU machine_info, the compare guard, timing options, one IQR."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from suite import bench_pytest
from suite.measure import Timing, TimingSettings

ROOT = Path(__file__).resolve().parents[2]
TINY = """name: tiny
description: one tiny CPU case
implementations: [attention-math]
levels: [sublayer]
dtypes: [float32]
params: {batch: 1, channels: 32, heads: 2}
sweep: {grid: [4]}
timing: {budget_ms: 5, warmup_ms: 1, min_reps: 5, max_reps: 20}
metrics: [latency]
"""


def run_pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(TINY)
    # run from tmp_path: pytest-benchmark's own compare warning fails on a storage outside the working directory
    command = [sys.executable, "-m", "pytest", str(ROOT / "suite" / "test_benchmarks.py"), f"--rootdir={ROOT}", "--scenario",
               str(scenario), "--device", "cpu", "--benchmark-only", "-p", "no:cacheprovider", "-q",
               "--benchmark-storage=file://store", *args]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_json_has_plain_params_gpu_machine_info_used_options_and_one_iqr(tmp_path):
    out = tmp_path / "b.json"
    done = run_pytest(tmp_path, f"--benchmark-json={out}", "--benchmark-max-time=0.004", "--benchmark-min-rounds=7")
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(out.read_text())
    bench = data["benchmarks"][0]
    assert bench["params"] == {"case": bench["extra_info"]["case_id"], "implementation": "attention-math", "level": "sublayer",
                               "mode": "fwd", "dtype": "float32", "batch": 1, "channels": 32, "grid": 4, "heads": 2, "patch": 14}
    info = data["machine_info"]
    assert {"gpu", "driver", "torch", "triton", "cuda", "flash_attn", "flash_attn_3", "sdpa_flash_impl"} <= set(info)
    assert data["machine_info"]["gpu"] is None and data["machine_info"]["device"] == "cpu"
    # the honoured options are the timing that ran, and the JSON says so
    assert bench["options"]["timer"] == "cpu-perf-counter" and bench["options"]["max_time"] == pytest.approx(0.004)
    assert bench["options"]["min_rounds"] == 7 and bench["stats"]["rounds"] >= 7
    # one IQR: pytest-benchmark's equals the row's
    assert bench["stats"]["iqr"] * 1e3 == pytest.approx(bench["extra_info"]["iqr_ms"], rel=1e-9)
    assert bench["stats"]["data"] == pytest.approx([s * 1e-3 for s in bench["extra_info"]["samples_ms"]])


def test_options_that_cannot_apply_are_refused(tmp_path):
    done = run_pytest(tmp_path, "--benchmark-timer=time.process_time", "--benchmark-disable-gc")
    assert done.returncode == 4
    assert "--benchmark-timer" in done.stderr and "--benchmark-disable-gc" in done.stderr


def test_compare_across_gpu_models_is_refused_unless_allowed(tmp_path):
    assert run_pytest(tmp_path, "--benchmark-save=first").returncode == 0
    saved = next((tmp_path / "store").rglob("*first.json"))
    data = json.loads(saved.read_text())
    data["machine_info"]["gpu"] = {"name": "NVIDIA A100-SXM4-80GB"}
    saved.write_text(json.dumps(data))
    refused = run_pytest(tmp_path, "--benchmark-compare")
    assert refused.returncode == 4 and "NVIDIA A100-SXM4-80GB" in refused.stderr and "--bench-allow-other-gpu" in refused.stderr
    allowed = run_pytest(tmp_path, "--benchmark-compare", "--bench-allow-other-gpu")
    assert allowed.returncode == 0 and "COMPARING ACROSS GPU MODELS" in allowed.stdout + allowed.stderr


def test_gpu_mismatch():
    h200 = {"gpu": {"name": "NVIDIA H200"}}
    assert bench_pytest.gpu_mismatch(h200, {"gpu": {"name": "NVIDIA H200", "uuid": "GPU-other"}}) is None  # same model
    assert "NVIDIA A100" in bench_pytest.gpu_mismatch(h200, {"gpu": {"name": "NVIDIA A100"}})
    assert "not recorded" in bench_pytest.gpu_mismatch(h200, {})
    assert bench_pytest.gpu_mismatch({"gpu": None}, {}) is None  # CPU against CPU


def test_apply_timing_maps_the_honoured_options():
    base = TimingSettings(budget_ms=300, min_reps=5, max_reps=6)
    timing = bench_pytest.apply_timing(base, {"benchmark_max_time": "2.5", "benchmark_min_rounds": 10})
    assert timing.budget_ms == 2500 and timing.min_reps == 10 and timing.max_reps == 10
    assert bench_pytest.apply_timing(base, {}) is base


def test_quartiles_match_the_rows_iqr():
    samples = [1.0, 1.1, 1.3, 2.0, 1.05, 1.2, 5.0]
    q1, q3 = bench_pytest.quartiles(samples)
    assert q3 - q1 == pytest.approx(Timing.from_samples(samples).iqr_ms)
    assert statistics.quantiles(samples, n=4, method="inclusive") == pytest.approx([q1, statistics.median(samples), q3])
