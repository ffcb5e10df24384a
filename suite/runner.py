"""Run scenarios: measure every case, append rows as they come, resume, shard over ranks.

``run_scenarios`` is what ``cgspn-bench run`` (and ``torchrun -m suite.run``) calls:

1. drop scenarios that cannot run on this device (``device: cuda`` on a CPU-only machine);
2. rank 0 writes run.json (environment, scenario names, hashes and contents, settings);
3. rank 0 lists the cases not yet in the run (``--resume``) and broadcasts them; each rank takes
   its cost-balanced shard (:mod:`suite.sharding`), or every case in variance mode;
4. each case goes through :func:`suite.measure.measure_case` and its row is appended (fsynced)
   to rows.jsonl, or to ``ranks/rank<k>/rows.jsonl`` when several ranks run;
5. at the end rank 0 merges the rank files and writes rows.csv (and the per-GPU spread).
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from suite import sharding
from suite.environment import collect_environment
from suite.errors import InputError
from suite.gate.slowdown import prepare_hook
from suite.measure import DeviceLostError, measure_case
from suite.profiling import profile_step
from suite.results import RUN_FILE, Row, RunDir
from suite.rundir_lock import LOCK_FILE, RunDirLock
from suite.scenario import Case, Scenario

DEFAULT_RUNS = Path("results/runs")


class RunError(InputError):
    """A run that cannot start (existing rows without --resume, nothing runnable...)."""


class RunInterrupted(KeyboardInterrupt):
    """SIGINT during a run: how far it got, for the one-line message that says how to finish it."""

    def __init__(self, done: int, total: int, out: Path):
        super().__init__(f"interrupted after {done} of {total} cases; finish with --resume --out {out}")
        self.done, self.total, self.out = done, total, out


class Group(Protocol):
    """The collective operations the runner needs: one process, or a torch.distributed group."""

    rank: int
    world_size: int

    def barrier(self) -> None: ...

    def broadcast(self, obj: Any) -> Any: ...

    def gather(self, obj: Any) -> list[Any] | None: ...


class SingleProcess:
    rank = 0
    world_size = 1

    def barrier(self) -> None:
        pass

    def broadcast(self, obj: Any) -> Any:
        return obj

    def gather(self, obj: Any) -> list[Any] | None:
        return [obj]


@dataclass
class RunOptions:
    out: Path
    device: str = "cpu"  # "cuda" or "cpu"; each rank uses its local GPU
    resume: bool = False
    force: bool = False  # start over in an existing run directory
    profile: bool = False
    check: bool = True
    budget_scale: float = 1.0
    same_case_on_every_gpu: bool = False  # variance mode: every rank measures every case
    local_rank: int = 0


@dataclass
class RunSummary:
    out: Path
    counts: Counter = field(default_factory=Counter)  # status -> rows measured by this process
    skipped_scenarios: list[str] = field(default_factory=list)
    already_done: int = 0
    total_cases: int = 0
    run_counts: dict = field(default_factory=dict)  # rank 0: status -> rows in the merged run directory
    spread_path: Path | None = None


def runnable(scenarios: list[Scenario], device_type: str) -> tuple[list[Scenario], list[str]]:
    """Scenarios that can run on ``device_type`` and a message for each one that cannot."""
    keep, skipped = [], []
    for s in scenarios:
        if s.runs_on(device_type):
            keep.append(s)
        else:
            skipped.append(f"{s.path}: scenario {s.name!r} needs device {s.device}; this run is on {device_type} — skipped")
    return keep, skipped


def collect_cases(scenarios: list[Scenario], options: RunOptions) -> list[Case]:
    """All cases in scenario order, deduplicated by case id, with the run's overrides applied."""
    cases: dict[str, Case] = {}
    for scenario in scenarios:
        for case in scenario.cases:
            timing = case.timing.scaled(options.budget_scale) if options.budget_scale != 1.0 else case.timing
            case = dataclasses.replace(case, timing=timing, check=case.check and options.check,
                                       profile=case.profile or options.profile)
            cases.setdefault(case.id, case)
    return list(cases.values())


