"""Same-job A/B gate: the current tree against a git ref, interleaved on one card.

``cgspn-bench gate --ab REF`` needs no stored baseline: it checks REF out into a temporary git
worktree (or takes REF as a source directory holding ``kernels/``, e.g. unpacked from
``git archive``, where no git history is at hand) and starts two long-lived worker processes
(:mod:`suite.gate.ab_worker`), one whose ``kernels`` package is the current tree's and one
whose ``kernels`` is REF's. Both use the current tree's harness (the same timer, statistics
and correctness check), so a difference is a difference of kernels. The workers share the card but never run at the same time.

Interleaving: for every round and every case, both sides measure the case back to back, and
which side goes first alternates with the round and the case index (A-B, B-A, ...), so a drift
of clocks or temperature over the job, or a first-runner advantage, lands on both sides equally.
The rounds of a case are pooled into one sample set per side and judged by the gate's rule
(:mod:`suite.gate.decision`).

Cost: about ``2 x rounds`` times one run of the scenario (each case's budget and warm-up, plus
build and correctness check), plus two process start-ups; the Triton cache is shared and keyed
by kernel source, so a kernel identical on both sides normally compiles once. With ``scenarios/gate.yaml`` and 3 rounds, plan on
~6x the scenario's single-run time.

``CGSPN_BENCH_TEST_SLOWDOWN`` (the test-only slowdown switch) reaches only the current tree's
worker: it stands for a change in the current tree.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from suite.gate.baseline import BaselineError, Snapshot, gpu_model_of
from suite.gate.compare import by_case
from suite.gate.slowdown import ENV_VAR as SLOWDOWN_VAR
from suite.results import Row, RunDir
from suite.triton_mode import INTERPRETER_ENV

REPO_ROOT = Path(__file__).resolve().parents[2]
SIDES = ("current", "ref")
ROUNDS_FILE = "rounds.jsonl"


class ABError(BaselineError):
    """The A/B comparison could not be set up (bad ref, scenario, device, worker crash at start)."""


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if proc.returncode:
        raise ABError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


def resolve_ref(repo: Path, ref: str) -> str:
    """The commit a ref names, with a clear error for an unknown ref."""
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except ABError:
        raise ABError(f"--ab {ref}: not a commit in {repo} nor a directory with kernels/ (try a branch, tag or sha; "
                      "in CI fetch it first, e.g. actions/checkout with fetch-depth: 0)") from None


@contextmanager
def reference_tree(repo: Path, ref: str, worktree: Path) -> Iterator[tuple[Path, str | None]]:
    """The reference side's source tree and commit: a directory holding ``kernels/`` as is (e.g. a
    ``git archive`` of an older commit, where no git history is at hand), else a git ref checked
    out into a temporary worktree of ``repo`` that is removed afterwards."""
    folder = Path(ref)
    if folder.is_dir() and (folder / "kernels").is_dir():
        inside = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
        top = inside.stdout.strip()
        same_checkout = inside.returncode == 0 and Path(top).resolve() == folder.resolve()
        yield folder.resolve(), _git(folder, "rev-parse", "HEAD") if same_checkout else None
        return
    commit = resolve_ref(repo, ref)
    _git(repo, "worktree", "add", "--detach", str(worktree), commit)
    try:
        if not (worktree / "kernels").is_dir():
            raise ABError(f"--ab {ref}: commit {commit[:12]} has no kernels/ package")
        yield worktree, commit
    finally:
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(worktree)], capture_output=True)
        subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True)


def order_for(round_index: int, case_index: int) -> tuple[str, str]:
    """Which side measures first: alternates with the round and with the case."""
    return SIDES if (round_index + case_index) % 2 == 0 else SIDES[::-1]


def interleave(cases: Sequence[Any], measure: dict[str, Callable[[Any], Row]], rounds: int,
               on_row: Callable[[str, int, Any, Row], None] | None = None) -> dict[str, list[Row]]:
    """Measure every case ``rounds`` times on both sides, alternating the order (see the module doc).

    ``measure[side](case) -> Row``; returns every row per side, in measurement order.
    """
    if rounds < 1:
        raise ABError(f"--rounds: expected an integer >= 1, got {rounds}")
    rows: dict[str, list[Row]] = {side: [] for side in SIDES}
    for r in range(rounds):
        for i, case in enumerate(cases):
            for side in order_for(r, i):
                row = measure[side](case)
                rows[side].append(row)
                if on_row is not None:
                    on_row(side, r, case, row)
    return rows


class Worker:
    """A running :mod:`suite.gate.ab_worker` process for one side."""

    def __init__(self, side: str, python_path: Path, device: str, env: dict[str, str], log: Path):
        self.side, self.python_path, self.device, self.env, self.log_path = side, python_path, device, env, log
        self.proc: subprocess.Popen | None = None
        self.ready: dict[str, Any] = {}
        self._log: IO[str] | None = None

    def start(self) -> None:
        if self._log is not None:  # a restart after a crash: keep appending to the same log
            self._log.close()
        self._log = open(self.log_path, "a", encoding="utf-8")  # closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "suite.gate.ab_worker", "--device", self.device],
                                     cwd=self.python_path, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, bufsize=1)
        reply = self._read()
        if reply is None or "ready" not in reply:
            raise ABError(f"the {self.side} worker did not start; its log: {self.log_path}\n{self.log_tail()}")
        self.ready = reply["ready"]

    def _read(self) -> dict | None:
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def measure(self, case: dict[str, Any]) -> Row:
        """Measure one case; a worker that dies is restarted and the case recorded as an error."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"case": case}) + "\n")
            self.proc.stdin.flush()
            reply = self._read()
        except BrokenPipeError:
            reply = None
        if reply is None:
            code = self.proc.wait()
            self.proc = None
            return _error_row(case, f"the {self.side} worker died (exit {code}) measuring this case; log {self.log_path}:\n"
                                    f"{self.log_tail()}")
        return Row.from_dict(reply["row"])

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()


