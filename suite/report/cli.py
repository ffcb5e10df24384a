"""The ``report`` subcommand of ``cgspn-bench`` (registered by suite.cli)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def report_command(args: argparse.Namespace) -> int:
    from suite.report.load import ReportError
    from suite.report.render import render_report

    try:
        render_report(args.run, args.out, compare=args.compare)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``report`` to the ``cgspn-bench`` parser (the handler returns an exit code)."""
    report = subparsers.add_parser("report", help="render a run directory as an HTML report with CSV tables and PNG/SVG figures",
                                   description="Render RUN (a run directory: run.json, rows.jsonl, and gpu_spread.json after "
                                               "a variance run) into index.html, one CSV per table and one PNG + SVG per "
                                               "figure. Nothing is re-measured. A run measured on several GPUs gets a "
                                               "per-GPU table (rows, statuses, NVML clocks); a variance run "
                                               "(run --same-case-on-every-gpu) also the card-to-card spread per case.")
    report.add_argument("run", type=Path, metavar="RUN", help="run directory (e.g. results/runs/NAME)")
    report.add_argument("--compare", type=Path, metavar="OTHER",
                        help="a second run directory: adds a section with both medians of every case they share "
                             "(matched by case id, with other_over_run = other median / this median; a case measured on "
                             "several GPUs counts with the median over them), a scatter plot, and the cases only one run has")
    report.add_argument("--out", type=Path, help="report directory (default: reports/local/<name of the RUN directory>)")
    report.set_defaults(handler=report_command)