def default_out(scenarios: list[Scenario]) -> Path:
    """``results/runs/<name+name...>``; names are safe slugs (suite.scenario), a long join is shortened with a hash."""
    name = "+".join(s.name for s in scenarios)
    if len(name) > 100:
        name = f"{name[:80]}+{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return DEFAULT_RUNS / name


def is_run_dir(path: Path) -> bool:
    """A folder the runner wrote: rows, or a run.json with a run id (written before anything else)."""
    if (path / "rows.jsonl").is_file():
        return True
    try:
        return "run_id" in RunDir(path).meta()
    except InputError:
        return False


def check_out(path: Path, options: RunOptions) -> None:
    """``--out`` must be a directory (or not exist yet); ``--force`` clears only a run directory."""
    if path.exists() and not path.is_dir():
        raise RunError(f"--out {path}: exists and is not a directory; give a run directory")
    if options.force and path.is_dir() and not is_run_dir(path) and any(p.name != LOCK_FILE for p in path.iterdir()):
        raise RunError(f"--out {path}: not a run directory (no rows.jsonl, no {RUN_FILE} with a run id); "
                       "--force only clears run directories, so nothing was deleted")


def check_same_scenarios(previous: dict, scenarios: list[Scenario], path: Path) -> list[str]:
    """``--resume`` must finish the run with the scenarios it started with: other names are an
    error; the same names with edited contents (e.g. a grown sweep) are allowed and noted."""
    before = {s.get("name"): s.get("sha256") for s in previous.get("scenarios") or [] if isinstance(s, dict)}
    now = {s.name: s.sha256 for s in scenarios}
    if before and set(before) != set(now):
        raise RunError(f"--resume: {path} was run with scenario(s) {', '.join(map(str, before))}; this command gives "
                       f"{', '.join(now)}. Resume with the same scenarios, or use another --out (or --force to start over)")
    return [f"note: scenario {name!r} changed since {path} was started (sha256 {str(before[name])[:8]} -> {sha[:8]}); "
            "resuming with its new contents" for name, sha in now.items() if before and before.get(name) != sha]


def _prepare_dir(run: RunDir, scenarios: list[Scenario], options: RunOptions, group: Group) -> dict:
    """Rank 0, holding the lock: check the directory, write run.json; returns the metadata."""
    has_rows = run.rows_path.exists() or (run.path / sharding.RANK_DIR).exists()
    if has_rows and not options.resume and not options.force:
        raise RunError(f"{run.path} already holds rows; pass --resume to finish that run, --force to start over, "
                       f"or --out for a new directory")
    if options.force and not options.resume:
        for name in ("rows.jsonl", "rows.csv", "run.json", "gpu_spread.json"):
            (run.path / name).unlink(missing_ok=True)
        for name in (sharding.RANK_DIR, "nvml", "traces"):
            shutil.rmtree(run.path / name, ignore_errors=True)
    previous = run.meta() if options.resume else {}
    notes = check_same_scenarios(previous, scenarios, run.path) if options.resume else []
    if options.resume:
        sharding.merge_rank_rows(run.path, per_gpu=options.same_case_on_every_gpu)
    device = f"cuda:{options.local_rank}" if options.device == "cuda" else "cpu"
    meta = {
        "run_id": previous.get("run_id") or uuid.uuid4().hex[:12],
        "created": previous.get("created") or time.time(),
        "resumed": [*previous.get("resumed", []), time.time()] if options.resume and previous else [],
        "environment": collect_environment(device, copy_bandwidth=options.device == "cuda"),
        "scenarios": [s.record() for s in scenarios],
        "settings": {"device": options.device, "profile": options.profile, "check": options.check,
                     "budget_scale": options.budget_scale, "world_size": group.world_size,
                     "same_case_on_every_gpu": options.same_case_on_every_gpu},
    }
    if notes:  # the scenario records this run started with are kept, not overwritten
        meta["previous_scenarios"] = [*previous.get("previous_scenarios", []), previous["scenarios"]]
        meta["resume_notes"] = notes
    if previous.get("environment") and previous["environment"] != meta["environment"]:
        meta["previous_environments"] = [*previous.get("previous_environments", []), previous["environment"]]
    run.write_meta(meta)
    return meta