def _error_row(case: dict[str, Any], message: str) -> Row:
    from suite.results import case_id

    return Row(case_id=case_id(case["implementation"], case["level"], case["mode"], case["dtype"], case["params"]),
               implementation=case["implementation"], family=case["family"], level=case["level"], mode=case["mode"],
               dtype=case["dtype"], params=case["params"], status="error", message=message, scenario=case["scenario"])


def case_request(case: Any, budget_scale: float, check: bool, run_id: str) -> dict[str, Any]:
    """A scenario Case as the JSON the workers receive."""
    timing = case.timing.scaled(budget_scale) if budget_scale != 1.0 else case.timing
    return {"implementation": case.implementation.name, "family": case.implementation.family,
            "level": case.implementation.level, "mode": case.mode, "dtype": case.dtype, "params": case.values,
            "timing": asdict(timing), "check": bool(check and case.check), "nvml": case.nvml, "scenario": case.scenario,
            "run_id": run_id, "label": case.label}


def _overlay(directory: Path, kernels_tree: Path, harness_tree: Path) -> Path:
    """A directory whose ``kernels`` is one tree's and ``suite`` the harness's (symlinks)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kernels").symlink_to(kernels_tree / "kernels", target_is_directory=True)
    (directory / "suite").symlink_to(harness_tree / "suite", target_is_directory=True)
    return directory


def _worker_env(python_path: Path, device: str, slowdown: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(python_path)  # the side's tree first, before any installed copy
    if device == "cpu":
        env.update(INTERPRETER_ENV)
        # Two processes share the cores: an idle worker's OpenMP threads must sleep, not spin-wait
        # (libgomp's default), or they steal the cores of the side being measured.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not slowdown:
        env.pop(SLOWDOWN_VAR, None)
    return env


def run_ab(ref: str, *, scenario: str | Path = "scenarios/gate.yaml", rounds: int = 3, device: str | None = None,
           out: str | Path | None = None, budget_scale: float = 1.0, check: bool = True, repo: str | Path | None = None,
           console: Console | None = None) -> tuple[Snapshot, Snapshot]:
    """Measure ``repo``'s working tree and ``ref`` interleaved; returns (ref snapshot, current snapshot).

    Writes ``<out>/ref`` and ``<out>/current`` (run directories holding one pooled row per case,
    with every round's row in ``rounds.jsonl``).
    """
    import torch

    console = console or Console()
    repo = Path(repo).resolve() if repo else REPO_ROOT
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # This process only expands the scenario (kernels are imported, never launched); the workers
    # get TRITON_INTERPRET for CPU runs. Setting it here would leak into the caller's process.
    from suite.scenario import ScenarioError, load_scenario

    try:
        loaded = load_scenario(scenario)
    except ScenarioError as err:
        raise ABError(f"--scenario {scenario}:\n" + "\n".join(err.errors)) from None
    if not loaded.runs_on(device.split(":")[0]):
        raise ABError(f"--scenario {scenario}: needs device {loaded.device}, this job runs on {device}")
    if not loaded.cases:
        raise ABError(f"--scenario {scenario}: no cases")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out) if out else repo / "results" / "runs" / f"ab-{Path(ref).name or 'ref'}-{stamp}"
    if (out / "current" / ROUNDS_FILE).exists() or (out / "ref" / ROUNDS_FILE).exists():
        raise ABError(f"--out {out}: already holds an A/B run; choose a new directory")
    requests = [case_request(c, budget_scale, check, f"ab-{stamp}") for c in loaded.cases]
    slowdown = os.environ.get(SLOWDOWN_VAR, "").strip()
    if slowdown:
        console.print(f"[yellow]{SLOWDOWN_VAR}={slowdown}[/] applies to the current tree only")

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="cgspn-ab-") as tmp, \
            reference_tree(repo, ref, Path(tmp) / "ref") as (worktree, commit):
        tmp_path = Path(tmp)
        workers: dict[str, Worker] = {}
        try:
            paths = {"current": repo, "ref": _overlay(tmp_path / "ref-overlay", worktree, repo)}
            for side in SIDES:
                (out / side).mkdir(parents=True, exist_ok=True)
                workers[side] = Worker(side, paths[side], device, _worker_env(paths[side], device, side == "current"),
                                       out / f"worker-{side}.log")
                workers[side].start()
            expected = {"current": repo / "kernels", "ref": worktree / "kernels"}
            for side, worker in workers.items():  # prove each side really imports its own kernels
                if Path(worker.ready["kernels"]).resolve() != expected[side].parent.resolve():
                    raise ABError(f"the {side} worker imported kernels from {worker.ready['kernels']}, "
                                  f"expected {expected[side].parent}; is another copy installed first on sys.path?")
            console.print(f"A/B: current tree {repo} vs {ref} ({(commit or 'not a git checkout')[:12]}), "
                          f"{len(requests)} cases x {rounds} rounds "
                          f"x 2 sides on {device}, interleaved")
            rows = _measure_all(requests, workers, rounds, out, console)
        finally:
            for worker in workers.values():
                worker.stop()
    elapsed = time.time() - started
    console.print(f"A/B measured in {elapsed:.0f} s")

    snapshots = {}
    for side in SIDES:
        pooled = list(by_case(rows[side]).values())
        environment = workers[side].ready["environment"]
        run = RunDir(out / side)
        run.write_meta({"environment": environment, "scenarios": [loaded.record()],
                        "ab": {"side": side, "ref": ref, "ref_commit": commit, "current_tree": str(repo), "rounds": rounds,
                               "device": device, "budget_scale": budget_scale, "elapsed_s": elapsed,
                               "interleaving": "per case and round, first side alternating"}})
        for row in pooled:
            run.append(row)
        run.write_csv()
        snapshots[side] = Snapshot(rows=pooled, gpu_model=gpu_model_of(environment, pooled), environment=environment,
                                   source=f"{out / side} ({'tree ' + str(repo) if side == 'current' else ref})")
    return snapshots["ref"], snapshots["current"]


def _measure_all(requests: list[dict], workers: dict[str, Worker], rounds: int, out: Path,
                 console: Console) -> dict[str, list[Row]]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("A/B", total=len(requests) * rounds * 2)

        def measure_with(side: str) -> Callable[[dict], Row]:
            def measure(case: dict) -> Row:
                progress.update(task, description=f"{side:>7} {case['label']}")
                return workers[side].measure(case)

            return measure

        def record(side: str, round_index: int, case: dict, row: Row) -> None:
            RunDir(out / side).path.mkdir(parents=True, exist_ok=True)
            with open(out / side / ROUNDS_FILE, "a", encoding="utf-8") as f:  # every round kept, as measured
                f.write(json.dumps({"round": round_index, **json.loads(row.to_json())}) + "\n")
            progress.advance(task)

        return interleave(requests, {side: measure_with(side) for side in SIDES}, rounds, on_row=record)
