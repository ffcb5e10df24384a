"""``suite.gpu.common.CheckLog``, the correctness-check log of the GPU check scripts, on CPU: a result within
its tolerance passes, one above fails with the offending outputs named, a crash is recorded with its error and
the next check still runs, and a custom failure rule replaces the default ``vs_ref`` one."""

from __future__ import annotations

from suite.gpu.common import CheckLog


def test_pass_fail_and_crash_are_recorded_and_the_log_goes_on(capsys):
    checks: dict = {}
    log = CheckLog(checks)
    log.record("good", lambda: {"y": {"vs_ref": 1e-6}, "dx": {"vs_ref": 2e-6}}, 1e-5)
    assert log.ok and checks["good"]["pass"] and checks["good"]["tolerance"] == 1e-5
    log.record("bad", lambda: {"y": {"vs_ref": 1e-3}, "dx": {"vs_ref": 1e-6}}, 1e-5, describe=lambda r: "(worst 1e-3)")
    assert not log.ok and checks["bad"]["pass"] is False
    log.record("crash", lambda: 1 / 0, 1e-5)
    assert checks["crash"]["pass"] is False and checks["crash"]["error"].startswith("ZeroDivisionError")
    log.record("after", lambda: {"y": {"vs_ref": 0.0}}, 1e-5)
    assert checks["after"]["pass"] and not log.ok  # one failure keeps the log failed
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("[check] bad: FAIL [('y', 0.001)] (worst 1e-3)")
    assert lines[2].startswith("[check] crash: ERROR ZeroDivisionError")


def test_nan_error_fails_and_custom_rule_applies():
    checks: dict = {}
    log = CheckLog(checks)
    log.record("nan", lambda: {"y": {"vs_ref": float("nan")}}, 1e-5)
    assert checks["nan"]["pass"] is False
    log = CheckLog(checks)
    log.record("layer", lambda: {"y": 0.5, "z": 0.01}, 0.1, failures=lambda r, tol: [k for k, v in r.items() if v > tol])
    assert checks["layer"]["pass"] is False and not log.ok
