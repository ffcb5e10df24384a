"""Reports of multi-GPU runs: rows per GPU, the variance mode's card-to-card spread, --compare.

The variance run is real: ``torchrun`` with 2 gloo CPU ranks runs ``--same-case-on-every-gpu`` on a
tiny scenario of the test-only ``test-sleep`` implementation, so rows.jsonl and gpu_spread.json are
exactly what the runner writes. CPU ranks have no GPU identity and no NVML, so the per-GPU columns
are then exercised on SYNTHETIC copies (run.json ``synthetic: true``): the same rows given two GPU
UUIDs and made-up NVML clocks, and the committed fixture run split over two UUIDs. Expected numbers
are recomputed here from the files, independently of the report code.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd
import pytest

from suite.report.render import render_report
from suite.results import Row, RunDir
from suite.sharding import write_spread
from suite.tests.helpers import SAMPLE_IMPLS, load_sample_impls

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "fixture_run"

ROOT = Path(__file__).resolve().parents[2]

SCENARIO = """name: variance-tiny
description: "two test-sleep cases measured on every rank"
implementations: [test-sleep]
levels: [sublayer]
modes: [fwd]
dtypes: [float32]
params: {batch: 2}
sweep: {grid: [2, 3]}
timing: {budget_ms: 4, warmup_ms: 0, min_reps: 2, max_reps: 4}
claims:
  - {id: sleep-3, text: "test-sleep at grid 3", paper: 3.0, kind: time,
     numerator: {implementation: test-sleep, level: sublayer, params: {grid: 3}}}
"""
# Synthetic NVML clocks per GPU (MHz) for the relabelled copies: gpu1 runs slower on purpose.
SYNTHETIC_SM_CLOCKS = {0: [1980, 1965], 1: [1830, 1845]}


@pytest.fixture(scope="module")
def variance_run(tmp_path_factory) -> Path:
    """A real variance-mode run: torchrun, 2 gloo CPU ranks, every rank measures both cases."""
    tmp = tmp_path_factory.mktemp("variance")
    scenario = tmp / "variance-tiny.yaml"
    scenario.write_text(SCENARIO)
    out = tmp / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "suite.run",
               str(scenario), "--out", str(out), "--device", "cpu", "--import", str(SAMPLE_IMPLS), "--same-case-on-every-gpu"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "gpu_spread.json").exists()
    return out


@pytest.fixture(autouse=True)
def sample_impls(monkeypatch):
    """The report expands the run's stored scenario, which names test-sleep."""
    load_sample_impls(monkeypatch)


def rows_of(run: Path) -> list[Row]:
    return RunDir(run).rows()


def expected_spread(rows: list[Row]) -> dict[str, dict]:
    """Per case: per-rank medians, their median and (max - min) / median as a fraction."""
    out: dict[str, dict] = {}
    for row in rows:
        out.setdefault(row.case_id, {})[row.rank] = row.median_ms
    result = {}
    for cid, medians in out.items():
        middle = statistics.median(medians.values())
        result[cid] = {"medians": medians, "median": middle,
                       "spread_fraction": (max(medians.values()) - min(medians.values())) / middle}
    return result


def assert_spread_table(report: Path, rows: list[Row], label: str) -> pd.DataFrame:
    table = pd.read_csv(report / "gpu_spread.csv")
    want = expected_spread(rows)
    assert sorted(table["case_id"]) == sorted(want)
    for rec in table.to_dict("records"):
        case = want[rec["case_id"]]
        assert rec["gpus"] == 2
        assert math.isclose(rec["median_ms"], case["median"], rel_tol=1e-12)
        assert math.isclose(rec["spread_fraction"], case["spread_fraction"], rel_tol=1e-9, abs_tol=1e-12)
        for rank, ms in case["medians"].items():
            assert math.isclose(rec[label.format(rank=rank)], ms, rel_tol=1e-12)
    return table


