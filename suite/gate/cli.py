"""``cgspn-bench gate`` and ``cgspn-bench baseline``: the regression gate's command line.

Exit codes: 0 the gate passed, 1 it failed (a regression, a correctness failure, a broken
case), 2 it could not compare (bad input, another GPU model's baseline, no baseline).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from suite.errors import describe, positive_float
from suite.gate.baseline import DEFAULT_DIR, BaselineError, Snapshot, baseline_path, check_comparable, update_baseline
from suite.gate.compare import GpuMismatch, compare_snapshots
from suite.gate.confirm import RECOMMENDED, confirm_regressions
from suite.gate.decision import DecisionRule
from suite.gate.render import markdown, render
from suite.gate.thresholds import ThresholdError, Thresholds, parse_percent
from suite.rundir_lock import RunDirLock

EXIT_PASSED, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2
GATE_HELP = """Judge a run against the baseline of its card (or, with --ab, the current tree against a git ref
measured in this job). A case regresses when its median is slower than its max slowdown AND the shift
exceeds the IQR noise of both runs AND the bootstrap CI of the median ratio excludes 1 AND a one-sided
Mann-Whitney U test is significant. With --confirm N (stored-baseline mode; CI uses 3) every
first-pass regression is re-measured N times in this job and fails only if a majority of the N
re-measurements are regressions on their own; the others are listed as cleared. See docs/gates.md.

Exit codes: 0 passed; 1 failed (a regression, a correctness failure, a case that errored or ran out
of memory where the baseline did not); 2 could not compare (bad input, a baseline of another GPU model,
no baseline for this card)."""
DEFAULT_AB_SCENARIO = "scenarios/gate.yaml"


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``gate`` and ``baseline`` to the suite's CLI (called by suite.cli)."""
    gate = subparsers.add_parser("gate", help="fail on speed regressions or correctness failures against a baseline or a git ref",
                                 description=GATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = gate.add_argument_group("what to compare (either --baseline and --current, or --ab)")
    source.add_argument("--baseline", help="baseline file (results/baselines/<card>.json), a directory of them "
                        "(the current card's file is picked) or a run directory")
    source.add_argument("--current", help="the run directory to judge (results/runs/NAME)")
    source.add_argument("--ab", metavar="REF", help="A/B mode: measure this git ref (in a worktree) and the current tree "
                        "interleaved in this job; no stored baseline needed")
    ab = gate.add_argument_group("A/B mode")
    ab.add_argument("--scenario", default=DEFAULT_AB_SCENARIO, help=f"scenario to measure (default {DEFAULT_AB_SCENARIO})")
    ab.add_argument("--rounds", type=int, default=3, help="measurements per case and side, alternating A/B (default 3)")
    ab.add_argument("--device", choices=("cuda", "cpu"), help="where A/B and --confirm measure (default: A/B cuda if available, "
                    "else cpu; --confirm the run's own device)")
    ab.add_argument("--out", help="where the two pooled runs go (default results/runs/ab-<ref>-<time>)")
    ab.add_argument("--budget-scale", type=positive_float, default=1.0, help="multiply every case's timing budget")
    ab.add_argument("--no-check", action="store_true", help="skip the correctness check before timing")
    rule = gate.add_argument_group("decision rule")
    rule.add_argument("--max-slowdown", default=None, help="default max slowdown per case, e.g. 10%% (default 10%%; "
                      "overrides the thresholds file's default)")
    rule.add_argument("--thresholds", help="YAML file with per-case max slowdowns (see docs/gates.md)")
    rule.add_argument("--alpha", type=float, default=DecisionRule.alpha, help="Mann-Whitney U significance level (default 0.01)")
    rule.add_argument("--confirm", type=int, default=0, metavar="N",
                      help="re-measure each first-pass regression N more times here (same scenario settings, same card) "
                      f"and fail only when a majority of them regress; default 0 (off), CI uses {RECOMMENDED}; "
                      "the rows are appended to --current")
    rule.add_argument("--allow-other-gpu", action="store_true", help="compare against a baseline of another GPU model")
    rule.add_argument("--fail-on-missing", action="store_true", help="also fail when a baseline case is absent from the run")
    out = gate.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="write the verdicts as JSON")
    out.add_argument("--markdown", metavar="PATH", help="append a Markdown summary (e.g. $GITHUB_STEP_SUMMARY)")
    out.add_argument("--hide-unchanged", action="store_true", help="leave unchanged and skipped cases out of the table")
    gate.set_defaults(handler=run_gate)

    baseline = subparsers.add_parser("baseline", help="write or inspect the per-card baselines of the gate")
    actions = baseline.add_subparsers(dest="baseline_command", required=True, metavar="{update,show,path}")
    update = actions.add_parser("update", help="freeze a run as results/baselines/<gpu-model>.json")
    update.add_argument("--from", dest="run", required=True, help="run directory (results/runs/NAME)")
    update.add_argument("--dir", default=str(DEFAULT_DIR), help=f"baseline directory (default {DEFAULT_DIR})")
    update.add_argument("--force", action="store_true", help="accept a run with correctness failures or the test slowdown")
    update.set_defaults(handler=run_baseline_update)
    show = actions.add_parser("show", help="print a baseline (or every baseline in a directory)")
    show.add_argument("path", nargs="?", default=str(DEFAULT_DIR), help=f"baseline file or directory (default {DEFAULT_DIR})")
    show.set_defaults(handler=run_baseline_show)
    path = actions.add_parser("path", help="print the baseline file for the card a run was measured on")
    path.add_argument("--for", dest="run", required=True, help="run directory")
    path.add_argument("--dir", default=str(DEFAULT_DIR), help=f"baseline directory (default {DEFAULT_DIR})")
    path.set_defaults(handler=run_baseline_path)


