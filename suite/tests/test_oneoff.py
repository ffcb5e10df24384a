"""One-off runs from command-line options, validated as scenarios; --csv prints the result table."""

from __future__ import annotations

import io
import json

import pandas as pd
import yaml

from suite import cli
from suite.oneoff import WHERE
from suite.results import RunDir

ONEOFF = ["--impl", "attention-math", "--level", "sublayer", "--sweep", "grid=4,5", "--param", "batch=1", "--param", "channels=8",
          "--param", "heads=2", "--dtype", "float32", "--mode", "fwd"]


def test_oneoff_run_measures_the_sweep_and_prints_csv(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", *ONEOFF, "--out", str(out), "--device", "cpu", "--csv"]) == 0
    rows = RunDir(out).rows()
    assert sorted(r.params["grid"] for r in rows) == [4, 5] and all(r.status == "ok" for r in rows)
    printed = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert sorted(printed["p_grid"]) == [4, 5] and list(printed["p_batch"]) == [1, 1]
    assert {"implementation", "median_ms", "iqr_ms", "status", "case_id"} <= set(printed.columns)
    record = json.loads((out / "run.json").read_text())["scenarios"][0]
    assert record["path"] == WHERE and record["name"] == "cli-attention-math-sublayer"
    scenario = yaml.safe_load(record["contents"])  # stored as a scenario file would be: the report reads it back
    assert scenario["sweep"] == {"grid": [4, 5]} and scenario["params"]["channels"] == 8


def test_oneoff_options_are_validated_by_the_scenario_code(tmp_path, capsys):
    bad = ["--impl", "attention-mathx", "--level", "sublayer,blok", "--sweep", "grid=4,x", "--param", "batch"]
    assert cli.main(["run", *bad, "--out", str(tmp_path / "run"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--param 'batch': expected NAME=INT" in err
    assert not (tmp_path / "run").exists()
    assert cli.main(["run", "--impl", "attention-mathx", "--level", "sublayer,blok", "--sweep", "grid=4,x",
                     "--out", str(tmp_path / "run"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{WHERE}: implementations[0]: unknown implementation 'attention-mathx'; registered:" in err
    assert f"{WHERE}: levels[1]: 'blok' is not allowed" in err
    assert f"{WHERE}: sweep.grid[1]: expected an integer" in err


def test_scenario_files_and_oneoff_options_do_not_mix(tmp_path, capsys):
    assert cli.main(["run", "scenarios/smoke-cpu.yaml", "--impl", "attention-math", "--level", "sublayer",
                     "--out", str(tmp_path / "run"), "--device", "cpu"]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli.main(["run", "--out", str(tmp_path / "run"), "--device", "cpu"]) == 2
    assert "no scenario" in capsys.readouterr().err


def test_csv_after_a_scenario_file_run(tmp_path, capsys):
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(yaml.safe_dump({"name": "tiny", "description": "d", "implementations": ["attention-math"],
                                        "levels": ["sublayer"], "dtypes": ["float32"],
                                        "params": {"batch": 1, "channels": 8, "heads": 2, "grid": 3},
                                        "timing": {"budget_ms": 2, "warmup_ms": 0, "min_reps": 2, "max_reps": 5}}))
    assert cli.main(["run", str(scenario), "--out", str(tmp_path / "run"), "--device", "cpu", "--csv"]) == 0
    printed = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert len(printed) == 1 and printed["status"][0] == "ok"
