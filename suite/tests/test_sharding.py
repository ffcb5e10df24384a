"""Scale-out: cost-balanced sharding, merging rank files, per-GPU spread, and torchrun on CPU ranks
(gloo) including a rank killed mid-run and a resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernels.params import Params
from kernels.registry import Implementation
from suite.measure import TimingSettings
from suite.results import Row, RunDir
from suite.scenario import Case
from suite.sharding import estimate_cost_ms, gpu_spread, merge_rank_rows, rank_rows_path, shard
from suite.tests.helpers import SAMPLE_IMPLS, load_sample_impls

ROOT = Path(__file__).resolve().parents[2]


def cases(grids: list[int], name: str = "test-sleep") -> list[Case]:
    impl = next(i for i in load_sample_impls().IMPLEMENTATIONS if i.name == name)
    return [Case(impl, Params(batch=2, grid=g), "fwd", "float32", "t", TimingSettings(budget_ms=10)) for g in grids]


def by_grid(case: Case, device: str) -> float:
    return float(case.params.grid)


def test_lpt_balances_known_costs_deterministically():
    work = cases([3, 9, 5, 7, 4, 6])  # LPT: 9|7, 6->7, 5->9, 4->13, 3->14: 17 / 17
    shards = shard(work, 2, "cpu", cost=by_grid)
    assert [[c.params.grid for c in s] for s in shards] == [[3, 9, 5], [7, 4, 6]]
    assert sorted(c.id for s in shards for c in s) == sorted(c.id for c in work)  # each case exactly once
    assert shard(list(reversed(work)), 2, "cpu", cost=by_grid) == [list(reversed(s)) for s in shards]  # order-independent
    order = [c.id for c in work]
    assert all([c.id for c in s] == [i for i in order if i in {c.id for c in s}] for s in shards)  # input order kept


def test_more_ranks_than_cases_and_bad_world_size():
    shards = shard(cases([1, 2]), 4, "cpu", cost=by_grid)
    assert [len(s) for s in shards] == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="world_size"):
        shard(cases([1]), 0, "cpu")


def test_cost_estimate_orders_shapes():
    math = Implementation("attention-math", "attention", "sublayer", build=None, params=("batch", "grid"))
    small, large = (Case(math, Params(batch=32, grid=g), "fwd", "bfloat16", "t", TimingSettings()) for g in (27, 147))
    assert estimate_cost_ms(large, "cuda") > estimate_cost_ms(small, "cuda") >= TimingSettings().budget_ms
    assert estimate_cost_ms(Case(math, Params(batch=32, grid=27), "fwd+bwd", "bfloat16", "t", TimingSettings()), "cuda") \
        > estimate_cost_ms(small, "cuda")


def row(cid: str, rank: int, median: float | None = 1.0, status: str = "ok") -> Row:
    return Row(case_id=cid, implementation="test-sleep", family="vit", level="sublayer", mode="fwd", dtype="float32",
               params={"grid": 1}, status=status, median_ms=median, rank=rank, gpu_index=rank)


def test_merge_keeps_every_rank_row_once(tmp_path):
    RunDir(tmp_path).append(row("a", 0))
    RunDir(rank_rows_path(tmp_path, 0).parent).append(row("a", 0))  # already merged
    RunDir(rank_rows_path(tmp_path, 0).parent).append(row("b", 0))
    RunDir(rank_rows_path(tmp_path, 1).parent).append(row("c", 1))
    assert merge_rank_rows(tmp_path) == 2
    assert [r.case_id for r in RunDir(tmp_path).rows()] == ["a", "b", "c"]
    assert not (tmp_path / "ranks").exists()
    assert merge_rank_rows(tmp_path) == 0


def test_spread_per_case():
    spread = gpu_spread([row("a", 0, 10.0), row("a", 1, 11.0), row("b", 0, 5.0), row("b", 1, 1.0, status="oom")])
    assert len(spread) == 1  # "b" has one usable GPU only
    assert spread[0]["case_id"] == "a" and spread[0]["spread"] == pytest.approx(0.1)
    assert spread[0]["medians_ms"] == {"rank0/gpu0": 10.0, "rank1/gpu1": 11.0}


# ---- torchrun with gloo CPU ranks ----------------------------------------------------------------


SCENARIO = """name: sharded
description: "torchrun test"
implementations: [test-sleep, test-crash]
levels: [sublayer]
modes: [fwd]
dtypes: [float32]
params: {batch: 2}
sweep: {grid: [1, 2, 3, 4, 5]}
timing: {budget_ms: 4, warmup_ms: 0, min_reps: 2, max_reps: 4}
"""


def torchrun(*args: str, ranks: int = 2, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m", "suite.run",
               *args, "--device", "cpu", "--import", str(SAMPLE_IMPLS)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_torchrun_killed_rank_then_resume(tmp_path):
    scenario = tmp_path / "sharded.yaml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "run"
    crash = tmp_path / "crash-once"
    crash.touch()
    killed = torchrun(str(scenario), "--out", str(out), env={"CGSPN_TEST_CRASH_FILE": str(crash)})
    assert killed.returncode != 0 and not crash.exists()  # one rank died on its first test-crash case
    kept = [r for p in sorted((out / "ranks").glob("rank*/rows.jsonl")) for r in RunDir(p.parent).rows()]
    kept += RunDir(out).rows()
    assert kept, killed.stderr[-3000:]  # the rows finished before the crash survive

    resumed = torchrun(str(scenario), "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = RunDir(out).rows()
    assert len(rows) == len({r.case_id for r in rows}) == 10  # the union of cases, no duplicate
    assert {(r.case_id, r.timestamp) for r in kept} <= {(r.case_id, r.timestamp) for r in rows}  # kept, not re-measured
    assert {r.rank for r in rows} == {0, 1} and all(r.status == "ok" for r in rows)
    assert not (out / "ranks").exists() and (out / "rows.csv").exists()
    meta = json.loads((out / "run.json").read_text())
    assert meta["settings"]["world_size"] == 2 and meta["status_counts"] == {"ok": 10}


def test_torchrun_same_case_on_every_rank(tmp_path):
    scenario = tmp_path / "variance.yaml"
    scenario.write_text(SCENARIO.replace("[test-sleep, test-crash]", "[test-sleep]").replace("[1, 2, 3, 4, 5]", "[2, 3]"))
    out = tmp_path / "run"
    done = torchrun(str(scenario), "--out", str(out), "--same-case-on-every-gpu")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = RunDir(out).rows()
    assert sorted((r.params["grid"], r.rank) for r in rows) == [(2, 0), (2, 1), (3, 0), (3, 1)]
    spread = json.loads((out / "gpu_spread.json").read_text())
    assert len(spread) == 2
    for entry in spread:
        medians = [r.median_ms for r in rows if r.case_id == entry["case_id"]]
        assert entry["spread"] == pytest.approx((max(medians) - min(medians)) / min(medians))
