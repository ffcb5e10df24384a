"""Claims evaluation (suite.report.claims): one case per selector within the claim's scenario, device
vs eager time, the three kinds, verdicts that follow the claim's direction, targets."""

from __future__ import annotations

import math

import pytest

from suite.report.claims import ClaimError, evaluate_claim, evaluate_claims, row_matches, verdict
from suite.results import Row, case_id
from suite.scenario import ScenarioError, parse_scenario


def make_row(implementation: str, level: str, median_ms: float | None, status: str = "ok", mode: str = "fwd",
             dtype: str = "bfloat16", family: str = "cgspn", device: str = "Test GPU", graph_ms: float | None = None,
             **params) -> Row:
    params = {"batch": 32, "channels": 1152, **params}
    return Row(case_id=case_id(implementation, level, mode, dtype, params), implementation=implementation, family=family,
               level=level, mode=mode, dtype=dtype, params=params, status=status, median_ms=median_ms, device=device,
               graph_median_ms=graph_ms, graph_samples_ms=[graph_ms] * 5 if graph_ms else [])


FLASH = {"implementation": "attention-flash", "level": "sublayer", "params": {"resolution": 1036}, "mode": "fwd"}
SCAN = {"implementation": "cgspn-scan", "level": "sublayer", "params": {"resolution": 1036, "compression": 18}}


def ratio_claim(paper: float, **extra) -> dict:
    return {"id": "c1", "text": "flash / scan", "paper": paper, "kind": "ratio", "numerator": FLASH, "denominator": SCAN, **extra}


@pytest.fixture
def rows() -> list[Row]:
    return [
        make_row("attention-flash", "sublayer", 18.6, graph_ms=18.5, family="attention", resolution=1036, heads=16),
        make_row("attention-flash", "sublayer", 60.1, family="attention", mode="fwd+bwd", resolution=1036, heads=16),
        make_row("cgspn-scan", "sublayer", 0.31, graph_ms=0.25, resolution=1036, compression=18),
        make_row("cgspn-scan", "sublayer", 0.27, resolution=1036, compression=12),
        make_row("attention-math", "sublayer", None, status="oom", family="attention", resolution=1036, heads=16),
        make_row("gspn-original", "sublayer", 1.0, status="failed-check", family="gspn", resolution=1036),
    ]


def test_ratio_of_the_one_matching_case_on_device_time(rows):
    result = evaluate_claim(ratio_claim(paper=50.0), rows, scenario="s")
    assert math.isclose(result["ours"], 18.5 / 0.25) and result["timer"] == "graph"  # both cases' graph replays
    assert math.isclose(result["ours_eager"], 18.6 / 0.31)  # the eager figure beside it
    assert math.isclose(result["ours_over_paper"], result["ours"] / 50.0)
    assert result["note"] == "" and result["scenario"] == "s"
    assert result["card"] == "ours: Test GPU; paper: A100"  # measured on another card than the paper's: both named


def test_eager_timing_claims_use_the_eager_median(rows):
    result = evaluate_claim(ratio_claim(paper=50.0, timing="eager"), rows)
    assert math.isclose(result["ours"], 18.6 / 0.31) and result["timer"] == "eager"


def test_older_rows_timed_only_as_graph_replays_count_as_device_time():
    old = make_row("cgspn-scan", "sublayer", 0.25, resolution=1036, compression=18)
    old.timer = "cuda-graph"
    flash = make_row("attention-flash", "sublayer", 18.6, family="attention", resolution=1036, heads=16)
    result = evaluate_claim(ratio_claim(paper=50.0), [old, flash])
    assert math.isclose(result["ours"], 18.6 / 0.25) and result["ours_eager"] is None


def test_selector_naming_several_cases_is_ambiguous_with_the_candidates(rows):
    result = evaluate_claim(ratio_claim(paper=50.0, numerator={**FLASH, "mode": None}), rows)
    assert result["verdict"] == "ambiguous" and result["ours"] is None and result["disagrees"]
    assert "matches 2 cases" in result["note"] and "fwd+bwd" in result["note"]


def test_selector_compares_grids_and_ignores_undeclared_params(rows):
    attention = rows[0]
    assert row_matches(attention, {**FLASH, "params": {"grid": 74}})  # 1036 // 14 == 74
    assert not row_matches(attention, {**FLASH, "params": {"grid": 73}})
    assert row_matches(attention, {**FLASH, "params": {"resolution": 1036, "compression": 18}})  # not an attention field
    assert not row_matches(attention, {**FLASH, "params": {"resolution": 1036, "batch": 16}})
    assert not row_matches(attention, {**FLASH, "mode": "fwd+bwd"})
    assert not row_matches(attention, {**FLASH, "level": "block"})


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
    assert math.isclose(result["ours"], 100.0 * 0.25 / 18.5) and result["unit"] == "%"
    time = {"id": "t", "kind": "time", "paper": 0.462, "numerator": SCAN, "target": 0.5}
    result = evaluate_claim(time, rows)
    assert math.isclose(result["ours"], 0.25) and result["verdict"] == "holds" and result["target_met"] is True


