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

from suite.errors import InputError

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


REQUIRED_TEXT = ("case_id", "implementation", "family", "level", "mode", "dtype")
NUMBERS = ("median_ms", "iqr_ms", "min_ms", "mean_ms")


def row_problem(data: Any) -> str | None:
    """Why ``data`` (parsed JSON) is not a :class:`Row`, or None."""
    if not isinstance(data, dict):
        return f"expected a JSON object (a row), got {type(data).__name__}"
    missing = [k for k in REQUIRED_TEXT + ("params",) if k not in data]
    if missing:
        return f"not a row: missing {', '.join(missing)}"
    wrong = [k for k in REQUIRED_TEXT + ("status",) if k in data and not isinstance(data[k], str)]
    wrong += [k for k in NUMBERS if data.get(k) is not None and not isinstance(data[k], (int, float))]
    if not isinstance(data["params"], dict):
        wrong.append("params")
    samples = data.get("samples_ms", [])
    if not isinstance(samples, list) or not all(isinstance(x, (int, float)) for x in samples):
        wrong.append("samples_ms")
    return f"not a row: wrong type for {', '.join(wrong)}" if wrong else None


ROW_START = '{"case_id":'  # how every line the runner writes begins (the first field of Row)


class RowsError(InputError):
    """A rows.jsonl (or run.json) that holds something other than rows; names the file and lines."""


def read_rows(path: Path) -> tuple[list[Row], list[int]]:
    """Rows of a JSON-lines file and the line numbers of torn rows; raises :class:`RowsError` on garbage.

    A torn row (a writer killed mid-line: the start of a row's JSON that does not parse) is
    expected after a crash and skipped, so its case counts as not measured. Any other line that
    is not a row (garbage, text in another encoding, JSON of another shape) is an error listing
    the line numbers, never dropped silently."""
    rows, torn, bad = [], [], []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(f"line {number}: not UTF-8")
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            if line.startswith(ROW_START) or ROW_START.startswith(line):
                torn.append(number)
            else:
                bad.append(f"line {number}: not JSON ({exc.msg})")
            continue
        problem = row_problem(data)
        if problem:
            bad.append(f"line {number}: {problem}")
        else:
            rows.append(Row.from_dict(data))
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise RowsError(f"{path}: {'; '.join(bad[:5])}{more}; repair or delete those lines (a row is one JSON object "
                        "per line, as the runner writes it)")
    return rows, torn


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
        if not p.exists():
            return {}
        try:
            meta = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RowsError(f"{p}: not valid JSON ({exc}); restore it, or start over with --force") from None
        if not isinstance(meta, dict):
            raise RowsError(f"{p}: expected a JSON object, got {type(meta).__name__}")
        return meta

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
        """All complete rows; torn rows are skipped, other bad lines raise :class:`RowsError` (:func:`read_rows`)."""
        return self.read()[0]

    def read(self) -> tuple[list[Row], list[int]]:
        """(rows, line numbers of torn rows) of rows.jsonl; see :func:`read_rows`."""
        return read_rows(self.rows_path) if self.rows_path.exists() else ([], [])

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
