"""The ``report`` and ``reproduce`` subcommands of ``cgspn-bench`` (registered by suite.cli)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from suite.errors import InputError, positive_float


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

    if args.resume and args.out is None:
        raise InputError("reproduce --resume: give the run to finish with --out DIR (without it a new run would start)")
    return reproduce(out=args.out, report=args.report, device=args.device, budget_scale=args.budget_scale, resume=args.resume,
                     profile=args.profile, scenarios_dir=args.scenarios)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``report`` and ``reproduce`` to the ``cgspn-bench`` parser (handlers return an exit code)."""
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

    reproduce = subparsers.add_parser("reproduce", help="run every scenario in scenarios/paper/ into one run, then report",
                                      description="Run the paper's efficiency figures (scenarios/paper/*.yaml, or --scenarios) "
                                                  "into one run directory on one device (cuda:0; for several GPUs use "
                                                  "'run --gpus all scenarios/paper' and then 'report'), record the elapsed "
                                                  "time against the 15-minute budget in run.json, and render its report. "
                                                  "Without CUDA (or with --device cpu) and no --scenarios it runs "
                                                  "scenarios/smoke-cpu.yaml instead, which checks the pipeline, not the paper.")
    reproduce.add_argument("--out", type=Path, help="run directory (default: results/runs/reproduce-<UTC stamp>)")
    reproduce.add_argument("--report", type=Path, help="report directory (default: reports/local/<name of the --out directory>)")
    reproduce.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda if available, else cpu")
    reproduce.add_argument("--budget-scale", type=positive_float, default=1.0, metavar="F",
                           help="multiply every scenario's timing budget and warm-up time by F (repetition counts unchanged)")
    reproduce.add_argument("--resume", action="store_true",
                           help="finish an interrupted reproduce run; give its directory with --out")
    reproduce.add_argument("--profile", action="store_true", help="profile every case, not only scenarios asking for it")
    reproduce.add_argument("--scenarios", type=Path, default=None, metavar="PATH",
                           help="a scenario folder or file instead of scenarios/paper (also used on CPU)")
    reproduce.set_defaults(handler=reproduce_command)
