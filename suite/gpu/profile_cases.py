"""GPU profiling pass: where block time goes, and where the "concurrency wall" comes from.

Run from the repository root on the GPU box (about 3-5 minutes)::

    python -m suite.gpu.profile_cases --out results/h100/<date>-profile

1. **Block breakdowns** -- ``cgspn``, ``attention-cudnn`` and ``attention-flash`` blocks at 1036 px
   (74 x 74 tokens), B=32, bf16, forward: timed, then profiled; their category roll-ups side by
   side and each one's top kernels.
2. **Scan occupancy** -- the original GSPN sublayer (``gspn-original``: one launch per scan step,
   one thread per element) at C = 288, 576 and B = 8, 16 on the 74 grid (the paper's Fig. 2), next
   to the C-GSPN scan (``cgspn-scan``) at the same C and B (latent C_c = C / 18) and at the
   reference shape (B=32, C=1152): per propagation kernel, launches per repetition, grid blocks,
   resident blocks per SM, the GPU's resident capacity, waves and occupancy, with the time ratios
   of each doubling of C or B. A wall shows as a time ratio well above the work ratio (2x); the
   waves and the L2 hit rate (ncu) say whether it comes from filling the GPU or from the cache.
3. **ncu** -- Nsight Compute on the C-GSPN scan at the reference shape (achieved DRAM bandwidth
   vs. the ideal bytes) and on the first step launches of the original scan at B=8, C=288/576.

Outputs under ``--out``: ``rows.jsonl``/``rows.csv``/``run.json`` (the suite's results schema,
each row's ``profile`` holding the full kernel and occupancy tables), ``traces/`` (Chrome traces;
``tensorboard --logdir <out>/traces``), ``block_categories.csv``, ``block_top_kernels.csv``,
``scan_occupancy.csv``, ``concurrency_wall.csv``, ``ncu.json`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from kernels.params import Params
from kernels.registry import get
from suite.environment import collect_environment
from suite.measure import TimingSettings, measure_case
from suite.profiling.categories import CATEGORIES, PROPAGATION, short_kernel_name
from suite.profiling.ncu import ncu_case
from suite.profiling.trace import profile_step
from suite.results import Row, RunDir

BLOCK_IMPLEMENTATIONS = ("cgspn", "attention-cudnn", "attention-flash")
SCAN_IMPLEMENTATIONS = ("gspn-original", "cgspn-scan")
FIG2_POINTS = ((288, 8), (576, 8), (288, 16), (576, 16))  # (C, B) of the paper's Fig. 2 sweep
REFERENCE_SCAN = {"batch": 32, "channels": 1152}
MODE = "fwd"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m suite.gpu.profile_cases", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder, e.g. results/h100/<date>-profile")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--resolution", type=int, default=1036, help="block cases: image side in pixels")
    parser.add_argument("--batch", type=int, default=32, help="block cases: batch")
    parser.add_argument("--grid", type=int, default=74, help="scan cases: token grid side")
    parser.add_argument("--budget-ms", type=float, default=300.0, help="timing budget per case")
    parser.add_argument("--no-check", action="store_true", help="skip the correctness check before timing")
    parser.add_argument("--no-ncu", action="store_true", help="skip the Nsight Compute pass")
    parser.add_argument("--ncu-launches", type=int, default=6, help="original-scan step launches ncu profiles")
    return parser.parse_args(argv)


# ---- running cases ---------------------------------------------------------------------------------


def run_case(name: str, level: str, params: Params, args: argparse.Namespace, run: RunDir) -> Row:
    """Check, time and profile one case (suite.measure.measure_case); the row is appended to ``run``."""
    settings = TimingSettings(budget_ms=args.budget_ms, warmup_ms=min(50.0, args.budget_ms))
    started = time.perf_counter()
    row = measure_case(get(name, level), params, args.dtype, args.device, MODE, settings, check=not args.no_check,
                       profile=True, profiler=profile_step, run_dir=run.path, scenario="profile_cases")
    run.append(row)
    took = time.perf_counter() - started
    median = f"{row.median_ms:.3f} ms" if row.median_ms is not None else "-"
    print(f"  {name:<18} {level:<9} {json.dumps(row.params):<70} {row.status:<12} {median:>12}  ({took:.0f} s)"
          + (f"  {row.message.splitlines()[0][:120]}" if row.status != "ok" and row.message else ""), flush=True)
    return row


def _profile(row: Row) -> dict:
    profile = row.profile or {}
    return {} if "error" in profile else profile


# ---- 1. block breakdowns ----------------------------------------------------------------------------


def block_categories(rows: list[Row]) -> pd.DataFrame:
    """Category x implementation: ms per forward and share of the summed kernel time."""
    table = {}
    for row in rows:
        profile = _profile(row)
        if not profile:
            continue
        total = profile["device_time_ms"] or 1.0
        table[(row.implementation, "ms")] = {c: profile["categories"].get(c, 0.0) for c in CATEGORIES}
        table[(row.implementation, "share")] = {c: profile["categories"].get(c, 0.0) / total for c in CATEGORIES}
        table[(row.implementation, "ms")]["kernel total"] = profile["device_time_ms"]
        table[(row.implementation, "ms")]["measured median"] = row.median_ms
    frame = pd.DataFrame(table)
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame


def block_top_kernels(rows: list[Row], top: int = 12) -> pd.DataFrame:
    records = []
    for row in rows:
        for rank, k in enumerate(_profile(row).get("kernels", [])[:top], start=1):
            records.append({"implementation": row.implementation, "rank": rank, "kernel": short_kernel_name(k["name"], 70),
                            "category": k["category"], "calls": k["calls"], "total_ms": k["total_ms"], "share": k["share"],
                            "full_name": k["name"]})
    return pd.DataFrame(records)


# ---- 2. scan occupancy and the concurrency wall ------------------------------------------------------


def scan_occupancy(rows: list[Row]) -> pd.DataFrame:
    """One line per propagation launch configuration of each scan case."""
    records = []
    for row in rows:
        profile = _profile(row)
        for occ in profile.get("occupancy", []):
            if occ["category"] != PROPAGATION:
                continue
            records.append({
                "implementation": row.implementation, "C": row.params.get("channels"), "B": row.params.get("batch"),
                "median_ms": row.median_ms, "kernel_total_ms": profile["device_time_ms"],
                "kernel": short_kernel_name(occ["name"], 40), "launches_per_rep": occ["calls"], "kernel_ms": occ["total_ms"],
                "mean_launch_us": occ["mean_ms"] * 1e3, "grid_blocks": occ["grid_blocks"],
                "threads_per_block": occ["threads_per_block"], "registers": occ["registers_per_thread"],
                "smem_bytes": occ["shared_memory_bytes"], "resident_blocks_per_sm": occ.get("resident_blocks_per_sm"),
                "resident_capacity": occ.get("resident_capacity_blocks"), "waves": occ.get("waves"),
                "theoretical_occupancy": occ.get("theoretical_occupancy"),
                "est_achieved_occupancy": occ.get("est_achieved_occupancy"),
                "limiter": occ.get("limiter"),
            })
    return pd.DataFrame(records)


def _main_launch(frame: pd.DataFrame, impl: str, c: int, b: int) -> pd.Series | None:
    chosen = frame[(frame.implementation == impl) & (frame.C == c) & (frame.B == b)]
    return None if chosen.empty else chosen.sort_values("kernel_ms").iloc[-1]


def _paper_ratio(impl: str, axis: str, start: tuple[int, int]) -> float | None:
    """Fig. 2's jumps on the A100 (original GSPN, from C=288/B=8): 11.57x for C -> 576, 7.76x for B -> 16."""
    if impl != "gspn-original" or start != (288, 8):
        return None
    return {"C": 11.57, "B": 7.76}[axis]


