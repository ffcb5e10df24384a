"""``python -m suite.run SCENARIO ...``: the run command as a module, the torchrun entry point.

    torchrun --nproc_per_node=8 -m suite.run scenarios/attention.yaml --out results/runs/attn
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        -m suite.run scenarios/attention.yaml --out results/runs/attn

Under torchrun (``WORLD_SIZE`` > 1) each process measures on GPU ``LOCAL_RANK`` its cost-balanced
shard of the cases, and rank 0 merges everything into one run directory (see suite.runner).
Arguments are those of ``cgspn-bench run``.
"""

from __future__ import annotations

import argparse
import sys

from suite.cli import add_run_arguments, guarded, run_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m suite.run", description="Measure scenario files (torchrun entry point).")
    add_run_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    return guarded(run_command, parser.parse_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
