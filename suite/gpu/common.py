"""What the GPU check scripts share: the device a run may use, the head of their JSON report (card, versions,
commit, copy bandwidth), the test subprocess, the log of named correctness checks and the plain-text table they
print last.
"""

from __future__ import annotations

import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from suite.environment import _version, collect_environment
from suite.measure import copy_bandwidth_gbps


def check_device(script: str, tiny: bool, hint: str = "") -> str | None:
    """``"cuda"`` when a GPU exists, ``"cpu"`` for a ``--tiny`` plumbing run; else None after
    saying why on stderr (the caller exits with status 2)."""
    if torch.cuda.is_available():
        return "cuda"
    if tiny:
        return "cpu"
    print(f"{script}: needs a CUDA GPU (torch.cuda.is_available() is False); --tiny runs it on CPU{hint}", file=sys.stderr)
    return None


def gpu_report(**fields) -> dict:
    """The head of a GPU check's JSON report: card, capability, torch, Triton and CuPy versions (None when not
    importable), the suite's full environment (driver, commit: ``suite.environment.collect_environment``), then
    ``fields``."""
    environment = collect_environment("cuda")
    return {"device": torch.cuda.get_device_name(), "capability": torch.cuda.get_device_capability(),
            "torch": torch.__version__, "triton": environment["triton"], "cupy": _version("cupy"),
            "environment": environment, **fields}


def measure_copy_bandwidth(report: dict) -> float:
    """The device's copy bandwidth (GB/s, ``suite.measure``), the ceiling of every bandwidth fraction: stored in
    ``report`` and printed."""
    report["copy_gbps"] = gbps = copy_bandwidth_gbps("cuda")
    print(f"[copy] {gbps:.0f} GB/s", flush=True)
    return gbps


def _vs_ref_failures(result: dict, tolerance: float) -> list:
    """The ``(output, error)`` pairs of a ``{output: {"vs_ref": error, ...}}`` result above ``tolerance`` (an
    output whose ``vs_ref`` is None was not compared: its entry says why)."""
    return [(k, v["vs_ref"]) for k, v in result.items() if v["vs_ref"] is not None and not v["vs_ref"] <= tolerance]


class CheckLog:
    """Runs named correctness checks, keeps each result (or its error and traceback) in ``checks`` and prints
    one ``[check]`` line per check; a failing or crashing check never stops the others (one run must report
    everything). ``ok``: every check so far passed."""

    def __init__(self, checks: dict):
        self.checks, self.ok = checks, True

    def record(self, name: str, fn: Callable[[], dict], tolerance: float,
               failures: Callable[[dict, float], list] = _vs_ref_failures, describe: Callable[[dict], str] | None = None):
        """``fn()`` gives the result; ``failures(result, tolerance)`` what exceeds the tolerance (default: the
        outputs whose ``vs_ref`` error does); ``describe(result)`` text printed after the status."""
        t0 = time.perf_counter()
        try:
            result = fn()
            bad = failures(result, tolerance)
            self.checks[name] = {"result": result, "tolerance": tolerance, "pass": not bad,
                                 "seconds": round(time.perf_counter() - t0, 2)}
            status = ("ok" if not bad else f"FAIL {bad}") + (f" {describe(result)}" if describe else "")
        except Exception as error:
            self.checks[name] = {"error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()[-3000:],
                                 "pass": False}
            status, bad = f"ERROR {type(error).__name__}: {str(error)[:300]}", True
        self.ok = self.ok and not bad
        print(f"[check] {name}: {status} ({time.perf_counter() - t0:.1f} s)", flush=True)


def run_pytest(selection: list[str] | tuple[str, ...], out: Path, timeout_s: float | None = None) -> dict:
    """``selection`` in a pytest subprocess (a fresh CUDA context), JUnit XML to ``out/tests.xml``;
    command, return code (124 when ``timeout_s`` ran out), seconds, summary line and output tail."""
    cmd = [sys.executable, "-m", "pytest", *selection, "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={out / 'tests.xml'}"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as error:
        tail = ((error.stdout or b"").decode() if isinstance(error.stdout, bytes) else (error.stdout or "")).splitlines()
        return {"command": " ".join(cmd), "returncode": 124, "seconds": round(time.perf_counter() - start, 1),
                "summary": f"timed out after {timeout_s:.0f} s", "tail": tail[-40:]}
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return {"command": " ".join(cmd), "returncode": proc.returncode, "seconds": round(time.perf_counter() - start, 1),
            "summary": lines[-1] if lines else "", "tail": lines[-40:]}


def print_table(lines: list[list[str]]) -> None:
    """Left-aligned columns, two spaces apart; the first line is the header."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        print("  ".join(text.ljust(w) for text, w in zip(line, widths, strict=True)))
