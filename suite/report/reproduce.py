"""``cgspn-bench reproduce``: every efficiency figure of the paper in one run, then its report.

Runs all of ``scenarios/paper/*.yaml`` through the runner into one run directory (cases shared
by two figures are measured once), records the elapsed time in run.json, and renders the report.
The whole set is budgeted to 15 minutes on one H100/H200 (the scenarios' timing budgets are
chosen for that; ``--budget-scale`` trades time for tighter medians). Without CUDA the paper's
shapes cannot run, so it says so and runs the CPU smoke scenario instead.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

PAPER_SCENARIOS = Path("scenarios/paper")
CPU_FALLBACK = Path("scenarios/smoke-cpu.yaml")
BUDGET_S = 15 * 60  # the paper set on one H100/H200


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
    from suite.runner import RunError, RunOptions, run_scenarios
    from suite.scenario import load_scenarios

    source = Path(scenarios_dir) if scenarios_dir is not None else PAPER_SCENARIOS
    fallback = device == "cpu"
    if fallback:
        if scenarios_dir is None:
            source = Path(cpu_scenarios)
        console.print(f"[yellow]Running on the CPU: the paper's figures need a GPU (B=32, C=1152, up to 2058 px). "
                      f"Running {source} instead, a CPU smoke run that checks the pipeline, not the paper.[/]")
    scenarios, errors = load_scenarios([source])
    if errors:
        for line in errors:
            console.print(line, markup=False, highlight=False)
        console.print(f"{len(errors)} scenario error(s); nothing was run", style="red")
        return 2
    out = Path(out) if out is not None else default_out()
    console.print(f"reproduce: {len(scenarios)} scenario(s) from {source} on {device} -> {out}")
    options = RunOptions(out=out, device=device, resume=resume, profile=profile, budget_scale=budget_scale)
    start = time.perf_counter()
    try:
        summary = run_scenarios(scenarios, options, console=console)
    except RunError as exc:
        console.print(f"error: {exc}", style="red", markup=False)
        return 2
    elapsed = time.perf_counter() - start
    for line in summary.skipped_scenarios:
        console.print(line, markup=False, highlight=False)

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
