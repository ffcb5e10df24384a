"""The paper's claims, evaluated on one run: the claims table of the report (and of any gate).

A scenario lists claims (``claims:`` in its YAML)::

    - id: fig5-sublayer-2k
      text: "C-GSPN sublayer vs FlashAttention at 2K"
      paper: 1000.0
      kind: ratio            # ratio | time | share
      numerator:   {implementation: attention-flash, level: sublayer, params: {resolution: 2058}}
      denominator: {implementation: cgspn-scan, level: sublayer, params: {resolution: 2058}}
      target: 8.0            # optional

Our number ("ours"):
- ``ratio``: median(numerator) / median(denominator) -- a speedup or slowdown factor;
- ``time``: median(numerator) in ms;
- ``share``: 100 * median(numerator) / median(denominator), in percent (e.g. MLP half / block).

Selector rule: a row matches when its implementation and level equal the selector's, it is
``ok`` (a failed check or an OOM is never a number), ``mode``/``dtype`` equal when the selector
gives them, and its params contain the selector's params. Grid keys (resolution, grid, grid_h,
grid_w, patch) are compared through the derived token grid, so ``resolution: 2058`` matches
``grid: 147``; any other key the row does not carry is ignored, because a case only records the
Params fields its implementation reads (an attention case has no ``compression``). When several
rows match (both modes, two dtypes, the same case in two scenarios), the lowest median is used and
the claim says how many matched.

Verdict rule (``factor = ours / paper``; the paper measured on A100, we measure on our card):
- ratio and share claims say "at least this much": ``holds`` when factor >= 0.9 (ours reaches
  90% of the paper's number or more), ``weaker`` when 0.5 <= factor < 0.9, ``disagrees`` when
  factor < 0.5 or when the paper's ratio is > 1 and ours is < 1 (the direction reversed);
- time claims are absolute latencies on another card: ``holds`` within a factor of 2 either way,
  else ``disagrees`` (note says faster/slower) -- a baseline far faster than the paper's also
  changes the paper's speedups, so it is flagged too;
- ``measured`` when the paper gives no number for it (our own figure, e.g. a split of a speedup):
  nothing to agree or disagree with;
- ``not measured`` when a selector matches no ok row (the note lists what matched instead).
``weaker`` and ``disagrees`` are the report's disagreement marks.
"""

from __future__ import annotations

from typing import Any

from suite.report.load import GRID_KEYS, grid_of
from suite.results import Row

KINDS = ("ratio", "time", "share")
HOLDS_FRACTION = 0.9  # ratio/share: ours >= 90% of the paper's number counts as reproduced
DISAGREE_FACTOR = 2.0  # ratio/share below paper/2, or time outside [paper/2, 2*paper], disagrees
VERDICTS = ("holds", "weaker", "disagrees", "measured", "not measured")
DISAGREEMENT = ("weaker", "disagrees")


class ClaimError(ValueError):
    """A malformed claim; the message names the scenario, the claim and the field."""


def selector_matches(row: Row, selector: dict) -> bool:
    """Whether ``row`` is one of the rows ``selector`` names (status is not checked here)."""
    if row.implementation != selector.get("implementation") or row.level != selector.get("level"):
        return False
    for key in ("mode", "dtype"):
        if selector.get(key) is not None and getattr(row, key) != selector[key]:
            return False
    wanted = selector.get("params") or {}
    if any(k in GRID_KEYS for k in wanted):
        grid_keys = {k: v for k, v in wanted.items() if k in GRID_KEYS}
        if "patch" in row.params:
            grid_keys.setdefault("patch", row.params["patch"])
        if grid_of(grid_keys) != grid_of(row.params):
            return False
    for key, value in wanted.items():
        if key not in GRID_KEYS and key in row.params and row.params[key] != value:
            return False
    return True


def select(rows: list[Row], selector: dict) -> tuple[Row | None, str]:
    """The fastest ok row matching ``selector`` and a note on how it was chosen."""
    matched = [r for r in rows if selector_matches(r, selector)]
    ok = [r for r in matched if r.status == "ok" and r.median_ms is not None]
    if not ok:
        if matched:
            statuses = ", ".join(sorted({r.status for r in matched}))
            return None, f"{describe(selector)}: no ok row ({len(matched)} matched: {statuses})"
        return None, f"{describe(selector)}: no row"
    best = min(ok, key=lambda r: r.median_ms)
    if len(ok) == 1:
        return best, ""
    return best, f"{describe(selector)}: {len(ok)} ok rows matched, lowest median taken ({best.mode}, {best.dtype})"


