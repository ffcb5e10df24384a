"""Baselines per card: file name from the GPU model, environment kept, dirty runs refused."""

from __future__ import annotations

import json

import pytest

from suite.gate.baseline import FORMAT, BaselineError, Snapshot, gpu_model_of, slugify, update_baseline
from suite.gate.cli import main
from suite.results import Row, RunDir, case_id

GPU = "NVIDIA H100 80GB HBM3"
ENV = {"gpu": {"name": GPU, "uuid": "GPU-1234"}, "driver": "580.65", "torch": "2.11.0", "triton": "3.6.0",
       "device": "cuda", "git": {"commit": "c0ffee" * 6 + "c0ff", "dirty": False}}


def row(impl: str, grid: int, timings: list[float], **fields) -> Row:
    params = {"batch": 2, "grid": grid, "channels": 64}
    return Row(case_id=case_id(impl, "sublayer", "fwd", "float32", params), implementation=impl, family="cgspn",
               level="sublayer", mode="fwd", dtype="float32", params=params, samples_ms=timings, n=len(timings),
               median_ms=sorted(timings)[len(timings) // 2] if timings else None,
               profile={"kernels": [{"name": "k", "total_ms": 1.0}] * 50}, **{"device": GPU, **fields})


def write_run(path, rows: list[Row], env: dict = ENV) -> str:
    run = RunDir(path)
    run.write_meta({"environment": env, "scenarios": [{"name": "gate", "sha256": "ab" * 32, "contents": {"big": 1}}]})
    for r in rows:
        run.append(r)
    return str(path)


def test_update_writes_card_named_file_with_environment(tmp_path):
    rows = [row("cgspn-scan", 27, [1.0, 1.1, 0.9, 1.0, 1.05]), row("cgspn-scan", 74, [], status="oom", message="CUDA OOM")]
    run = write_run(tmp_path / "runs" / "gate", rows)
    assert main(["baseline", "update", "--from", run, "--dir", str(tmp_path / "baselines")]) == 0
    path = tmp_path / "baselines" / "nvidia-h100-80gb-hbm3.json"
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["gpu_model"] == GPU
    assert data["environment"] == ENV and data["commit"] == ENV["git"]["commit"] and data["source_run"] == run
    assert data["scenarios"] == [{"name": "gate", "sha256": "ab" * 32}]  # a reference, not the contents
    assert [r["case_id"] for r in data["rows"]] == [r.case_id for r in rows]
    assert data["rows"][0]["samples_ms"] == rows[0].samples_ms and data["rows"][1]["status"] == "oom"
    assert all(r["profile"] is None for r in data["rows"])  # bulky profiler tables are not kept
    snap = Snapshot.load(path)
    assert snap.gpu_model == GPU and snap.commit == ENV["git"]["commit"] and len(snap.rows) == 2
    # refresh: a newer run of the same card replaces the file
    newer = write_run(tmp_path / "runs" / "gate2", rows[:1])
    assert update_baseline(newer, tmp_path / "baselines") == path
    assert len(Snapshot.load(path).rows) == 1


def test_update_refuses_correctness_failures_and_test_slowdown(tmp_path):
    bad = row("cgspn-scan", 27, [], status="failed-check", correctness={"passed": False, "rel_rms": 0.3})
    slowed = row("cgspn-scan", 74, [1.0] * 5, backend_detail="triton; test-slowdown: forward x2 (CGSPN_BENCH_TEST_SLOWDOWN)")
    run = write_run(tmp_path / "run", [row("attention-math", 27, [1.0] * 5), bad, slowed])
    with pytest.raises(BaselineError) as err:
        update_baseline(run, tmp_path / "b")
    assert "failed its correctness check" in str(err.value) and "test slowdown" in str(err.value)
    assert main(["baseline", "update", "--from", run, "--dir", str(tmp_path / "b")]) == 2
    assert not (tmp_path / "b").exists()
    assert update_baseline(run, tmp_path / "b", force=True).name == "nvidia-h100-80gb-hbm3.json"
    with pytest.raises(BaselineError, match="no row with status ok"):
        update_baseline(write_run(tmp_path / "empty", [bad]), tmp_path / "b", force=True)
    with pytest.raises(BaselineError, match="not a run directory"):
        update_baseline(tmp_path / "nowhere", tmp_path / "b")


def test_show_path_and_gate_against_a_directory(tmp_path, capsys):
    timings = [1.0, 1.02, 0.98, 1.01, 0.99, 1.0, 1.03]
    run = write_run(tmp_path / "run", [row("cgspn-scan", 27, timings)])
    baselines = tmp_path / "baselines"
    assert main(["baseline", "update", "--from", run, "--dir", str(baselines)]) == 0
    capsys.readouterr()
    assert main(["baseline", "path", "--for", run, "--dir", str(baselines)]) == 0
    assert capsys.readouterr().out.strip() == str(baselines / "nvidia-h100-80gb-hbm3.json")
    assert main(["baseline", "show", str(baselines)]) == 0
    shown = capsys.readouterr().out
    assert GPU in shown and "cgspn-scan" in shown
    # --baseline DIR picks this card's file; a card without a file is a clear refusal
    assert main(["gate", "--baseline", str(baselines), "--current", run]) == 0
    other = write_run(tmp_path / "other", [row("cgspn-scan", 27, timings, device="NVIDIA H200")],
                      env={**ENV, "gpu": {"name": "NVIDIA H200"}})
    capsys.readouterr()
    assert main(["gate", "--baseline", str(baselines), "--current", other]) == 2
    assert "no baseline for 'NVIDIA H200'" in capsys.readouterr().out


def test_gpu_model_and_slug():
    assert slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert slugify("NVIDIA H200") == "nvidia-h200"
    assert gpu_model_of({"gpu": {"name": "NVIDIA A100-SXM4-80GB"}}, []) == "NVIDIA A100-SXM4-80GB"
    assert gpu_model_of({"device": "cpu", "cpu": "AMD EPYC 9654"}, []) == "AMD EPYC 9654"
    with pytest.raises(BaselineError):
        slugify("  ")
