"""What the report's files read like: CSVs for pandas, units, highlighted rows, kernel names, title,
figures that show what they say, the roofline and energy."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from suite.report import figures as figs
from suite.report import render as rnd
from suite.report import roofline
from suite.report import tables as tbl
from suite.report.load import load_run
from suite.report.render import render_report
from suite.results import Row

FIXTURE = Path(__file__).parent / "data" / "fixture_run"


def test_every_csv_loads_with_one_column_per_parameter_and_shared_units(report):
    rows_csv_units = {"peak_mem_bytes", "bw_fraction"}  # as rows.csv names them
    for path in sorted(report.glob("*.csv")):
        frame = pd.read_csv(path)  # raises on a header-less empty file
        assert len(frame.columns) > 0, path.name
        assert "params" not in frame.columns, f"{path.name}: packed params"
        assert not [c for c in frame.columns if c.endswith(("_pct", "_mib"))], f"{path.name}: percent/MiB column"
        assert not [c for c in frame.columns if c == "series"], f"{path.name}: points into the run directory"
    latency = pd.read_csv(report / "latency.csv")
    assert rows_csv_units <= set(latency.columns) and {"p_batch", "p_channels"} <= set(latency.columns)
    rows = {json.loads(line)["case_id"]: json.loads(line) for line in (FIXTURE / "rows.jsonl").read_text().splitlines()}
    for rec in latency.to_dict("records"):
        row = rows[rec["case_id"]]
        assert rec["p_batch"] == row["params"]["batch"]
        if row.get("peak_mem_bytes"):
            assert rec["peak_mem_bytes"] == row["peak_mem_bytes"]
        if row.get("bw_fraction"):
            assert rec["bw_fraction"] == pytest.approx(row["bw_fraction"])


def test_empty_tables_still_have_a_header(report):
    missing = pd.read_csv(report / "missing.csv")  # a complete run: nothing missing
    assert missing.empty and {"implementation", "case_id"} <= set(missing.columns)


def test_make_frame_puts_parameters_after_the_case_columns():
    frame = tbl.make_frame([{"scenario": "s", "grid_w": 3, "p_grid": 3, "median_ms": 1.0}, {"p_batch": 2, "x": 1}],
                           [*tbl.CASE_FIELDS, "median_ms"])
    names = list(frame.columns)
    assert names.index("p_batch") == names.index("grid_w") + 1 and names.index("p_grid") == names.index("p_batch") + 1
    assert list(tbl.make_frame([], ["a", "b"]).columns) == ["a", "b"]


def test_flagged_rows_win_over_the_zebra_stripes_and_weaker_is_amber():
    css = (rnd.TEMPLATES / "report.css").read_text()
    zebra = css.index("tbody tr:nth-child(even) td")
    flagged = css.index("table.data tbody tr.flagged td")
    assert flagged > zebra  # same specificity, later: a flagged even row keeps its colour
    assert "tr.flagged.warn td { background: var(--warn-bg)" in css
    assert rnd.row_class(True, {"verdict": "weaker"}) == "flagged warn"
    assert rnd.row_class(True, {"verdict": "disagrees"}) == "flagged"
    assert rnd.row_class(False, {"verdict": "weaker"}) == ""


def test_throttled_yes_is_bad_and_passed_yes_is_good(report):
    assert rnd.format_cell(True, "throttled") == ("yes", "bad")
    assert rnd.format_cell(False, "throttled") == ("no", "good")
    assert rnd.format_cell(True, "target_met") == ("yes", "good")
    html = (report / "index.html").read_text()
    assert '<td class="bad">yes</td>' in re.search(r'<h3 id="nvml">.*?</table>', html, re.S).group(0)


def test_fractions_and_bytes_read_as_percent_and_mib_in_the_html():
    assert rnd.format_cell(0.128, "bw_fraction") == ("12.8%", "num")
    assert rnd.format_cell(3 * 2**20, "peak_mem_bytes") == ("3 MiB", "num")


def test_kernel_names_are_shortened_with_the_full_name_as_title():
    name = ("void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_32x32_128x2_tn_align8>"
            "(cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_32x32_128x2_tn_align8::Params)")
    assert rnd.short_kernel_name(name) == "cutlass::Kernel2<…>"
    assert rnd.short_kernel_name("x" * 200).endswith("…") and len(rnd.short_kernel_name("x" * 200)) == rnd.NAME_CHARS
    table = tbl.Table("occupancy", "Occupancy", pd.DataFrame([{"name": name, "waves": 1.0}]))
    cell = rnd.table_rows(table, rnd.column_specs(table))[0]["cells"][0]
    assert cell["text"] == "cutlass::Kernel2<…>" and cell["title"] == name


def test_title_and_commit_come_from_the_environment(report, tmp_path):
    html = (report / "index.html").read_text()
    run = load_run(FIXTURE)
    assert f"<title>{tbl.report_title(run)}</title>" in html
    assert "NVIDIA H100 80GB HBM3" in tbl.report_title(run) and "2025-11-24" in tbl.report_title(run)
    assert "51cff3c1f0" in dict(tbl.key_facts(run))["commit"]
    assert tbl.commit_text({"git": {"commit": None}}).startswith("not recorded")
    env = {"flash_attn": None, "flash_attn_3": "3.0.0", "sdpa_flash_impl": "FA2 (bundled)"}
    assert tbl.flash_attention_text(env) == "SDPA FA2 (bundled); FA3 3.0.0"


def row(impl: str, level: str, params: dict, ms: float | None, status: str = "ok") -> Row:
    return Row(case_id=f"{impl}-{level}-{sorted(params.items())}", implementation=impl, family="", level=level, mode="fwd",
               dtype="bfloat16", params=params, status=status, median_ms=ms, flops=2e12, bytes_ideal=1e9)


def test_latency_legend_lists_only_what_is_drawn():
    rows = [row("cgspn", "layer", {"compression": 1, "resolution": 1036}, 10.0),
            row("cgspn", "layer", {"compression": 18, "resolution": 1036}, 1.0),
            row("gspn-original", "layer", {"resolution": 1036}, 600.0),  # no compression axis: a reference line
            row("gspn-original-fast", "layer", {"resolution": 1036}, None, "oom")]  # nothing to draw
    fig, ax = plt.subplots()
    colors = figs.implementation_colors([r.implementation for r in rows])
    figs._plot_panel(ax, rows, "compression", [], colors, [])
    labels = ax.get_legend().get_texts()
    plt.close(fig)
    assert [t.get_text() for t in labels] == ["cgspn", "gspn-original (no compression s)"]


def test_breakdown_total_time_is_on_a_log_axis(monkeypatch):
    captured = {}
    monkeypatch.setattr(figs, "_finish", lambda fig, *a, **k: captured.setdefault("fig", fig))
    rows = [row("cgspn", "block", {"resolution": 1036}, 8.0), row("attention-cudnn", "block", {"resolution": 1036}, 400.0)]
    rows[0].profile = {"categories": {"propagation": 1.0, "mlp": 7.0}}
    rows[1].profile = {"categories": {"attention": 380.0, "mlp": 20.0}}
    figs.breakdown_figure(rows)
    total_axis = captured["fig"].axes[0]
    assert total_axis.get_xscale() == "log"
    assert sorted(p.get_width() for p in total_axis.patches) == [8.0, 400.0]
    plt.close(captured["fig"])


def test_roofline_table_uses_measured_ceilings_else_labelled_datasheet_values(report, tmp_path):
    frame = pd.read_csv(report / "roofline.csv")
    rows = {json.loads(line)["case_id"]: json.loads(line) for line in (FIXTURE / "rows.jsonl").read_text().splitlines()}
    assert not frame.empty
    for rec in frame.to_dict("records"):  # the fixture's attention rows have FLOPs, its C-GSPN rows bytes
        r = rows[rec["case_id"]]
        seconds = r["median_ms"] * 1e-3
        if r["flops"]:
            assert rec["achieved_tflops"] == pytest.approx(r["flops"] / seconds / 1e12)
            assert rec["compute_fraction"] == pytest.approx(rec["achieved_tflops"] / 989.0)  # H100 datasheet: no GEMM measured
        if r["bytes_ideal"]:
            assert rec["achieved_tbps"] == pytest.approx(r["bytes_ideal"] / seconds / 1e12)
            assert rec["bandwidth_fraction"] == pytest.approx(rec["achieved_tbps"] / 3.35)  # the fixture's 3350 GB/s copy
    caption = re.search(r'<h3 id="roofline">.*?<p class="caption">(.*?)</p>', (report / "index.html").read_text(), re.S)
    assert "measured device copy" in caption.group(1) and "datasheet dense bf16" in caption.group(1)
    measured = roofline.ceilings({"gpu": {"name": "NVIDIA H200"}, "copy_bandwidth_gbps": 4170.0, "gemm_tflops": 700.0})
    assert measured == {"tbps": 4.17, "tbps_source": "measured device copy", "tflops": 700.0,
                        "tflops_source": "measured bf16 GEMM"}
    sheet = roofline.ceilings({"gpu": {"name": "NVIDIA H200"}})
    assert sheet["tflops"] == 989.0 and sheet["tflops_source"].startswith("datasheet")
    assert roofline.ceilings({})["tflops"] is None  # a CPU run: no ceiling is invented


def test_energy_per_call_and_per_image_in_the_nvml_table(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    lines = [json.loads(line) for line in (run / "rows.jsonl").read_text().splitlines()]
    with_nvml = [r for r in lines if (r.get("nvml") or {}).get("available")]
    with_nvml[0]["nvml"].update(energy_per_call_j=0.5, energy_per_image_j=0.5 / with_nvml[0]["params"]["batch"],
                                energy_source="nvml total-energy counter")
    (run / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    render_report(run, tmp_path / "out")
    nvml = pd.read_csv(tmp_path / "out" / "nvml.csv")
    assert {"energy_per_call_j", "energy_per_image_j", "energy_source"} <= set(nvml.columns)
    counter = nvml[nvml["energy_source"] == "nvml total-energy counter"]
    assert list(counter["energy_per_call_j"]) == [0.5]
    older = nvml[nvml["energy_source"] == "mean sampled power x median time"]  # rows with energy_per_iter_j
    assert len(older) == len(with_nvml) - 1
    assert (older["energy_per_image_j"] * older["p_batch"]).round(12).tolist() == older["energy_per_call_j"].round(12).tolist()


def test_roofline_figure_places_cases_under_the_roofs(monkeypatch):
    captured = {}
    monkeypatch.setattr(roofline, "_finish", lambda fig, *a, **k: captured.setdefault("fig", fig))
    rows = [row("cgspn-scan", "sublayer", {"resolution": 1036}, 1.0),
            row("attention-cudnn", "sublayer", {"resolution": 1036}, 4.0)]
    rows[0].flops, rows[0].bytes_ideal = 1e9, 2e9  # 1 TFLOP/s at 0.5 FLOP/byte; 2 TB/s
    roof = {"tbps": 4.0, "tbps_source": "measured device copy", "tflops": 700.0, "tflops_source": "measured bf16 GEMM"}
    roofline.roofline_figure("s", rows, roof, figs.implementation_colors([r.implementation for r in rows]))
    ax = captured["fig"].axes[0]
    points = sorted((float(line.get_xdata()[0]), float(line.get_ydata()[0])) for line in ax.lines if len(line.get_xdata()) == 1)
    assert points == [pytest.approx((0.5, 1.0)), pytest.approx((2000.0, 500.0))]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    roof_line = max(ax.lines, key=lambda line: len(line.get_xdata()))
    assert max(roof_line.get_ydata()) == pytest.approx(700.0)
    plt.close(captured["fig"])


def test_roofline_places_cases_by_their_device_time():
    """Like the rows' tflops and gbps, the roofline divides by the graph-replay median where there is one."""
    from suite.report.load import Run

    row = Row(case_id="c1", implementation="cgspn-scan", family="cgspn", level="sublayer", mode="fwd", dtype="bfloat16",
              params={"batch": 1, "grid": 4}, median_ms=2.0, graph_median_ms=0.5, graph_samples_ms=[0.5] * 5,
              flops=1e12, bytes_ideal=1e9)
    run = Run(path=Path("."), meta={"environment": {"copy_bandwidth_gbps": 4000.0, "gemm_tflops": 800.0}}, rows=[row])
    rec = roofline.roofline_table(run).frame.to_dict("records")[0]
    assert rec["device_ms"] == 0.5 and rec["achieved_tflops"] == pytest.approx(1e12 / 0.5e-3 / 1e12)
    assert rec["achieved_tbps"] == pytest.approx(1e9 / 0.5e-3 / 1e12) and roofline.placed([row]) == [row]
