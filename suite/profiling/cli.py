"""``cgspn-bench ncu``: the optional Nsight Compute pass on one registered case.

    cgspn-bench ncu cgspn-scan sublayer --param batch=32 --param grid=74 [--kernel-name REGEX] [--out DIR]

Runs ``ncu --clock-control none`` in a subprocess on that one case (the clocks stay as found) and
prints per-kernel achieved occupancy, DRAM throughput and registers; without ``ncu`` on the PATH it
says so and exits 2. The JSON result is written to ``DIR/ncu.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kernels.params import Params
from suite.profiling.ncu import ncu_case


def _param(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or name not in Params.names():
        raise argparse.ArgumentTypeError(f"--param: expected NAME=INT with NAME one of {', '.join(Params.names())}, got {text!r}")
    try:
        return name, int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--param {name}: expected an integer, got {value!r}") from None


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ncu`` to the suite's CLI (called by suite.cli)."""
    parser = subparsers.add_parser("ncu", help="Nsight Compute pass on one case (achieved occupancy, DRAM throughput, registers)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("implementation", help="registered name (cgspn-bench list)")
    parser.add_argument("level", choices=("sublayer", "layer", "block", "network"))
    parser.add_argument("--param", type=_param, action="append", default=[], metavar="NAME=INT",
                        help="a Params field (repeatable)")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--mode", default="fwd", choices=("fwd", "fwd+bwd"))
    parser.add_argument("--kernel-name", help="profile only kernels matching this regular expression")
    parser.add_argument("--launch-count", type=int, help="profile only the first N matching launches")
    parser.add_argument("--out", default="results/runs/ncu", help="folder for the .ncu-rep report and ncu.json")
    parser.set_defaults(handler=_command)


def _command(args: argparse.Namespace) -> int:
    params = dict(args.param)
    Params.from_dict(params, where="--param")  # the same validation as a scenario's params
    result = ncu_case(args.implementation, args.level, params, args.dtype, args.mode, out_dir=args.out,
                      kernel_name=args.kernel_name, launch_count=args.launch_count)
    if not result.get("available"):
        print(f"ncu unavailable: {result.get('reason')}")
        return 2
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "ncu.json").write_text(json.dumps(result, indent=2))
    if "error" in result:
        print(f"ncu failed: {result['error']}")
        return 1
    for kernel in result["kernels"]:
        print(f"{kernel['name'][:48]:48s} {kernel.get('duration_ms', 0):9.4f} ms  DRAM {kernel.get('dram_gbps', 0):7.0f} GB/s  "
              f"occupancy {kernel.get('achieved_occupancy', 0):.2f}  regs {kernel.get('registers_per_thread', 0):.0f}")
    print(f"report: {result['report']}")
    return 0
