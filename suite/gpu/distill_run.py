"""GPU run of the distillation entry point: tests, C-GSPN and hybrid students, DDP.

Run from the repository root on an H100/H200 (about 5-8 minutes for everything)::

    python -m suite.gpu.distill_run --out results/gpu-check/distill            # all parts; DDP if 2 GPUs
    python -m suite.gpu.distill_run --out OUT --only tests,cgspn,hybrid         # one GPU
    python -m suite.gpu.distill_run --out OUT --only ddp,report                 # a 2-GPU machine, same OUT

Parts (``--only``, comma-separated, in this order):

* ``tests``  ``pytest suite/tests/test_distill.py`` (on a GPU the fused-scan test trains on CUDA);
* ``cgspn``  ``small-gpu.yaml`` (12 blocks, C=384, 224 px; stage 1, stage 2, a 448 px curriculum
  stage) on GPU 0 with the Triton scan and its Triton backward (``run.json`` records the backward
  node), then teacher vs student latency at 224 and 448 px;
* ``hybrid`` the same with ``model.attn_blocks=3`` (attention kept in blocks 3, 7, 11);
* ``ddp``    the ``cgspn`` run under ``torchrun --nproc_per_node=2`` (same global batch), skipped
  with a message when fewer than 2 GPUs are visible;
* ``report`` ``table.json`` / ``table.md``: cosine similarity at PP/PB after each stage for both
  students, latency, and the DDP loss curve against the single-GPU one.

Everything lands under ``--out``: one folder per run (``log.jsonl``, ``tb/``, ``run.json``,
``eval.json``, ``summary.json``), ``<part>.log`` with each command's output, the table. Checkpoints
and the saved random teacher (hundreds of MB) are deleted at the end unless ``--keep-checkpoints``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

CONFIG = "suite/distill/configs/small-gpu.yaml"
PARTS = ("tests", "cgspn", "hybrid", "ddp", "report")


def run_logged(name: str, cmd: list[str], out: Path, env: dict | None = None) -> int:
    """Run ``cmd``, teeing its output to ``out/<name>.log``; returns the exit status."""
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        status = proc.wait()
    print(f"== {name}: exit {status}", flush=True)
    return status


def distill_cmd(out: Path, overrides: list[str]) -> list[str]:
    return ["--config", CONFIG, "--out", str(out), *[a for o in overrides for a in ("--set", o)]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m suite.gpu.distill_run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of: {', '.join(PARTS)}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override passed to every distillation run (e.g. teacher.checkpoint=PATH)")
    parser.add_argument("--keep-checkpoints", action="store_true")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--only: unknown part(s) {', '.join(unknown)}; allowed: {', '.join(PARTS)}")
    if not torch.cuda.is_available():
        parser.error("no CUDA device visible: this script is for the GPU machine (the CPU tests run in CI)")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count()
    one_gpu = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]}
    failures = []

    if "tests" in parts and run_logged("tests", [sys.executable, "-m", "pytest", "suite/tests/test_distill.py", "-q",
                                                 "--junitxml", str(out / "tests.xml")], out):
        failures.append("tests")
    if "cgspn" in parts and run_logged("cgspn", [sys.executable, "-m", "suite.distill",
                                                 *distill_cmd(out / "cgspn", args.overrides)], out, one_gpu):
        failures.append("cgspn")
    if "hybrid" in parts and run_logged("hybrid", [sys.executable, "-m", "suite.distill",
                                                   *distill_cmd(out / "hybrid", ["model.attn_blocks=3", *args.overrides])],
                                        out, one_gpu):
        failures.append("hybrid")
    if "ddp" in parts:
        if gpus < 2:
            print(f"== ddp: skipped, {gpus} GPU visible (run --only ddp,report on a 2-GPU machine)")
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "suite.distill",
                   *distill_cmd(out / "ddp2", ["evaluate.latency_resolutions=[]", *args.overrides])]
            if run_logged("ddp", cmd, out):
                failures.append("ddp")
    if "report" in parts:
        runs = [f"{name}={out / name}" for name in ("cgspn", "hybrid", "ddp2") if (out / name / "summary.json").exists()]
        cmd = [sys.executable, "-m", "suite.distill.report", "--out", str(out), *[a for r in runs for a in ("--run", r)]]
        if (out / "ddp2" / "summary.json").exists() and (out / "cgspn" / "log.jsonl").exists():
            cmd += ["--single", str(out / "cgspn"), "--ddp", str(out / "ddp2")]
        if run_logged("report", cmd, out):
            failures.append("report")
    if not args.keep_checkpoints:  # only this invocation's runs: another one may be training beside it
        for run in [{"ddp": "ddp2"}.get(p, p) for p in parts if p in ("cgspn", "hybrid", "ddp")]:
            shutil.rmtree(out / run / "checkpoints", ignore_errors=True)
            (out / run / "teacher.pt").unlink(missing_ok=True)
    print(f"== done; failed parts: {', '.join(failures) or 'none'}; outputs in {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
