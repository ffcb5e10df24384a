"""The paper's claims, evaluated on one run: the claims table of the report.

A scenario lists claims (``claims:`` in its YAML)::

    - id: fig5-sublayer-2k
      text: "C-GSPN sublayer vs FlashAttention at 2K"
      paper: 1000.0
      kind: ratio            # ratio | time | share
      numerator:   {implementation: attention-flash, level: sublayer, params: {resolution: 2058}}
      denominator: {implementation: cgspn-scan, level: sublayer, params: {resolution: 2058}}
      target: 8.0            # optional
      timing: device         # optional: device (default) | eager
      paper_card: A100       # optional: the card the paper measured on (default A100)

Our number ("ours"):
- ``ratio``: time(numerator) / time(denominator) -- a speedup or slowdown factor;
- ``time``: time(numerator) in ms;
- ``share``: 100 * time(numerator) / time(denominator), in percent (e.g. MLP half / block).

Which time: ``timing: device`` (the default) takes the device time, the median of the CUDA-graph
replays where the case was captured (suite.results.Row.device_ms), else the eager median; the
eager number is always computed beside it (``ours_eager``), so host overhead is visible.
``timing: eager`` takes the eager median (what a PyTorch user's call costs).

Each selector must resolve to exactly one case **of the claim's own scenario** (a case measured
once for two scenarios counts for both): ``suite.scenario`` refuses a claim whose selector names
no case or several at validation time; here, a selector that matches several measured cases (a
run of an older scenario file) gives the verdict ``ambiguous`` with the candidates in the note.
See :mod:`suite.selectors` for the matching rule.

Verdict rule, following the claim's direction (the paper measured on its card, we on ours):
- ``time`` ("under 150 ms", "500 ms per layer"): ``holds`` when ours is at or below the paper's
  number, ``weaker`` when above;
- ``ratio`` ("Nx faster"): ``holds`` at or above the paper's number, ``weaker`` below it but in the
  same direction, ``disagrees`` only when ours contradicts the direction (a slowdown where the
  paper reports a speedup, or the reverse);
- ``share`` ("over 52%"): ``holds`` at or above, ``weaker`` below;
- ``measured`` when the paper gives no number (our own figure); ``not measured`` when a selector
  matches no ok row; ``ambiguous`` as above.
"""

from __future__ import annotations

from typing import Any

from suite.results import Row
from suite.scenario import claim_problems
from suite.selectors import describe, matches

PAPER_CARD = "A100"
VERDICTS = ("holds", "weaker", "disagrees", "measured", "not measured", "ambiguous")
DISAGREEMENT = ("weaker", "disagrees", "ambiguous")
RULE = ("time claims hold when ours is at or below the paper's time, else weaker; ratio and share claims hold at or "
        "above the paper's number, are weaker below it, and disagree only when the ratio's direction is reversed "
        "(slower instead of faster). 'ours' is device time (CUDA-graph replays) unless the claim says eager; "
        "ours_eager is the eager time beside it.")


class ClaimError(ValueError):
    """A malformed claim; the message names the scenario, the claim and the field."""


def row_matches(row: Row, selector: dict) -> bool:
    return matches(selector, row.implementation, row.level, row.mode, row.dtype, row.params)


def select(rows: list[Row], selector: dict) -> tuple[Row | None, str, str]:
    """(the one ok row of the one case ``selector`` names, note, problem).

    ``problem`` is ``ambiguous`` when several cases match, ``missing`` when none has an ok row."""
    matched = [r for r in rows if row_matches(r, selector)]
    cases = list(dict.fromkeys(r.case_id for r in matched))
    if len(cases) > 1:
        labels = "; ".join(_case_label(next(r for r in matched if r.case_id == c)) for c in cases[:6])
        more = f" and {len(cases) - 6} more" if len(cases) > 6 else ""
        return None, f"{describe(selector)} matches {len(cases)} cases: {labels}{more}", "ambiguous"
    ok = [r for r in matched if r.status == "ok" and r.median_ms is not None]
    if not ok:
        if matched:
            statuses = ", ".join(sorted({r.status for r in matched}))
            return None, f"{describe(selector)}: no ok row ({len(matched)} matched: {statuses})", "missing"
        return None, f"{describe(selector)}: no row", "missing"
    return ok[0], "", ""


def _case_label(row: Row) -> str:
    params = ",".join(f"{k}={v}" for k, v in sorted(row.params.items()))
    return f"{row.implementation} {row.level} {row.mode} {row.dtype} [{params}] ({row.case_id})"


