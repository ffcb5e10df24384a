"""Same-job A/B gate: interleaving and pooling on synthetic measurements, then one real A/B run on
CPU of a temporary git repository whose working tree is three times slower than its HEAD."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kernels import registry
from suite.gate.ab import SIDES, ABError, interleave, order_for, reference_tree, resolve_ref, run_ab
from suite.gate.baseline import Snapshot
from suite.gate.compare import by_case, compare_snapshots
from suite.results import Row, RunDir, case_id

REPO = Path(__file__).resolve().parents[2]


def synthetic_row(case: str, side: str, timings: list[float]) -> Row:
    params = {"batch": 1, "channels": int(case)}
    return Row(case_id=case_id("cgspn-scan", "sublayer", "fwd", "float32", params), implementation="cgspn-scan",
               family="cgspn", level="sublayer", mode="fwd", dtype="float32", params=params, samples_ms=timings,
               n=len(timings), median_ms=float(np.median(timings)), device="NVIDIA H100 80GB HBM3", message=side)


def test_interleaving_alternates_and_pools_rounds():
    calls: list[tuple[str, str]] = []
    rng = np.random.default_rng(0)
    slow = {"current": 1.2, "ref": 1.0}  # the current tree is 20% slower on case "64" only

    def measurer(side):
        def measure(case):
            calls.append((side, case))
            scale = slow[side] if case == "64" else 1.0
            return synthetic_row(case, side, (scale * np.exp(rng.normal(0, 0.02, 20))).tolist())
        return measure

    rows = interleave(["64", "96", "128"], {side: measurer(side) for side in SIDES}, rounds=3)
    # every case measured by both sides back to back, the first side alternating by round and case
    pairs = [calls[i:i + 2] for i in range(0, len(calls), 2)]
    assert len(pairs) == 9 and all({a[1] for a in p} == {p[0][1]} and {a[0] for a in p} == set(SIDES) for p in pairs)
    firsts = [p[0][0] for p in pairs]
    assert firsts == ["current", "ref", "current", "ref", "current", "ref", "current", "ref", "current"]
    assert order_for(0, 0) == ("current", "ref") and order_for(1, 0) == ("ref", "current")
    pooled = {side: by_case(rows[side]) for side in SIDES}
    assert all(r.n == 60 for side in SIDES for r in pooled[side].values())  # 3 rounds x 20 samples
    gpu = "NVIDIA H100 80GB HBM3"
    report = compare_snapshots(Snapshot(list(pooled["ref"].values()), gpu), Snapshot(list(pooled["current"].values()), gpu))
    verdicts = {c.params["channels"]: c.verdict for c in report.cases}
    assert verdicts == {64: "regression", 96: "unchanged", 128: "unchanged"} and not report.passed
    with pytest.raises(ABError, match="--rounds"):
        interleave(["64"], {side: measurer(side) for side in SIDES}, rounds=0)


PROBE = '''"""Test-only kernel of the A/B gate test: REPS square matmuls per call (the last one is returned)."""
import torch

from kernels.registry import Workload, register

REPS = {reps}


@register("test-gate-probe", family="vit", level="sublayer", params=("batch", "channels"), dtypes=("float32",),
          devices=("cpu",), modes=("fwd",))
def build_gate_probe(params, dtype, device, mode):
    x = torch.randn(params.channels, params.channels, dtype=dtype, device=device)

    def fn():
        y = x
        for _ in range(REPS):
            y = x @ x
        return y

    return Workload(fn=fn, reference=lambda: x.double() @ x.double(), flops=2.0 * REPS * params.channels ** 3)
'''

CRASH = '''"""Test-only kernel of the A/B gate test: its process dies while building it (a segfault stand-in)."""
import os

from kernels.registry import register


@register("test-gate-crash", family="vit", level="sublayer", params=("batch", "channels"), dtypes=("float32",),
          devices=("cpu",), modes=("fwd",))
def build_gate_crash(params, dtype, device, mode):
    os._exit(3)
'''

SCENARIO = """name: ab-probe
description: A/B gate test on CPU
device: cpu
implementations: [test-gate-probe, test-gate-crash]
levels: [sublayer]
modes: [fwd]
dtypes: [float32]
params: {batch: 1, channels: 256}
timing: {budget_ms: 40, warmup_ms: 5, min_reps: 10, max_reps: 200}
metrics: [latency]
"""


@pytest.fixture
def probe_repo(tmp_path):
    """A git repo with this checkout's kernels/ and suite/ plus the probe (REPS=1 committed, REPS=3 in the
    tree) and, in the working tree only, a kernel whose worker process dies."""
    repo = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("kernels", "suite"):
        shutil.copytree(REPO / folder, repo / folder, ignore=ignore)
    probe = repo / "kernels" / "test_gate_probe.py"
    probe.write_text(PROBE.format(reps=1))
    (repo / "probe.yaml").write_text(SCENARIO)
    git = ["git", "-C", str(repo), "-c", "user.email=gate@test", "-c", "user.name=gate-test"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "probe at 1 matmul"], check=True)
    probe.write_text(PROBE.format(reps=3))  # the uncommitted change under test: 3x the work
    crash = repo / "kernels" / "test_gate_crash.py"
    crash.write_text(CRASH)  # untracked: only the current tree has it
    # the driver (this process) validates the scenario with its own registry: register both here too
    for name, path in (("test_gate_probe_driver", probe), ("test_gate_crash_driver", crash)):
        spec = importlib.util.spec_from_file_location(name, path)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    yield repo
    for name in ("test-gate-probe", "test-gate-crash"):  # keep them out of other tests' listings
        registry._REGISTRY.pop((name, "sublayer"), None)


def test_ab_against_head_catches_the_slower_working_tree(probe_repo, tmp_path):
    out = tmp_path / "ab"
    ref, cur = run_ab("HEAD", scenario=probe_repo / "probe.yaml", rounds=2, device="cpu", out=out, repo=probe_repo)
    head = subprocess.run(["git", "-C", str(probe_repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert ref.commit == head and cur.commit == head + "+dirty"  # each worker ran its own tree
    report = compare_snapshots(ref, cur)
    cases = {c.implementation: c for c in report.cases}
    probe, crash = cases["test-gate-probe"], cases["test-gate-crash"]
    assert probe.verdict == "regression" and not report.passed
    assert probe.ratio > 2.0  # 3x the matmuls; per-call overhead keeps it a little under 3
    # the crashing kernel is recorded as broken and its worker restarted for the next case (round 1's probe)
    assert crash.verdict == "broken" and "worker died (exit 3)" in crash.current["message"]
    assert crash.baseline["status"] == "unsupported"  # HEAD does not have it
    rounds = {side: [json.loads(line) for line in (out / side / "rounds.jsonl").open()] for side in SIDES}
    probe_rounds = {side: [r for r in rounds[side] if r["implementation"] == "test-gate-probe"] for side in SIDES}
    assert probe.current["n"] == sum(r["n"] for r in probe_rounds["current"])  # both rounds pooled
    assert [r["status"] for r in probe_rounds["current"]] == ["ok", "ok"]
    for side in SIDES:  # run directories the report and gate can read: one pooled row per case, every round kept
        assert len(RunDir(out / side).rows()) == 2 and len(rounds[side]) == 4
        assert RunDir(out / side).meta()["ab"]["ref_commit"] == head
    order = sorted((r | {"side": side} for side in SIDES for r in probe_rounds[side]), key=lambda r: r["timestamp"])
    assert [r["side"] for r in order] == ["current", "ref", "ref", "current"]  # round 0: A-B, round 1: B-A
    worktrees = subprocess.run(["git", "-C", str(probe_repo), "worktree", "list"], capture_output=True, text=True).stdout
    assert len(worktrees.strip().splitlines()) == 1  # the temporary worktree is gone


def test_unknown_ref_is_a_clear_error(probe_repo):
    with pytest.raises(ABError, match="no-such-branch: not a commit"):
        resolve_ref(probe_repo, "no-such-branch")


def test_reference_tree_is_a_worktree_of_the_ref_or_a_plain_directory(probe_repo, tmp_path):
    with reference_tree(probe_repo, "HEAD", tmp_path / "wt") as (tree, commit):
        assert (tree / "kernels" / "test_gate_probe.py").read_text() == PROBE.format(reps=1)  # HEAD, not the tree
        assert len(commit) == 40
    assert not (tmp_path / "wt").exists()
    plain = tmp_path / "archive"  # e.g. `git archive HEAD~1 kernels | tar -x -C archive` where there is no history
    shutil.copytree(probe_repo / "kernels", plain / "kernels")
    with reference_tree(probe_repo, str(plain), tmp_path / "wt2") as (tree, commit):
        assert tree == plain.resolve() and commit is None
