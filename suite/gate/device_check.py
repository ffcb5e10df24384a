"""The gate's acceptance run on a GPU (issue 8, "done when"), in one command.

    python -m suite.gate.device_check --out $OUT [--ab-ref REF_OR_DIR] [--rounds 2]

1. measures ``scenarios/gate.yaml`` (prints how long it took: the scenario must stay under
   5 minutes on one H100) and freezes it as ``$OUT/baselines/<gpu-model>.json`` — copy that
   file to ``results/baselines/`` and commit it;
2. A/B: measures a subset of the gate scenario (``cgspn-scan``, ``attention-cudnn``, ``cgspn``)
   for the current tree and ``--ab-ref`` (a git ref, or a directory holding ``kernels/`` when the
   machine has no git history, e.g. ``git archive HEAD~1 kernels | tar -x -C .ab-prev``),
   interleaved; expected to pass when the kernels did not change;
3. measures the same subset with ``CGSPN_BENCH_TEST_SLOWDOWN=cgspn-scan=2`` and gates it against
   the baseline of step 1 with ``--confirm 3`` (as CI does; the re-measurements keep the slowdown);
   expected to fail with ``cgspn-scan`` regressions only.

Every step runs the real ``cgspn-bench`` command line in a subprocess, so the console output
saved in ``$OUT/*.txt`` is exactly what a user sees; ``$OUT/summary.json`` lists each step's
exit code against the expected one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from suite.gate.slowdown import was_slowed

SUBSET = ["cgspn-scan", "attention-cudnn", "cgspn"]


def subset_scenario(source: Path, target: Path) -> Path:
    """The gate scenario restricted to :data:`SUBSET` (same params, so the same case ids)."""
    data = yaml.safe_load(source.read_text())
    data["name"] = "gate-subset"
    data["description"] = f"{data['description']} -- subset: {', '.join(SUBSET)}"
    data["implementations"] = [i for i in data["implementations"] if i in SUBSET]
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


def step(name: str, command: list[str], out: Path, expect: int, env: dict | None = None) -> dict:
    """Run one CLI step, tee its output to ``out/<name>.txt``, compare the exit code."""
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    started = time.time()
    proc = subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    elapsed = time.time() - started
    text = proc.stdout + proc.stderr
    (out / f"{name}.txt").write_text(text)
    print(text[-6000:], flush=True)
    ok = proc.returncode == expect
    print(f"=== {name}: exit {proc.returncode} (expected {expect}) in {elapsed:.0f} s -> {'OK' if ok else 'UNEXPECTED'}")
    return {"step": name, "command": command, "env": env or {}, "exit": proc.returncode, "expected": expect, "ok": ok,
            "elapsed_s": round(elapsed, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (e.g. $OUT on the device machine)")
    parser.add_argument("--ab-ref", default="HEAD~1", help="git ref or source directory for the A/B step (default HEAD~1)")
    parser.add_argument("--rounds", type=int, default=2, help="A/B rounds (default 2)")
    parser.add_argument("--scenario", type=Path, default=Path("scenarios/gate.yaml"))
    parser.add_argument("--skip", action="append", default=[], choices=("baseline", "ab", "slowdown"),
                        help="skip a step (repeatable); slowdown needs the baseline of this run or --baseline")
    parser.add_argument("--baseline", type=Path, help="baseline file for the slowdown step (default: the one step 1 wrote)")
    args = parser.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "suite.cli"]
    subset = subset_scenario(args.scenario, out / "gate-subset.yaml")
    results = []
    baseline = args.baseline
    if "baseline" not in args.skip:
        run = out / "runs" / "gate"
        results.append(step("1-gate-scenario", [*cli, "run", str(args.scenario), "--out", str(run), "--force"], out, 0))
        results.append(step("1-baseline-update", [*cli, "baseline", "update", "--from", str(run), "--dir",
                                                  str(out / "baselines")], out, 0))
        found = sorted((out / "baselines").glob("*.json"))
        baseline = found[0] if found else None
    if "ab" not in args.skip:
        results.append(step("2-ab-vs-ref", [*cli, "gate", "--ab", args.ab_ref, "--scenario", str(subset), "--rounds",
                                            str(args.rounds), "--out", str(out / "runs" / "ab"), "--json",
                                            str(out / "ab-gate.json")], out, 0))
    if "slowdown" not in args.skip:
        if baseline is None:
            print("slowdown step skipped: no baseline (run step 1 or pass --baseline)")
        else:
            slow = out / "runs" / "gate-slow"
            env = {"CGSPN_BENCH_TEST_SLOWDOWN": "cgspn-scan=2"}
            results.append(step("3-slowdown-run", [*cli, "run", str(subset), "--out", str(slow), "--force"], out, 0, env))
            # --confirm 3 as in CI: the slowed cases must stay regressions, launch-bound noise must clear
            results.append(step("3-slowdown-gate", [*cli, "gate", "--baseline", str(baseline), "--current", str(slow),
                                                    "--confirm", "3", "--json", str(out / "slowdown-gate.json")], out, 1,
                                env))
            rows = [json.loads(line) for line in (slow / "rows.jsonl").read_text().splitlines() if line.strip()]
            marked = [r for r in rows if r["implementation"] == "cgspn-scan" and was_slowed(r.get("backend_detail"))]
            if not marked:
                print("NOTE: no cgspn-scan row carries the test-slowdown marker: measure_case does not call "
                      "suite.gate.slowdown.apply_test_slowdown yet")
            results.append({"step": "3-slowdown-marker", "ok": bool(marked), "rows_marked": len(marked)})
    (out / "summary.json").write_text(json.dumps(results, indent=1))
    print("\n=== summary")
    for r in results:
        print(f"{r['step']:>20}: {'OK' if r['ok'] else 'UNEXPECTED'}  {r.get('exit', '')} {r.get('elapsed_s', '')}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