def _pending(cases: list[Case], run_dir: Path, options: RunOptions, group: Group) -> dict[int, list[str]]:
    """Rank 0: case ids each rank still has to measure."""
    done = sharding.done_keys(run_dir, options.same_case_on_every_gpu) if options.resume else set()
    if options.same_case_on_every_gpu:
        return {r: [c.id for c in cases if (c.id, r) not in done] for r in range(group.world_size)}
    todo = [c for c in cases if (c.id,) not in done]
    shards = sharding.shard(todo, group.world_size, options.device)
    return {r: [c.id for c in shard] for r, shard in enumerate(shards)}


def _gpu_identity(options: RunOptions) -> tuple[int | None, str | None]:
    if options.device != "cuda":
        return None, None
    uuid_ = str(getattr(torch.cuda.get_device_properties(options.local_rank), "uuid", "")) or None
    if uuid_ and not uuid_.startswith("GPU-"):
        uuid_ = f"GPU-{uuid_}"
    return options.local_rank, uuid_


def run_scenarios(scenarios: list[Scenario], options: RunOptions, group: Group | None = None,
                  console: Console | None = None) -> RunSummary:
    """Measure every case of ``scenarios`` into ``options.out`` (see the module docstring)."""
    group = group or SingleProcess()
    console = console or Console(stderr=True, soft_wrap=True)
    keep, skipped = runnable(scenarios, options.device)
    summary = RunSummary(out=Path(options.out), skipped_scenarios=skipped)
    if not keep:
        raise RunError("no runnable scenario: " + "; ".join(skipped))
    if options.device == "cuda":
        torch.cuda.set_device(options.local_rank)
    run = RunDir(options.out)
    cases = collect_cases(keep, options)
    summary.total_cases = len(cases)

    lock = RunDirLock(run.path) if group.rank == 0 else None
    try:
        return _run_locked(run, keep, cases, options, group, console, summary, lock)
    finally:
        if lock is not None:
            lock.release()


def refuse_scenario_errors(errors: list[str], console: Console) -> bool:
    """Print the scenario errors of a command that was to run them (``run``, ``reproduce``); True
    when there are any, and then the command runs nothing."""
    for line in errors:
        console.print(line, markup=False, highlight=False)
    if errors:
        console.print(f"{len(errors)} scenario error(s); nothing was run", style="red")
    return bool(errors)


def run_for_command(scenarios: list[Scenario], options: RunOptions, console: Console,
                    group: Group | None = None) -> RunSummary | None:
    """:func:`run_scenarios` for a command (``run``, ``reproduce``): a :class:`RunError` is printed
    and gives None (the command exits 2); the scenarios skipped on this device are listed."""
    try:
        summary = run_scenarios(scenarios, options, group, console)
    except RunError as exc:
        console.print(f"error: {exc}", style="red", markup=False)
        return None
    for line in summary.skipped_scenarios:
        console.print(line, markup=False, highlight=False)
    return summary


