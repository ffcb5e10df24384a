"""The process Nsight Compute profiles: build one registered case, warm it, run it in an NVTX range.

Usage (what :func:`suite.profiling.ncu.ncu_case` runs under ``ncu``)::

    python -m suite.profiling.ncu_target --implementation cgspn-scan --level sublayer \\
        --params '{"batch": 32, "grid": 74}' --dtype bfloat16 --mode fwd --reps 1

Compilation, autotuning and the first call happen before the range opens, so ``ncu
--nvtx --nvtx-include "cgspn-bench-case/"`` sees only the measured repetitions.
"""

from __future__ import annotations

import argparse
import json
import sys

NVTX_RANGE = "cgspn-bench-case"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m suite.profiling.ncu_target", description=__doc__.splitlines()[0])
    parser.add_argument("--implementation", required=True, help="registered name, e.g. cgspn-scan")
    parser.add_argument("--level", required=True, help="sublayer | layer | block | network")
    parser.add_argument("--params", default="{}", help="Params fields as JSON, e.g. '{\"batch\": 32, \"grid\": 74}'")
    parser.add_argument("--dtype", default="bfloat16", help="float32 | bfloat16 | float16 | float64")
    parser.add_argument("--mode", default="fwd", help="fwd | fwd+bwd")
    parser.add_argument("--reps", type=int, default=1, help="repetitions inside the NVTX range")
    parser.add_argument("--warmup", type=int, default=2, help="untraced repetitions first (JIT, autotuning)")
    parser.add_argument("--device", default="cuda")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from kernels.params import Params
    from kernels.registry import DTYPES, MODES, get
    from suite.measure import make_step

    if args.dtype not in DTYPES:
        raise SystemExit(f"--dtype: {args.dtype!r} is not one of {', '.join(DTYPES)}")
    if args.mode not in MODES:
        raise SystemExit(f"--mode: {args.mode!r} is not one of {', '.join(MODES)}")
    impl = get(args.implementation, args.level)
    params = Params.from_dict(json.loads(args.params), where="--params")
    device = torch.device(args.device)
    reason = impl.unavailable(params, args.dtype, device.type, args.mode)
    if reason:
        raise SystemExit(f"case cannot run here: {reason}")
    workload = impl.build(params, DTYPES[args.dtype], device, args.mode)
    step = make_step(workload, args.mode)
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    for _ in range(args.reps):
        if device.type != "cuda":  # no NVTX without CUDA: a CPU run only checks that the case builds
            step()
            continue
        torch.cuda.nvtx.range_push(NVTX_RANGE)
        step()
        torch.cuda.synchronize(device)  # the range closes after its kernels, as ncu's range filter expects
        torch.cuda.nvtx.range_pop()
    print(f"ncu_target: ran {args.implementation}/{args.level} {args.params} {args.dtype} {args.mode} x{args.reps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
