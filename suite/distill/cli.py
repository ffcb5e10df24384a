"""``cgspn-bench distill`` and ``python -m suite.distill``: run a distillation config.

    cgspn-bench distill --config FILE [--out DIR] [--resume] [--set KEY=VALUE ...] [--stop-after STEPS]
    torchrun --nproc_per_node=N -m suite.distill --config FILE ...     (DDP, one process per GPU)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from suite.triton_mode import interpret_on_cpu

DEFAULT_OUT = Path("results/runs")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="distillation config (see suite/distill/configs/)")
    parser.add_argument("--out", type=Path, help="output directory (default: results/runs/distill-<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set model.attn_blocks=3 or --set stages.0.steps=10 (repeatable)")
    parser.add_argument("--stop-after", type=int, metavar="STEPS",
                        help="stop (with a checkpoint) after this many global steps, e.g. to test --resume")


def run_command(args: argparse.Namespace) -> int:
    from suite.distill.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # Triton kernels (scan: fused on CPU) need the interpreter, chosen before they are defined.
    interpret_on_cpu(cfg.device == "cpu" or (cfg.device == "auto" and not _cuda_available()))
    from suite.distill.train import DistillError, distill

    out = args.out or DEFAULT_OUT / f"distill-{cfg.name}"
    try:
        summary = distill(cfg, out, resume=args.resume, stop_after=args.stop_after)
    except DistillError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        _print_summary(summary, out)
    return 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _print_summary(summary: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if "stopped_at" in summary:
        console.print(f"stopped after global step {summary['stopped_at']}; continue with --resume --out {out}")
        return
    table = Table(title=f"distill {summary['name']}: student-teacher cosine similarity (mean over blocks)")
    for column in ("stage", "resolution", "PP", "PB", "final loss"):
        table.add_column(column)
    for name, report in summary["evaluations"].items():
        cos = report["against_stage_teacher"]
        loss = summary["final_losses"].get(name, {}).get("loss")
        table.add_row(name, str(report["resolution"]), f"{cos['pp_mean']:.4f}", f"{cos['pb_mean']:.4f}",
                      "" if loss is None else f"{loss:.4g}")
    console.print(table)
    for row in summary.get("latency", []):
        if row.get("status") == "ok":
            console.print(f"latency {row['model']:>8} @ {row['resolution']} px, batch {row['batch']}: {row['median_ms']:.3f} ms")
        else:
            console.print(f"latency: {row.get('status')}: {row.get('message', '')}")
    console.print(f"outputs in {out}")


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``distill`` to the suite's CLI (called by suite.cli)."""
    parser = subparsers.add_parser("distill", help="distill an attention ViT into a C-GSPN (or hybrid) student",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(handler=run_command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m suite.distill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    from suite.cli import guarded

    return guarded(run_command, parser.parse_args(argv))
