"""The report's figures (matplotlib, Agg): latency sweeps, speedups, time breakdowns, run comparison.

Each scenario is one paper figure: its rows are plotted against the axis it sweeps (resolution,
channels, batch, compression, ...), one panel per level, one line per implementation, with the
paper's own points (``paper_points`` of the scenario) overlaid as hollow diamonds. A case that did
not produce a time (OOM, error, failed check) is marked with an x at the top of its panel, so a
line that stops says why. Every figure is saved as PNG and SVG and inlined into the HTML as PNG.
"""

from __future__ import annotations

import base64
import io
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on CI or GPU boxes

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure as MplFigure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from kernels.params import Params  # noqa: E402
from suite.profiling.categories import CATEGORIES  # noqa: E402
from suite.report.load import Run, resolution_of  # noqa: E402
from suite.report.tables import PARAM_ABBREV, case_columns, case_label, speedups, spread_records  # noqa: E402
from suite.results import Row  # noqa: E402

# The axis a scenario is plotted against: the first of these that varies among its rows.
AXIS_PRIORITY = ("grid", "channels", "batch", "latent_channels", "compression", "attn_blocks", "depth", "tile", "chunk",
                 "heads", "mlp_hidden")
AXIS_LABEL = {"grid": "resolution (px)", "channels": "channels C", "batch": "batch B", "latent_channels": "latent channels C_c",
              "compression": "compression s", "attn_blocks": "attention blocks", "depth": "blocks", "tile": "tile side (tokens)",
              "chunk": "chunk", "heads": "heads", "mlp_hidden": "MLP hidden width"}
LEVEL_ORDER = ("sublayer", "layer", "block", "network")
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
         "grid.alpha": 0.3, "legend.fontsize": 8, "legend.frameon": False, "savefig.bbox": "tight"}
PAPER_LABEL = "paper (A100)"
MARKERS = ("o", "s", "^", "v", "P", "X")


@dataclass
class Figure:
    """A rendered figure: PNG bytes for inlining, files on disk after :meth:`save`."""

    name: str  # file stem and HTML anchor
    title: str
    caption: str
    png: bytes
    svg: bytes
    wide: bool = False  # spans the page width (several panels, or one bar per case)

    @property
    def png_base64(self) -> str:
        return base64.b64encode(self.png).decode("ascii")

    def save(self, directory: Path) -> list[Path]:
        paths = [directory / f"{self.name}.png", directory / f"{self.name}.svg"]
        paths[0].write_bytes(self.png)
        paths[1].write_bytes(self.svg)
        return paths


def _finish(fig: MplFigure, name: str, title: str, caption: str, wide: bool = False) -> Figure:
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=130)
    fig.savefig(svg, format="svg", metadata={"Date": None})  # no timestamp: re-renders are byte-stable
    plt.close(fig)
    return Figure(name, title, caption, png.getvalue(), svg.getvalue(), wide)


def implementation_colors(names: list[str]) -> dict[str, str]:
    """A stable colour per implementation name (tab10, then tab20 for larger runs)."""
    ordered = sorted(set(names))
    cmap = plt.get_cmap("tab20")
    # tab20's even entries are tab10's strong colours, the odd ones their light twins: use all strong
    # ones before any light one, so neighbouring names never get two shades of one hue.
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return {n: matplotlib.colors.to_hex(cmap(order[i % 20])) for i, n in enumerate(ordered)}


def axis_value(params: dict, axis: str) -> float | None:
    if axis == "grid":
        return resolution_of(params)
    return params.get(axis)


def varying_axes(rows: list[Row]) -> list[str]:
    """Sweep axes whose value differs between rows, most important first (AXIS_PRIORITY)."""
    values: dict[str, set] = defaultdict(set)
    for row in rows:
        for axis in AXIS_PRIORITY:
            value = axis_value(row.params, axis)
            if value is not None:
                values[axis].add(value)
    return [a for a in AXIS_PRIORITY if len(values[a]) > 1]