def _rule(args: argparse.Namespace) -> tuple[DecisionRule, Thresholds]:
    default = parse_percent(args.max_slowdown, "--max-slowdown") if args.max_slowdown is not None else None
    if args.thresholds:
        thresholds = Thresholds.load(args.thresholds, default=default)
    else:
        thresholds = Thresholds(default=0.10 if default is None else default)
    return DecisionRule(max_slowdown=thresholds.default, alpha=args.alpha), thresholds


def _resolve_baseline(path: str, current: Snapshot) -> Path:
    """A directory of baselines -> the file for the current run's card."""
    p = Path(path)
    if p.is_dir() and not (p / "rows.jsonl").exists():
        candidate = baseline_path(p, current.gpu_model)
        if not candidate.exists():
            known = ", ".join(sorted(f.name for f in p.glob("*.json"))) or "none"
            raise BaselineError(f"no baseline for {current.gpu_model!r} in {p} (expected {candidate.name}; present: {known}); "
                                f"create it with `cgspn-bench baseline update --from {current.source}`")
        return candidate
    return p


def run_gate(args: argparse.Namespace) -> int:
    console = Console(width=200)
    try:
        rule, thresholds = _rule(args)
        if args.confirm < 0:
            raise BaselineError(f"--confirm: expected an integer >= 0 (re-measurements per flagged case), got {args.confirm}")
        if args.ab:
            if args.baseline or args.current:
                raise BaselineError("give either --ab REF or --baseline/--current, not both")
            if args.confirm:
                raise BaselineError("--confirm is for the stored-baseline mode; A/B mode already measures both sides "
                                    "interleaved in this job (use --rounds for more evidence)")
            from suite.gate.ab import run_ab

            baseline, current = run_ab(args.ab, scenario=args.scenario, rounds=args.rounds, device=args.device, out=args.out,
                                       budget_scale=args.budget_scale, check=not args.no_check, console=console)
        else:
            if not (args.baseline and args.current):
                raise BaselineError("give --baseline FILE and --current RUN (or --ab REF)")
            current = Snapshot.from_run(args.current)
            baseline = Snapshot.load(_resolve_baseline(args.baseline, current))
        report = compare_snapshots(baseline, current, thresholds=thresholds, rule=rule,
                                   allow_other_gpu=args.allow_other_gpu, fail_on_missing=args.fail_on_missing)
        check_comparable(baseline, current)
        if args.confirm and not args.ab:
            with RunDirLock(args.current):  # its re-measured rows are appended to the run: one writer at a time
                confirm_regressions(report, baseline, current, args.current, args.confirm, rule=rule, device=args.device,
                                    console=console)
    except (BaselineError, ThresholdError, GpuMismatch, ValueError, ImportError) as err:
        console.print(f"[bold red]gate: cannot compare:[/] {escape(str(err))}", soft_wrap=True)
        return EXIT_REFUSED
    render(report, console, show_unchanged=not args.hide_unchanged)
    try:
        if args.json:
            console.print(f"verdicts written to {report.write_json(args.json)}")
        if args.markdown:
            with open(args.markdown, "a", encoding="utf-8") as f:
                f.write(markdown(report))
    except OSError as err:  # exit 2, not 1: 1 would say "regression"
        console.print(f"[bold red]gate: cannot write the verdicts:[/] {escape(describe(err))}", soft_wrap=True)
        return EXIT_REFUSED
    return EXIT_PASSED if report.passed else EXIT_FAILED


