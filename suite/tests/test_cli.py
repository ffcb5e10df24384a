"""``cgspn-bench``: run, list, validate, plugin subcommands, clear failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

from suite import cli
from suite.results import RunDir

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[2]

TINY = """name: tiny-cli
description: "attention on a 5x5 grid"
implementations: [attention-math]
levels: [sublayer]
modes: [fwd, fwd+bwd]
dtypes: [float32]
params: {batch: 1, channels: 8, heads: 2}
sweep: {grid: [5]}
timing: {budget_ms: 2, warmup_ms: 0, min_reps: 2, max_reps: 5}
"""


def test_run_writes_rows_and_metadata(tmp_path, capsys):
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(TINY)
    out = tmp_path / "run"
    assert cli.main(["run", str(scenario), "--out", str(out), "--device", "cpu"]) == 0
    rows = RunDir(out).rows()
    assert [(r.mode, r.status) for r in rows] == [("fwd", "ok"), ("fwd+bwd", "ok")]
    assert all(r.correctness["passed"] for r in rows)
    assert json.loads((out / "run.json").read_text())["scenarios"][0]["name"] == "tiny-cli"
    err = capsys.readouterr().err
    assert "holds 2 ok" in err and "real benchmarks need a CUDA GPU" in err


def test_run_reports_scenario_errors_without_running(tmp_path, capsys):
    assert cli.main(["run", str(DATA / "bad" / "timing.yaml"), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "timing.l2_flush" in err and "nothing was run" in err
    assert not (tmp_path / "run").exists()


def test_run_says_when_nothing_can_run_here(tmp_path, capsys):
    scenario = tmp_path / "gpu.yaml"
    scenario.write_text(TINY.replace("name: tiny-cli", "name: gpu-only\ndevice: cuda"))
    assert cli.main(["run", str(scenario), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 2
    assert "no runnable scenario" in capsys.readouterr().err


def test_gpus_needs_cuda(tmp_path, capsys):
    assert cli.main(["run", "x.yaml", "--gpus", "all", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --gpus needs CUDA; for CPU ranks run: "
                                               "torchrun --nproc_per_node=N -m suite.run --device cpu ...")


def test_validate_lists_every_error_and_fails(capsys):
    assert cli.main(["validate", str(DATA / "bad")]) == 1
    err = capsys.readouterr().err
    for path in sorted((DATA / "bad").glob("*.yaml")):
        assert str(path) in err
    assert f"{len(err.splitlines()) - 1} error(s)" in err


def test_validate_shipped_scenarios(capsys):
    assert cli.main(["validate", str(ROOT / "scenarios")]) == 0
    assert "smoke-cpu" in capsys.readouterr().out


def test_list_shows_the_registry_without_test_entries(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "attention-math" in out and "test-" not in out


def test_import_adds_implementations_in_that_process_only():
    done = subprocess.run([sys.executable, "-m", "suite.cli", "list", "--import", str(DATA / "sample_impls.py")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "250"})
    assert done.returncode == 0, done.stderr
    assert "test-sleep" in done.stdout and "needs absent hardware" in done.stdout


def test_subcommands_from_other_modules_are_registered(monkeypatch):
    plugin = types.ModuleType("cgspn_test_cli_plugin")

    def register_cli(subparsers):
        hello = subparsers.add_parser("hello")
        hello.set_defaults(handler=lambda args: 7)

    plugin.register_cli = register_cli
    monkeypatch.setitem(sys.modules, "cgspn_test_cli_plugin", plugin)
    monkeypatch.setattr(cli, "PLUGIN_CLI_MODULES", ("cgspn_test_cli_plugin", "cgspn_module_that_does_not_exist"))
    assert cli.main(["hello"]) == 7



def test_gpus_relaunches_under_torchrun_without_the_flag():
    command = cli.torchrun_command(["scenarios/attention.yaml", "--gpus", "all", "--out", "r", "--gpus=2", "--resume"], 2)
    assert command[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "suite.run",
                           "scenarios/attention.yaml", "--out", "r", "--resume"]
