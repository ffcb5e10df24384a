"""A/B of the C-GSPN scan variants inside real cases, interleaved in one process on one card.

    python -m suite.gpu.scan_variant_ab --out DIR [--variants quad-gather quad-scratch]

For each variant (in turn, per case, so clock drift hits both alike) it points the registry's
``cgspn-scan`` sublayer and the ``cgspn`` layer at that variant and measures, with the suite's
own ``measure_case`` (correctness checked first): the sublayer at grids 74 and 147 (fwd and
fwd+bwd) and the C-GSPN block at 1036 and 2058 px; plus the cuDNN attention block once at each
resolution, so the block speedups are ratios from this one run. Rows go to DIR/rows.jsonl.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import torch

import kernels.cgspn.entries as scan_entries
import kernels.cgspn.layer as cgspn_layer
from kernels import registry
from kernels.cgspn.scan import SCAN_VARIANTS, cgspn_scan_head
from kernels.params import Params
from suite.measure import TimingSettings, measure_case
from suite.results import RunDir

SCAN_CASES = [("sublayer", Params(batch=32, channels=1152, compression=18, grid=g), mode)
              for g in (74, 147) for mode in ("fwd", "fwd+bwd")]
BLOCK_CASES = [("block", Params(batch=32, channels=1152, compression=18, resolution=r), "fwd") for r in (1036, 2058)]


def use_variant(variant: str) -> None:
    """Route the registry's C-GSPN cases through ``variant`` (both modules bind cgspn_scan_head by name)."""
    scan = functools.partial(cgspn_scan_head, variant=variant)
    scan_entries.cgspn_scan_head = scan
    cgspn_layer.cgspn_scan_head = scan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=["quad-gather", "quad-scratch"], choices=SCAN_VARIANTS)
    parser.add_argument("--budget-ms", type=float, default=150.0)
    args = parser.parse_args()
    run = RunDir(args.out)
    settings = TimingSettings(budget_ms=args.budget_ms, warmup_ms=30.0, min_reps=10)
    device = torch.device("cuda")
    for level, params, mode in SCAN_CASES + BLOCK_CASES:
        name = "cgspn-scan" if level == "sublayer" else "cgspn"
        for variant in args.variants:
            use_variant(variant)
            row = measure_case(registry.get(name, level), params, "bfloat16", device, mode, settings, run_dir=args.out,
                               scenario=f"scan-variant-ab:{variant}", tag=f"-{variant}")
            row.backend_detail = f"{row.backend_detail}; variant forced to {variant}"
            run.append(row)
            print(f"{name:10s} {level:8s} {mode:7s} H={params.H:4d} {variant:13s} {row.status:6s} "
                  f"{row.median_ms if row.median_ms is None else round(row.median_ms, 4)}", flush=True)
    for level, params, mode in BLOCK_CASES:
        row = measure_case(registry.get("attention-cudnn", level), params.replace(heads=16), "bfloat16", device, mode,
                           settings, run_dir=args.out, scenario="scan-variant-ab:attention")
        run.append(row)
        print(f"attention-cudnn {level} H={params.H} {row.status} {row.median_ms}", flush=True)


if __name__ == "__main__":
    main()
