"""``cgspn-bench reproduce``: every efficiency figure of the paper in one run, then its report.

Runs all of ``scenarios/paper/*.yaml`` through the runner into one run directory (cases shared
by two figures are measured once), records the elapsed time in run.json, and renders the report.
The whole set is budgeted to 15 minutes on one H100/H200 (the scenarios' timing budgets are
chosen for that; ``--budget-scale`` trades time for tighter medians). Without CUDA the paper's
shapes cannot run, so it says so and runs the CPU smoke scenario instead.

    cgspn-bench reproduce [--out DIR] [--report DIR] [--device cuda|cpu] [--budget-scale F] [--resume] [--profile]
                          [--scenarios PATH]

``suite.cli`` imports this module to build its parser (:func:`register_cli`); the runner and the
report load when the command runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console

from suite.errors import InputError, positive_float

PAPER_SCENARIOS = Path("scenarios/paper")
CPU_FALLBACK = Path("scenarios/smoke-cpu.yaml")
CHECKOUT = Path(__file__).resolve().parents[1]  # the repository this package runs from (an editable install)


def shipped(path: Path) -> Path:
    """``path`` as given when it exists from here, else the same path in the checkout: the main job also
    works when started outside the repository root."""
    return path if path.exists() or path.is_absolute() or not (CHECKOUT / path).exists() else CHECKOUT / path
BUDGET_S = 15 * 60  # the paper set on one H100/H200
DESCRIPTION = ("Run the paper's efficiency figures (scenarios/paper/*.yaml, or --scenarios) "
               "into one run directory on one device (cuda:0; for several GPUs use "
               "'run --gpus all scenarios/paper' and then 'report'), record the elapsed "
               "time against the 15-minute budget in run.json, and render its report. "
               "Without CUDA (or with --device cpu) and no --scenarios it runs "
               "scenarios/smoke-cpu.yaml instead, which checks the pipeline, not the paper.")


def default_out() -> Path:
    return Path("results/runs") / f"reproduce-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def reproduce(out: Path | None = None, report: Path | None = None, device: str | None = None, budget_scale: float = 1.0,
              resume: bool = False, profile: bool = False, scenarios_dir: Path | None = None,
              cpu_scenarios: Path = CPU_FALLBACK, console: Console | None = None) -> int:
    """Run the paper scenarios (or, without CUDA, ``cpu_scenarios``) and render the report; returns an exit code."""
    from suite.cli import configure_device

    console = console or Console(stderr=True)
    device = configure_device(device)

    from suite.report.render import render_report
    from suite.results import RunDir
    from suite.runner import RunOptions, refuse_scenario_errors, run_for_command
    from suite.scenario import load_scenarios

    source = Path(scenarios_dir) if scenarios_dir is not None else shipped(PAPER_SCENARIOS)
    fallback = device == "cpu"
    if fallback:
        if scenarios_dir is None:
            source = shipped(Path(cpu_scenarios))
        console.print(f"[yellow]Running on the CPU: the paper's figures need a GPU (B=32, C=1152, up to 2058 px). "
                      f"Running {source} instead, a CPU smoke run that checks the pipeline, not the paper.[/]")
    scenarios, errors = load_scenarios([source])
    if refuse_scenario_errors(errors, console):
        return 2
    out = Path(out) if out is not None else default_out()
    console.print(f"reproduce: {len(scenarios)} scenario(s) from {source} on {device} -> {out}")
    options = RunOptions(out=out, device=device, resume=resume, profile=profile, budget_scale=budget_scale)
    start = time.perf_counter()
    if run_for_command(scenarios, options, console) is None:
        return 2
    elapsed = time.perf_counter() - start

    run = RunDir(out)
    meta = run.meta()
    meta["elapsed_s"] = meta.get("elapsed_s", 0.0) + elapsed if resume else elapsed  # a resumed run adds its parts
    meta["reproduce"] = {"scenarios": str(source), "cpu_fallback": fallback, "budget_s": BUDGET_S,
                         "within_budget": meta["elapsed_s"] <= BUDGET_S, "budget_scale": budget_scale}
    run.write_meta(meta)
    minutes = meta["elapsed_s"] / 60
    verdict = "within" if meta["elapsed_s"] <= BUDGET_S else "OVER"
    style = "green" if verdict == "within" else "red"
    console.print(f"[{style}]elapsed {minutes:.1f} min ({verdict} the {BUDGET_S // 60}-minute budget"
                  f"{'' if not fallback else ', which applies to the GPU paper set'})[/]")
    render_report(out, report)
    return 0


def reproduce_command(args: argparse.Namespace) -> int:
    if args.resume and args.out is None:
        raise InputError("reproduce --resume: give the run to finish with --out DIR (without it a new run would start)")
    return reproduce(out=args.out, report=args.report, device=args.device, budget_scale=args.budget_scale, resume=args.resume,
                     profile=args.profile, scenarios_dir=args.scenarios)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``reproduce`` to the ``cgspn-bench`` parser (the handler returns an exit code)."""
    reproduce = subparsers.add_parser("reproduce", help="run every scenario in scenarios/paper/ into one run, then report",
                                      description=DESCRIPTION)
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
