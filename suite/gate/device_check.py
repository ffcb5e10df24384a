"""The gate's acceptance run on a GPU, one command per machine.

    python -m suite.gate.device_check --out $OUT --steps baseline,slow:cgspn-scan=1.1,slow:attention-cudnn=1.1
    python -m suite.gate.device_check --out $OUT --steps unchanged --baseline results/baselines/nvidia-h200.json

Steps (run in the order given):

* ``baseline``: measure ``scenarios/gate.yaml`` (its wall time is printed: it must stay under 5
  minutes on one H200) and freeze it as ``$OUT/baselines/<gpu-model>.json`` -- copy that file to
  ``results/baselines/`` and commit it; later steps of the same command judge against it;
* ``unchanged``: measure the scenario again and gate it against the baseline with the committed
  thresholds and ``--confirm 3``, as CI does; expected to pass (0 regressions);
* ``slow:SPEC``: the same with ``CGSPN_BENCH_TEST_SLOWDOWN=SPEC`` (e.g. ``cgspn-scan=1.1``, every
  ``cgspn-scan`` step 10% slower on the device); expected to fail, with every failing case one of
  the slowed implementation's cases and nothing else.

Every step runs the real ``cgspn-bench`` command line in a subprocess, so the console output saved
in ``$OUT/logs/*.txt`` is exactly what a user sees; ``$OUT/summary.json`` lists each step's exit
code against the expected one and, for slowdown steps, which cases failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from suite.gate.slowdown import ENV_VAR, parse_slowdown

THRESHOLDS = Path("results/baselines/thresholds.yaml")


def step(name: str, command: list[str], logs: Path, expect: int, env: dict | None = None) -> dict:
    """Run one CLI step, save its output to ``logs/<name>.txt``, compare the exit code."""
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    started = time.time()
    proc = subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    elapsed = time.time() - started
    text = proc.stdout + proc.stderr
    (logs / f"{name}.txt").write_text(text)
    print(text[-3000:], flush=True)
    ok = proc.returncode == expect
    print(f"=== {name}: exit {proc.returncode} (expected {expect}) in {elapsed:.0f} s -> {'OK' if ok else 'UNEXPECTED'}")
    return {"step": name, "command": command, "env": env or {}, "exit": proc.returncode, "expected": expect, "ok": ok,
            "elapsed_s": round(elapsed, 1)}


def slowed_only(verdicts: Path, spec: str) -> dict:
    """Whether every failing case of the gate's JSON is a case the slowdown ``spec`` slowed."""
    slowed = parse_slowdown(spec)
    data = json.loads(verdicts.read_text())
    failing = [c for c in data["cases"] if c["case_id"] in data["failures"]]

    def is_slowed(case: dict) -> bool:
        return (case["implementation"], case["level"]) in slowed or (case["implementation"], None) in slowed

    wrong = [c["label"] for c in failing if not is_slowed(c)]
    caught = [c["label"] for c in failing if is_slowed(c)]
    return {"ok": bool(caught) and not wrong, "failed_slowed": caught, "failed_other": wrong,
            "slowed_cases": sum(is_slowed(c) for c in data["cases"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (e.g. $OUT on the device machine)")
    parser.add_argument("--steps", default="baseline,unchanged,slow:cgspn-scan=1.1",
                        help="comma-separated: baseline, unchanged, slow:SPEC (default %(default)s)")
    parser.add_argument("--scenario", type=Path, default=Path("scenarios/gate.yaml"))
    parser.add_argument("--baseline", type=Path, help="baseline file (default: the one the baseline step writes)")
    parser.add_argument("--thresholds", type=Path, default=THRESHOLDS, help="gate thresholds file (default %(default)s)")
    parser.add_argument("--confirm", type=int, default=3, help="re-measurements per first-pass regression (as CI: 3)")
    parser.add_argument("--tag", default="", help="suffix for run folders and logs (two commands sharing one $OUT)")
    parser.add_argument("--wait-baseline", type=float, default=0.0, metavar="S",
                        help="wait up to S seconds for --baseline to appear (another GPU's command writing it)")
    args = parser.parse_args(argv)
    out, tag = args.out, f"-{args.tag}" if args.tag else ""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "suite.cli"]
    results, baseline = [], args.baseline
    for index, name in enumerate(s.strip() for s in args.steps.split(",") if s.strip()):
        label = f"{index + 1}-{name.replace(':', '-').replace('=', '-')}{tag}"
        run = out / "runs" / label
        if name == "baseline":
            results.append(step(f"{label}-run", [*cli, "run", str(args.scenario), "--out", str(run), "--force"], logs, 0))
            results.append(step(f"{label}-update", [*cli, "baseline", "update", "--from", str(run), "--dir",
                                                    str(out / "baselines")], logs, 0))
            found = sorted((out / "baselines").glob("*.json"))
            baseline = found[0] if found else baseline
            continue
        if name != "unchanged" and not name.startswith("slow:"):
            parser.error(f"--steps: unknown step {name!r}; allowed: baseline, unchanged, slow:SPEC")
        if baseline is None:
            parser.error(f"step {name!r} needs a baseline: run the baseline step first or pass --baseline")
        spec = name.partition(":")[2]
        env = {ENV_VAR: spec} if spec else {}
        verdicts = out / "runs" / f"{label}.json"
        results.append(step(f"{label}-run", [*cli, "run", str(args.scenario), "--out", str(run), "--force"], logs, 0, env))
        deadline = time.time() + args.wait_baseline
        while not baseline.exists() and time.time() < deadline:
            time.sleep(5)
        gate = [*cli, "gate", "--baseline", str(baseline), "--current", str(run), "--thresholds", str(args.thresholds),
                "--confirm", str(args.confirm), "--json", str(verdicts)]
        results.append(step(f"{label}-gate", gate, logs, 1 if spec else 0, env))
        if spec and verdicts.exists():
            results.append({"step": f"{label}-only-slowed", **slowed_only(verdicts, spec)})
    (out / f"summary{tag}.json").write_text(json.dumps(results, indent=1))
    print("\n=== summary")
    for r in results:
        extra = f"{r.get('exit', '')} {r.get('elapsed_s', '')}" if "exit" in r else json.dumps(
            {k: r[k] for k in ("failed_slowed", "failed_other", "slowed_cases")})
        print(f"{r['step']:>40}: {'OK' if r['ok'] else 'UNEXPECTED'}  {extra}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
