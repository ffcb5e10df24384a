"""The one results schema: a :class:`Row` per measured case, a run directory per run.

A run directory holds ``run.json`` (environment and scenario), ``rows.jsonl`` (one row per
line, appended and flushed as each case finishes, so a killed run loses nothing it measured)
and ``rows.csv`` (a flat pandas export written at the end). The runner, the pytest benchmarks,
reports and gates all read and write rows through this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATUSES = ("ok", "oom", "unsupported", "error", "failed-check")
TIMINGS = ("device", "eager")  # device: CUDA-graph replays where captured, else eager; eager: host included
ROWS_FILE = "rows.jsonl"
RUN_FILE = "run.json"
CSV_FILE = "rows.csv"


def case_id(implementation: str, level: str, mode: str, dtype: str, params: dict) -> str:
    """Stable 12-hex id of a case: same implementation, level, mode, dtype and parameters."""
    key = json.dumps([implementation, level, mode, dtype, sorted(params.items())], separators=(",", ":"))
    return hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass
class Row:
    """One measured (or failed) case. Times in milliseconds, sizes in bytes."""

    case_id: str
    implementation: str
    family: str
    level: str
    mode: str
    dtype: str
    params: dict[str, Any]
    status: str = "ok"
    message: str = ""
    samples_ms: list[float] = field(default_factory=list)
    median_ms: float | None = None
    iqr_ms: float | None = None
    min_ms: float | None = None
    mean_ms: float | None = None
    n: int = 0
    outliers: int = 0  # samples beyond 1.5 IQR of the quartiles
    timer: str = ""  # of samples_ms: "cuda-events" (eager), "cpu-perf-counter"; "cuda-graph" in rows of older runs
    l2_flush: bool = False
    # the same step as CUDA-graph replays: device time without host launch overhead (docs/design.md
    # "Host time and device time"); empty with graph_message saying why (CPU, capture impossible, off)
    graph_samples_ms: list[float] = field(default_factory=list)
    graph_median_ms: float | None = None
    graph_iqr_ms: float | None = None
    graph_min_ms: float | None = None
    graph_n: int = 0
    graph_message: str = ""
    host_overhead_ms: float | None = None  # median_ms - graph_median_ms: what the host adds to each eager call
    host_bound: bool | None = None  # eager beyond HOST_BOUND_MARGIN over the graph time, beyond the noise
    flops: float | None = None
    bytes_ideal: float | None = None
    tflops: float | None = None
    gbps: float | None = None
    bw_fraction: float | None = None  # of the measured device copy bandwidth
    peak_mem_bytes: int | None = None
    # reference, rel_rms, max_rel_err, tolerance, passed; fwd+bwd adds gradients, grad_rel_rms, grad_worst, grad_passed
    correctness: dict[str, Any] | None = None
    nvml: dict[str, Any] | None = None  # summary of the NVML samples during the measurement
    backend_detail: str = ""
    profile: dict[str, Any] | None = None  # per-kernel table, categories, occupancy (profiling)
    rank: int = 0
    gpu_index: int | None = None
    gpu_uuid: str | None = None
    device: str = ""  # device name, e.g. "NVIDIA H200"
    run_id: str = ""  # the run.json this row belongs to
    scenario: str = ""
    timestamp: float | None = None

    @property
    def graph_timed(self) -> bool:
        """Whether device-only samples exist: graph replays, or an older run that timed only replays."""
        return bool(self.graph_samples_ms) or self.timer == "cuda-graph"

    @property
    def device_ms(self) -> float | None:
        """Device time: the graph-replay median where captured, else the eager median (host included)."""
        return self.graph_median_ms if self.graph_median_ms is not None else self.median_ms

    @property
    def device_samples_ms(self) -> list[float]:
        return self.graph_samples_ms or self.samples_ms

    @property
    def eager_ms(self) -> float | None:
        """Eager median (what a PyTorch user's call costs); None for older rows that timed only graph replays."""
        return None if self.timer == "cuda-graph" else self.median_ms

    def time_ms(self, timing: str = "device") -> float | None:
        """The median a figure or claim uses: ``device`` (:attr:`device_ms`) or ``eager`` (:attr:`eager_ms`)."""
        if timing not in TIMINGS:
            raise ValueError(f"timing: {timing!r} is not one of {', '.join(TIMINGS)}")
        return self.eager_ms if timing == "eager" else self.device_ms

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"), default=_jsonable)

    @classmethod
    def from_dict(cls, data: dict) -> Row:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


class RunDir:
    """A run directory: append rows as they come, read them back, export CSV."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def rows_path(self) -> Path:
        return self.path / ROWS_FILE

    def write_meta(self, meta: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / (RUN_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2, default=_jsonable))
        tmp.replace(self.path / RUN_FILE)

    def meta(self) -> dict:
        p = self.path / RUN_FILE
        return json.loads(p.read_text()) if p.exists() else {}

    def append(self, row: Row) -> None:
        """Append one row and fsync, so a SIGKILL right after loses nothing.

        A torn last line (a writer killed mid-line) is ended first; otherwise this row would be
        glued to it and both lines would be unreadable, losing the row on resume."""
        self.path.mkdir(parents=True, exist_ok=True)
        data = (row.to_json() + "\n").encode("utf-8")
        with open(self.rows_path, "a+b") as f:  # "a": writes always go to the end, whatever we read
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    data = b"\n" + data
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def rows(self) -> list[Row]:
        """All complete rows; a torn last line (killed mid-write) is ignored."""
        if not self.rows_path.exists():
            return []
        out = []
        for line in self.rows_path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                out.append(Row.from_dict(json.loads(line)))
            except json.JSONDecodeError:
                continue
        return out

    def done_ids(self) -> set[str]:
        return {r.case_id for r in self.rows()}

    def write_csv(self) -> Path:
        return write_rows_csv(self.rows(), self.path / CSV_FILE)


def flatten(row: Row) -> dict[str, Any]:
    """A flat dict for tables: params as ``p_<name>``, nested dicts as ``<key>_<name>``, no samples."""
    flat: dict[str, Any] = {}
    for key, value in dataclasses.asdict(row).items():
        if key in ("samples_ms", "graph_samples_ms"):
            continue
        if isinstance(value, dict) and key in ("params", "correctness", "nvml"):
            prefix = "p" if key == "params" else key
            for k, v in value.items():
                if not isinstance(v, (list, dict)):
                    flat[f"{prefix}_{k}"] = v
        elif isinstance(value, (list, dict)):
            continue
        else:
            flat[key] = value
    return flat


def write_rows_csv(rows: Iterable[Row], path: Path) -> Path:
    import pandas as pd

    pd.DataFrame([flatten(r) for r in rows]).to_csv(path, index=False)
    return path