def run_baseline_update(args: argparse.Namespace) -> int:
    console = Console()
    try:
        path = update_baseline(args.run, args.dir, force=args.force)
    except BaselineError as err:
        console.print(f"[bold red]baseline update:[/] {escape(str(err))}", soft_wrap=True)
        return EXIT_REFUSED
    snap = Snapshot.from_baseline(path)
    ok = sum(r.status == "ok" for r in snap.rows)
    console.print(f"wrote {path}: {len(snap.rows)} rows ({ok} ok) measured on {snap.gpu_model}, commit {snap.commit}")
    return EXIT_PASSED


def run_baseline_show(args: argparse.Namespace) -> int:
    console = Console(width=200)
    p = Path(args.path)
    files = sorted(p.glob("*.json")) if p.is_dir() else [p]
    if not files:
        console.print(f"no baselines in {p}; create one with `cgspn-bench baseline update --from RUN`")
        return EXIT_PASSED
    for f in files:
        try:
            snap = Snapshot.from_baseline(f)
        except BaselineError as err:
            console.print(f"[bold red]{escape(str(err))}[/]")
            return EXIT_REFUSED
        console.print(f"[bold]{f}[/]: {snap.gpu_model}, commit {snap.commit}, created {snap.created}, from {snap.source_run}")
        table = Table(header_style="bold")
        for name in ("case_id", "implementation", "level", "mode", "dtype", "params", "status", "median ms", "IQR ms", "n"):
            table.add_column(name)
        for r in sorted(snap.rows, key=lambda r: (r.implementation, r.level, r.mode, r.dtype, sorted(r.params.items()))):
            params = ",".join(f"{k}={v}" for k, v in sorted(r.params.items()))
            med = f"{r.median_ms:.4g}" if r.median_ms is not None else "-"
            iqr = f"{r.iqr_ms:.2g}" if r.iqr_ms is not None else "-"
            table.add_row(r.case_id, r.implementation, r.level, r.mode, r.dtype, escape(params), r.status, med, iqr, str(r.n))
        console.print(table)
    return EXIT_PASSED


def run_baseline_path(args: argparse.Namespace) -> int:
    try:
        snap = Snapshot.from_run(args.run)
    except BaselineError as err:
        Console(stderr=True).print(f"[bold red]baseline path:[/] {escape(str(err))}")
        return EXIT_REFUSED
    print(baseline_path(args.dir, snap.gpu_model))
    return EXIT_PASSED


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m suite.gate.cli gate ...``); the suite's CLI is the usual one."""
    parser = argparse.ArgumentParser(prog="cgspn-bench")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
