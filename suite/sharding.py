"""Spreading a sweep over ranks (one process per GPU, launched by torchrun) and merging back.

* :func:`estimate_cost_ms` guesses a case's wall time from its shape without building it;
* :func:`shard` assigns cases to ranks by longest-processing-time-first (greedy LPT): the most
  expensive case goes to the least-loaded rank, ties broken by case id and rank, so every rank
  computes the same assignment from the same case list;
* :func:`merge_rank_rows` folds per-rank row files into the run's rows.jsonl (rank 0, at the end
  and on ``--resume``), keeping rows of a rank that crashed;
* :func:`gpu_spread` summarizes the "same case on every GPU" mode as a spread per case.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from kernels.params import Params
from suite.results import ROWS_FILE, Row, RunDir
from suite.scenario import Case

RANK_DIR = "ranks"
# Assumed sustained rates for the estimate; only the ratio between cases matters for balance.
ASSUMED_FLOPS = {"cuda": 200e12, "cpu": 50e9}
CASE_OVERHEAD_MS = {"cuda": 1500.0, "cpu": 200.0}  # build, correctness check, NVML, allocator release


def estimate_flops(case: Case) -> float:
    """Forward FLOPs from the shape alone (projections, attention scores, MLP, scan).

    Rough on purpose: it only orders cases for load balancing.
    """
    impl, p = case.implementation, case.params
    tokens = p.batch * _tokens(p)
    c = p.channels
    if impl.family == "attention":
        mixer = 4.0 * p.batch * _tokens(p) * min(_tokens(p), p.tile ** 2 if "tiled" in impl.name else _tokens(p)) * c
        projections = 2.0 * tokens * c * 4 * c
    elif impl.family == "gspn":
        mixer = 40.0 * tokens * 2 * c  # raw-space scan over 4 directions x d_inner = 2C channels
        projections = 2.0 * tokens * c * 10 * c
    else:  # cgspn, vit parts
        mixer = 40.0 * tokens * p.c_latent
        projections = 2.0 * tokens * c * 2 * p.c_latent
    level = impl.level
    flops = mixer
    if level in ("layer", "block", "network"):
        flops += projections
    if level in ("block", "network"):
        flops += 4.0 * tokens * c * p.mlp_hidden
    if level == "network":
        flops *= p.depth
    return flops * (3.0 if case.mode == "fwd+bwd" else 1.0)


def estimate_cost_ms(case: Case, device_type: str) -> float:
    """Expected wall time of measuring ``case``: overhead + first call + check + warm-up + timed reps."""
    call_ms = estimate_flops(case) / ASSUMED_FLOPS.get(device_type, ASSUMED_FLOPS["cpu"]) * 1e3
    timing = case.timing
    timed = min(max(timing.budget_ms, timing.min_reps * call_ms), timing.max_reps * call_ms)
    warmup = min(timing.warmup_ms, timing.max_reps * call_ms)
    return CASE_OVERHEAD_MS.get(device_type, CASE_OVERHEAD_MS["cpu"]) + 2 * call_ms + warmup + timed


def shard(cases: list[Case], world_size: int, device_type: str,
          cost: Callable[[Case, str], float] = estimate_cost_ms) -> list[list[Case]]:
    """Deterministic LPT assignment: ``result[rank]`` lists that rank's cases in the input order."""
    if world_size < 1:
        raise ValueError(f"world_size: expected >= 1, got {world_size}")
    costs = {c.id: cost(c, device_type) for c in cases}
    load = [0.0] * world_size
    assigned: dict[str, int] = {}
    for case in sorted(cases, key=lambda c: (-costs[c.id], c.id)):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        load[rank] += costs[case.id]
        assigned[case.id] = rank
    return [[c for c in cases if assigned[c.id] == rank] for rank in range(world_size)]


def rank_rows_path(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / RANK_DIR / f"rank{rank}" / ROWS_FILE


def row_key(row: Row, per_gpu: bool) -> tuple:
    """Identity of a row in a merged run: the case, or the case on one rank in variance mode."""
    return (row.case_id, row.rank) if per_gpu else (row.case_id,)


def merge_rank_rows(run_dir: Path, per_gpu: bool = False) -> int:
    """Append rows of ``ranks/rank*/rows.jsonl`` not yet in rows.jsonl, then remove the rank files.

    Rows already merged are skipped (a merge interrupted before the cleanup is simply redone).
    Returns the number of rows added.
    """
    run = RunDir(run_dir)
    seen = {row_key(r, per_gpu) for r in run.rows()}
    rank_files = sorted((Path(run_dir) / RANK_DIR).glob(f"rank*/{ROWS_FILE}"))
    added = 0
    for path in rank_files:
        for row in RunDir(path.parent).rows():
            key = row_key(row, per_gpu)
            if key not in seen:
                run.append(row)
                seen.add(key)
                added += 1
    for path in rank_files:
        os.remove(path)
        _remove_empty(path.parent)
    _remove_empty(Path(run_dir) / RANK_DIR)
    return added


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty (traces, a rank's extra files) or already gone
        pass


def done_keys(run_dir: Path, per_gpu: bool) -> set[tuple]:
    """Keys of rows already measured, merged or still in rank files."""
    rows = RunDir(run_dir).rows()
    for path in sorted((Path(run_dir) / RANK_DIR).glob(f"rank*/{ROWS_FILE}")):
        rows.extend(RunDir(path.parent).rows())
    return {row_key(r, per_gpu) for r in rows}


def gpu_spread(rows: Iterable[Row]) -> list[dict]:
    """Per case measured on several GPUs/ranks: median per GPU, spread = (max - min) / min."""
    by_case: dict[str, list[Row]] = {}
    for row in rows:
        if row.status == "ok" and row.median_ms:
            by_case.setdefault(row.case_id, []).append(row)
    out = []
    for cid, group in by_case.items():
        if len({r.rank for r in group}) < 2:
            continue
        medians = {f"rank{r.rank}" + (f"/gpu{r.gpu_index}" if r.gpu_index is not None else ""): r.median_ms for r in group}
        low, high = min(medians.values()), max(medians.values())
        first = group[0]
        out.append({"case_id": cid, "implementation": first.implementation, "level": first.level, "mode": first.mode,
                    "dtype": first.dtype, "params": first.params, "medians_ms": medians, "min_ms": low, "max_ms": high,
                    "spread": (high - low) / low})
    return out


def write_spread(run_dir: Path, rows: Iterable[Row]) -> Path | None:
    spread = gpu_spread(rows)
    if not spread:
        return None
    path = Path(run_dir) / "gpu_spread.json"
    path.write_text(json.dumps(spread, indent=1))
    return path


def _tokens(p: Params) -> int:
    try:
        return p.tokens
    except Exception:  # a case without a grid (e.g. a pure MLP) still costs something
        return 1
