"""Scan variants as registered implementations: every variant of ``SCAN_VARIANTS`` is a sublayer entry
(``cgspn-scan-<variant>``; the default is ``cgspn-scan``) and, for the layer and block, ``cgspn-<variant>``; the
A/B scenario expands to those cases; a variant case runs the variant it names (no module attribute patched at
run time) and goes through the measurement core into an ordinary Row, as the scan bench's cases do.
CPU: Triton's interpreter at tiny shapes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined

from kernels import registry  # noqa: E402
from kernels.cgspn.entries import scan_variant_name  # noqa: E402
from kernels.cgspn.layer import CGSPNLayer  # noqa: E402
from kernels.cgspn.scan import DEFAULT_VARIANT, SCAN_VARIANTS  # noqa: E402
from kernels.params import Params  # noqa: E402
from suite.measure import TimingSettings, measure_case  # noqa: E402
from suite.results import RunDir  # noqa: E402
from suite.scenario import load_scenario  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REPO = Path(__file__).resolve().parents[2]
TINY = Params(batch=1, grid_h=3, grid_w=4, latent_channels=2)
QUICK = TimingSettings(budget_ms=1, warmup_ms=0, min_reps=1, max_reps=1, cuda_graph=False)


def test_every_variant_is_registered():
    assert scan_variant_name(DEFAULT_VARIANT) == "cgspn-scan"
    for variant in SCAN_VARIANTS:
        assert registry.levels_of(scan_variant_name(variant)) == ["sublayer"]
        if variant != DEFAULT_VARIANT:
            assert registry.levels_of(f"cgspn-{variant}") == ["layer", "block"]


@pytest.mark.parametrize("variant", ["quad-gather", "pairs-scratch", "directions-gather", "cuda-fast"])
def test_variant_entry_runs_its_variant(variant):
    """The entry's backend_detail names the variant (cuda-fast: the Triton fallback and why off the GPU), and its
    output matches the reference."""
    work = registry.get(scan_variant_name(variant), "sublayer").build(TINY, torch.float32, torch.device(DEVICE), "fwd")
    if variant == "cuda-fast":
        assert work.backend_detail.startswith(("cuda-fast-path", "triton quad-scratch (fast path not used"))
    else:
        assert work.backend_detail == f"triton {variant}"
    torch.testing.assert_close(work.fn(), work.reference(), rtol=1e-5, atol=1e-5)


def test_variant_case_goes_through_the_measurement_core(tmp_path):
    """fwd+bwd of a variant entry, checked against the reference (output and gradients) and timed into a Row."""
    impl = registry.get("cgspn-scan-pairs-gather", "sublayer")
    row = measure_case(impl, TINY, "float32", DEVICE, "fwd+bwd", QUICK, nvml=False, run_dir=tmp_path, scenario="test")
    assert row.status == "ok", row.message
    assert row.correctness["passed"] and row.backend_detail == "triton pairs-gather"
    run = RunDir(tmp_path)
    run.append(row)
    assert [r.implementation for r in run.rows()] == ["cgspn-scan-pairs-gather"]


def test_layer_variant_entry_and_argument():
    work = registry.get("cgspn-quad-gather", "layer").build(Params(batch=1, channels=24, compression=12, grid=3),
                                                            torch.float32, torch.device(DEVICE), "fwd")
    assert work.backend_detail.endswith("scan variant quad-gather")
    assert work.module.variant == "quad-gather" and "variant=quad-gather" in repr(work.module)
    assert CGSPNLayer(24, compression=12).variant == DEFAULT_VARIANT
    with pytest.raises(ValueError, match="variant"):
        CGSPNLayer(24, compression=12, variant="fastest")


def test_variant_scenario_lists_every_variant():
    scenario = load_scenario(REPO / "scenarios" / "cgspn-scan-variants.yaml")
    names = {c.implementation.name for c in scenario.cases}
    assert {scan_variant_name(v) for v in SCAN_VARIANTS} <= names
    assert {"cgspn", "attention-cudnn", "cgspn-quad-gather", "cgspn-cuda-fast"} <= names
    levels = {(c.implementation.name, c.implementation.level) for c in scenario.cases}
    assert ("cgspn-quad-gather", "block") in levels and ("cgspn-scan-quad-gather", "sublayer") in levels


def test_scan_bench_writes_rows(monkeypatch, tmp_path):
    """A registered case of the scan bench becomes an ordinary Row in its run directory."""
    from suite.gpu import cgspn_scan_bench as bench

    monkeypatch.setattr(bench, "TIMING", QUICK)
    run = RunDir(tmp_path)
    case = bench.Case("variants", "quad-scratch", "fwd", "float32", bench.Shape(1, 3, 2), impl="cgspn-scan-quad-scratch")
    out = bench.time_case(case, DEVICE, None, run, "rid")
    (row,) = run.rows()
    assert out["status"] == row.status == "ok" and row.implementation == "cgspn-scan-quad-scratch"
    assert {"batch": 1, "grid": 3, "latent_channels": 2}.items() <= row.params.items() and row.run_id == "rid"
    assert row.scenario == "cgspn-scan-bench:variants" and out["median_ms"] == row.median_ms


def test_scan_bench_parity_group(monkeypatch, tmp_path):
    """The parity group times the default and the Triton path on the same shapes (non-square grids too, as
    grid_h/grid_w rows) and pairs them per shape and mode: Triton / default on device time."""
    from suite.gpu import cgspn_scan_bench as bench

    monkeypatch.setattr(bench, "TIMING", QUICK)
    parity = [c for c in bench.cases(tiny=True) if c.group == "parity"]
    assert {c.name for c in parity} == {bench.DEFAULT_VARIANT, bench.TRITON_VARIANT}
    assert {c.mode for c in parity} == {"fwd", "fwd+bwd"} and any(c.shape.width for c in parity)
    full = [c for c in bench.cases(tiny=False) if c.group == "parity"]
    assert {c.dtype for c in full} == {"bfloat16", "float16", "float32"} and {c.shape.batch for c in full} >= {1, 32}
    assert {c.shape.channels for c in full} == {32, 64, 96, 384} and {c.shape.grid for c in full} >= {27, 147}
    run = RunDir(tmp_path)
    case = next(c for c in parity if c.shape.width and c.mode == "fwd")
    rows = [bench.time_case(bench.Case("parity", v, "fwd", case.dtype, case.shape, impl=bench.scan_variant_name(v)),
                            DEVICE, None, run, "rid") for v in (bench.TRITON_VARIANT, bench.DEFAULT_VARIANT)]
    assert [r.params["grid_w"] for r in run.rows()] == [case.shape.width] * 2 and rows[0]["grid"] == "4x7"
    (pair,) = bench.parity_table(rows)
    assert pair["triton_over_default"] == rows[0]["median_ms"] / rows[1]["median_ms"]  # CPU: no graph replay
    assert pair["grid"] == "4x7" and "triton" in pair["default_path"]
    lines = bench.parity_lines([pair, {**pair, "triton_over_default": None, "default_ms": None,
                                       "status": ("error", "ok")}])
    assert lines[1][7] == "-" and lines[1][5] == "error" and lines[2][7] == f"{pair['triton_over_default']:.2f}"
