"""Optional Nsight Compute pass on one case: achieved occupancy, DRAM throughput, registers.

``ncu`` replays every kernel many times to read hardware counters, so it runs in a subprocess
on one case (``python -m suite.profiling.ncu_target``), restricted to the case's NVTX range,
with ``--clock-control none`` (measure the card at the clocks it runs, as the timer does).
The report is exported (``.ncu-rep``, opens in the Nsight Compute GUI) and re-read with
``ncu --import ... --csv --page raw --print-units base``, which pandas parses.

When ``ncu`` is not installed the result is ``{"available": False, "reason": ...}``; a failed
run (e.g. ``ERR_NVGPUCTRPERM``: no permission for GPU counters) returns ``{"available": True,
"error": ...}`` with the tail of ncu's output. Neither raises.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from suite.profiling.ncu_target import NVTX_RANGE

REPO_ROOT = Path(__file__).resolve().parents[2]

METRICS = (
    "gpu__time_duration.sum",
    "sm__warps_active.avg.pct_of_peak_sustained_active",  # achieved occupancy
    "sm__maximum_warps_per_active_cycle_pct",  # theoretical occupancy
    "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "dram__bytes.sum.per_second",
    "dram__bytes_read.sum",
    "dram__bytes_write.sum",
    "lts__t_sector_hit_rate.pct",  # L2 hit rate: uncoalesced per-step kernels live or die by it
    "launch__registers_per_thread",
    "launch__grid_size",
    "launch__block_size",
    "launch__shared_mem_per_block_static",
    "launch__shared_mem_per_block_dynamic",
    "launch__waves_per_multiprocessor",
    "launch__occupancy_limit_registers",
    "launch__occupancy_limit_shared_mem",
    "launch__occupancy_limit_warps",
    "launch__occupancy_limit_blocks",
)

# ncu metric -> (output field, scale applied after converting to SI base units)
FIELDS = {
    "gpu__time_duration.sum": ("duration_ms", 1e3),
    "sm__warps_active.avg.pct_of_peak_sustained_active": ("achieved_occupancy", 1e-2),
    "sm__maximum_warps_per_active_cycle_pct": ("theoretical_occupancy", 1e-2),
    "dram__throughput.avg.pct_of_peak_sustained_elapsed": ("dram_throughput_pct", 1.0),
    "dram__bytes.sum.per_second": ("dram_gbps", 1e-9),
    "dram__bytes_read.sum": ("dram_bytes_read", 1.0),
    "dram__bytes_write.sum": ("dram_bytes_write", 1.0),
    "lts__t_sector_hit_rate.pct": ("l2_hit_rate_pct", 1.0),
    "launch__registers_per_thread": ("registers_per_thread", 1.0),
    "launch__grid_size": ("grid_blocks", 1.0),
    "launch__block_size": ("threads_per_block", 1.0),
    "launch__shared_mem_per_block_static": ("shared_memory_static_bytes", 1.0),
    "launch__shared_mem_per_block_dynamic": ("shared_memory_dynamic_bytes", 1.0),
    "launch__waves_per_multiprocessor": ("waves", 1.0),
    "launch__occupancy_limit_registers": ("blocks_limit_registers", 1.0),
    "launch__occupancy_limit_shared_mem": ("blocks_limit_shared_memory", 1.0),
    "launch__occupancy_limit_warps": ("blocks_limit_warps", 1.0),
    "launch__occupancy_limit_blocks": ("blocks_limit_blocks", 1.0),
}

_PREFIX = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0, "K": 1e3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
# ncu spells units in full ("nsecond", "byte/second") or abbreviated ("ns", "B/s"), by version and flags
_UNIT = re.compile(r"^(n|u|m|K|k|M|G|T)?(second|s|byte|B|byte/second|B/s|cycle|cycle/second|cycle/s|hz|Hz)$")


def find_ncu(ncu: str | None = None) -> str | None:
    """``ncu`` given explicitly, on PATH, or in ``$CUDA_HOME/bin`` / ``/usr/local/cuda/bin``."""
    if ncu:
        return shutil.which(ncu)
    found = shutil.which("ncu")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.access(Path(root) / "bin" / "ncu", os.X_OK):
            return str(Path(root) / "bin" / "ncu")
    return None


def unit_scale(unit: str) -> float:
    """Factor that converts a value in ncu's ``unit`` to SI base units (seconds, bytes, ...)."""
    match = _UNIT.match(unit.strip()) if isinstance(unit, str) else None
    return _PREFIX[match.group(1) or ""] if match else 1.0


def _number(text) -> float | None:
    if text is None:
        return None
    cleaned = str(text).replace(",", "").strip()
    if cleaned in ("", "n/a", "N/A", "nan"):
        return None
    try:
        return float(cleaned)
    except ValueError:
        return None


