"""Reports (suite.report) from the committed synthetic fixture run and from a real tiny CPU run.

Expected values are recomputed here from rows.jsonl / run.json, independently of the report code.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd
import yaml

from suite.report.load import load_run
from suite.report.render import render_report

FIXTURE = Path(__file__).parent / "data" / "fixture_run"
REPO = Path(__file__).resolve().parents[2]


def fixture_rows() -> list[dict]:
    return [json.loads(line) for line in (FIXTURE / "rows.jsonl").read_text().splitlines() if line.strip()]


def fixture_claims() -> list[dict]:
    meta = json.loads((FIXTURE / "run.json").read_text())
    return [c for record in meta["scenarios"] for c in yaml.safe_load(record["contents"]).get("claims", [])]


def section(html: str, anchor: str) -> str:
    """The HTML of one <section id=anchor>."""
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', html, re.S)
    assert match, f"section {anchor!r} missing"
    return match.group(1)


def table_html(html: str, heading_id: str) -> str:
    match = re.search(rf'<h3 id="{heading_id}">.*?<tbody>(.*?)</tbody>', html, re.S)
    assert match, f"table {heading_id!r} missing"
    return match.group(1)


def test_html_has_every_section_and_is_self_contained(report):
    html = (report / "index.html").read_text()
    for anchor in ("claims", "latency", "profile", "nvml", "correctness", "failures", "rows", "environment"):
        section(html, anchor)
    for table in ("claims", "speedup", "breakdown", "occupancy", "nvml", "correctness", "status", "scenarios"):
        assert f'<h3 id="{table}">' in html, table
    assert "<script" not in html.lower()
    assert not re.search(r'(src|href)="(https?:)?//', html), "no network resources"
    assert "Synthetic data" in html  # the fixture is labelled as such


def test_figures_are_non_empty_images(report):
    html = (report / "index.html").read_text()
    pngs = sorted(report.glob("*.png"))
    assert {p.stem for p in pngs} >= {"latency-fixture-sublayer", "latency-fixture-block", "latency-fixture-channels",
                                      "speedup-fixture-sublayer", "breakdown"}
    assert html.count("data:image/png;base64,") == len(pngs)
    for png in pngs:
        pixels = mpimg.imread(png)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 300, png.name
        assert pixels[..., :3].std() > 0.05, f"{png.name} looks blank"
        assert png.with_suffix(".svg").read_text().lstrip().startswith(("<?xml", "<svg"))


def expected_ms(rows: list[dict], selector: dict) -> float | None:
    """Lowest ok median among rows matching the selector literally (the fixture's params are literal)."""
    ok = [r["median_ms"] for r in rows if r["implementation"] == selector["implementation"] and r["level"] == selector["level"]
          and r["status"] == "ok" and all(r["params"].get(k) == v for k, v in selector.get("params", {}).items())]
    return min(ok) if ok else None


def test_claims_table_has_one_row_per_claim_with_the_computed_ratio(report):
    claims, rows = fixture_claims(), fixture_rows()
    table = pd.read_csv(report / "claims.csv")
    assert list(table["id"]) == [c["id"] for c in claims]
    html = (report / "index.html").read_text()
    assert table_html(html, "claims").count("<tr") == len(claims)
    for claim, got in zip(claims, table.to_dict("records"), strict=True):
        num = expected_ms(rows, claim["numerator"])
        den = expected_ms(rows, claim["denominator"]) if claim["kind"] != "time" else 1.0
        if num is None or den is None:
            assert got["verdict"] == "not measured" and math.isnan(got["ours"]), claim["id"]
            continue
        ours = num / den * (100.0 if claim["kind"] == "share" else 1.0)
        assert math.isclose(got["ours"], ours, rel_tol=1e-9), claim["id"]
        assert math.isclose(got["ours_over_paper"], ours / claim["paper"], rel_tol=1e-9)
    assert set(table["verdict"]) >= {"holds", "weaker", "not measured"}  # the fixture exercises these marks
    assert html.count('class="flagged') >= int(table["verdict"].isin(["weaker", "disagrees"]).sum())


def test_csv_columns_carry_units_and_values(report):
    latency = pd.read_csv(report / "latency.csv")
    assert {"median_ms", "iqr_ms", "min_ms", "tflops", "gbps", "bw_fraction", "peak_mem_bytes", "resolution_px"} <= set(latency)
    by_id = {r["case_id"]: r for r in fixture_rows()}
    assert len(latency) == len(by_id)
    for rec in latency.to_dict("records"):
        want = by_id[rec["case_id"]]["median_ms"]
        assert (want is None and math.isnan(rec["median_ms"])) or math.isclose(rec["median_ms"], want)
    nvml = pd.read_csv(report / "nvml.csv")
    assert {"sm_clock_min_mhz", "sm_clock_median_mhz", "temp_max_c", "power_mean_w", "clock_drop_fraction",
            "throttled"} <= set(nvml)
    assert {"speedup_x", "baseline_ms", "median_ms"} <= set(pd.read_csv(report / "speedup.csv"))
    assert {"theoretical_occupancy_fraction", "waves", "registers_per_thread"} <= set(pd.read_csv(report / "occupancy.csv"))
    assert {"total_ms", "mlp_ms", "mlp_share_fraction"} <= set(pd.read_csv(report / "breakdown.csv"))


def test_speedup_is_against_the_fastest_attention_row(report):
    rows = [r for r in fixture_rows() if r["status"] == "ok"]
    speedup = pd.read_csv(report / "speedup.csv")
    for rec in speedup.to_dict("records"):
        peers = [r["median_ms"] for r in rows if r["family"] == "attention" and r["level"] == rec["level"]
                 and r["params"].get("resolution") == rec["resolution_px"]]
        assert math.isclose(rec["baseline_ms"], min(peers)) and math.isclose(rec["speedup_x"], min(peers) / rec["median_ms"])


def test_throttled_failed_and_oom_rows_are_flagged(report):
    rows = fixture_rows()
    html = (report / "index.html").read_text()
    throttled = sum(1 for r in rows if (r.get("nvml") or {}).get("throttled"))
    assert throttled >= 1 and table_html(html, "nvml").count('class="flagged"') == throttled
    status = pd.read_csv(report / "status.csv")
    assert sorted(status["status"]) == sorted(r["status"] for r in rows if r["status"] != "ok")
    assert all(isinstance(m, str) and m for m in status["message"])
    correctness = pd.read_csv(report / "correctness.csv")
    failed = correctness[correctness["failed"] > 0]
    assert list(failed["implementation"]) == sorted({r["implementation"] for r in rows if r["status"] == "failed-check"})


def test_partial_run_renders_and_lists_missing_cases(tmp_path):
    run = tmp_path / "partial"
    shutil.copytree(FIXTURE, run)
    lines = (run / "rows.jsonl").read_text().splitlines()
    kept, dropped = lines[:-3], [json.loads(line)["case_id"] for line in lines[-3:]]
    (run / "rows.jsonl").write_text("\n".join(kept) + "\n" + lines[-1][: len(lines[-1]) // 2])  # plus a torn last line
    render_report(run, tmp_path / "out")
    missing = pd.read_csv(tmp_path / "out" / "missing.csv")
    assert sorted(missing["case_id"]) == sorted(dropped)
    assert "3 missing" in (tmp_path / "out" / "index.html").read_text()


def test_compare_shows_per_case_ratios_and_unmatched_rows(tmp_path):
    other = tmp_path / "other"
    shutil.copytree(FIXTURE, other)
    rows = fixture_rows()
    changed = []
    for i, row in enumerate(rows):
        if row["median_ms"] is not None:
            row["median_ms"] *= 1.0 + 0.1 * (i % 4)  # a different card: some cases slower
        changed.append(row)
    dropped = changed.pop()
    (other / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in changed))
    render_report(FIXTURE, tmp_path / "out", compare=other)
    compare = pd.read_csv(tmp_path / "out" / "compare.csv")
    mine = {r["case_id"]: r for r in fixture_rows()}
    assert len(compare) == len(changed)
    for rec, row in zip(compare.to_dict("records"), changed, strict=True):
        assert rec["case_id"] == row["case_id"]
        if row["median_ms"] is not None:
            assert math.isclose(rec["other_over_run"], row["median_ms"] / mine[row["case_id"]]["median_ms"])
    only = pd.read_csv(tmp_path / "out" / "compare_only.csv")
    assert list(only["case_id"]) == [dropped["case_id"]] and only["only_in"][0] == load_run(FIXTURE).name
    html = (tmp_path / "out" / "index.html").read_text()
    assert '<section id="compare">' in html and (tmp_path / "out" / "compare.png").exists()


def test_cli_report_and_clear_error(tmp_path, capsys):
    from suite.cli import main

    assert main(["report", str(FIXTURE), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "index.html").exists()
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r2")]) == 2
    assert "does not exist" in capsys.readouterr().err


def tiny_smoke_scenario(tmp_path: Path) -> Path:
    """scenarios/smoke-cpu.yaml cut to a few fast sublayer cases, with a claim and a paper point."""
    data = yaml.safe_load((REPO / "scenarios" / "smoke-cpu.yaml").read_text())
    data.update(name="smoke-cpu-tiny", implementations=["attention-math", "attention-flash", "cgspn-scan"], levels=["sublayer"],
                modes=["fwd"], sweep={"grid": [5, 7]}, timing={"budget_ms": 2, "warmup_ms": 1, "min_reps": 3, "max_reps": 5})
    data["paper_points"] = [{"implementation": "attention-math", "level": "sublayer", "params": {"grid": 7}, "ms": 1.0}]
    data["claims"] = [{"id": "tiny-ratio", "text": "math vs scan", "paper": 2.0, "kind": "ratio",
                       "numerator": {"implementation": "attention-math", "level": "sublayer", "params": {"grid": 7}},
                       "denominator": {"implementation": "cgspn-scan", "level": "sublayer", "params": {"grid": 7}}}]
    path = tmp_path / "smoke-cpu-tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_report_from_a_real_cpu_run(tmp_path):
    scenario = tiny_smoke_scenario(tmp_path)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "suite.cli", "run", str(scenario), "--out", str(run), "--device", "cpu"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    render_report(run, tmp_path / "report")
    claims = pd.read_csv(tmp_path / "report" / "claims.csv")
    rows = [json.loads(line) for line in (run / "rows.jsonl").read_text().splitlines()]
    ok = {(r["implementation"], r["params"]["grid"]): r["median_ms"] for r in rows if r["status"] == "ok"}
    assert math.isclose(claims["ours"][0], ok[("attention-math", 7)] / ok[("cgspn-scan", 7)], rel_tol=1e-9)
    assert (tmp_path / "report" / "latency-smoke-cpu-tiny.png").exists()
    assert "cpu" in (tmp_path / "report" / "index.html").read_text()


def test_reproduce_on_cpu_falls_back_runs_and_reports(tmp_path):
    data = yaml.safe_load(tiny_smoke_scenario(tmp_path).read_text())
    data.update(name="smoke-cpu-one", implementations=["attention-math"], sweep={"grid": [5]}, paper_points=[], claims=[])
    scenario = tmp_path / "one.yaml"
    scenario.write_text(yaml.safe_dump(data))
    run, report = tmp_path / "run", tmp_path / "report"
    cmd = [sys.executable, "-m", "suite.cli", "reproduce", "--device", "cpu", "--scenarios", str(scenario), "--out", str(run),
           "--report", str(report)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "the paper's figures need a GPU" in done.stderr and "elapsed" in done.stderr
    meta = json.loads((run / "run.json").read_text())
    assert meta["elapsed_s"] > 0 and meta["reproduce"]["cpu_fallback"] is True
    assert (report / "index.html").exists() and (report / "latency.csv").exists()


def test_speedup_baseline_is_global_attention_not_tiled():
    """Tiled FlashAttention (a windowed approximation) is faster but is not the baseline."""
    from suite.report.tables import speedups
    from suite.results import Row

    def row(impl, family, ms):
        return Row(case_id=impl, implementation=impl, family=family, level="block", mode="fwd", dtype="bfloat16",
                   params={"batch": 32, "channels": 1152, "grid": 74}, median_ms=ms)

    frame = speedups([row("attention-cudnn", "attention", 24.0), row("attention-tiled-flash", "attention", 18.0),
                      row("cgspn", "cgspn", 8.0)])
    assert list(frame["baseline"]) == ["attention-cudnn"]
    assert frame["speedup_x"].iloc[0] == 3.0


def test_report_leaves_out_gate_confirmation_rows(tmp_path):
    """Rows appended by `gate --confirm` are not the run's own measurements."""
    from suite.gate.baseline import CONFIRM_MARKER
    from suite.report.load import load_run
    from suite.results import Row, RunDir

    run = RunDir(tmp_path / "run")
    base = dict(implementation="cgspn-scan", family="cgspn", level="sublayer", mode="fwd", dtype="bfloat16",
                params={"batch": 8, "grid": 27})
    run.append(Row(case_id="a", median_ms=1.0, **base))
    run.append(Row(case_id="a", median_ms=2.0, message=f"{CONFIRM_MARKER} 1/3", **base))
    assert [r.median_ms for r in load_run(run.path).rows] == [1.0]


def test_reproduce_finds_the_shipped_scenarios_from_any_directory(tmp_path, monkeypatch):
    """Started outside the repository root, the main job still finds scenarios/ in the checkout."""
    from suite.reproduce import CPU_FALLBACK, PAPER_SCENARIOS, shipped

    monkeypatch.chdir(tmp_path)
    assert shipped(CPU_FALLBACK).is_file() and shipped(CPU_FALLBACK).is_absolute()
    assert shipped(PAPER_SCENARIOS).is_dir() and any(shipped(PAPER_SCENARIOS).glob("*.yaml"))
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "smoke-cpu.yaml").write_text("name: mine\n")
    assert shipped(CPU_FALLBACK) == CPU_FALLBACK  # a file of that name here wins: the user's own scenarios
