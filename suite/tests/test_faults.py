"""The fault battery: bad files, concurrent writers, torn and garbage rows, a crafted checkpoint,
an alias bomb. Each fault must end in one line naming the file, field or path, with exit code 2
(130 for SIGINT) -- never a traceback, a hang, a write outside the run folder, duplicated or
silently dropped rows, or code execution. Bad inputs live in ``data/faults/``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from suite import cli, yaml_safe
from suite.errors import InputError
from suite.results import RowsError, RunDir
from suite.rundir_lock import LOCK_FILE, LockError, RunDirLock
from suite.runner import RunError, RunOptions, run_scenarios
from suite.scenario import load_scenario
from suite.tests.helpers import SAMPLE_IMPLS, load_sample_impls
from suite.tests.test_runner import quiet, write_scenario

DATA = Path(__file__).parent / "data"
FAULTS = DATA / "faults"
FIXTURE_RUN = DATA / "fixture_run"
ROOT = Path(__file__).resolve().parents[2]

TINY = """name: tiny-faults
description: "attention on a 5x5 grid"
implementations: [attention-math]
levels: [sublayer]
dtypes: [float32]
params: {batch: 1, channels: 8, heads: 2}
sweep: {grid: [5]}
timing: {budget_ms: 2, warmup_ms: 0, min_reps: 2, max_reps: 5}
"""


def one_line_error(capsys, code: int, expected: str, exit_code: int = 2) -> str:
    """The command exited ``exit_code`` with no traceback and an error line containing ``expected``."""
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert code == exit_code, text
    assert "Traceback" not in text, text
    assert expected in " ".join(text.split()), text
    return text


# ---- scenario files ----------------------------------------------------------------------------

BAD_SCENARIOS = {
    "alias-bomb-name.yaml": "aliases expand to more than",
    "alias-bomb-under-modes.yaml": "aliases expand to more than",
    "sweep-bomb.yaml": "expands to 102400000 cases",
    "duplicate-key.yaml": "key 'levels' is given twice (first on line 4)",
    "name-traversal.yaml": "'../../../../x' is not allowed: it names a folder",
    "name-too-long.yaml": "is not allowed: it names a folder",
    "not-utf8.yaml": "not UTF-8 text",
}


@pytest.mark.parametrize("name", sorted(BAD_SCENARIOS))
def test_bad_scenario_file_is_refused_before_anything_is_written(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out would be results/runs/<name> here
    start = time.perf_counter()
    code = cli.main(["run", str(FAULTS / name), "--device", "cpu"])
    assert time.perf_counter() - start < 10
    one_line_error(capsys, code, BAD_SCENARIOS[name])
    assert list(tmp_path.iterdir()) == []


def test_alias_bomb_is_refused_within_seconds():
    start = time.perf_counter()
    with pytest.raises(yaml.YAMLError, match="alias bomb"):
        yaml_safe.load((FAULTS / "alias-bomb-name.yaml").read_text())
    assert time.perf_counter() - start < 2


def test_yaml_caps_can_be_raised(monkeypatch):
    text = "a: &a [1, 2]\nb: [*a, *a, *a]\n"
    assert yaml_safe.load(text) == {"a": [1, 2], "b": [[1, 2]] * 3}
    assert yaml_safe.load("base: &b {x: 1}\nc: {<<: *b, y: 2}\n")["c"] == {"x": 1, "y": 2}  # merge keys still work
    monkeypatch.setenv(yaml_safe.ALIASES_ENV, "2")
    with pytest.raises(yaml.YAMLError, match=f"more than 2 aliases .* {yaml_safe.ALIASES_ENV}"):
        yaml_safe.load(text)
    monkeypatch.setenv(yaml_safe.ALIASES_ENV, "10")
    monkeypatch.setenv(yaml_safe.NODES_ENV, "5")
    with pytest.raises(yaml.YAMLError, match="expand to more than 5 nodes"):
        yaml_safe.load(text)


def test_case_cap_can_be_raised(tmp_path, monkeypatch):
    monkeypatch.setenv("CGSPN_BENCH_MAX_CASES", "1")
    path = tmp_path / "two.yaml"
    path.write_text(TINY.replace("grid: [5]", "grid: [5, 6]"))
    with pytest.raises(Exception, match="expands to 2 cases .* CGSPN_BENCH_MAX_CASES=2"):
        load_scenario(path)
    monkeypatch.setenv("CGSPN_BENCH_MAX_CASES", "2")
    assert len(load_scenario(path).cases) == 2


def test_duplicate_keys_in_thresholds_and_distill_configs(tmp_path):
    from suite.distill.config import ConfigError, load_config
    from suite.gate.thresholds import ThresholdError, Thresholds

    thresholds = tmp_path / "t.yaml"
    thresholds.write_text("default: 10%\ndefault: 50%\n")
    with pytest.raises(ThresholdError, match="key 'default' is given twice"):
        Thresholds.load(thresholds)
    config = tmp_path / "c.yaml"
    config.write_text("name: a\nseed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match="key 'seed' is given twice"):
        load_config(config)


# ---- command-line arguments --------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "x"])
def test_budget_scale_must_be_a_finite_positive_number(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "x.yaml", "--budget-scale", value, "--device", "cpu"])
    assert exit_.value.code == 2 and "--budget-scale" in capsys.readouterr().err


def test_out_that_is_a_file_or_a_foreign_folder(tmp_path, capsys):
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(TINY)
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    code = cli.main(["run", str(scenario), "--out", str(afile), "--device", "cpu"])
    one_line_error(capsys, code, "exists and is not a directory")
    foreign = tmp_path / "foreign"
    for name in ("traces", "nvml", "ranks"):
        (foreign / name).mkdir(parents=True)
    (foreign / "notes.txt").write_text("keep me")
    code = cli.main(["run", str(scenario), "--out", str(foreign), "--device", "cpu", "--force"])
    one_line_error(capsys, code, "not a run directory")
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt", "nvml", "ranks", "traces"]
    assert afile.read_text() == "keep me"


def test_force_still_clears_a_real_run_directory(tmp_path, capsys):
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(TINY)
    out = tmp_path / "run"
    assert cli.main(["run", str(scenario), "--out", str(out), "--device", "cpu"]) == 0
    assert cli.main(["run", str(scenario), "--out", str(out), "--device", "cpu", "--force"]) == 0
    assert len(RunDir(out).rows()) == 1


@pytest.mark.parametrize("plugin, message", [
    ("nosuch_module_xyz", "--import nosuch_module_xyz: failed: ModuleNotFoundError"),
    ("missing.py", "--import missing.py: no such file"),
    ("broken.py", "failed: ZeroDivisionError"),
    ("clash.py", "registers attention-math (sublayer), already registered"),
])
def test_import_errors_and_registry_clashes(plugin, message, tmp_path, capsys, monkeypatch):
    from kernels import registry

    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.py").write_text("1 / 0\n")
    # a builder with the built-in's qualified name: register() itself lets that through
    (tmp_path / "clash.py").write_text(
        "from kernels import registry\n"
        "def build(params, dtype, device, mode):\n    raise RuntimeError('plugin code ran')\n"
        "build.__qualname__ = registry.get('attention-math', 'sublayer').build.__qualname__\n"
        "registry.register('attention-math', family='attention', level='sublayer', params=('batch',))(build)\n")
    builtin = registry.get("attention-math", "sublayer")
    code = cli.main(["list", "--import", plugin])
    one_line_error(capsys, code, message)
    assert registry.get("attention-math", "sublayer") is builtin


def test_reproduce_resume_needs_out(capsys):
    one_line_error(capsys, cli.main(["reproduce", "--resume", "--device", "cpu"]), "reproduce --resume: give the run")


# ---- rows, run.json, baselines -----------------------------------------------------------------

CORRUPT_ROWS = {
    "rows-garbage-middle.jsonl": "line 2: not JSON",
    "rows-not-rows.jsonl": "line 2: expected a JSON object (a row), got list; line 3: not a row: missing case_id",
    "rows-not-utf8.jsonl": "line 2: not UTF-8",
}


def fault_run(tmp_path: Path, rows_file: str | None = None, run_file: str | None = None) -> Path:
    run = tmp_path / "run"
    shutil.copytree(FIXTURE_RUN, run, ignore=shutil.ignore_patterns("*.py"))
    if rows_file:
        shutil.copy(FAULTS / rows_file, run / "rows.jsonl")
    if run_file:
        shutil.copy(FAULTS / run_file, run / "run.json")
    return run


@pytest.mark.parametrize("rows_file", sorted(CORRUPT_ROWS))
def test_corrupt_rows_are_reported_with_line_numbers(rows_file, tmp_path, capsys):
    run = fault_run(tmp_path, rows_file)
    with pytest.raises(RowsError, match=CORRUPT_ROWS[rows_file].replace("(", r"\(").replace(")", r"\)")):
        RunDir(run).rows()
    expected = f"{run / 'rows.jsonl'}: {CORRUPT_ROWS[rows_file].split(';')[0]}"
    one_line_error(capsys, cli.main(["report", str(run), "--out", str(tmp_path / "report")]), expected)
    one_line_error(capsys, cli.main(["gate", "--baseline", str(FIXTURE_RUN), "--current", str(run)]), expected)
    one_line_error(capsys, cli.main(["baseline", "update", "--from", str(run), "--dir", str(tmp_path / "b")]), expected)
    assert not (tmp_path / "b").exists()


def test_torn_row_is_skipped_and_measured_again(impls, tmp_path):
    scenario = load_scenario(write_scenario(tmp_path, "torn", ["test-sleep"], [1, 2, 3]))
    out = tmp_path / "run"
    run_scenarios([scenario], RunOptions(out=out, device="cpu"), console=quiet())
    lines = (out / "rows.jsonl").read_text().splitlines()
    (out / "rows.jsonl").write_text("\n".join([lines[0], lines[1][:60], lines[2]]) + "\n")  # row 2 torn mid-line
    assert RunDir(out).read()[1] == [2]
    summary = run_scenarios([scenario], RunOptions(out=out, device="cpu", resume=True), console=quiet())
    assert summary.already_done == 2 and sum(summary.counts.values()) == 1
    rows = RunDir(out).rows()
    assert sorted(r.case_id for r in rows) == sorted(c.id for c in scenario.cases)


def test_garbage_row_stops_resume(impls, tmp_path):
    scenario = load_scenario(write_scenario(tmp_path, "garbage", ["test-sleep"], [1, 2]))
    out = tmp_path / "run"
    run_scenarios([scenario], RunOptions(out=out, device="cpu"), console=quiet())
    lines = (out / "rows.jsonl").read_text().splitlines()
    (out / "rows.jsonl").write_text("\n".join([lines[0], "garbage", lines[1]]) + "\n")
    with pytest.raises(RunError, match="rows.jsonl: line 2: not JSON"):
        run_scenarios([scenario], RunOptions(out=out, device="cpu", resume=True), console=quiet())
    assert len((out / "rows.jsonl").read_text().splitlines()) == 3  # nothing appended


def test_truncated_run_json(tmp_path, capsys):
    run = fault_run(tmp_path, run_file="run-truncated.json")
    one_line_error(capsys, cli.main(["report", str(run), "--out", str(tmp_path / "report")]), "run.json: not valid JSON")
    one_line_error(capsys, cli.main(["gate", "--baseline", str(FIXTURE_RUN), "--current", str(run)]), "run.json: not valid JSON")


def test_resume_with_another_scenario_is_refused(impls, tmp_path):
    out = tmp_path / "run"
    first = load_scenario(write_scenario(tmp_path, "first", ["test-sleep"], [1]))
    other = load_scenario(write_scenario(tmp_path, "other", ["test-sleep"], [2]))
    run_scenarios([first], RunOptions(out=out, device="cpu"), console=quiet())
    before = (out / "run.json").read_text()
    with pytest.raises(RunError, match="was run with scenario\\(s\\) first; this command gives other"):
        run_scenarios([other], RunOptions(out=out, device="cpu", resume=True), console=quiet())
    assert (out / "run.json").read_text() == before and len(RunDir(out).rows()) == 1


def test_empty_and_disjoint_baselines_are_errors(tmp_path, capsys):
    from suite.gate.baseline import update_baseline

    path = update_baseline(FIXTURE_RUN, tmp_path / "b", force=True)
    data = json.loads(path.read_text())
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**data, "rows": []}))
    code = cli.main(["gate", "--baseline", str(empty), "--current", str(FIXTURE_RUN)])
    one_line_error(capsys, code, "holds no rows; nothing to compare")
    disjoint = tmp_path / "disjoint.json"
    disjoint.write_text(json.dumps({**data, "gpu_model": "Another GPU",
                                    "rows": [{**r, "case_id": "x" + r["case_id"][1:]} for r in data["rows"]]}))
    code = cli.main(["gate", "--baseline", str(disjoint), "--current", str(FIXTURE_RUN), "--allow-other-gpu"])
    one_line_error(capsys, code, "have no case in common")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**data, "rows": [data["rows"][0], {"hello": 1}]}))
    one_line_error(capsys, cli.main(["gate", "--baseline", str(bad), "--current", str(FIXTURE_RUN)]), "rows[1]: not a row")


def test_unwritable_gate_output_is_exit_2_not_1(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    code = cli.main(["gate", "--baseline", str(FIXTURE_RUN), "--current", str(FIXTURE_RUN),
                     "--json", str(blocker / "verdicts.json")])
    one_line_error(capsys, code, f"gate: cannot write the verdicts: {blocker}")


# ---- the run-directory lock, SIGINT ------------------------------------------------------------


@pytest.fixture
def impls(monkeypatch):
    return load_sample_impls(monkeypatch)


def test_lock_refuses_a_second_holder_and_takes_over_a_stale_one(tmp_path):
    with RunDirLock(tmp_path) as first:
        assert first.stale is None
        with pytest.raises(LockError, match=f"in use by another run: pid {os.getpid()} on host {socket.gethostname()}"):
            RunDirLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_FILE).exists()
    # a holder killed without releasing: its record stays, its flock is gone
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "elsewhere", "since": 0}))
    with RunDirLock(tmp_path) as second:
        assert second.stale.startswith("pid 999999 on host elsewhere")


def test_gate_confirm_does_not_write_into_a_busy_run(tmp_path, capsys):
    run = fault_run(tmp_path)
    with RunDirLock(run):
        code = cli.main(["gate", "--baseline", str(FIXTURE_RUN), "--current", str(run), "--confirm", "1"])
    one_line_error(capsys, code, f"{run} is in use by another run: pid {os.getpid()}")


def test_stale_lock_is_taken_over_with_a_message(impls, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "deadhost", "since": 0}))
    scenario = load_scenario(write_scenario(tmp_path, "stale", ["test-sleep"], [1]))
    from rich.console import Console

    console = Console(file=sys.stderr, width=300)
    run_scenarios([scenario], RunOptions(out=out, device="cpu"), console=console)
    assert "took over the stale lock" in capsys.readouterr().err and len(RunDir(out).rows()) == 1


def test_two_writers_then_sigint_then_resume(impls, tmp_path):
    """A second writer into a busy directory is refused with the holder's pid and host; SIGINT ends the
    first with one line saying how to finish; --resume finishes without duplicates."""
    scenario = write_scenario(tmp_path, "busy", ["test-sleep"], list(range(20, 32)), budget_ms=400)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "suite.cli", "run", str(scenario), "--out", str(out), "--device", "cpu",
               "--import", str(SAMPLE_IMPLS)]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (out / "rows.jsonl").exists() and time.time() < deadline:
            time.sleep(0.1)
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == first.pid
        for resume in (False, True):  # the second writer, in this process
            with pytest.raises(RunError, match=f"in use by another run: pid {first.pid} on host {socket.gethostname()}"):
                run_scenarios([load_scenario(scenario)], RunOptions(out=out, device="cpu", resume=resume), console=quiet())
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted after ") and last.endswith(f" of 12 cases; finish with --resume --out {out}"), err
    done = int(last.split()[2])
    assert len(RunDir(out).rows()) == done
    resumed = subprocess.run([*command, "--resume", "--budget-scale", "0.05"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    ids = [r.case_id for r in RunDir(out).rows()]
    assert len(ids) == len(set(ids)) == 12 and len({r.run_id for r in RunDir(out).rows()}) == 1


# ---- distillation ------------------------------------------------------------------------------


class _Crafted:
    """Unpickling this runs ``os.system``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_checkpoint_does_not_execute_and_resume_falls_back(tmp_path, capsys):
    from suite.distill import checkpoint
    from suite.distill.config import parse_config
    from suite.distill.metrics import read_log
    from suite.distill.train import distill
    from suite.tests.test_distill import NO_PHOTOS, STAGE1, _photos_installed, tiny

    if not _photos_installed():
        pytest.skip(NO_PHOTOS)
    stage = {**STAGE1, "steps": 8}
    cfg = parse_config(tiny([stage], checkpoint={"every": 2, "keep": 10}))
    assert distill(cfg, tmp_path, stop_after=4) == {"stopped_at": 4}
    marker = tmp_path / "pwned"
    torch.save({"student": _Crafted(marker)}, checkpoint.step_path(tmp_path / "checkpoints", 6))
    checkpoint.step_path(tmp_path / "checkpoints", 7).write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
        checkpoint.load(checkpoint.step_path(tmp_path / "checkpoints", 6))
    distill(cfg, tmp_path, resume=True)
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "skipped 2 checkpoint(s)" in err and "resuming from step-0000004.pt" in err
    assert json.loads((tmp_path / "run.json").read_text())["resumed_from_step"] == 4
    assert max(r["global_step"] for r in read_log(tmp_path / "log.jsonl")) == 8


