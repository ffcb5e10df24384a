"""Scenario files: strict validation (each bad fixture names its field) and expansion into cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernels.params import Params
from suite.results import case_id
from suite.scenario import ScenarioError, load_scenario, load_scenarios, parse_scenario
from suite.tests.helpers import load_sample_impls

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[2]
BAD = sorted((DATA / "bad").glob("*.yaml"))


@pytest.fixture
def impls(monkeypatch):
    return load_sample_impls(monkeypatch)


def expected_error(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path}: the first line must say which error it expects"
    return first[len("# expect: "):]


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_scenario_names_file_and_field(path):
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    expected = f"{path}: {expected_error(path)}"
    assert any(e.startswith(expected) for e in info.value.errors), "\n".join(info.value.errors)


def test_all_errors_of_a_file_are_reported(tmp_path):
    path = tmp_path / "many.yaml"
    path.write_text("name: many\ndescription: d\nimplementations: [attention-math]\nlevels: [sublayer, kernel]\n"
                    "modes: [fwd, backward]\ndtypes: [bf16]\nparams: {grid: 0}\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    fields = [e.split(": ")[1] for e in info.value.errors]
    assert fields == ["levels[1]", "modes[1]", "dtypes[0]", "params.grid"]
    assert "allowed: float32, bfloat16, float16, float64" in info.value.errors[2]


def test_missing_file():
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario("does/not/exist.yaml")


def test_unique_names_across_files(tmp_path):
    text = "name: same\ndescription: d\nimplementations: [attention-math]\nlevels: [sublayer]\nparams: {grid: 3}\n"
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yaml").write_text(text)
    scenarios, errors = load_scenarios([tmp_path])
    assert len(scenarios) == 1 and errors == [f"{tmp_path / 'b.yaml'}: name: 'same' is already used by {tmp_path / 'a.yaml'}; "
                                              "names must be unique"]


GOOD = """
name: good
description: "expansion test"
implementations: [test-sleep, test-linear]
levels: [sublayer]
modes: [fwd, fwd+bwd]
dtypes: [float32]
params: {channels: 64}
sweep: {grid: [3, 5], compression: [4, 8]}
zip: {batch: [1, 2]}
timing: {budget_ms: 5, min_reps: 2}
paper_points:
  - {implementation: test-sleep, level: sublayer, params: {grid: 5}, ms: 5.0}
claims:
  - {id: c1, text: "sleep vs linear", paper: 2.0, kind: ratio,
     numerator: {implementation: test-sleep, level: sublayer, mode: fwd, params: {grid: 5, batch: 1}},
     denominator: {implementation: test-linear, level: sublayer, mode: fwd, params: {grid: 5, batch: 1}}}
"""


def test_expansion_is_a_cartesian_product_deduplicated_by_declared_params(impls):
    scenario = parse_scenario(GOOD, "good.yaml")
    # grid x zip(batch) x modes for each implementation; compression is not declared, so its
    # two values collapse into one case
    assert len(scenario.cases) == 2 * (2 * 2 * 2)
    assert len({c.id for c in scenario.cases}) == len(scenario.cases)
    first = scenario.cases[0]
    assert first.implementation.name == "test-sleep" and first.values == {"batch": 1, "grid": 3}
    assert first.params == Params(batch=1, grid=3)  # undeclared fields stay at their defaults
    assert first.id == case_id("test-sleep", "sublayer", "fwd", "float32", {"batch": 1, "grid": 3})
    assert first.label == "test-sleep/sublayer/fwd/float32/batch=1,grid=3"
    assert first.timing.budget_ms == 5 and first.timing.min_reps == 2 and first.timing.warmup_ms == 50
    assert {(c.values["grid"], c.values["batch"]) for c in scenario.cases} == {(3, 1), (3, 2), (5, 1), (5, 2)}
    assert scenario.claims[0]["id"] == "c1" and scenario.paper_points[0]["ms"] == 5.0
    assert scenario.record()["sha256"] == scenario.sha256 and scenario.record()["contents"] == GOOD


def test_defaults_and_device(impls):
    scenario = parse_scenario("name: d\ndescription: d\nimplementations: [test-sleep]\nlevels: [sublayer]\n"
                              "params: {grid: 2}\ndtypes: [float32]\n", "d.yaml")
    assert scenario.device == "any" and scenario.modes == ["fwd"] and scenario.check is True
    assert scenario.runs_on("cpu") and scenario.runs_on("cuda")


def test_shipped_scenarios_are_valid():
    scenarios, errors = load_scenarios([ROOT / "scenarios"])
    assert errors == []
    names = {s.name for s in scenarios}
    assert {"smoke-cpu", "attention-sublayer"} <= names
    smoke = next(s for s in scenarios if s.name == "smoke-cpu")
    assert smoke.runs_on("cpu") and len(smoke.cases) > 0