@pytest.mark.parametrize(("kind", "ours", "paper", "expected"), [
    ("ratio", 100.0, 100.0, "holds"),
    ("ratio", 300.0, 100.0, "holds"),
    ("ratio", 95.0, 100.0, "weaker"),  # below the paper's number, same direction
    ("ratio", 1.21, 2.64, "weaker"),
    ("ratio", 0.8, 1.1, "disagrees"),  # direction reversed: slower where the paper is faster
    ("ratio", 1.2, 0.5, "disagrees"),  # the paper's slowdown is a speedup here
    ("ratio", 0.4, 0.5, "holds"),  # a slowdown claim ("at most half"): at or below holds
    ("share", 52.0, 52.0, "holds"),
    ("share", 47.0, 52.0, "weaker"),
    ("time", 0.3, 0.462, "holds"),
    ("time", 31.95, 150.0, "holds"),  # "under 150 ms": beating it holds
    ("time", 1.0, 0.462, "weaker"),
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


SHARED = """
name: {name}
description: test
implementations: [attention-math, cgspn-scan]
levels: [sublayer]
dtypes: [float32]
params: {{batch: 1, channels: 16, heads: 2, compression: 2}}
sweep: {{grid: {grids}}}
claims:
  - id: {name}-claim
    text: math vs scan
    paper: 10.0
    kind: ratio
    numerator: {{implementation: attention-math, level: sublayer{params}}}
    denominator: {{implementation: cgspn-scan, level: sublayer, params: {{grid: 4}}}}
"""


def scenario(name: str, grids: str, params: str = ", params: {grid: 4}"):
    return parse_scenario(SHARED.format(name=name, grids=grids, params=params), f"{name}.yaml")


def test_claims_resolve_among_their_own_scenarios_cases_and_a_shared_case_counts_for_both():
    # both scenarios measure grid 4 (one case, measured once); only "wide" also measures grid 6 and 5
    narrow, wide = scenario("narrow", "[4]"), scenario("wide", "[4, 5, 6]", params=", params: {grid: 6}")
    case_ids = {s.name: {c.id for c in s.cases} for s in (narrow, wide)}
    rows = []
    for case in {c.id: c for s in (narrow, wide) for c in s.cases}.values():  # measured once each
        grid = case.values["grid"]
        median = (2.0 if case.implementation.name == "attention-math" else 0.1) * grid
        rows.append(Row(case_id=case.id, implementation=case.implementation.name, family=case.implementation.family,
                        level="sublayer", mode=case.mode, dtype=case.dtype, params=case.values, median_ms=median,
                        scenario="narrow" if grid == 4 else "wide"))  # the shared case's row names the first scenario
    records = [{"name": s.name, "claims": s.claims} for s in (narrow, wide)]
    result = {c["scenario"]: c for c in evaluate_claims(rows, records, case_ids=case_ids)}
    assert math.isclose(result["narrow"]["ours"], 8.0 / 0.4)
    assert math.isclose(result["wide"]["ours"], 12.0 / 0.4)  # its denominator is the shared grid-4 case
    assert result["wide"]["denominator_case"] == result["narrow"]["denominator_case"]


def test_validation_refuses_a_selector_that_names_several_cases_or_none():
    with pytest.raises(ScenarioError) as err:
        scenario("several", "[4, 5]", params="")  # no grid: names both math cases
    text = str(err.value)
    assert "claims[0] (several-claim).numerator" in text and "names 2 cases, expected exactly one" in text
    assert "attention-math/sublayer/fwd/float32/batch=1,channels=16,grid=4,heads=2" in text and "grid=5" in text
    with pytest.raises(ScenarioError, match=r"numerator: attention-math sublayer \(grid=9\) names none"):
        scenario("none", "[4]", params=", params: {grid: 9}")


def test_bad_claim_names_field_and_allowed_values(rows):
    with pytest.raises(ClaimError, match="kind: 'speedup' is not one of ratio, time, share"):
        evaluate_claim({**ratio_claim(10.0), "kind": "speedup"}, rows, scenario="s")
    with pytest.raises(ClaimError, match="needs a denominator"):
        evaluate_claim({"id": "x", "kind": "ratio", "numerator": FLASH}, rows)