def _line_key(row: Row, others: list[str], show_mode: bool, show_dtype: bool) -> str:
    parts = [row.implementation]
    parts += [f"{PARAM_ABBREV.get(a, a)}={axis_value(row.params, a)}" for a in others if axis_value(row.params, a) is not None]
    if show_mode:
        parts.append(row.mode)
    if show_dtype:
        parts.append(row.dtype)
    return " ".join(parts)


TIMING_LABEL = {"device": "device time, ms (CUDA-graph replays where captured)",
                "eager": "eager time, ms (host launches included)"}


def _plot_panel(ax, rows: list[Row], axis: str, others: list[str], colors: dict[str, str], paper_points: list[dict],
                timing: str = "device") -> None:
    show_mode = len({r.mode for r in rows}) > 1
    show_dtype = len({r.dtype for r in rows}) > 1
    lines: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        lines[_line_key(row, others, show_mode, show_dtype)].append(row)
    failed_any = False
    seen_per_impl: dict[str, int] = defaultdict(int)
    for label, members in sorted(lines.items()):
        members.sort(key=lambda r: axis_value(r.params, axis) or 0)
        impl = members[0].implementation
        color = colors[impl]
        marker = MARKERS[seen_per_impl[impl] % len(MARKERS)]  # lines of one implementation differ by marker
        seen_per_impl[impl] += 1
        ok = [r for r in members if r.status == "ok" and r.time_ms(timing) is not None]
        placed = [r for r in ok if axis_value(r.params, axis) is not None]
        style = "--" if members[0].mode == "fwd+bwd" else "-"
        if placed:
            ax.plot([axis_value(r.params, axis) for r in placed], [r.time_ms(timing) for r in placed], style, marker=marker, ms=4,
                    lw=1.5, color=color, label=label)
        elif len(ok) == 1:  # a case without this axis (e.g. GSPN has no compression): its time as a reference line
            ax.axhline(ok[0].time_ms(timing), ls=":", lw=1.5, color=color, label=f"{label} (no {AXIS_LABEL.get(axis, axis)})")
        for r in members:
            if r.status != "ok" and axis_value(r.params, axis) is not None:
                failed_any = True
                ax.plot(axis_value(r.params, axis), 0.97, marker="x", ms=6, mew=1.5, color=color,
                        transform=ax.get_xaxis_transform(), clip_on=False)
    shown_paper = False
    for point in paper_points:
        x = axis_value({"patch": Params.patch, **(point.get("params") or {})}, axis)
        if x is None or point.get("ms") is None:
            continue
        ax.plot(x, point["ms"], marker="D", ms=7, mfc="none", mew=1.5, ls="none",
                color=colors.get(point.get("implementation"), "black"), zorder=5)
        shown_paper = True
    _plain_log_y(ax)
    if axis != "grid":
        ax.set_xscale("log", base=2)
    xs = sorted({axis_value(r.params, axis) for r in rows if axis_value(r.params, axis) is not None})
    ax.set_xticks(xs, [f"{x:g}" for x in xs], rotation=45 if len(xs) > 6 else 0)
    ax.minorticks_off()
    handles, labels = ax.get_legend_handles_labels()
    if shown_paper:
        handles.append(Line2D([], [], marker="D", mfc="none", color="black", ls="none"))
        labels.append(PAPER_LABEL)
    if failed_any:
        handles.append(Line2D([], [], marker="x", color="black", ls="none"))
        labels.append("no time (oom/error/failed check)")
    ax.legend(handles, labels, loc="best")


