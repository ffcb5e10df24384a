"""GPU check of the attention family: correctness tests, then sublayer/block timings per backend.

Run on an H100/H200 from the repository root (about 2-4 minutes)::

    python -m suite.gpu.attention_check --out results/gpu-check/attention

1. Runs the attention pytest files (on a GPU their CUDA-only cases run instead of skipping: each
   backend vs the float64 definition in fp32/bf16/fp16, tiled FlashAttention vs math per tile,
   blocks with shared weights across math / FlashAttention / cuDNN / mem-efficient, the hybrid).
2. Measures every attention variant at sublayer and block level at grids 27, 74, 147 (378, 1036,
   2058 px), B=32, C=1152, 16 x 72 heads, bf16, forward, through ``suite.measure.measure_case``
   (correctness check first; math runs out of memory from grid 74 on: recorded as ``oom``), plus
   ``vit-mlp-half`` (the block ceiling) and, when registered, ``cgspn-scan`` / ``cgspn``.

Writes ``<out>/run.json`` + ``rows.jsonl`` + ``rows.csv`` (the suite's schema), ``tests.xml``
(JUnit) and ``attention_check.json`` (test outcome, median table, environment), and prints the
table. Exit status: 0 when the tests passed and no attention row errored or failed its check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kernels import registry
from kernels.attention import VARIANTS
from kernels.params import Params
from suite.environment import collect_environment
from suite.gpu.common import check_device, print_table, run_pytest
from suite.measure import TimingSettings, measure_case
from suite.results import Row, RunDir

TEST_FILES = ("suite/tests/test_attention.py", "suite/tests/test_attention_modules.py", "suite/tests/test_hybrid.py")
SHAPE = {"batch": 32, "channels": 1152, "heads": 16, "mlp_hidden": 4304, "tile": 27, "compression": 18}
TINY_SHAPE = {"batch": 2, "channels": 48, "heads": 2, "mlp_hidden": 40, "tile": 3, "compression": 6}  # --tiny: plumbing check
TIMING = TimingSettings(budget_ms=150, warmup_ms=25, min_reps=5, max_reps=200, l2_flush="auto", cuda_graph=False)
EXTRA = {"sublayer": ("cgspn-scan",), "block": ("vit-mlp-half", "cgspn")}  # comparison rows, when registered


def cases(grids: list[int], shape: dict) -> list[tuple[str, str, Params]]:
    """(implementation, level, params) in measuring order: cheap grids first, so a slow card still
    reports the small shapes."""
    names = registry.names()
    out = []
    for grid in grids:
        params = Params(grid=grid, **shape)
        for level in ("sublayer", "block"):
            for name in [f"attention-{v}" for v in VARIANTS] + [n for n in EXTRA[level] if n in names]:
                out.append((name, level, params))
    return out


def cell(row: Row) -> str:
    if row.status == "ok":
        return f"{row.median_ms:.3f}"
    return row.status


def table(rows: list[Row], grids: list[int]) -> list[list[str]]:
    """Median ms per (level, implementation) x grid; a status word where no time exists."""
    by_key = {(r.level, r.implementation, r.params.get("grid")): r for r in rows}
    header = ["level", "implementation"] + [f"grid {g} ms" for g in grids] + ["backend"]
    out = [header]
    for level, name in dict.fromkeys((r.level, r.implementation) for r in rows):
        found = [by_key.get((level, name, g)) for g in grids]
        detail = next((r.backend_detail for r in found if r is not None and r.backend_detail), "")
        out.append([level, name] + [cell(r) if r is not None else "-" for r in found] + [detail[:60]])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/gpu-check/attention"), help="output folder")
    parser.add_argument("--grids", type=int, nargs="+", default=[27, 74, 147], help="token grid sides to time")
    parser.add_argument("--skip-tests", action="store_true", help="only time (the tests already ran)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on whatever device exists: checks the script itself")
    args = parser.parse_args(argv)
    device = check_device("attention_check", args.tiny)
    if device is None:
        return 2
    shape = TINY_SHAPE if args.tiny else SHAPE
    args.out.mkdir(parents=True, exist_ok=True)
    run = RunDir(args.out)
    if run.rows_path.exists():
        run.rows_path.unlink()  # a check is one fresh run, never appended to an older one
    environment = collect_environment(device)
    run.write_meta({"name": "attention-check", "environment": environment, "timing": TIMING.__dict__, "shape": shape})

    tests = {"skipped": True} if args.skip_tests else run_pytest(TEST_FILES, args.out)
    if not args.skip_tests:
        print(f"tests: {tests['summary']} ({tests['seconds']} s)")

    rows = []
    for name, level, params in cases(args.grids, shape):
        row = measure_case(registry.get(name, level), params, "bfloat16", device, "fwd", TIMING, check=True,
                           scenario="attention-check", run_dir=args.out)
        run.append(row)
        rows.append(row)
        note = row.message.splitlines()[0][:80] if row.message else ""
        print(f"  {level:8s} {name:24s} grid {params.grid:3d}: {cell(row):>10s}  {note}")
    run.write_csv()

    lines = table(rows, args.grids)
    print_table(lines)
    bad = [r for r in rows if r.implementation.startswith("attention") and r.status in ("error", "failed-check")]
    bad_rows = [f"{r.implementation}/{r.level}/{r.params}: {r.status}: {r.message[:300]}" for r in bad]
    summary = {"tests": tests, "table": lines, "bad_rows": bad_rows, "environment": environment}
    (args.out / "attention_check.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"wrote {args.out}/attention_check.json, rows.jsonl, rows.csv, tests.xml")
    tests_ok = args.skip_tests or tests["returncode"] == 0
    return 0 if tests_ok and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
