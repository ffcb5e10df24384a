"""Which cases a run should have: its scenarios (as stored in run.json) expanded by suite.scenario.

A partial run (interrupted, resumed later, or still running) is rendered with what it has; the
cases its scenarios define that have no row yet are listed as missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from suite.report.load import Run
from suite.report.tables import case_columns
from suite.results import Row
from suite.scenario import ScenarioError, parse_scenario


@dataclass
class Expected:
    """``missing``: one dict per case without a row (case columns, ``case_id``, ``note``); a stored
    scenario that can no longer be expanded (e.g. an implementation since renamed) gives one line
    with a ``note`` saying why. ``counts``: cases each scenario defines."""

    missing: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    # case ids per scenario: a case shared by two scenarios is measured once (its row names the
    # first scenario) but belongs in both figures
    case_ids: dict[str, set[str]] = field(default_factory=dict)

    @property
    def missing_count(self) -> int:
        return sum(1 for m in self.missing if m.get("case_id"))


def expected_cases(run: Run) -> Expected:
    """Expand the run's stored scenarios and compare with its rows (see :class:`Expected`)."""
    have = {r.case_id for r in run.rows}
    device = str(run.environment.get("device") or run.meta.get("device") or "").split(":")[0]
    result = Expected()
    out = result.missing
    for record in run.meta.get("scenarios") or []:
        if not isinstance(record, dict) or not isinstance(record.get("contents"), str):
            continue
        name = record.get("name", "")
        try:
            scenario = parse_scenario(record["contents"], record.get("path") or name)
        except ScenarioError as exc:
            out.append({"scenario": name, "note": f"cannot expand the stored scenario: {'; '.join(exc.errors)}"})
            continue
        if device and not scenario.runs_on(device):
            continue  # the runner skips a cuda-only scenario on cpu: not missing, not run
        result.counts[name] = len(scenario.cases)
        result.case_ids[name] = {case.id for case in scenario.cases}
        for case in scenario.cases:
            if case.id in have:
                continue
            impl = case.implementation
            row = Row(case_id=case.id, implementation=impl.name, family=impl.family, level=impl.level, mode=case.mode,
                      dtype=case.dtype, params=case.values, scenario=name)
            out.append({**case_columns(row), "case_id": case.id, "note": ""})
    return result