def describe(selector: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in (selector.get("params") or {}).items())
    extra = "".join(f", {selector[k]}" for k in ("mode", "dtype") if selector.get(k))
    return f"{selector.get('implementation')} {selector.get('level')}" + (f" ({params}{extra})" if params or extra else "")


def verdict(kind: str, ours: float | None, paper: float | None) -> tuple[str, str]:
    """(verdict, note) by the module's rule; see the module docstring."""
    if ours is None:
        return "not measured", ""
    if paper is None or paper == 0:
        return "measured", "no paper number to compare"
    factor = ours / paper
    if kind == "time":
        if 1 / DISAGREE_FACTOR <= factor <= DISAGREE_FACTOR:
            return "holds", ""
        return "disagrees", f"ours {'faster' if factor < 1 else 'slower'} than the paper by {max(factor, 1 / factor):.1f}x"
    if kind == "ratio" and paper > 1 and ours < 1:
        return "disagrees", "direction reversed"
    if factor >= HOLDS_FRACTION:
        return "holds", ""
    if factor >= 1 / DISAGREE_FACTOR:
        return "weaker", f"ours is {100 * factor:.0f}% of the paper's number"
    return "disagrees", f"ours is {100 * factor:.0f}% of the paper's number"


def target_met(kind: str, ours: float | None, target: float | None) -> bool | None:
    if target is None or ours is None:
        return None
    return ours <= target if kind == "time" else ours >= target


def check_claim(claim: dict, scenario: str) -> None:
    where = f"scenario {scenario!r} claim {claim.get('id', '?')!r}"
    for key in ("id", "kind", "numerator"):
        if key not in claim:
            raise ClaimError(f"{where}: missing field {key!r}")
    if claim["kind"] not in KINDS:
        raise ClaimError(f"{where}.kind: {claim['kind']!r} is not one of {', '.join(KINDS)}")
    if claim["kind"] in ("ratio", "share") and "denominator" not in claim:
        raise ClaimError(f"{where}: kind {claim['kind']!r} needs a denominator")


def evaluate_claim(claim: dict, rows: list[Row], scenario: str = "", card: str = "") -> dict[str, Any]:
    """One claims-table line: the claim, the paper's number, ours, ours/paper, verdict, target."""
    check_claim(claim, scenario)
    kind = claim["kind"]
    num, num_note = select(rows, claim["numerator"])
    den, den_note = select(rows, claim["denominator"]) if kind != "time" else (None, "")
    ours = None
    if kind == "time" and num is not None:
        ours = num.median_ms
    elif num is not None and den is not None and den.median_ms:
        ours = num.median_ms / den.median_ms * (100.0 if kind == "share" else 1.0)
    paper = claim.get("paper")
    result, why = verdict(kind, ours, paper)
    notes = [n for n in (num_note, den_note, why) if n]
    devices = sorted({r.device for r in (num, den) if r is not None and r.device})
    return {
        "scenario": scenario,
        "id": claim["id"],
        "text": claim.get("text", ""),
        "kind": kind,
        "unit": {"ratio": "x", "time": "ms", "share": "%"}[kind],
        "paper": paper,
        "ours": ours,
        "ours_over_paper": ours / paper if ours is not None and paper else None,
        "verdict": result,
        "disagrees": result in DISAGREEMENT,
        "target": claim.get("target"),
        "target_met": target_met(kind, ours, claim.get("target")),
        "numerator_ms": num.median_ms if num else None,
        "denominator_ms": den.median_ms if den else None,
        "numerator_case": num.case_id if num else None,
        "denominator_case": den.case_id if den else None,
        "card": ", ".join(devices) or card,
        "note": "; ".join(notes),
    }


def evaluate_claims(rows: list[Row], scenarios: list[dict], card: str = "") -> list[dict[str, Any]]:
    """Every claim of every scenario, evaluated against ``rows`` (see the module docstring).

    ``card`` labels claims whose rows carry no device name (e.g. CPU runs).
    """
    out = []
    for scenario in scenarios:
        for claim in scenario.get("claims") or []:
            out.append(evaluate_claim(claim, rows, scenario.get("name", ""), card))
    return out
