"""Confirm first-pass regressions by re-measuring them: ``cgspn-bench gate ... --confirm N``.

A stored-baseline gate compares runs measured minutes or days apart, and a short launch-bound
case can land on a bad window of the card or the host (clocks, a neighbour, the CPU launching
late): on an H200, a run that slowed only ``cgspn-scan`` also flagged five untouched small cases
(+34% to +143%). Mature perf CI re-runs what it flagged before failing; so does this step:

* **what**: every case the first pass calls a ``regression`` (the only timing verdict that fails
  the gate). ``inconclusive`` cases are not re-measured: they do not fail, and a second chance to
  fail would raise the false-alarm rate this step exists to lower; the step can only clear.
* **how**: each flagged case is rebuilt from the run's own ``run.json`` (the scenario contents,
  ``budget_scale`` and ``check`` the run used; :func:`suite.gate.ab.case_request`) and measured
  ``N`` more times in this process through the real measurement core
  (:func:`suite.gate.ab_worker.measure_request` -> :func:`suite.measure.measure_case`). The
  re-measurements go round-robin over the flagged cases (all cases once, then again), so the N
  windows of one case are spread over the step rather than back to back.
* **decision, majority of independent windows**: each re-measurement is judged on its own
  against the baseline by the same rule and threshold (:func:`suite.gate.compare.judge_case`);
  the regression is **confirmed** when more than N/2 of them are regressions, else the case is
  **cleared** (listed, not failing). Samples are not pooled: the samples of one window share its
  state (that is what made the false alarm), so the window, not the sample, is the independent
  unit; and the first pass is a trigger, not a vote (it was selected for being slow). A
  re-measurement that fails its correctness check or errors makes the case ``failed-check`` /
  ``broken`` as in the first pass.
* **evidence**: every re-measured row is appended to the run's ``rows.jsonl`` (and rows.csv)
  with a message starting ``gate-confirm k/N`` (:data:`suite.gate.baseline.CONFIRM_MARKER`), its
  NVML series under ``nvml/<case_id>-confirmK.json``, and a ``gate_confirm`` entry in run.json;
  :meth:`Snapshot.from_run` leaves these rows out, so judging or freezing the run again sees the
  run as measured.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from suite.gate.baseline import CONFIRM_MARKER, BaselineError, Snapshot, slugify
from suite.gate.compare import GateReport, by_case, judge_case, sort_cases
from suite.gate.decision import DecisionRule
from suite.results import Row, RunDir

RECOMMENDED = 3  # odd: no ties; 2 of 3 windows must reproduce the regression
Measure = Callable[[dict[str, Any], str, int], Row]  # (case request, device, k) -> Row


class ConfirmError(BaselineError):
    """The flagged cases cannot be re-measured here (no such device, another GPU model)."""


def rebuild_requests(run_path: str | Path, case_ids: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Measurement requests for ``case_ids`` from the run's ``run.json`` (scenario contents and the
    run's ``budget_scale``/``check``), and a reason for each case that could not be rebuilt."""
    from suite.gate.ab import case_request
    from suite.scenario import ScenarioError, parse_scenario

    meta = RunDir(run_path).meta()
    settings = meta.get("settings") or {}
    budget_scale = float(settings.get("budget_scale") or 1.0)
    check = bool(settings.get("check", True))
    wanted, found, problems = set(case_ids), {}, []
    for i, record in enumerate(meta.get("scenarios") or []):
        text = record.get("contents") if isinstance(record, dict) else None
        name = record.get("name", f"#{i}") if isinstance(record, dict) else f"#{i}"
        if not text:
            problems.append(f"scenario {name}: run.json holds no contents")
            continue
        try:
            scenario = parse_scenario(text, record.get("path") or f"{run_path}/run.json")
        except ScenarioError as err:
            problems.append(f"scenario {name} no longer parses: {err.errors[0] if err.errors else err}")
            continue
        for case in scenario.cases:
            if case.id in wanted and case.id not in found:
                found[case.id] = case_request(case, budget_scale, check, str(meta.get("run_id", "")))
    why = "; ".join(problems) or "no scenario in the run's run.json holds this case"
    return found, {cid: f"cannot rebuild the case from {run_path}/run.json ({why})" for cid in case_ids if cid not in found}


def resolve_device(run_path: str | Path, current: Snapshot, requested: str | None = None) -> str:
    """The device to re-measure on: ``requested`` or the run's own; the same GPU model as the run."""
    import torch

    meta = RunDir(run_path).meta()
    device = requested or (meta.get("settings") or {}).get("device") or (meta.get("environment") or {}).get("device")
    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfirmError(f"the run was measured on {device}, but no CUDA device is visible to the gate; run the gate "
                               "on the runner that measured the run (or without --confirm)")
        here = torch.cuda.get_device_name(torch.device(device))
        if slugify(here) != slugify(current.gpu_model):
            raise ConfirmError(f"the run was measured on {current.gpu_model!r}, this process sees {here!r}; "
                               "re-measurements must come from the same GPU model")
    return device


def mark(row: Row, k: int, n: int) -> Row:
    """Tag a re-measured row (:data:`CONFIRM_MARKER`) so it is told apart from the run's own rows."""
    note = f"{CONFIRM_MARKER} {k}/{n}: re-measured by `cgspn-bench gate --confirm {n}` after a first-pass regression"
    row.message = f"{note}; {row.message}" if row.message else note
    return row


