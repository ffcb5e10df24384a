"""Roofline: each case's achieved TFLOP/s and TB/s against the card's memory and compute ceilings.

A row's work is its ``flops`` and ideal traffic ``bytes_ideal`` (the workload's own accounting) over
its median time. The ceilings come from the run's environment: the measured device copy bandwidth
(``copy_bandwidth_gbps``) and the measured bf16 GEMM throughput (``gemm_tflops``). A run that
recorded neither (older runs record no GEMM) falls back to the card's datasheet value from
:data:`DATASHEET`, and the figure and table say which ceiling is measured and which is a datasheet
constant. The GEMM ceiling is a bf16 tensor-core number: float32 cases are compared with it too,
which flatters nothing (they sit further below it).
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

from suite.report.figures import LEVEL_ORDER, MARKERS, STYLE, Figure, _finish, _scenario_groups, _slug, implementation_colors
from suite.report.load import Run
from suite.report.tables import CASE_FIELDS, Table, case_columns, make_frame
from suite.results import Row

# NVIDIA datasheet peaks (dense bf16 tensor-core TFLOP/s without sparsity, HBM TB/s), matched by a
# substring of the GPU name, most specific first. Used only when the run measured no ceiling, and
# always labelled "datasheet" where shown.
DATASHEET: tuple[tuple[str, float, float], ...] = (
    ("H200", 989.0, 4.8),
    ("H100 PCIe", 756.0, 2.0),
    ("H100", 989.0, 3.35),
    ("A100-SXM4-40GB", 312.0, 1.555),
    ("A100", 312.0, 2.039),
    ("B200", 2250.0, 8.0),
)


def ceilings(env: dict[str, Any]) -> dict[str, Any]:
    """``tbps`` and ``tflops`` ceilings with their sources (``measured`` | ``datasheet (<name>)``); None when unknown."""
    gpu = env.get("gpu") if isinstance(env.get("gpu"), dict) else {}
    sheet = next(((tf, tb) for key, tf, tb in DATASHEET if key in str(gpu.get("name") or "")), None)
    out: dict[str, Any] = {"tbps": None, "tbps_source": None, "tflops": None, "tflops_source": None}
    if env.get("copy_bandwidth_gbps"):
        out["tbps"], out["tbps_source"] = env["copy_bandwidth_gbps"] / 1e3, "measured device copy"
    elif sheet:
        out["tbps"], out["tbps_source"] = sheet[1], f"datasheet HBM ({gpu['name']})"
    if env.get("gemm_tflops"):
        out["tflops"], out["tflops_source"] = env["gemm_tflops"], "measured bf16 GEMM"
    elif sheet:
        out["tflops"], out["tflops_source"] = sheet[0], f"datasheet dense bf16 ({gpu['name']})"
    return out


def placed(rows: list[Row]) -> list[Row]:
    """Ok rows with FLOPs, ideal bytes and a device time: the ones a roofline can place."""
    return [r for r in rows if r.status == "ok" and r.device_ms and r.flops and r.bytes_ideal]


def _per_second(amount: float | None, seconds: float, ceiling: float | None) -> tuple[float | None, float | None]:
    """(amount / s / 1e12, that as a fraction of ``ceiling``)."""
    if not amount:
        return None, None
    rate = amount / seconds / 1e12
    return rate, rate / ceiling if ceiling else None


def roofline_table(run: Run) -> Table:
    """Every ok row with FLOPs or ideal bytes (the figure needs both): achieved rates and their share of the ceilings."""
    roof = ceilings(run.environment)
    records = []
    for row in run.case_rows:
        if row.status != "ok" or not row.device_ms or not (row.flops or row.bytes_ideal):
            continue
        seconds = row.device_ms * 1e-3
        tflops, compute = _per_second(row.flops, seconds, roof["tflops"])
        tbps, bandwidth = _per_second(row.bytes_ideal, seconds, roof["tbps"])
        rec = case_columns(row)
        rec.update({"device_ms": row.device_ms, "flops": row.flops, "bytes_ideal": row.bytes_ideal,
                    "intensity_flop_per_byte": row.flops / row.bytes_ideal if row.flops and row.bytes_ideal else None,
                    "achieved_tflops": tflops, "achieved_tbps": tbps, "compute_fraction": compute,
                    "bandwidth_fraction": bandwidth, "case_id": row.case_id})
        records.append(rec)
    columns = [*CASE_FIELDS, "device_ms", "flops", "bytes_ideal", "intensity_flop_per_byte", "achieved_tflops", "achieved_tbps",
               "compute_fraction", "bandwidth_fraction", "case_id"]
    caption = ("Achieved throughput of every ok case: FLOPs and ideal bytes (the workload's own count) over the device time "
               "(median of CUDA-graph replays where captured, else of eager calls, as the rows' tflops and gbps). "
               f"Ceilings: {_describe(roof)}. compute_fraction and bandwidth_fraction are of those ceilings.")
    return Table("roofline", "Roofline: achieved throughput against the card's ceilings", make_frame(records, columns), caption)


def _describe(roof: dict[str, Any]) -> str:
    parts = [f"{roof['tbps']:.3g} TB/s ({roof['tbps_source']})" if roof["tbps"] else "no memory ceiling recorded",
             f"{roof['tflops']:.4g} TFLOP/s ({roof['tflops_source']})" if roof["tflops"] else "no compute ceiling recorded"]
    return "; ".join(parts)


def roofline_figure(name: str, rows: list[Row], roof: dict[str, Any], colors: dict[str, str]) -> Figure | None:
    """TFLOP/s against arithmetic intensity (log-log), one marker per case, with the memory roof
    (slope = copy bandwidth) and the compute roof; the achieved TB/s of a point is TFLOP/s / intensity."""
    points = placed(rows)
    if not points:
        return None
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        levels = sorted({r.level for r in points}, key=lambda lvl: LEVEL_ORDER.index(lvl) if lvl in LEVEL_ORDER else 99)
        intensity = [r.flops / r.bytes_ideal for r in points]
        for row, x in zip(points, intensity, strict=True):
            ax.plot(x, row.flops / (row.device_ms * 1e-3) / 1e12, ls="none", ms=6, color=colors[row.implementation],
                    marker=MARKERS[levels.index(row.level) % len(MARKERS)], mfc="none" if row.mode == "fwd+bwd" else None)
        lo, hi = min(intensity) / 3, max(intensity) * 3
        if roof["tbps"] and roof["tflops"]:
            ridge = roof["tflops"] / roof["tbps"]
            lo, hi = min(lo, ridge / 3), max(hi, ridge * 3)
        xs = [lo * (hi / lo) ** (i / 60) for i in range(61)]
        if roof["tbps"]:
            ax.plot(xs, [min(roof["tbps"] * x, roof["tflops"] or float("inf")) for x in xs], color="black", lw=1.2)
        if roof["tflops"]:
            ax.axhline(roof["tflops"], color="black", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_xlabel("arithmetic intensity (FLOP / ideal byte)")
        ax.set_ylabel("achieved TFLOP/s")
        handles = [Line2D([], [], color=colors[i], marker="o", ls="none") for i in sorted({r.implementation for r in points})]
        labels = sorted({r.implementation for r in points})
        if len(levels) > 1:
            handles += [Line2D([], [], color="grey", marker=MARKERS[i % len(MARKERS)], ls="none") for i in range(len(levels))]
            labels += levels
        if any(r.mode == "fwd+bwd" for r in points):
            handles.append(Line2D([], [], color="grey", marker="o", mfc="none", ls="none"))
            labels.append("fwd+bwd (hollow)")
        if roof["tbps"] or roof["tflops"]:
            handles.append(Line2D([], [], color="black", lw=1.2))
            labels.append("roof: " + _describe(roof))
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
        fig.suptitle(f"{name}: roofline", fontsize=11)
        caption = ("Each marker is one ok case: its FLOPs over the median time against its FLOPs per ideal byte; its "
                   "achieved TB/s is TFLOP/s divided by the intensity. The solid line is the roof: the memory ceiling "
                   f"(slope) up to the compute ceiling (dotted). Ceilings: {_describe(roof)}.")
        return _finish(fig, f"roofline-{_slug(name)}", f"Roofline: {name}", caption)


def run_roofline_figures(run: Run, case_ids: dict[str, set[str]] | None = None) -> list[Figure]:
    """One roofline per scenario with any placeable case."""
    roof = ceilings(run.environment)
    colors = implementation_colors([r.implementation for r in run.rows])
    out = []
    for name, _, rows in _scenario_groups(run, case_ids or {}, run.case_rows):
        fig = roofline_figure(name or "all rows", rows, roof, colors)
        if fig is not None:
            out.append(fig)
    return out
