"""The gate's console output: a rich table of cases, failures first, and a one-line verdict."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from suite.gate.compare import FAILING, GateReport

STYLES = {"regression": "bold red", "failed-check": "bold red", "broken": "bold red", "inconclusive": "yellow",
          "cleared": "magenta", "not-run": "yellow", "missing": "yellow", "new": "cyan", "improvement": "green",
          "unchanged": "dim", "skipped": "dim"}


def _ms(summary: dict | None, timer: str = "") -> str:
    """The judged median ±IQR/2 (graph replays when the verdict used them, the eager median beside)."""
    if not summary:
        return "-"
    if summary["status"] != "ok" or summary["median_ms"] is None:
        return summary["status"]
    if timer == "graph" and summary.get("graph_median_ms") is not None:
        iqr = summary.get("graph_iqr_ms") or 0.0
        return f"{summary['graph_median_ms']:.4g} ±{iqr / 2:.2g} (n={summary['graph_n']}; eager {summary['median_ms']:.4g})"
    iqr = summary["iqr_ms"] or 0.0
    return f"{summary['median_ms']:.4g} ±{iqr / 2:.2g} (n={summary['n']})"


def _timer(case) -> str:
    """What the verdict judged: ``graph`` (device) or ``eager``, and ``host-bound`` where it is."""
    return case.timer + (", host-bound" if case.host_bound else "") if case.timer else ""


def _first_pass(case) -> str:
    """The first pass's verdict and, after a confirmation, how many re-measurements agreed."""
    if not case.first_pass:
        return ""
    confirmation = case.confirmation or {}
    if not confirmation.get("runs"):
        return f"{case.first_pass['verdict']} (not re-measured)"
    return f"{case.first_pass['verdict']}, {confirmation['regressions']}/{confirmation['requested']} again"


def confirm_line(report: GateReport) -> str | None:
    """One line on what ``--confirm`` did, or None when it did not run."""
    info = report.confirm
    if not info:
        return None
    if not info["flagged"]:
        return f"confirm: N={info['n']}, no first-pass regression to re-measure"
    if not info["device"]:
        return f"confirm: {len(info['flagged'])} first-pass regression(s) not re-measured (see the warning): their verdicts stand"
    return (f"confirm: {len(info['flagged'])} first-pass regression(s) re-measured {info['n']}x each on {info['device']} "
            f"(majority rule): {len(info['confirmed'])} confirmed, {len(info['cleared'])} cleared; "
            f"rows appended to {info['rows_appended_to']}")


def render(report: GateReport, console: Console | None = None, show_unchanged: bool = True) -> None:
    """Print the comparison table and the verdict line."""
    console = console or Console(width=200)
    b, c = report.baseline, report.current
    console.print(f"[bold]baseline[/] {b['source']} ({b['gpu_model']}, commit {str(b['commit'])[:12]})")
    console.print(f"[bold]current [/] {c['source']} ({c['gpu_model']}, commit {str(c['commit'])[:12]})")
    rule = report.rule
    console.print(f"rule: slower than max-slowdown (default {100 * rule.max_slowdown:.0f}%) AND shift > mean IQR AND "
                  f"{100 * rule.confidence:.0f}% bootstrap CI of the ratio excludes 1 AND Mann-Whitney p < {rule.alpha}; "
                  "judged on device time (CUDA-graph replays) where both sides have it, else eager; the eager time "
                  "as the thresholds file says")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    line = confirm_line(report)
    if line:
        console.print(escape(line))
    confirmed = any(c.first_pass for c in report.cases)
    table = Table(show_lines=False, header_style="bold")
    first_pass_column = (("first pass", "left"),) if confirmed else ()
    for name, justify in (("verdict", "left"), *first_pass_column, ("case", "left"), ("timer", "left"),
                          ("baseline ms (median ±IQR/2)", "right"),
                          ("current ms", "right"), ("ratio", "right"), ("CI", "right"), ("p", "right"),
                          ("max", "right"), ("why", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    hidden = 0
    for case in report.cases:
        if case.verdict in ("unchanged", "skipped") and not show_unchanged:
            hidden += 1
            continue
        style = STYLES[case.verdict]
        ratio = f"{case.ratio:.3f}" if case.ratio is not None and case.ratio == case.ratio else "-"
        ci = f"[{case.ci[0]:.3f}, {case.ci[1]:.3f}]" if case.ci and case.ci[0] == case.ci[0] else "-"
        p = f"{case.p_value:.2g}" if case.p_value is not None and case.p_value == case.p_value else "-"
        threshold = f"{100 * case.threshold:.0f}%" if case.threshold is not None else "-"
        first = (escape(_first_pass(case)),) if confirmed else ()
        table.add_row(f"[{style}]{case.verdict}[/]", *first, escape(case.label), _timer(case), _ms(case.baseline, case.timer),
                      _ms(case.current, case.timer), ratio, ci, p, threshold, escape(case.reason))
    console.print(table)
    if hidden:
        console.print(f"({hidden} unchanged or skipped cases not shown)")
    counts = ", ".join(f"{n} {v}" for v, n in report.counts().items() if n)
    if report.passed:
        console.print(f"[bold green]GATE PASSED[/] ({counts})")
    else:
        kinds = sorted({f.verdict for f in report.failures}, key=lambda v: v not in FAILING)
        console.print(f"[bold red]GATE FAILED[/]: {len(report.failures)} case(s) {'/'.join(kinds)} ({counts})")


def markdown(report: GateReport, show_unchanged: bool = False) -> str:
    """The verdicts as a GitHub-flavoured Markdown summary (for ``$GITHUB_STEP_SUMMARY``)."""
    head = "passed" if report.passed else f"FAILED ({len(report.failures)} case(s))"
    counts = ", ".join(f"{n} {v}" for v, n in report.counts().items() if n)
    b, c = report.baseline, report.current
    lines = [f"### Regression gate: {head}", "",
             f"baseline `{b['source']}` ({b['gpu_model']}, commit `{b['commit']}`) vs "
             f"current `{c['source']}` ({c['gpu_model']}, commit `{c['commit']}`): {counts}", ""]
    if confirm_line(report):
        lines += [str(confirm_line(report)), ""]
    confirmed = any(case.first_pass for case in report.cases)
    lines += ["| verdict |" + (" first pass |" if confirmed else "") + " case | timer | baseline ms | current ms | ratio "
              "| 95% CI | p | max | why |",
              "|---|" + ("---|" if confirmed else "") + "---|---|---:|---:|---:|---:|---:|---:|---|"]
    for case in report.cases:
        if case.verdict in ("unchanged", "skipped") and not show_unchanged:
            continue
        ratio = f"{case.ratio:.3f}" if case.ratio is not None and case.ratio == case.ratio else ""
        ci = f"{case.ci[0]:.3f}–{case.ci[1]:.3f}" if case.ci and case.ci[0] == case.ci[0] else ""
        p = f"{case.p_value:.2g}" if case.p_value is not None and case.p_value == case.p_value else ""
        cells = [f"**{case.verdict}**" if case.verdict in FAILING else case.verdict,
                 *((_first_pass(case),) if confirmed else ()), case.label, _timer(case), _ms(case.baseline, case.timer),
                 _ms(case.current, case.timer), ratio, ci, p,
                 f"{100 * case.threshold:.0f}%" if case.threshold is not None else "", case.reason]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"