def assert_figure(png: Path) -> None:
    pixels = mpimg.imread(png)
    assert pixels.shape[0] > 150 and pixels.shape[1] > 300 and pixels[..., :3].std() > 0.05, png.name


def test_real_variance_run_reports_per_rank_rows_and_spread(variance_run, tmp_path):
    rows = rows_of(variance_run)
    assert sorted((r.params["grid"], r.rank) for r in rows) == [(2, 0), (2, 1), (3, 0), (3, 1)]
    index = render_report(variance_run, tmp_path / "report")
    html = index.read_text()
    assert '<section id="gpus">' in html and '<h3 id="gpus">' in html and '<h3 id="gpu_spread">' in html

    gpus = pd.read_csv(tmp_path / "report" / "gpus.csv")  # CPU ranks: grouped by rank, no NVML
    assert list(gpus["gpu"]) == ["rank0", "rank1"] and list(gpus["rows"]) == [2, 2] and list(gpus["ok"]) == [2, 2]
    assert gpus["sm_clock_median_mhz"].isna().all()

    table = assert_spread_table(tmp_path / "report", rows, "rank{rank}_ms")
    runner = {e["case_id"]: e for e in json.loads((variance_run / "gpu_spread.json").read_text())}
    for rec in table.to_dict("records"):  # the runner's own spread, (max - min) / min, shown as well
        assert math.isclose(rec["spread_of_min_fraction"], runner[rec["case_id"]]["spread"], rel_tol=1e-12)
    assert_figure(tmp_path / "report" / "gpu-spread.png")
    assert "gpu-spread.png" in html

    claim = pd.read_csv(tmp_path / "report" / "claims.csv").iloc[0]  # a case on two ranks: the median over them
    grid3 = statistics.median(r.median_ms for r in rows if r.params["grid"] == 3)
    assert math.isclose(claim["ours"], grid3, rel_tol=1e-12)

    latency = pd.read_csv(tmp_path / "report" / "latency.csv")  # every row listed, with the rank that measured it
    assert sorted(latency["gpu"]) == ["rank0", "rank0", "rank1", "rank1"]


def synthetic_gpu_copy(source: Path, dest: Path, scale_rank1: float = 1.0) -> Path:
    """SYNTHETIC: ``source`` with rank k's rows on GPU k (made-up UUIDs and NVML clocks), rank 1's
    medians scaled, and gpu_spread.json rewritten by the runner's own function."""
    shutil.copytree(source, dest)
    rows = rows_of(source)
    seen: dict[int, int] = {}
    (dest / "rows.jsonl").unlink()
    for row in rows:
        i = seen[row.rank] = seen.get(row.rank, -1) + 1
        row.gpu_index, row.gpu_uuid, row.device = row.rank, f"GPU-synthetic-{row.rank}", "synthetic card"
        if row.rank == 1 and row.median_ms is not None:
            row.median_ms *= scale_rank1
        clock = SYNTHETIC_SM_CLOCKS[row.rank][i % 2]
        row.nvml = {"available": True, "sm_clock_median_mhz": clock, "sm_clock_min_mhz": clock - 15,
                    "mem_clock_median_mhz": 2619, "throttled": False}
        RunDir(dest).append(row)
    write_spread(dest, RunDir(dest).rows())
    meta = json.loads((dest / "run.json").read_text())
    meta.update(synthetic=True, note="synthetic test data: a real CPU variance run relabelled as two GPUs")
    (dest / "run.json").write_text(json.dumps(meta))
    return dest