def verdict(kind: str, ours: float | None, paper: float | None) -> tuple[str, str]:
    """(verdict, note) by the module's rule."""
    if ours is None:
        return "not measured", ""
    if paper is None or paper == 0:
        return "measured", "no paper number to compare"
    factor = ours / paper
    if kind == "time":
        if ours <= paper:
            return "holds", "" if factor > 0.5 else f"ours is {1 / factor:.1f}x faster than the paper's time"
        return "weaker", f"ours is {factor:.2f}x the paper's time"
    if kind == "ratio" and (paper > 1) != (ours > 1) and paper != 1:
        return "disagrees", f"direction reversed: paper {paper:.3g}x, ours {ours:.3g}x"
    if (ours >= paper) if (kind != "ratio" or paper >= 1) else (ours <= paper):
        return "holds", ""
    return "weaker", f"ours is {100 * factor:.0f}% of the paper's number"


def target_met(kind: str, ours: float | None, target: float | None) -> bool | None:
    if target is None or ours is None:
        return None
    return ours <= target if kind == "time" else ours >= target


def check_claim(claim: dict, scenario: str) -> None:
    """The fields evaluation needs (``suite.scenario`` validates the rest when the file is loaded)."""
    where = f"scenario {scenario!r} claim {claim.get('id', '?')!r}"
    for key in ("id", "kind", "numerator"):
        if key not in claim:
            raise ClaimError(f"{where}: missing field {key!r}")
    for field_suffix, message in claim_problems(claim)[:1]:  # the scenario validator's own check
        raise ClaimError(f"{where}{field_suffix}: {message}")


def _ours(kind: str, num: Row | None, den: Row | None, timing: str) -> float | None:
    if num is None or (kind != "time" and den is None):
        return None
    top = num.time_ms(timing)
    if kind == "time":
        return top
    bottom = den.time_ms(timing)
    if top is None or not bottom:
        return None
    return top / bottom * (100.0 if kind == "share" else 1.0)


def evaluate_claim(claim: dict, rows: list[Row], scenario: str = "", card: str = "") -> dict[str, Any]:
    """One claims-table line: the claim, the paper's number, ours (device and eager), verdict, target."""
    check_claim(claim, scenario)
    kind, timing = claim["kind"], claim.get("timing", "device")
    num, num_note, num_problem = select(rows, claim["numerator"])
    den, den_note, den_problem = select(rows, claim["denominator"]) if kind != "time" else (None, "", "")
    ours = _ours(kind, num, den, timing)
    ours_eager = _ours(kind, num, den, "eager")
    ours_device = _ours(kind, num, den, "device")
    paper = claim.get("paper")
    if "ambiguous" in (num_problem, den_problem):
        result, why = "ambiguous", "the selector must name exactly one case of the scenario"
    else:
        result, why = verdict(kind, ours, paper)
    used = [r for r in (num, den) if r is not None]
    captured = [r.graph_timed for r in used]
    if timing == "eager" or not used:
        timer = "eager" if used else ""
    else:
        timer = "graph" if all(captured) else "eager (no graph replay)" if not any(captured) else "graph and eager (mixed)"
    notes = [n for n in (num_note, den_note, why) if n]
    devices = sorted({r.device for r in used if r.device})
    ours_card = ", ".join(devices) or card
    paper_card = claim.get("paper_card", PAPER_CARD)
    return {
        "scenario": scenario,
        "id": claim["id"],
        "text": claim.get("text", ""),
        "kind": kind,
        "unit": {"ratio": "x", "time": "ms", "share": "%"}[kind],
        "timer": timer,
        "paper": paper,
        "ours": ours,
        "ours_device": ours_device,
        "ours_eager": ours_eager,
        "ours_over_paper": ours / paper if ours is not None and paper else None,
        "verdict": result,
        "disagrees": result in DISAGREEMENT,
        "target": claim.get("target"),
        "target_met": target_met(kind, ours, claim.get("target")),
        "numerator_ms": num.time_ms(timing) if num else None,
        "denominator_ms": den.time_ms(timing) if den else None,
        "numerator_case": num.case_id if num else None,
        "denominator_case": den.case_id if den else None,
        "card": f"ours: {ours_card}; paper: {paper_card}" if ours_card and ours_card != paper_card else ours_card,
        "note": "; ".join(notes),
    }


def scenario_rows(rows: list[Row], name: str, case_ids: dict[str, set[str]] | None) -> list[Row]:
    """The rows of one scenario: its expanded cases' rows (a case shared by two scenarios belongs to
    both), else, for a stored scenario that no longer expands, the rows it wrote."""
    if case_ids is not None and name in case_ids:
        return [r for r in rows if r.case_id in case_ids[name]]
    return [r for r in rows if r.scenario == name]


def evaluate_claims(rows: list[Row], scenarios: list[dict], card: str = "",
                    case_ids: dict[str, set[str]] | None = None) -> list[dict[str, Any]]:
    """Every claim of every scenario, evaluated against that scenario's rows (module docstring).

    ``case_ids`` maps scenario names to their case ids (suite.report.expected); ``card`` labels
    claims whose rows carry no device name (e.g. CPU runs)."""
    out = []
    for scenario in scenarios:
        name = scenario.get("name", "")
        own = scenario_rows(rows, name, case_ids)
        for claim in scenario.get("claims") or []:
            out.append(evaluate_claim(claim, own, name, card))
    return out
