"""Per-kernel table, category roll-up and occupancy table of one profiled case.

All times are per repetition (the trace's totals divided by the number of profiled
repetitions); ``share`` is a kernel's part of the case's summed device time. Kernels running
concurrently on several streams each count their full duration, so shares describe where the
GPU's work went, not the wall-clock critical path.
"""

from __future__ import annotations

from collections import defaultdict

from suite.profiling.categories import CATEGORIES, DEFAULT_MLP_HIDDEN, categorize
from suite.profiling.events import Activity
from suite.profiling.occupancy import DeviceLimits, OccupancyError, launch_occupancy
from suite.profiling.triton_meta import match_launch


def _per_rep(value: float, reps: int) -> float:
    return value / max(reps, 1)


def kernel_table(activities: list[Activity], reps: int = 1, *, mlp_hidden: int | None = DEFAULT_MLP_HIDDEN) -> list[dict]:
    """One row per (kernel name, category): calls, total_ms, mean_ms, share; longest first."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for a in activities:
        groups[(a.name, categorize(a.name, a.context, mlp_hidden=mlp_hidden))].append(a.dur_us)
    grand_us = sum(sum(d) for d in groups.values())
    rows = []
    for (name, category), durations in groups.items():
        total_us = sum(durations)
        calls = len(durations) / max(reps, 1)
        rows.append({
            "name": name,
            "category": category,
            "calls": int(calls) if calls == int(calls) else round(calls, 3),
            "total_ms": _per_rep(total_us, reps) / 1e3,
            "mean_ms": total_us / len(durations) / 1e3,
            "share": total_us / grand_us if grand_us > 0 else 0.0,
        })
    rows.sort(key=lambda r: -r["total_ms"])
    return rows


def category_totals(table: list[dict]) -> dict[str, float]:
    """Milliseconds per category (every category listed, in display order)."""
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for row in table:
        totals[row["category"]] = totals.get(row["category"], 0.0) + row["total_ms"]
    return totals


def occupancy_table(activities: list[Activity], limits: DeviceLimits, reps: int = 1, *,
                    mlp_hidden: int | None = DEFAULT_MLP_HIDDEN, triton: dict | None = None) -> list[dict]:
    """One row per distinct launch (kernel name, grid, block, registers, shared memory).

    Columns: launch shape, theoretical occupancy, resident blocks per SM and for the whole GPU,
    waves, limiter, CUPTI's estimated achieved occupancy (duration-weighted mean, when the trace
    has it) and, from newer traces, CUPTI's own resident-block count; calls and time per
    repetition. Triton kernels also get their matching compile metadata (``triton``: n_regs,
    n_spills, shared, num_warps, num_stages).
    """
    groups: dict[tuple, list[Activity]] = defaultdict(list)
    for a in activities:
        if a.kind == "kernel" and a.launch is not None:
            l = a.launch
            groups[(a.name, l.grid, l.block, l.registers_per_thread, l.shared_memory_bytes)].append(a)
    triton_kernels = (triton or {}).get("kernels", {})
    rows = []
    for (name, grid, block, regs, smem), launches in groups.items():
        total_us = sum(a.dur_us for a in launches)
        row = {"name": name, "category": categorize(name, launches[0].context, mlp_hidden=mlp_hidden),
               "calls": len(launches) / max(reps, 1), "total_ms": _per_rep(total_us, reps) / 1e3,
               "mean_ms": total_us / len(launches) / 1e3}
        try:
            row.update(launch_occupancy(grid, block, regs, smem, limits))
        except OccupancyError as exc:  # e.g. a launch the published table cannot describe
            row.update({"grid": list(grid), "block": list(block), "grid_blocks": launches[0].launch.grid_blocks,
                        "registers_per_thread": regs, "shared_memory_bytes": smem, "error": str(exc)})
        estimates = [(a.launch.est_achieved_occupancy_pct, a.dur_us) for a in launches
                     if a.launch.est_achieved_occupancy_pct is not None]
        weight = sum(w for _, w in estimates)
        row["est_achieved_occupancy"] = (sum(v * w for v, w in estimates) / weight / 100.0) if weight > 0 else None
        cupti = launches[0].launch.cupti_occupancy
        if cupti:  # CUPTI's own calculator, at the carveout the driver actually chose: a cross-check
            row["cupti_resident_blocks_per_sm"] = cupti.get("activeBlocksPerMultiprocessor")
            row["cupti_limiter"] = cupti.get("limitingFactors")
        if name in triton_kernels:
            row["triton"] = match_launch(triton_kernels[name]["variants"], launches[0].launch.threads_per_block, smem, regs,
                                         limits.warp_size) or triton_kernels[name]["variants"]
        rows.append(row)
    rows.sort(key=lambda r: -r["total_ms"])
    return rows
