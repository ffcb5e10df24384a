"""Claims evaluation (suite.report.claims): selectors, the three kinds, verdicts, targets."""

from __future__ import annotations

import math

import pytest

from suite.report.claims import ClaimError, evaluate_claim, evaluate_claims, selector_matches, verdict
from suite.results import Row, case_id


def make_row(implementation: str, level: str, median_ms: float | None, status: str = "ok", mode: str = "fwd",
             dtype: str = "bfloat16", family: str = "cgspn", device: str = "Test GPU", **params) -> Row:
    params = {"batch": 32, "channels": 1152, **params}
    return Row(case_id=case_id(implementation, level, mode, dtype, params), implementation=implementation, family=family,
               level=level, mode=mode, dtype=dtype, params=params, status=status, median_ms=median_ms, device=device)


FLASH = {"implementation": "attention-flash", "level": "sublayer", "params": {"resolution": 1036}}
SCAN = {"implementation": "cgspn-scan", "level": "sublayer", "params": {"resolution": 1036, "compression": 18}}


def ratio_claim(paper: float, **extra) -> dict:
    return {"id": "c1", "text": "flash / scan", "paper": paper, "kind": "ratio", "numerator": FLASH, "denominator": SCAN, **extra}


@pytest.fixture
def rows() -> list[Row]:
    return [
        make_row("attention-flash", "sublayer", 18.6, family="attention", resolution=1036, heads=16),
        make_row("attention-flash", "sublayer", 60.1, family="attention", mode="fwd+bwd", resolution=1036, heads=16),
        make_row("cgspn-scan", "sublayer", 0.31, resolution=1036, compression=18),
        make_row("cgspn-scan", "sublayer", 0.27, resolution=1036, compression=12),
        make_row("attention-math", "sublayer", None, status="oom", family="attention", resolution=1036, heads=16),
        make_row("gspn-original", "sublayer", 1.0, status="failed-check", family="gspn", resolution=1036),
    ]


def test_ratio_uses_fastest_matching_row_and_says_so(rows):
    result = evaluate_claim(ratio_claim(paper=50.0), rows, scenario="s")
    flash_fwd = min(r.median_ms for r in rows if r.implementation == "attention-flash")
    scan_s18 = next(r.median_ms for r in rows if r.implementation == "cgspn-scan" and r.params["compression"] == 18)
    assert math.isclose(result["ours"], flash_fwd / scan_s18)
    assert math.isclose(result["ours_over_paper"], result["ours"] / 50.0)
    assert "2 ok rows matched, lowest median taken" in result["note"]
    assert result["card"] == "Test GPU" and result["scenario"] == "s"


def test_selector_compares_grids_and_ignores_undeclared_params(rows):
    attention = rows[0]
    assert selector_matches(attention, {**FLASH, "params": {"grid": 74}})  # 1036 // 14 == 74
    assert not selector_matches(attention, {**FLASH, "params": {"grid": 73}})
    assert selector_matches(attention, {**FLASH, "params": {"resolution": 1036, "compression": 18}})  # not an attention field
    assert not selector_matches(attention, {**FLASH, "params": {"resolution": 1036, "batch": 16}})
    assert not selector_matches(attention, {**FLASH, "mode": "fwd+bwd"})
    assert not selector_matches(attention, {**FLASH, "level": "block"})


def test_mode_selector_picks_that_mode(rows):
    claim = ratio_claim(paper=50.0, numerator={**FLASH, "mode": "fwd+bwd"})
    result = evaluate_claim(claim, rows)
    assert math.isclose(result["numerator_ms"], 60.1)


@pytest.mark.parametrize("status", ["oom", "failed-check"])
def test_rows_without_a_valid_time_are_not_measured(rows, status):
    impl = {"oom": "attention-math", "failed-check": "gspn-original"}[status]
    claim = ratio_claim(paper=10.0, numerator={"implementation": impl, "level": "sublayer", "params": {"resolution": 1036}})
    result = evaluate_claim(claim, rows)
    assert result["verdict"] == "not measured" and result["ours"] is None
    assert status in result["note"] and not result["disagrees"]


def test_no_matching_row_is_not_measured(rows):
    claim = ratio_claim(paper=10.0, numerator={**FLASH, "params": {"resolution": 2058}})
    assert evaluate_claim(claim, rows)["verdict"] == "not measured"


def test_share_and_time_kinds(rows):
    share = {"id": "s", "kind": "share", "paper": 52.0, "numerator": SCAN, "denominator": FLASH}
    result = evaluate_claim(share, rows)
    assert math.isclose(result["ours"], 100.0 * 0.31 / 18.6) and result["unit"] == "%"
    time = {"id": "t", "kind": "time", "paper": 0.462, "numerator": SCAN, "target": 0.5}
    result = evaluate_claim(time, rows)
    assert math.isclose(result["ours"], 0.31) and result["verdict"] == "holds" and result["target_met"] is True


@pytest.mark.parametrize(("kind", "ours", "paper", "expected"), [
    ("ratio", 95.0, 100.0, "holds"),
    ("ratio", 300.0, 100.0, "holds"),
    ("ratio", 60.0, 100.0, "weaker"),
    ("ratio", 40.0, 100.0, "disagrees"),
    ("ratio", 0.8, 1.1, "disagrees"),  # direction reversed, though ours is 73% of the paper's
    ("share", 47.0, 52.0, "holds"),
    ("share", 30.0, 52.0, "weaker"),
    ("time", 0.3, 0.462, "holds"),
    ("time", 0.1, 0.462, "disagrees"),
    ("time", 1.0, 0.462, "disagrees"),
    ("ratio", None, 10.0, "not measured"),
    ("ratio", 2.7, None, "measured"),  # our own figure: nothing to agree or disagree with
])
def test_verdict_rule(kind, ours, paper, expected):
    assert verdict(kind, ours, paper)[0] == expected


def test_target_direction_depends_on_kind(rows):
    assert evaluate_claim(ratio_claim(paper=50.0, target=1000.0), rows)["target_met"] is False
    assert evaluate_claim(ratio_claim(paper=50.0, target=2.0), rows)["target_met"] is True
    time = {"id": "t", "kind": "time", "paper": 0.462, "numerator": SCAN, "target": 0.1}
    assert evaluate_claim(time, rows)["target_met"] is False


def test_every_claim_of_every_scenario(rows):
    scenarios = [{"name": "a", "claims": [ratio_claim(10.0), ratio_claim(20.0, id="c2")]}, {"name": "b"},
                 {"name": "c", "claims": [ratio_claim(30.0, id="c3")]}]
    result = evaluate_claims(rows, scenarios)
    assert [(c["scenario"], c["id"]) for c in result] == [("a", "c1"), ("a", "c2"), ("c", "c3")]


def test_bad_claim_names_field_and_allowed_values(rows):
    with pytest.raises(ClaimError, match="kind: 'speedup' is not one of ratio, time, share"):
        evaluate_claim({**ratio_claim(10.0), "kind": "speedup"}, rows, scenario="s")
    with pytest.raises(ClaimError, match="needs a denominator"):
        evaluate_claim({"id": "x", "kind": "ratio", "numerator": FLASH}, rows)