def test_synthetic_two_gpu_variance_run_and_compare(variance_run, tmp_path):
    run = synthetic_gpu_copy(variance_run, tmp_path / "two-gpus", scale_rank1=1.2)
    rows = rows_of(run)
    index = render_report(run, tmp_path / "report", compare=variance_run)
    html = index.read_text()
    assert "Synthetic data" in html

    gpus = pd.read_csv(tmp_path / "report" / "gpus.csv")
    assert list(gpus["gpu_uuid"]) == ["GPU-synthetic-0", "GPU-synthetic-1"] and list(gpus["gpu"]) == ["rank0/gpu0", "rank1/gpu1"]
    assert list(gpus["rows"]) == [2, 2] and list(gpus["ok"]) == [2, 2] and list(gpus["name"]) == ["synthetic card"] * 2
    for rec in gpus.to_dict("records"):
        clocks = SYNTHETIC_SM_CLOCKS[rec["gpu_index"]]
        assert rec["sm_clock_median_mhz"] == statistics.median(clocks) and rec["sm_clock_min_mhz"] == min(clocks) - 15

    spread = assert_spread_table(tmp_path / "report", rows, "rank{rank}/gpu{rank}_ms")
    assert spread.shape[0] == table_rows(html, "gpu_spread") and table_rows(html, "gpus") == 2
    assert_figure(tmp_path / "report" / "gpu-spread.png")

    # --compare: one number per case in each run, the median over its GPUs
    compare = pd.read_csv(tmp_path / "report" / "compare.csv")
    real = expected_spread(rows_of(variance_run))
    mine = expected_spread(rows)
    assert sorted(compare["case_id"]) == sorted(real)
    for rec in compare.to_dict("records"):
        assert math.isclose(rec["other_over_run"], real[rec["case_id"]]["median"] / mine[rec["case_id"]]["median"],
                            rel_tol=1e-12)
    assert pd.read_csv(tmp_path / "report" / "compare_only.csv").empty  # every case in both runs (a header, no rows)
    assert (tmp_path / "report" / "compare.png").exists()


def table_rows(html: str, heading_id: str) -> int:
    start = html.index(f'<h3 id="{heading_id}">')
    body = html[html.index("<tbody>", start):html.index("</tbody>", start)]
    return body.count("<tr")


def test_synthetic_sharded_fixture_groups_rows_by_gpu(tmp_path):
    """The committed synthetic fixture split over two GPUs as a sharded run would: no spread, a per-GPU table."""
    run = tmp_path / "sharded"
    shutil.copytree(FIXTURE, run)
    lines = (run / "rows.jsonl").read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        rec = json.loads(line)
        rec.update(rank=i % 2, gpu_index=i % 2, gpu_uuid=f"GPU-synthetic-{i % 2}")
        records.append(rec)
    (run / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    index = render_report(run, tmp_path / "report")
    html = index.read_text()
    assert '<h3 id="gpus">' in html and '<h3 id="gpu_spread">' not in html and "gpu-spread" not in html
    gpus = pd.read_csv(tmp_path / "report" / "gpus.csv").set_index("gpu_uuid")
    for k in (0, 1):
        mine = [r for r in records if r["gpu_index"] == k]
        rec = gpus.loc[f"GPU-synthetic-{k}"]
        assert rec["rows"] == len(mine) and rec["ok"] == sum(r["status"] == "ok" for r in mine)
        sampled = [r["nvml"] for r in mine if r.get("nvml") and r["nvml"].get("available")]
        assert rec["sm_clock_median_mhz"] == statistics.median(n["sm_clock_median_mhz"] for n in sampled)
        assert rec["sm_clock_min_mhz"] == min(n["sm_clock_min_mhz"] for n in sampled)
        assert rec["throttled_rows"] == sum(bool(n.get("throttled")) for n in sampled)
    assert "2 (sharded)" in html  # header fact


def test_cli_report_default_out_is_named_after_the_run_directory(variance_run, tmp_path, monkeypatch):
    """As `cgspn-bench report --help` says: without --out the report goes to reports/local/<RUN directory name>."""
    from suite.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["report", str(variance_run)]) == 0
    assert (tmp_path / "reports" / "local" / variance_run.name / "gpu_spread.csv").exists()