def test_distill_input_faults_are_one_line_errors(tmp_path, capsys):
    from suite.tests.test_distill import TINY

    config = tmp_path / "c.yaml"
    empty, corrupt = tmp_path / "empty", tmp_path / "corrupt"
    empty.mkdir()
    corrupt.mkdir()
    (corrupt / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cases = [
        (f"data: {{path: {tmp_path / 'missing'}}}", "is not a directory"),
        (f"data: {{path: {empty}}}", "no images"),
        (f"data: {{path: {corrupt}, batch_size: 1}}", f"cannot read image {corrupt / 'photo.png'}"),
    ]
    base = yaml.safe_load(TINY.read_text())
    for override, message in cases:
        data = {**base, **{k: {**base[k], **v} for k, v in yaml.safe_load(override).items()}}
        data["stages"] = [{**data["stages"][0], "steps": 1}]
        data["evaluate"] = {**data["evaluate"], "after_each_stage": False}
        config.write_text(yaml.safe_dump(data))
        code = cli.main(["distill", "--config", str(config), "--out", str(tmp_path / "out"), "--set", "progress=false"])
        one_line_error(capsys, code, message)
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
    config.write_text("name: [unclosed\n")
    one_line_error(capsys, cli.main(["distill", "--config", str(config)]), "not valid YAML: line")
    code = cli.main(["distill", "--config", str(TINY), "--set", "model.channels.x=1"])
    one_line_error(capsys, code, "--set model.channels.x: 'channels' holds a value")


def test_every_user_error_class_is_an_input_error():
    from suite.distill.checkpoint import CheckpointError
    from suite.distill.config import ConfigError
    from suite.distill.train import DistillError

    for cls in (RowsError, RunError, LockError, ConfigError, DistillError, CheckpointError):
        assert issubclass(cls, InputError)