def concurrency_wall(frame: pd.DataFrame) -> pd.DataFrame:
    """Each doubling of C or B: time ratio against the 2x work ratio, waves before and after."""
    if frame.empty:
        return pd.DataFrame()
    steps = [("C", (288, 8), (576, 8)), ("C", (288, 16), (576, 16)), ("B", (288, 8), (288, 16)), ("B", (576, 8), (576, 16))]
    records = []
    for impl in SCAN_IMPLEMENTATIONS:
        for axis, (c0, b0), (c1, b1) in steps:
            before, after = _main_launch(frame, impl, c0, b0), _main_launch(frame, impl, c1, b1)
            if before is None or after is None or not before.median_ms:
                continue
            records.append({
                "implementation": impl, "doubling": f"{axis}: C{c0}/B{b0} -> C{c1}/B{b1}", "work_ratio": 2.0,
                "time_ratio": after.median_ms / before.median_ms, "paper_ratio": _paper_ratio(impl, axis, (c0, b0)),
                "waves_before": before.waves, "waves_after": after.waves,
                "launch_us_before": before.mean_launch_us, "launch_us_after": after.mean_launch_us,
                "launches_per_rep": after.launches_per_rep,
                "achieved_occ_before": before.est_achieved_occupancy, "achieved_occ_after": after.est_achieved_occupancy,
            })
    return pd.DataFrame(records)


# ---- 3. Nsight Compute ---------------------------------------------------------------------------------


