"""What the GPU check scripts share: the device a run may use, the test subprocess and the
plain-text table they print last.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import torch


def check_device(script: str, tiny: bool, hint: str = "") -> str | None:
    """``"cuda"`` when a GPU exists, ``"cpu"`` for a ``--tiny`` plumbing run; else None after
    saying why on stderr (the caller exits with status 2)."""
    if torch.cuda.is_available():
        return "cuda"
    if tiny:
        return "cpu"
    print(f"{script}: needs a CUDA GPU (torch.cuda.is_available() is False); --tiny runs it on CPU{hint}", file=sys.stderr)
    return None


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
