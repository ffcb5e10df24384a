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
from typing import TYPE_CHECKING

from suite.triton_mode import interpret_on_cpu

if TYPE_CHECKING:
    from suite.results import Row


def _protocol_stream():
    """Keep a private copy of stdout for replies; send fd 1 (kernel prints, warnings) to stderr."""
    private = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return private


def measure_request(case: dict, device: str, *, run_dir: str | Path | None = None, tag: str = "") -> Row:
    """Measure one case given as the JSON request of :func:`suite.gate.ab.case_request` through
    :func:`suite.measure.measure_case`; the registry gives the implementation. A case the imported
    ``kernels`` tree does not register becomes an ``unsupported`` row. Shared by the A/B workers and
    the gate's confirmation step (:mod:`suite.gate.confirm`)."""
    import torch

    import kernels
    from kernels import registry
    from kernels.params import Params
    from suite.gate.slowdown import prepare_hook
    from suite.measure import Case, TimingSettings, measure_case
    from suite.results import Row, case_id

    try:
        impl = registry.get(case["implementation"], case["level"])
    except registry.RegistryError as err:  # the other tree does not have this implementation
        values = case["params"]
        tree = Path(kernels.__file__).resolve().parent.parent
        return Row(case_id=case_id(case["implementation"], case["level"], case["mode"], case["dtype"], values),
                   implementation=case["implementation"], family=case.get("family", ""), level=case["level"],
                   mode=case["mode"], dtype=case["dtype"], params=values, status="unsupported",
                   message=f"not in the tree at {tree}: {err}")
    request = Case(impl, Params(**case["params"]), case["mode"], case["dtype"], case["scenario"],
                   TimingSettings(**case["timing"]), check=case["check"], nvml=case["nvml"])
    return measure_case(request, torch.device(device), run_dir=run_dir, run_id=case["run_id"], tag=tag, prepare=prepare_hook)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", required=True, help="cuda, cuda:N or cpu")
    args = parser.parse_args(argv)
    interpret_on_cpu(args.device == "cpu")  # before any Triton kernel is defined
    out = _protocol_stream()

    import kernels
    from suite.environment import collect_environment, git_state

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
        row = measure_request(request["case"], args.device)
        out.write(json.dumps({"row": json.loads(row.to_json())}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