def ncu_pass(args: argparse.Namespace, out: Path, reference_scan: Row | None) -> dict:
    results = {}
    scan_params = {**REFERENCE_SCAN, "grid": args.grid}
    print(f"ncu: cgspn-scan {scan_params}", flush=True)
    scan = ncu_case("cgspn-scan", "sublayer", scan_params, args.dtype, MODE, out_dir=out / "ncu")
    if reference_scan is not None and scan.get("summary") and reference_scan.bytes_ideal:
        summary = scan["summary"]
        summary["bytes_ideal"] = reference_scan.bytes_ideal
        summary["dram_bytes_over_ideal"] = summary["dram_bytes"] / reference_scan.bytes_ideal
        summary["ideal_gbps_at_kernel_time"] = reference_scan.bytes_ideal / (summary["duration_ms"] * 1e-3) / 1e9
    results["cgspn-scan"] = scan
    if not scan.get("available", False):
        return results  # no ncu here: one reason is enough
    for c in (288, 576):
        params = {"batch": 8, "channels": c, "grid": args.grid}
        print(f"ncu: gspn-original {params} (first {args.ncu_launches} launches)", flush=True)
        results[f"gspn-original-C{c}-B8"] = ncu_case("gspn-original", "sublayer", params, args.dtype, MODE,
                                                     out_dir=out / "ncu", launch_count=args.ncu_launches,
                                                     kernel_name="original_scan")
    return results


def _print_ncu(results: dict) -> None:
    for name, result in results.items():
        if not result.get("available", False):
            print(f"  {name}: ncu unavailable: {result.get('reason')}")
        elif "error" in result:
            print(f"  {name}: ncu failed: {result['error'][-400:]}")
        else:
            print(f"  {name}: {json.dumps(result['summary'], default=float)}")
            for k in result["kernels"]:
                print(f"    {short_kernel_name(k['name'], 40):<40} {k.get('duration_ms', 0):.4f} ms  "
                      f"DRAM {k.get('dram_gbps') or 0:.0f} GB/s ({k.get('dram_throughput_pct') or 0:.0f}% of peak)  "
                      f"L2 hit {k.get('l2_hit_rate_pct') or 0:.0f}%  occupancy {k.get('achieved_occupancy') or 0:.2f}  "
                      f"regs {k.get('registers_per_thread')}")


# ---- main ------------------------------------------------------------------------------------------------


def _environment(device: str) -> dict:
    return collect_environment(device)


def _l2_bytes(device: str) -> int | None:
    """L2 size: the original scan's per-step column gathers hit or miss it (compare ncu's L2 hit rate)."""
    if torch.device(device).type != "cuda":
        return None
    return getattr(torch.cuda.get_device_properties(torch.device(device)), "L2_cache_size", None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("profile_cases: CUDA is not available here; this script profiles GPU kernels", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = RunDir(out)
    environment = _environment(args.device)
    run.write_meta({"scenario": "suite/gpu/profile_cases.py", "args": vars(args), "environment": environment})
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)

    print(f"1. blocks at {args.resolution} px, B={args.batch}, {args.dtype}, {MODE}", flush=True)
    block_params = Params(batch=args.batch, resolution=args.resolution)
    blocks = [run_case(name, "block", block_params, args, run) for name in BLOCK_IMPLEMENTATIONS]
    categories = block_categories(blocks)
    top = block_top_kernels(blocks)
    categories.to_csv(out / "block_categories.csv")
    top.to_csv(out / "block_top_kernels.csv", index=False)
    print(categories.round(3).to_string(), "\n")
    if not top.empty:
        print(top.drop(columns=["full_name"]).round(4).to_string(index=False), "\n")

    print(f"2. scans on the {args.grid} grid, {args.dtype}, {MODE}", flush=True)
    scans = [run_case(impl, "sublayer", Params(batch=b, channels=c, grid=args.grid), args, run)
             for impl in SCAN_IMPLEMENTATIONS for c, b in FIG2_POINTS]
    reference_scan = run_case("cgspn-scan", "sublayer", Params(grid=args.grid, **REFERENCE_SCAN), args, run)
    occupancy = scan_occupancy([*scans, reference_scan])
    wall = concurrency_wall(occupancy)
    occupancy.to_csv(out / "scan_occupancy.csv", index=False)
    wall.to_csv(out / "concurrency_wall.csv", index=False)
    if not occupancy.empty:
        print(occupancy.round(4).to_string(index=False), "\n")
    if not wall.empty:
        print(wall.round(3).to_string(index=False), "\n")

    ncu = {}
    if not args.no_ncu:
        print("3. Nsight Compute", flush=True)
        ncu = ncu_pass(args, out, reference_scan if reference_scan.status == "ok" else None)
        (out / "ncu.json").write_text(json.dumps(ncu, indent=2, default=float))
        _print_ncu(ncu)

    run.write_csv()
    summary = {"environment": environment, "l2_cache_bytes": _l2_bytes(args.device),
               "block_categories": {f"{impl} {unit}": column.dropna().to_dict() for (impl, unit), column in categories.items()},
               "scan_occupancy": occupancy.to_dict(orient="records"), "concurrency_wall": wall.to_dict(orient="records"),
               "ncu": {k: v.get("summary", v.get("reason", v.get("error"))) for k, v in ncu.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"wrote {out}/ (summary.json, *.csv, rows.jsonl, traces/: tensorboard --logdir {out}/traces)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
