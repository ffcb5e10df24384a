"""Compare two snapshots case by case and decide whether the gate passes.

Rows are matched by ``case_id`` (same implementation, level, mode, dtype and params). The
timing verdict is taken on the **device time**: CUDA-graph replays when both sides have them
(host-independent), else the eager samples. Where graph replays exist, the eager time (what a
user's call costs) is judged as well, with the thresholds file's ``eager`` limit for device-bound
cases and ``host_bound`` for cases host-bound in the baseline (``off``: reported in ``eager``, never
failing). Each
case gets one verdict:

==============  ==============================================================  =========
verdict         meaning                                                         fails?
==============  ==============================================================  =========
regression      slower beyond threshold, noise and significance (decision.py)   yes
failed-check    the current row failed its correctness check                    yes
broken          the current row errored (or ran out of memory where the         yes
                baseline was ok)
inconclusive    slower than the threshold but within the noise                  no
cleared         a first-pass regression that ``--confirm N`` re-measured and    no
                that did not persist in a majority of the N (confirm.py)
improvement     faster beyond threshold, noise and significance                 no
unchanged       within the threshold                                            no
not-run         ok in the baseline, unsupported now (e.g. a missing library)    no
skipped         not timed on either side (same oom/unsupported status; a new    no
                case that is unsupported or out of memory)
missing         in the baseline, absent from the current run                    --fail-on-missing
new             absent from (or not measured in) the baseline                   no
==============  ==============================================================  =========
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite.gate.baseline import Snapshot, slugify
from suite.gate.decision import DecisionRule, compare_samples
from suite.gate.slowdown import was_slowed
from suite.gate.thresholds import Thresholds
from suite.measure import Timing
from suite.results import Row

VERDICTS = ("regression", "failed-check", "broken", "inconclusive", "cleared", "not-run", "missing", "new", "improvement",
            "unchanged", "skipped")
FAILING = frozenset({"regression", "failed-check", "broken"})


class GpuMismatch(RuntimeError):
    """The baseline was measured on another GPU model."""


def check_same_gpu(baseline: Snapshot, current: Snapshot, allow_other_gpu: bool = False) -> str | None:
    """Raise :class:`GpuMismatch` when the models differ (unless allowed); return a warning then."""
    if slugify(baseline.gpu_model) == slugify(current.gpu_model):
        return None
    text = (f"the baseline {baseline.source} was measured on {baseline.gpu_model!r}, the current run {current.source} "
            f"on {current.gpu_model!r}")
    if not allow_other_gpu:
        raise GpuMismatch(f"refusing to compare: {text}; a ratio across GPU models measures the cards, not the code. "
                          f"Use the baseline of this card (cgspn-bench baseline update --from {current.source}), "
                          "A/B mode (cgspn-bench gate --ab REF), or pass --allow-other-gpu")
    return f"comparing across GPU models ({text}), as --allow-other-gpu asked"


def failed_check(row: Row) -> bool:
    return row.status == "failed-check" or (row.correctness or {}).get("passed") is False


def merge_rows(rows: list[Row]) -> Row:
    """One row per case: several ``ok`` rows of a case (rounds, GPUs of one model, a resumed run)
    are pooled into one sample set; a correctness failure in any of them wins."""
    if len(rows) == 1:
        return rows[0]
    bad = [r for r in rows if failed_check(r)] or [r for r in rows if r.status != "ok"]
    ok = [r for r in rows if r.status == "ok"]
    if bad and (failed_check(bad[0]) or not ok):
        return bad[0]
    samples = [s for r in ok for s in r.samples_ms]
    if not samples:
        return ok[0]
    t = Timing.from_samples(samples)  # the measurement core's statistics, so pooled rows read like measured ones
    pooled = dataclasses.replace(
        ok[0], samples_ms=t.samples_ms, median_ms=t.median_ms, iqr_ms=t.iqr_ms, min_ms=t.min_ms, mean_ms=t.mean_ms,
        n=t.n, outliers=t.outliers, message="; ".join(filter(None, [ok[0].message, f"pooled from {len(ok)} rows"])),
    )
    graph = [s for r in ok for s in r.graph_samples_ms]
    if graph and all(r.graph_samples_ms for r in ok):
        g = Timing.from_samples(graph)
        pooled.graph_samples_ms, pooled.graph_median_ms, pooled.graph_iqr_ms = g.samples_ms, g.median_ms, g.iqr_ms
        pooled.graph_min_ms, pooled.graph_n = g.min_ms, g.n
        pooled.host_overhead_ms = t.median_ms - g.median_ms
        pooled.host_bound = any(r.host_bound for r in ok)
    else:
        pooled.graph_samples_ms, pooled.graph_median_ms, pooled.graph_n = [], None, 0
    return pooled


def by_case(rows: list[Row]) -> dict[str, Row]:
    groups: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        groups[r.case_id].append(r)
    return {cid: merge_rows(group) for cid, group in groups.items()}


def _summary(row: Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"status": row.status, "median_ms": row.median_ms, "iqr_ms": row.iqr_ms, "min_ms": row.min_ms, "n": row.n,
            "graph_median_ms": row.graph_median_ms, "graph_iqr_ms": row.graph_iqr_ms, "graph_n": row.graph_n,
            "host_bound": row.host_bound, "graph_message": row.graph_message,
            "backend_detail": row.backend_detail, "message": row.message}


@dataclass
class CaseResult:
    """The verdict for one case, with what it was based on."""

    case_id: str
    verdict: str
    implementation: str
    level: str
    mode: str
    dtype: str
    params: dict[str, Any]
    threshold: float | None
    baseline: dict[str, Any] | None
    current: dict[str, Any] | None
    reason: str = ""
    ratio: float | None = None
    ci: tuple[float, float] | None = None
    p_value: float | None = None  # one-sided Mann-Whitney U in the direction of the change
    delta_ms: float | None = None
    noise_ms: float | None = None
    timer: str = ""  # what the verdict judged: "graph" (CUDA-graph replays, device time) or "eager"
    host_bound: bool | None = None  # eager beyond the graph time in the baseline (suite.measure.HOST_BOUND_MARGIN)
    eager_thresholds: tuple[float | None, float | None] = (None, None)  # (device-bound, host-bound); None: off
    eager: dict[str, Any] | None = None  # the eager time's comparison where graph replays were judged
    # set by the confirmation step (suite.gate.confirm) on the cases it re-measured: the first
    # pass's verdict and reason, and the re-measurements' verdicts, ratios and medians
    first_pass: dict[str, Any] | None = None
    confirmation: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.implementation} {self.level} {self.mode} {self.dtype} [{params}]"


@dataclass
class GateReport:
    """All verdicts plus what was compared; ``passed`` is the gate's answer."""

    cases: list[CaseResult]
    rule: DecisionRule
    baseline: dict[str, Any]
    current: dict[str, Any]
    fail_on_missing: bool = False
    warnings: list[str] = field(default_factory=list)
    confirm: dict[str, Any] | None = None  # what the confirmation step did (suite.gate.confirm), if it ran

    @property
    def failures(self) -> list[CaseResult]:
        failing = FAILING | ({"missing"} if self.fail_on_missing else set())
        return [c for c in self.cases if c.verdict in failing]

    @property
    def passed(self) -> bool:
        return not self.failures

    def counts(self) -> dict[str, int]:
        return {v: sum(c.verdict == v for c in self.cases) for v in VERDICTS}

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "counts": self.counts(),
            "failures": [c.case_id for c in self.failures],
            "rule": self.rule.to_dict(),
            "baseline": self.baseline,
            "current": self.current,
            "warnings": self.warnings,
            "confirm": self.confirm,
            "first_pass_failures": [c.case_id for c in self.cases
                                    if (c.first_pass or {}).get("verdict", c.verdict) in FAILING],
            "cases": [dataclasses.asdict(c) | {"label": c.label} for c in self.cases],
        }

    def write_json(self, path: str | Path) -> Path:
        """Strict JSON: NaN/inf (no statistic, e.g. too few samples) become null."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_finite(self.to_dict()), indent=1, allow_nan=False) + "\n")
        return path


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _describe(snapshot: Snapshot) -> dict[str, Any]:
    return {"source": snapshot.source, "gpu_model": snapshot.gpu_model, "commit": snapshot.commit,
            "created": snapshot.created or None, "rows": len(snapshot.rows)}


def _not_ok_verdict(base: Row | None, cur: Row) -> tuple[str, str]:
    """A current row that was not timed: an error (or an OOM the baseline did not have) is broken;
    unsupported where the baseline ran is not-run; the rest is skipped."""
    message = cur.message.splitlines()[0] if cur.message else ""
    if base is not None and base.status == "ok":
        if cur.status == "unsupported":
            return "not-run", f"unsupported here now: {message}"
        return "broken", f"{cur.status} now, ok in the baseline: {message}"
    if cur.status == "error" and (base is None or base.status != "error"):
        return "broken", f"error{' (baseline: ' + base.status + ')' if base else ' (new case)'}: {message}"
    if base is not None and base.status == cur.status:
        return "skipped", f"{cur.status} on both sides"
    return "skipped", f"{cur.status}{' (baseline: ' + base.status + ')' if base else ' (new case)'}: {message}"


def _timed_basis(base: Row, cur: Row) -> str:
    """``graph`` when both sides have graph-replay samples, else ``eager``."""
    return "graph" if base.graph_timed and cur.graph_timed else "eager"


def judge_case(base: Row | None, cur: Row | None, threshold: float, rule: DecisionRule,
               eager_thresholds: tuple[float | None, float | None] = (None, None)) -> CaseResult:
    """The verdict for one case_id (either side may be absent); see the module docstring.

    ``threshold`` limits the device time; ``eager_thresholds`` = (device-bound, host-bound) limits
    of the eager time (None: reported only)."""
    ref = cur or base
    assert ref is not None
    result = CaseResult(case_id=ref.case_id, verdict="unchanged", implementation=ref.implementation, level=ref.level,
                        mode=ref.mode, dtype=ref.dtype, params=dict(ref.params), threshold=threshold,
                        baseline=_summary(base), current=_summary(cur), eager_thresholds=eager_thresholds)
    if cur is None:
        result.verdict, result.reason = "missing", "in the baseline, not in the current run"
        return result
    if failed_check(cur):
        corr = cur.correctness or {}
        detail = ", ".join(f"{k}={corr[k]}" for k in ("rel_rms", "max_rel_err", "tolerance", "grad_worst", "grad_rel_rms",
                                                       "grad_tolerance") if k in corr)
        result.verdict, result.reason = "failed-check", f"correctness check failed ({detail or cur.message})"
        return result
    if cur.status != "ok":
        result.verdict, result.reason = _not_ok_verdict(base, cur)
        return result
    if base is None or base.status != "ok":
        result.verdict = "new"
        result.reason = "not in the baseline" if base is None else f"baseline status {base.status}: {base.message}"
        return result
    result.timer = _timed_basis(base, cur)
    result.host_bound = bool(base.host_bound)  # what the case is where the baseline was measured
    if result.timer == "graph":
        cmp = compare_samples(base.device_samples_ms, cur.device_samples_ms, rule, threshold)
    else:
        cmp = compare_samples(base.samples_ms, cur.samples_ms, rule, threshold)
    result.verdict, result.reason = cmp.verdict, f"{result.timer}: {cmp.reason}"
    result.ratio, result.delta_ms, result.noise_ms = cmp.ratio, cmp.delta_ms, cmp.noise_ms
    result.ci = (cmp.ci_low, cmp.ci_high)
    result.p_value = cmp.p_faster if cmp.ratio < 1 else cmp.p_slower
    if result.timer == "graph" and base.eager_ms is not None and cur.eager_ms is not None:
        _judge_eager(result, base, cur, rule)
    if was_slowed(cur.backend_detail, cur.message):
        result.reason += " [current run measured with the test slowdown on]"
    return result


def _judge_eager(result: CaseResult, base: Row, cur: Row, rule: DecisionRule) -> None:
    """Compare the eager samples too; an eager regression fails the case where its limit is not off."""
    limit = result.eager_thresholds[1] if result.host_bound else result.eager_thresholds[0]
    kind = "host-bound" if result.host_bound else "device-bound"
    cmp = compare_samples(base.samples_ms, cur.samples_ms, rule, limit if limit is not None else rule.max_slowdown)
    result.eager = {"verdict": cmp.verdict if limit is not None else "not judged", "ratio": cmp.ratio,
                    "threshold": limit, "host_bound": result.host_bound,
                    "reason": cmp.reason if limit is not None else f"{kind}, eager limit off: {100 * (cmp.ratio - 1):+.1f}%"}
    if limit is not None and cmp.verdict == "regression" and result.verdict not in FAILING:
        result.verdict = "regression"
        result.reason = f"eager ({kind}): {cmp.reason}; device ({result.reason})"


def sort_cases(cases: list[CaseResult]) -> None:
    """Failures first, then in the order of VERDICTS; within a verdict by implementation, level, mode, dtype, params."""
    order = {v: i for i, v in enumerate(VERDICTS)}
    cases.sort(key=lambda c: (order[c.verdict], c.implementation, c.level, c.mode, c.dtype, sorted(c.params.items())))


def compare_snapshots(baseline: Snapshot, current: Snapshot, *, thresholds: Thresholds | None = None,
                      rule: DecisionRule | None = None, allow_other_gpu: bool = False,
                      fail_on_missing: bool = False) -> GateReport:
    """Match rows by case_id and judge every case (see the module docstring for the verdicts)."""
    rule = rule or DecisionRule()
    thresholds = thresholds or Thresholds(default=rule.max_slowdown)
    warning = check_same_gpu(baseline, current, allow_other_gpu)
    base_rows, cur_rows = by_case(baseline.rows), by_case(current.rows)
    cases = []
    for cid in list(dict.fromkeys([*base_rows, *cur_rows])):
        base, cur = base_rows.get(cid), cur_rows.get(cid)
        row = cur or base
        eager = (thresholds.eager_for_row(row, host_bound=False), thresholds.eager_for_row(row, host_bound=True))
        cases.append(judge_case(base, cur, thresholds.for_row(row), rule, eager))
    sort_cases(cases)
    return GateReport(cases=cases, rule=rule, baseline=_describe(baseline), current=_describe(current),
                      fail_on_missing=fail_on_missing, warnings=[warning] if warning else [])