def _plain_log_y(ax) -> None:
    """Log y with 1-2-5 ticks printed as plain numbers (0.5, 1, 2, 5, 10...), readable in a paper."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _panel_plan(level: str, rows: list[Row], axes: list[str]) -> list[tuple[str, str, list[str], list[Row]]]:
    """(title, x axis, other axes in line labels, rows) of each panel of one level.

    A cartesian sweep (e.g. resolution x compression) is one panel against the first axis with a
    line per value of the others. A star sweep (Fig. 2: channels at B=32, then batch at C=1152,
    written as a zip) would give one-point lines that way, so it gets one panel per axis, the
    other axes held at their most common value.
    """
    axis, others = axes[0], axes[1:]
    lines: dict[tuple, set] = defaultdict(set)
    for r in rows:
        lines[(r.implementation, r.mode, r.dtype, *(axis_value(r.params, a) for a in others))].add(axis_value(r.params, axis))
    if not others or sum(len(xs) >= 2 for xs in lines.values()) * 2 >= len(lines):
        return [(level, axis, others, rows)]
    plan = []
    for axis in axes:
        held = {}
        for other in axes:
            values = [axis_value(r.params, other) for r in rows if axis_value(r.params, other) is not None]
            if other != axis and values:
                held[other] = max(set(values), key=values.count)
        members = [r for r in rows if all(axis_value(r.params, a) in (v, None) for a, v in held.items())]
        if len({axis_value(r.params, axis) for r in members}) >= 2:
            fixed = ", ".join(f"{PARAM_ABBREV.get(a, a)}={v}" for a, v in held.items())
            plan.append((f"{level}: vs {AXIS_LABEL[axis]}" + (f" ({fixed})" if fixed else ""), axis, [], members))
    return plan or [(level, axis, others, rows)]


def _levels(rows: list[Row]) -> list[str]:
    return sorted({r.level for r in rows}, key=lambda lvl: LEVEL_ORDER.index(lvl) if lvl in LEVEL_ORDER else 99)


def _panels(n: int) -> tuple[MplFigure, list]:
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.4 * cols, 3.9 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-") or "all"


def _scenario_groups(run: Run, case_ids: dict[str, set[str]], rows: list[Row]) -> list[tuple[str, dict, list[Row]]]:
    """(name, scenario, rows) per scenario: the rows of its cases (``case_ids``, from expanding it),
    else the rows that name it."""
    by_name = {s.get("name", ""): s for s in run.scenarios}
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        homes = [name for name, ids in case_ids.items() if row.case_id in ids] or [row.scenario]
        for name in homes:
            groups[name].append(row)
    return [(name, by_name.get(name, {}), rows) for name, rows in sorted(groups.items())]


def _bars(ax, rows: list[Row], colors: dict[str, str], level: str) -> None:
    """One group per case: device time (solid) and eager time (hatched) on a linear axis from 0."""
    ok = sorted((r for r in rows if r.level == level and r.status == "ok" and r.device_ms), key=lambda r: r.device_ms)
    labels = [f"{r.implementation} {r.mode}" for r in ok]
    y = list(range(len(ok)))
    both = any(r.graph_timed and r.eager_ms for r in ok)
    height = 0.38 if both else 0.7
    ax.barh([i - (height / 2 if both else 0) for i in y], [r.device_ms for r in ok], height=height,
            color=[colors[r.implementation] for r in ok])
    for i, r in enumerate(ok):
        ax.annotate(f"{r.device_ms:.3g}", (r.device_ms, i - (height / 2 if both else 0)), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=7)
    if both:
        eager = [r.eager_ms or 0.0 for r in ok]
        ax.barh([i + height / 2 for i in y], eager, height=height, color=[colors[r.implementation] for r in ok], alpha=0.45,
                hatch="//")
        for i, value in enumerate(eager):
            if value:
                ax.annotate(f"{value:.3g}", (value, i + height / 2), xytext=(3, 0), textcoords="offset points", va="center",
                            fontsize=7)
        key = [Patch(facecolor="grey", label="device (CUDA-graph replays)"),
               Patch(facecolor="grey", alpha=0.45, hatch="//", label="eager (host launches included)")]
        ax.legend(handles=key, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, max([r.device_ms for r in ok] + [r.eager_ms or 0.0 for r in ok] + [1e-9]) * 1.18)
    ax.set_xlabel("median time (ms)")
    ax.set_title(level)
    ax.invert_yaxis()


def latency_figure(name: str, scenario: dict, rows: list[Row], colors: dict[str, str], timing: str = "device") -> Figure | None:
    """Latency against the scenario's sweep axis, one panel per level, in ``timing`` (device or eager
    time); bars of both times when nothing is swept."""
    axes_varying = varying_axes(rows)
    title_ref = f" ({scenario['paper']})" if scenario.get("paper") else ""
    suffix = "" if timing == "device" else " (eager)"
    with plt.rc_context(STYLE):
        levels = _levels(rows)
        fig, panels = _panels(len(levels))
        if not axes_varying:
            if timing != "device":
                plt.close(fig)
                return None  # the bars already show both times
            for ax, level in zip(panels, levels, strict=True):
                _bars(ax, rows, colors, level)
            caption = ("Median time per implementation on a linear axis from zero: device time (CUDA-graph replays, "
                       "solid) and, where both were measured, eager time (what a PyTorch call costs, host launches "
                       "included, hatched).")
        else:
            plt.close(fig)
            plan = [panel for lvl in levels for panel in _panel_plan(lvl, [r for r in rows if r.level == lvl], axes_varying)]
            fig, panels = _panels(len(plan))
            levels = plan  # one panel per entry, for the "wide" decision below
            paper_points = scenario.get("paper_points") or []
            for ax, (title, axis, others, panel_rows) in zip(panels, plan, strict=True):
                level = panel_rows[0].level
                _plot_panel(ax, panel_rows, axis, others, colors, [p for p in paper_points if p.get("level") == level], timing)
                ax.set_xlabel(AXIS_LABEL[axis])
                ax.set_ylabel(TIMING_LABEL[timing])
                ax.set_title(title)
            swept = " and ".join(dict.fromkeys(AXIS_LABEL[a] for _, a, _, _ in plan))
            what = ("device time (CUDA-graph replays where captured, else eager)" if timing == "device" else
                    "eager time (host launches included: what a PyTorch call costs; drawn because some cases are "
                    "host-bound, their eager time beyond 10% over the graph time)")
            caption = (f"Median {what} vs {swept} (log y), one line per implementation; dashed lines are "
                       "forward+backward. Hollow diamonds are the paper's A100 numbers where the scenario gives them.")
        fig.suptitle(f"{name}{title_ref}{suffix}", fontsize=11)
        stem = f"latency-{_slug(name)}" + ("" if timing == "device" else "-eager")
        return _finish(fig, stem, f"Latency: {name}{title_ref}{suffix}", caption, wide=len(levels) > 1)


def speedup_figure(name: str, scenario: dict, rows: list[Row], colors: dict[str, str], timing: str = "device") -> Figure | None:
    """Speedup vs resolution over the fastest attention row at each point (see tables.speedups), in ``timing``."""
    if "grid" not in varying_axes(rows):
        return None
    frame = speedups(rows, timing)
    if frame.empty:
        return None
    with plt.rc_context(STYLE):
        levels = [lvl for lvl in _levels(rows) if lvl in set(frame["level"])]
        fig, panels = _panels(len(levels))
        for ax, level in zip(panels, levels, strict=True):
            sub = frame[frame["level"] == level]
            show_mode = sub["mode"].nunique() > 1
            for (impl, mode, params), line in sub.groupby(["implementation", "mode", "params"], sort=True):
                line = line.sort_values("resolution_px")
                several = sub[sub["implementation"] == impl]["params"].nunique() > 1  # e.g. two compressions
                label = impl + (f" {params}" if several else "") + (f" {mode}" if show_mode else "")
                ax.plot(line["resolution_px"], line["speedup_x"], "--" if mode == "fwd+bwd" else "-", marker="o", ms=3.5,
                        color=colors[impl], label=label)
            ax.axhline(1.0, color="grey", lw=1, ls=":")
            _plain_log_y(ax)
            xs = sorted(set(sub["resolution_px"]))
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.minorticks_off()
            ax.set_xlabel(AXIS_LABEL["grid"])
            ax.set_ylabel("speedup over best attention (x)")
            ax.set_title(level)
            ax.legend(loc="best")
        suffix = "" if timing == "device" else " (eager)"
        fig.suptitle(f"{name}: speedup over the strongest attention baseline{suffix}", fontsize=11)
        caption = (f"Speedup = {timing} time of the fastest global-attention implementation at that point (tiled "
                   "FlashAttention, a windowed approximation, is not a baseline) / that of the implementation; above the "
                   "dotted line is faster than every global-attention baseline measured. "
                   + ("Device time: CUDA-graph replays where captured." if timing == "device" else
                      "Eager time: host launches included, what a PyTorch call costs."))
        stem = f"speedup-{_slug(name)}" + ("" if timing == "device" else "-eager")
        return _finish(fig, stem, f"Speedup: {name}{suffix}", caption, wide=len(levels) > 1)


def breakdown_figure(rows: list[Row]) -> Figure | None:
    """Stacked bars of GPU time per kernel category (Row.profile["categories"]), one bar per profiled row."""
    profiled = [r for r in rows if (r.profile or {}).get("categories")]
    if not profiled:
        return None
    profiled.sort(key=lambda r: (r.scenario, LEVEL_ORDER.index(r.level) if r.level in LEVEL_ORDER else 9, r.implementation,
                                 resolution_of(r.params) or 0))
    totals: dict[str, float] = defaultdict(float)
    for r in profiled:
        for cat, ms in r.profile["categories"].items():
            totals[cat] += ms
    # The profiler's display order, so a category keeps its place and colour in every report.
    categories = [c for c in CATEGORIES if c in totals] + sorted(c for c in totals if c not in CATEGORIES)
    cmap = plt.get_cmap("tab10")
    with plt.rc_context(STYLE):
        # total GPU time per case on a log axis (left: a 1 ms C-GSPN case next to a 400 ms attention one stays
        # visible) and each case's time split by category (right, stacked shares)
        fig, (ax, ax_share) = plt.subplots(1, 2, figsize=(13, 1.3 + 0.32 * len(profiled)), sharey=True,
                                           gridspec_kw={"width_ratios": [2, 3]})
        labels = [case_label(case_columns(r)) for r in profiled]
        totals_per_row = [sum(r.profile["categories"].values()) for r in profiled]
        ax.barh(labels, totals_per_row, color="#8a94a6", height=0.7)
        for y, total in enumerate(totals_per_row):
            ax.annotate(f"{total:.3g} ms", (total, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        ax.set_xscale("log")
        ax.margins(x=0.25)
        left_share = [0.0] * len(profiled)
        for i, cat in enumerate(categories):
            widths = [r.profile["categories"].get(cat, 0.0) for r in profiled]
            shares = [100.0 * w / t if t else 0.0 for w, t in zip(widths, totals_per_row, strict=True)]
            index = CATEGORIES.index(cat) if cat in CATEGORIES else len(CATEGORIES) + i
            ax_share.barh(labels, shares, left=left_share, color=cmap(index % cmap.N), label=cat, height=0.7)
            left_share = [a + b for a, b in zip(left_share, shares, strict=True)]
        ax.invert_yaxis()
        ax.set_xlabel("GPU time in one profiled repetition (ms, log scale)")
        ax_share.set_xlabel("share of the case's GPU time by kernel category (%)")
        ax_share.set_xlim(0, 100)
        for a in (ax, ax_share):
            a.grid(axis="y", visible=False)
        fig.legend(loc="lower center", ncols=min(8, len(categories)), bbox_to_anchor=(0.5, 0.0), frameon=False)
        fig.subplots_adjust(bottom=max(0.08, 0.9 / (1.3 + 0.32 * len(profiled))))
        fig.suptitle("Time breakdown by kernel category", fontsize=11)
        caption = ("One bar per profiled case (torch.profiler): its total GPU time on a log scale (left), so cases of very "
                   "different size stay visible, and that time split by kernel category (right). breakdown.csv has the "
                   "milliseconds per category.")
        return _finish(fig, "breakdown", "Time breakdown by kernel category", caption, wide=True)


def compare_figure(run: Run, other: Run) -> Figure | None:
    """Median of each case in both runs, log-log, with the y = x line (matched by case_id)."""
    theirs = {r.case_id: r for r in other.case_rows if r.status == "ok" and r.device_ms}
    pairs = [(r, theirs[r.case_id]) for r in run.case_rows if r.status == "ok" and r.device_ms and r.case_id in theirs]
    if not pairs:
        return None
    colors = implementation_colors([r.implementation for r, _ in pairs])
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.6, 5.0))
        for impl in sorted({r.implementation for r, _ in pairs}):
            sel = [(a, b) for a, b in pairs if a.implementation == impl]
            ax.plot([a.device_ms for a, _ in sel], [b.device_ms for _, b in sel], "o", ms=4, color=colors[impl], label=impl)
        values = [v for a, b in pairs for v in (a.device_ms, b.device_ms)]
        lo, hi = min(values) / 1.5, max(values) * 1.5
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls=":", label="equal")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"{run.name}: device time (ms)")
        ax.set_ylabel(f"{other.name}: device time (ms)")
        ax.legend(loc="upper left")
        fig.suptitle(f"{run.name} vs {other.name}", fontsize=11)
        caption = f"Each point is one case measured in both runs; above the dotted line {run.name} is faster."
        return _finish(fig, "compare", f"Compared with {other.name}", caption)


def spread_figure(spread: list[dict]) -> Figure | None:
    """Variance mode: per case, each GPU's median as a deviation from the case's median (%), the
    min-max range as a bar, labelled with the spread (max - min) / median in percent and the median in ms."""
    records = spread_records(spread)
    if not records:
        return None
    # rank2 before rank10: compare the digit runs as numbers
    labels = sorted({str(label) for entry in spread for label in entry["medians_ms"]},
                    key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)])
    cmap = plt.get_cmap("tab10")
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(10, 1.0 + 0.38 * len(records)))
        names = [case_label(r) for r in records]
        for y, rec in enumerate(records):
            middle = rec["median_ms"]
            low, high = (100.0 * (rec[k] - middle) / middle for k in ("min_ms", "max_ms"))
            ax.barh(y, high - low, left=low, height=0.5, color="#d8dde6", zorder=1)
            ax.annotate(f"{100 * rec['spread_fraction']:.2f}% of {middle:.4g} ms", (high, y), xytext=(6, 0),
                        textcoords="offset points",
                        va="center", fontsize=8)
        for i, label in enumerate(labels):
            points = [(100.0 * (r[f"{label}_ms"] - r["median_ms"]) / r["median_ms"], y)
                      for y, r in enumerate(records) if r.get(f"{label}_ms") is not None]
            ax.plot([x for x, _ in points], [y for _, y in points], "o", ms=6, color=cmap(i % cmap.N), label=label, zorder=3)
        ax.axvline(0.0, color="grey", lw=1, ls=":")
        ax.set_yticks(range(len(records)), names)
        ax.invert_yaxis()
        ax.use_sticky_edges = False  # bars would pin the x limits to their ends and clip the outermost dots
        ax.margins(x=0.3, y=0.15)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("per-GPU median vs the case's median over GPUs (%)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="GPU")
        fig.suptitle("Card-to-card spread per case (variance mode)", fontsize=11)
        caption = ("Each dot is one GPU's median for the case, as a deviation from the median over all GPUs; the bar spans "
                   "the fastest to the slowest GPU and is labelled with the spread (max - min) / median and that median.")
        return _finish(fig, "gpu-spread", "Card-to-card spread per case", caption, wide=True)


def run_figures(run: Run, case_ids: dict[str, set[str]] | None = None) -> list[Figure]:
    """Per scenario a latency figure and (for resolution sweeps with attention) a speedup figure, on
    device time; the same on eager time where some case of the scenario is host-bound.

    ``case_ids`` maps a scenario to its cases (suite.report.expected), so a case shared by two
    scenarios appears in both figures. A case measured on several GPUs is one point, the median of
    their medians (Run.case_rows); the spread between them has its own figure."""
    colors = implementation_colors([r.implementation for r in run.rows])
    out = []
    for name, scenario, rows in _scenario_groups(run, case_ids or {}, run.case_rows):
        # the eager figures only where they tell something: some case's host time shows beyond the noise
        timings = ("device", "eager") if any(r.host_bound for r in rows) else ("device",)
        for timing in timings:
            for make in (latency_figure, speedup_figure):
                fig = make(name or "all rows", scenario, rows, colors, timing)
                if fig is not None:
                    out.append(fig)
    return out
