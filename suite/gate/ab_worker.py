"""One side of an A/B gate: a long-lived process that measures cases on request.

Started by :mod:`suite.gate.ab` as ``python -m suite.gate.ab_worker --device D`` with its working
directory and ``PYTHONPATH`` set so that ``kernels`` is the side's tree (the current tree or the
git worktree of the reference) and ``suite`` is the current tree's harness: both sides are timed
by the same measurement core, so only the kernels differ.

Protocol (JSON lines): the worker announces itself with ``{"ready": ...}`` (where its kernels
come from, its environment), then answers each request ``{"case": {...}}`` with ``{"row": ...}``
and exits on ``{"quit": true}`` or end of input. Anything the kernels print goes to stderr: the
worker keeps the original stdout for the protocol alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _protocol_stream():
    """Keep a private copy of stdout for replies; send fd 1 (kernel prints, warnings) to stderr."""
    private = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return private


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", required=True, help="cuda, cuda:N or cpu")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel is defined
    out = _protocol_stream()

    import torch

    import kernels
    from kernels import registry
    from kernels.params import Params
    from suite.environment import collect_environment, git_state
    from suite.measure import TimingSettings, measure_case
    from suite.results import Row, case_id

    tree = Path(kernels.__file__).resolve().parent.parent
    environment = collect_environment(args.device)
    environment["git"] = git_state(tree)  # the side's own commit, not the harness's
    out.write(json.dumps({"ready": {"kernels": str(tree), "environment": environment}}, default=str) + "\n")

    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if request.get("quit"):
            break
        case = request["case"]
        try:
            impl = registry.get(case["implementation"], case["level"])
        except registry.RegistryError as err:  # the other tree does not have this implementation
            values = case["params"]
            row = Row(case_id=case_id(case["implementation"], case["level"], case["mode"], case["dtype"], values),
                      implementation=case["implementation"], family=case.get("family", ""), level=case["level"],
                      mode=case["mode"], dtype=case["dtype"], params=values, status="unsupported",
                      message=f"not in the tree at {tree}: {err}")
        else:
            row = measure_case(impl, Params(**case["params"]), case["dtype"], torch.device(args.device), case["mode"],
                               TimingSettings(**case["timing"]), check=case["check"], nvml=case["nvml"],
                               scenario=case["scenario"], run_id=case["run_id"])
        out.write(json.dumps({"row": json.loads(row.to_json())}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