def _default_measure(run_path: Path) -> Measure:
    from suite.gate.ab_worker import measure_request

    def measure(request: dict[str, Any], device: str, k: int) -> Row:
        return measure_request(request, device, run_dir=run_path, tag=f"-confirm{k}")

    return measure


def _fmt(values: list[float | None], spec: str = ".3f") -> str:
    return ", ".join("-" if v is None or v != v else format(v, spec) for v in values)


def settle(case, base: Row, rows: list[Row], n: int, rule: DecisionRule) -> None:
    """Replace a flagged case's verdict by the majority of its re-measurements' verdicts."""
    judged = [judge_case(base, row, case.threshold, rule, tuple(case.eager_thresholds)) for row in rows]
    verdicts = [j.verdict for j in judged]
    regressions = verdicts.count("regression")
    needed = n // 2 + 1
    case.confirmation = {
        "runs": len(rows), "requested": n, "regressions": regressions, "needed": needed, "verdicts": verdicts,
        "ratios": [j.ratio for j in judged], "medians_ms": [r.median_ms for r in rows],
        "graph_medians_ms": [r.graph_median_ms for r in rows], "p_values": [j.p_value for j in judged],
        "reasons": [j.reason for j in judged], "timestamps": [r.timestamp for r in rows],
    }
    tally = f"regression in {regressions}/{n} re-measurements (ratios {_fmt(case.confirmation['ratios'])})"
    first = f"first pass: {case.first_pass['reason']}"
    for bad in ("failed-check", "broken"):
        if bad in verdicts:
            hit = judged[verdicts.index(bad)]
            case.verdict, case.reason = bad, f"{bad} on re-measurement {verdicts.index(bad) + 1}: {hit.reason}; {first}"
            return
    if regressions >= needed:
        case.verdict, case.reason = "regression", f"confirmed: {tally}; {first}"
    else:
        others = ", ".join(f"{v} x{verdicts.count(v)}" for v in dict.fromkeys(verdicts) if v != "regression")
        case.verdict, case.reason = "cleared", f"cleared: {tally}; the others {others}; {first}"


def confirm_regressions(report: GateReport, baseline: Snapshot, current: Snapshot, run_path: str | Path, n: int, *,
                        rule: DecisionRule, device: str | None = None, measure: Measure | None = None,
                        console: Console | None = None) -> GateReport:
    """Re-measure every first-pass ``regression`` of ``report`` ``n`` times and settle it by majority
    (module docstring); appends the rows to ``run_path`` and updates ``report`` in place."""
    if n < 1:
        raise ConfirmError(f"--confirm: expected an integer >= 1 re-measurements, got {n}")
    console = console or Console(stderr=True)
    run_path = Path(run_path)
    run = RunDir(run_path)
    flagged = [c for c in report.cases if c.verdict == "regression"]
    report.confirm = {"n": n, "rule": f"a regression stands when more than {n}/2 of its {n} re-measurements are "
                      "regressions on their own (same rule and threshold)", "flagged": [c.case_id for c in flagged],
                      "confirmed": [], "cleared": [], "rows_appended_to": str(run.rows_path), "device": None}
    if not flagged:
        return report
    for case in flagged:
        case.first_pass = {"verdict": case.verdict, "reason": case.reason, "ratio": case.ratio, "ci": case.ci,
                           "p_value": case.p_value, "current": case.current}
    try:
        device = resolve_device(run_path, current, device)
    except ConfirmError as err:
        report.warnings.append(f"confirmation not run, the first-pass verdicts stand: {err}")
        return report
    report.confirm["device"] = device
    requests, unbuilt = rebuild_requests(run_path, [c.case_id for c in flagged])
    for case in flagged:
        if case.case_id in unbuilt:
            case.reason += f" [not confirmed: {unbuilt[case.case_id]}; the first-pass verdict stands]"
    todo = [c for c in flagged if c.case_id in requests]
    measure = measure or _default_measure(run_path)
    base_rows = by_case(baseline.rows)
    rows: dict[str, list[Row]] = defaultdict(list)
    started = time.time()
    console.print(f"confirm: re-measuring {len(todo)} first-pass regression(s) {n} time(s) each on {device}, round-robin")
    for k in range(1, n + 1):
        for case in todo:
            row = mark(measure(requests[case.case_id], device, k), k, n)
            run.append(row)  # fsynced at once: a killed gate keeps what it measured
            rows[case.case_id].append(row)
            median = f"{row.median_ms:.4g} ms" if row.median_ms is not None else row.status
            console.print(f"  confirm {k}/{n} {escape(case.label)}: {median} (baseline {base_rows[case.case_id].median_ms:.4g}, "
                          f"first pass {(case.current or {}).get('median_ms') or float('nan'):.4g})")
    for case in todo:
        settle(case, base_rows[case.case_id], rows[case.case_id], n, rule)
    run.write_csv()
    elapsed = time.time() - started
    report.confirm.update(elapsed_s=round(elapsed, 2),
                          confirmed=[c.case_id for c in todo if c.verdict != "cleared"],
                          cleared=[c.case_id for c in todo if c.verdict == "cleared"],
                          not_rebuilt=sorted(unbuilt))
    meta = run.meta()
    meta["gate_confirm"] = [*meta.get("gate_confirm", []), {
        "time": started, "elapsed_s": round(elapsed, 2), "n": n, "device": device, "baseline": report.baseline.get("source"),
        "marker": CONFIRM_MARKER, "cases": {c.case_id: c.verdict for c in todo}}]
    run.write_meta(meta)
    sort_cases(report.cases)
    return report