def parse_ncu_csv(text: str) -> list[dict]:
    """Per-kernel rows of ``ncu --import R --csv --page raw`` output (header row, units row, data).

    Values are converted with the units row to SI and then to the fields of :data:`FIELDS`
    (milliseconds, fractions, GB/s, bytes); unknown metrics are kept under ``metrics``.
    """
    import pandas as pd

    start = text.find('"ID"')
    if start < 0:
        raise ValueError("ncu CSV: no header row starting with \"ID\" found")
    frame = pd.read_csv(io.StringIO(text[start:]), dtype=str, keep_default_na=False)
    units = {}
    if len(frame) and frame.iloc[0]["ID"] == "":
        units = frame.iloc[0].to_dict()
        frame = frame.iloc[1:]
    rows = []
    for record in frame.to_dict(orient="records"):
        row = {"id": int(_number(record.get("ID")) or 0), "name": record.get("Kernel Name", ""),
               "grid": record.get("Grid Size", ""), "block": record.get("Block Size", ""), "metrics": {}}
        for column, raw in record.items():
            value = _number(raw)
            if "__" not in column or value is None:
                continue
            value *= unit_scale(units.get(column, ""))
            if column in FIELDS:
                field, scale = FIELDS[column]
                row[field] = value * scale
            else:
                row["metrics"][column] = value
        rows.append(row)
    return rows


def summarize(kernels: list[dict]) -> dict:
    """Totals over the profiled kernels: time, DRAM bytes, achieved bandwidth, mean occupancy."""
    duration_ms = sum(k.get("duration_ms") or 0.0 for k in kernels)
    dram_bytes = sum((k.get("dram_bytes_read") or 0.0) + (k.get("dram_bytes_write") or 0.0) for k in kernels)
    weighted = [(k["achieved_occupancy"], k["duration_ms"]) for k in kernels
                if k.get("achieved_occupancy") is not None and k.get("duration_ms")]
    weight = sum(w for _, w in weighted)
    return {
        "kernels": len(kernels),
        "duration_ms": duration_ms,
        "dram_bytes": dram_bytes,
        "dram_gbps": dram_bytes / (duration_ms * 1e-3) / 1e9 if duration_ms > 0 else None,
        "achieved_occupancy": sum(v * w for v, w in weighted) / weight if weight > 0 else None,
    }


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def ncu_case(implementation: str, level: str, params: dict, dtype: str = "bfloat16", mode: str = "fwd", *,
             out_dir: str | Path, reps: int = 1, metrics: tuple[str, ...] = METRICS, ncu: str | None = None,
             launch_count: int | None = None, kernel_name: str | None = None, timeout_s: float = 600.0,
             python: str = sys.executable) -> dict:
    """Run Nsight Compute on one registered case and return per-kernel counters.

    Args:
        implementation, level, params, dtype, mode: the case (``params``: Params fields as a dict).
        out_dir: where the ``.ncu-rep`` report goes.
        reps: repetitions inside the NVTX range (each kernel launch is profiled).
        launch_count: profile only the first N kernels of the range (cases with hundreds of launches).
        kernel_name: profile only kernels whose name matches this regular expression (``--kernel-name
            regex:...``), e.g. the scan-step kernel of a case that also launches copies.
        ncu: path or name of the ncu executable (default: found on PATH / CUDA_HOME).

    Returns ``{"available", "kernels": [per-kernel dicts], "summary": {...}, "report", "command"}``,
    ``{"available": False, "reason"}`` without ncu, or ``{"available": True, "error", ...}``.
    """
    exe = find_ncu(ncu)
    if exe is None:
        where = "is not on PATH, nor in $CUDA_HOME/bin or /usr/local/cuda/bin"
        return {"available": False, "reason": f"Nsight Compute not found ({ncu or 'ncu'} {where})"}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_+-]+", "_", f"{implementation}-{level}-{dtype}-{mode}-" +
                  "-".join(f"{k}{v}" for k, v in sorted(params.items())))
    report = out_dir / f"{stem}.ncu-rep"
    target = [python, "-m", "suite.profiling.ncu_target", "--implementation", implementation, "--level", level,
              "--params", json.dumps(params), "--dtype", dtype, "--mode", mode, "--reps", str(reps)]
    command = [exe, "--clock-control", "none", "--target-processes", "all", "--nvtx", "--nvtx-include", f"{NVTX_RANGE}/",
               "--metrics", ",".join(metrics), *(["--launch-count", str(launch_count)] if launch_count else []),
               *(["--kernel-name", f"regex:{kernel_name}"] if kernel_name else []),
               "--export", str(report.with_suffix("")), "--force-overwrite", *target]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    base = {"available": True, "command": command, "report": str(report)}
    try:
        run = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {**base, "error": f"ncu did not finish within {timeout_s:.0f} s"}
    if run.returncode != 0 or not report.exists():
        return {**base, "error": f"ncu exited with {run.returncode}:\n{_tail(run.stdout + run.stderr)}"}
    imported = subprocess.run([exe, "--import", str(report), "--csv", "--page", "raw", "--print-units", "base"],
                              capture_output=True, text=True, timeout=timeout_s)
    if imported.returncode != 0:
        return {**base, "error": f"ncu --import exited with {imported.returncode}:\n{_tail(imported.stderr)}"}
    try:
        kernels = parse_ncu_csv(imported.stdout)
    except ValueError as exc:
        return {**base, "error": f"{exc}\n{_tail(imported.stdout)}"}
    if not kernels:
        output = _tail(run.stdout + run.stderr)
        return {**base, "error": f"ncu profiled no kernel inside the NVTX range {NVTX_RANGE!r}:\n{output}"}
    return {**base, "kernels": kernels, "summary": summarize(kernels)}
