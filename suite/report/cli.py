"""The ``report`` and ``reproduce`` subcommands of ``cgspn-bench`` (registered by suite.cli)."""

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


def reproduce_command(args: argparse.Namespace) -> int:
    from suite.report.reproduce import reproduce

    return reproduce(out=args.out, report=args.report, device=args.device, budget_scale=args.budget_scale, resume=args.resume,
                     profile=args.profile, scenarios_dir=args.scenarios)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``report`` and ``reproduce`` to the ``cgspn-bench`` parser (handlers return an exit code)."""
    report = subparsers.add_parser("report", help="render a run directory as an HTML/CSV/PNG report",
                                   description="Render RUN (a run directory) into index.html, one CSV per table and one "
                                               "PNG + SVG per figure.")
    report.add_argument("run", type=Path, metavar="RUN", help="run directory (results/runs/NAME)")
    report.add_argument("--compare", type=Path, metavar="OTHER", help="a second run shown side by side, ratios per case")
    report.add_argument("--out", type=Path, help="report directory (default: reports/local/<run name>)")
    report.set_defaults(handler=report_command)

    reproduce = subparsers.add_parser("reproduce", help="run every scenario in scenarios/paper/ into one run, then report",
                                      description="Run the paper's efficiency figures (scenarios/paper/*.yaml) into one run "
                                                  "and render its report. On CPU it runs scenarios/smoke-cpu.yaml instead.")
    reproduce.add_argument("--out", type=Path, help="run directory (default: results/runs/reproduce-<UTC stamp>)")
    reproduce.add_argument("--report", type=Path, help="report directory (default: reports/local/<run name>)")
    reproduce.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda if available, else cpu")
    reproduce.add_argument("--budget-scale", type=float, default=1.0, metavar="F",
                           help="multiply every scenario's timing budget and warm-up by F")
    reproduce.add_argument("--resume", action="store_true", help="finish an interrupted reproduce run in --out")
    reproduce.add_argument("--profile", action="store_true", help="profile every case, not only scenarios asking for it")
    reproduce.add_argument("--scenarios", type=Path, default=None, metavar="DIR",
                           help="scenario folder or file (default: scenarios/paper; on CPU scenarios/smoke-cpu.yaml)")
    reproduce.set_defaults(handler=reproduce_command)