def _run_locked(run: RunDir, keep: list[Scenario], cases: list[Case], options: RunOptions, group: Group, console: Console,
                summary: RunSummary, lock: RunDirLock | None) -> RunSummary:
    meta, pending, error = None, None, None
    if group.rank == 0:
        try:
            check_out(run.path, options)
            lock.acquire()
            if lock.stale:
                console.print(f"note: took over the stale lock of {run.path} (held by {lock.stale}, no longer running)",
                              markup=False, highlight=False)
            meta = _prepare_dir(run, keep, options, group)
            for note in meta.get("resume_notes", []):
                console.print(note, markup=False, highlight=False)
            pending = _pending(cases, run.path, options, group)
            torn = run.read()[1]
            if torn and options.resume:
                console.print(f"note: {run.rows_path} lines {', '.join(map(str, torn))}: torn rows (a writer was killed "
                              "mid-line); their cases are measured again", markup=False, highlight=False)
        except (InputError, OSError) as exc:
            error = str(exc) if isinstance(exc, InputError) else f"{run.path}: {exc.strerror or exc}"
    meta, pending, error = group.broadcast((meta, pending, error))
    if error:
        raise RunError(error)
    mine = set(pending[group.rank])
    todo = [c for c in cases if c.id in mine]
    summary.already_done = len(cases) - sum(len(v) for v in pending.values()) if not options.same_case_on_every_gpu \
        else len(cases) - len(todo)

    sink = run if group.world_size == 1 else RunDir(sharding.rank_rows_path(run.path, group.rank).parent)
    gpu_index, gpu_uuid = _gpu_identity(options)
    device = torch.device("cuda", options.local_rank) if options.device == "cuda" else torch.device("cpu")
    prefix = f"[rank {group.rank}] " if group.world_size > 1 else ""
    tag = f"-rank{group.rank}" if group.world_size > 1 else ""  # per-rank NVML series and trace names
    if summary.already_done:
        console.print(f"{prefix}resuming {run.path}: {summary.already_done} of {len(cases)} cases already measured")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    measured: list[Row] = []
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(escape(f"{prefix}starting"), total=len(todo))
            for case in todo:
                progress.update(task, description=escape(f"{prefix}{case.label}"))
                try:
                    row = measure_case(case, device, run_dir=run.path, run_id=meta["run_id"], tag=tag,
                                       prepare=prepare_hook, profiler=profile_step)
                except DeviceLostError as lost:
                    # record the case that broke the context (so --resume skips it), then stop this process
                    lost.row.rank, lost.row.gpu_index, lost.row.gpu_uuid = group.rank, gpu_index, gpu_uuid
                    sink.append(lost.row)
                    raise SystemExit(f"stopped: {lost}\nits row is recorded as an error; run again with --resume "
                                     "to measure the remaining cases in a fresh process") from lost
                row.rank, row.gpu_index, row.gpu_uuid = group.rank, gpu_index, gpu_uuid
                sink.append(row)
                measured.append(row)
                summary.counts[row.status] += 1
                progress.console.print(_row_line(prefix, row), soft_wrap=True)
                progress.advance(task)
    except KeyboardInterrupt:
        total = len(cases) if not options.same_case_on_every_gpu else len(cases) * group.world_size
        raise RunInterrupted(summary.already_done + len(measured), total, run.path) from None

    # Rows travel to rank 0 over the process group, so hosts need no shared filesystem; the rank
    # files (same filesystem, or a crashed earlier attempt) are merged as well, without duplicates.
    gathered = group.gather(measured)
    if group.rank == 0:
        if group.world_size > 1:
            per_gpu = options.same_case_on_every_gpu
            seen = {sharding.row_key(r, per_gpu) for r in run.rows()}
            for row in (r for rank_rows in gathered for r in rank_rows):
                if sharding.row_key(row, per_gpu) not in seen:
                    run.append(row)
                    seen.add(sharding.row_key(row, per_gpu))
            sharding.merge_rank_rows(run.path, per_gpu=per_gpu)
        rows = run.rows()
        if rows:
            run.write_csv()
        if options.same_case_on_every_gpu:
            summary.spread_path = sharding.write_spread(run.path, rows)
        meta = run.meta()
        meta["finished"] = time.time()
        meta["status_counts"] = summary.run_counts = dict(Counter(r.status for r in rows))
        run.write_meta(meta)
    group.barrier()
    return summary


def _row_line(prefix: str, row: Row) -> str:
    shape = ",".join(f"{k}={v}" for k, v in sorted(row.params.items()))
    label = f"{row.implementation}/{row.level}/{row.mode}/{row.dtype} {shape}"
    if row.status == "ok":
        extra = f"{row.median_ms:.4g} ms eager (IQR {row.iqr_ms:.2g}, n={row.n})"
        if row.graph_median_ms is not None:
            extra += f", {row.graph_median_ms:.4g} ms graph" + (" [host-bound]" if row.host_bound else "")
        if row.nvml and row.nvml.get("throttled"):
            extra += " [throttled]"
        return f"{escape(prefix)}[green]ok[/] {escape(label)}: {escape(extra)}"
    message = row.message.splitlines()[0] if row.message else ""
    return f"{escape(prefix)}[yellow]{row.status}[/] {escape(label)}: {escape(message)}"
