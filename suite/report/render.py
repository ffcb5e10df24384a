"""Render one run (optionally compared with another) into a report directory.

Output: ``index.html`` (self-contained: inline CSS, figures as base64 PNG, no scripts, no
network), one CSV per table and one PNG + SVG per figure, next to it.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from suite.report import figures as figs
from suite.report import roofline
from suite.report import tables as tbl
from suite.report.claims import RULE, evaluate_claims
from suite.report.expected import Expected, expected_cases
from suite.report.load import Run, load_run

TEMPLATES = Path(__file__).with_name("templates")
DEFAULT_ROOT = Path("reports/local")

# Columns shown in the HTML (the CSV keeps every column); tables not listed show all of theirs.
HTML_COLUMNS: dict[str, list[str]] = {
    "claims": ["id", "text", "kind", "paper", "ours", "timer", "ours_eager", "ours_over_paper", "verdict", "target",
               "target_met", "card", "note"],
    "latency": ["scenario", "case", "gpu", "status", "median_ms", "graph_median_ms", "host_overhead_ms", "iqr_ms",
                "graph_iqr_ms", "min_ms", "n", "tflops", "gbps", "bw_fraction", "peak_mem_bytes", "backend_detail"],
}
# The columns that identify a case (with every p_<name> parameter column); the HTML folds them into
# one readable "case" column.
CASE_COLUMNS = tbl.CASE_FIELDS
# Boolean columns where "yes" is the bad outcome (coloured as such).
BAD_WHEN_TRUE = {"throttled"}
# Kernel names (demangled C++ can run to 1,000+ characters) are cut to this length in the HTML;
# the full name is the cell's title (shown on hover) and stays in the CSV.
NAME_CHARS = 60
CASE_NOTE = ("Cases are named implementation · level · resolution (token grid) · mode dtype, plus any parameter that differs "
             "from the paper's reference shapes (B=32, C=1152, 16 heads, MLP 4304, s=18, 27 blocks, 27-token tiles).")
TEXT_COLUMNS = {"text", "note", "message", "description", "value", "params", "backend_detail", "name", "reference", "case"}
MONO_COLUMNS = {"case_id", "sha256", "numerator_case", "denominator_case", "gpu_uuid"}


@dataclass
class Item:
    kind: str  # "figure" | "table"
    value: Any
    columns: list[dict] = field(default_factory=list)
    collapsed: bool = False


@dataclass
class Section:
    anchor: str
    title: str
    intro: str = ""
    items: list[Item] = field(default_factory=list)


def short_kernel_name(name: str, limit: int = NAME_CHARS) -> str:
    """A demangled kernel name without its return type, argument list and template arguments
    (``void ns::kernel<...>(...)`` -> ``ns::kernel<…>``), cut to ``limit`` characters."""
    text = name.strip().removeprefix("void ")
    out, depth = [], 0
    for ch in text:
        if ch in "<(":
            if depth == 0:
                out.append("<…>" if ch == "<" else "")
            depth += 1
        elif ch in ">)" and depth:
            depth -= 1
        elif depth == 0:
            out.append(ch)
    short = "".join(out).strip() or text
    return short if len(short) <= limit else short[:limit - 1] + "…"


def _bytes_text(value: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:g} B"


def format_cell(value: Any, column: str) -> tuple[str, str]:
    """(text, css class) of one table cell; numbers keep 4 significant digits, fractions show as
    percentages and byte counts in KiB/MiB/GiB (the CSV keeps the plain fraction and bytes)."""
    css = "case" if column == "case" else "text" if column in TEXT_COLUMNS else "mono" if column in MONO_COLUMNS else ""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—", css
    if isinstance(value, bool):
        good = not value if column in BAD_WHEN_TRUE else value
        return ("yes" if value else "no"), ("good" if good else "bad")
    if isinstance(value, (int, float)) and (column.endswith("_fraction") or column == "bw_fraction"):
        return f"{100.0 * value:.3g}%", "num"
    if isinstance(value, (int, float)) and column.endswith("_bytes"):
        return _bytes_text(float(value)), "num"
    if column == "verdict":
        return str(value), f"verdict-{str(value).replace(' ', '-')}"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and value.is_integer() and abs(value) < 1e15 and not column.endswith(("_ms", "_x")):
            return f"{int(value)}", "num"
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text, "num"
    return str(value), css


def column_specs(table: tbl.Table) -> list[dict]:
    frame = table.frame
    has_case = all(c in frame.columns for c in CASE_COLUMNS)
    folded = [c for c in frame.columns if c in CASE_COLUMNS or c.startswith("p_")]
    default = ["case"] + [c for c in frame.columns if c not in folded] if has_case else list(frame.columns)
    if has_case and frame["scenario"].nunique() > 1:
        default.insert(0, "scenario")
    columns = [c for c in HTML_COLUMNS.get(table.name, default) if c in frame.columns or (c == "case" and has_case)]
    specs = []
    for col in columns:
        numeric = col != "case" and frame[col].map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)).any()
        specs.append({"key": col, "header": col, "css": "num" if numeric else "case" if col == "case" else ""})
    return specs


def table_rows(table: tbl.Table, columns: list[dict]) -> list[dict]:
    out = []
    for i, record in enumerate(table.frame.to_dict("records")):
        if any(c["key"] == "case" for c in columns):
            record["case"] = tbl.case_label(record)
        cells = []
        for c in columns:
            value = record.get(c["key"])
            text, css = format_cell(value, c["key"])
            title = ""
            if c["key"] == "name" and table.name in KERNEL_TABLES and isinstance(value, str):
                text, title = short_kernel_name(value), value
            cells.append({"text": text, "css": css, "title": title if title != text else ""})
        flagged = bool(table.flagged[i]) if i < len(table.flagged) else False
        out.append({"cells": cells, "flagged": flagged, "css": row_class(flagged, record)})
    return out


KERNEL_TABLES = {"occupancy", "kernels"}


def row_class(flagged: bool, record: dict) -> str:
    """CSS class of a table row: ``flagged`` (red), or ``flagged warn`` (amber) for a claim that is
    only weaker than the paper, so it reads differently from one that disagrees."""
    if not flagged:
        return ""
    return "flagged warn" if record.get("verdict") == "weaker" else "flagged"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=jinja2.select_autoescape(["j2", "html"]),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.globals["table_rows"] = table_rows
    return env


def _table_item(table: tbl.Table, collapsed: bool = False) -> Item:
    return Item("table", table, column_specs(table), collapsed)


def build_sections(run: Run, other: Run | None, claims: list[dict], expected: Expected, progress: Progress, task) -> tuple[
        list[Section], list[tbl.Table], list[figs.Figure]]:
    """Every section of the page, with the tables and figures it contains (also written as files)."""
    tables: list[tbl.Table] = []
    figures: list[figs.Figure] = []

    def table(t: tbl.Table, collapsed: bool = False) -> Item:
        tables.append(t)
        return _table_item(t, collapsed)

    def figure(f: figs.Figure | None) -> list[Item]:
        if f is None:
            return []
        figures.append(f)
        return [Item("figure", f)]

    progress.update(task, description="claims")
    sections = [Section("claims", "Claims", "Each claim of the run's scenarios: the paper's number next to ours, "
                        "taken among that scenario's own cases. Rows where we disagree are highlighted. Verdict rule: "
                        + RULE, [table(tbl.claims_table(claims))])]

    def figures_then_table(section: Section, section_figures: Iterable[figs.Figure | None], t: tbl.Table) -> None:
        for f in section_figures:
            section.items += figure(f)
        section.items.append(table(t))
        sections.append(section)

    progress.update(task, description="latency figures")
    figures_then_table(Section("latency", "Latency and speedup", "Per scenario (one paper figure each): latency against the "
                               "swept axis, and the speedup over the fastest attention baseline measured at the same point."),
                       figs.run_figures(run, expected.case_ids), tbl.speedup_table(run))

    progress.update(task, description="roofline")
    figures_then_table(Section("roofline", "Roofline", "Per scenario: achieved TFLOP/s and TB/s of every ok case (FLOPs and "
                               "ideal bytes over the device time) against the card's memory and compute ceilings."),
                       roofline.run_roofline_figures(run, expected.case_ids), roofline.roofline_table(run))

    if run.multi_gpu or run.spread:
        progress.update(task, description="GPUs")
        gpus = Section("gpus", "GPUs", "The run was spread over several GPUs (torchrun, one process per GPU): rows per "
                       "card with the clocks NVML saw" + (", and in variance mode (every GPU measured every case) the "
                                                          "card-to-card spread of each case. Elsewhere in this report (claims, "
                                                          "figures, speedups, --compare) such a case counts with the median of "
                                                          "its per-GPU medians." if run.spread else "."))
        gpus.items += figure(figs.spread_figure(run.spread))
        gpus.items.append(table(tbl.gpu_table(run)))
        if run.spread:
            gpus.items.append(table(tbl.spread_table(run)))
        sections.append(gpus)

    progress.update(task, description="profile")
    profile = Section("profile", "Time breakdown and occupancy")
    profile.items += figure(figs.breakdown_figure(run.rows))
    profile.items += [table(tbl.breakdown_table(run)), table(tbl.occupancy_table(run)),
                      table(tbl.kernels_table(run), collapsed=True)]
    sections.append(profile)

    progress.update(task, description="NVML, correctness, status")
    sections.append(Section("nvml", "GPU state", items=[table(tbl.nvml_table(run))]))
    sections.append(Section("correctness", "Correctness", items=[table(tbl.correctness_table(run))]))
    sections.append(Section("failures", "Failures and missing cases",
                            items=[table(tbl.status_table(run)), table(tbl.missing_table(expected.missing))]))
    if other is not None:
        progress.update(task, description="compare")
        matched, only = tbl.compare_tables(run, other)
        compare = Section("compare", f"Compared with {other.name}")
        compare.items += figure(figs.compare_figure(run, other))
        compare.items += [table(matched), table(only)]
        sections.append(compare)
    sections.append(Section("rows", "All measurements", CASE_NOTE, items=[table(tbl.latency_table(run), collapsed=True)]))
    sections.append(Section("environment", "Environment and scenarios",
                            items=[table(tbl.scenarios_table(run, expected.counts)),
                                   table(tbl.environment_table(run), collapsed=True)]))
    return sections, tables, figures


def verdict_counts(claims: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for claim in claims:
        counts[claim["verdict"]] = counts.get(claim["verdict"], 0) + 1
    return counts


def render_report(run_path: str | Path, out_dir: str | Path | None = None, compare: str | Path | None = None,
                  console: Console | None = None) -> Path:
    """Render the report of ``run_path`` into ``out_dir`` (default ``reports/local/<run name>``); returns index.html."""
    console = console or Console(stderr=True)
    columns = (TextColumn("[bold]report[/]"), BarColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("load run", total=6)
        run = load_run(run_path)
        other = load_run(compare) if compare is not None else None
        out = Path(out_dir) if out_dir is not None else DEFAULT_ROOT / run.path.name
        out.mkdir(parents=True, exist_ok=True)
        progress.advance(task)
        progress.update(task, description="missing cases")
        expected = expected_cases(run)
        # variance mode: median over GPUs; each claim among its own scenario's cases
        claims = evaluate_claims(run.case_rows, run.scenarios, card=run.device_name, case_ids=expected.case_ids)
        progress.advance(task)
        sections, tables, figures = build_sections(run, other, claims, expected, progress, task)
        progress.advance(task, 2)
        progress.update(task, description="write files")
        for t in tables:
            t.frame.to_csv(out / f"{t.name}.csv", index=False)
        for f in figures:
            f.save(out)
        progress.advance(task)
        title = tbl.report_title(run) + (f" vs {tbl.report_title(other)}" if other else "")
        html = _environment().get_template("report.html.j2").render(
            title=title, run=run, other=other, sections=sections, rows_total=len(run.rows),
            status_counts=tbl.status_counts(run), missing_count=expected.missing_count, facts=tbl.key_facts(run),
            verdicts=verdict_counts(claims), case_note=CASE_NOTE,
            rendered_at=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
        index = out / "index.html"
        index.write_text(html, encoding="utf-8")
        progress.advance(task)
    console.print(f"report: {index} ({len(tables)} tables, {len(figures)} figures)")
    return index
