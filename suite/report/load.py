"""Read a run directory into what the report needs: metadata, rows, a flat table, the scenarios.

A run directory (``suite.results.RunDir``) holds ``run.json`` (environment, the scenarios as run)
and ``rows.jsonl``, and after a variance run (``--same-case-on-every-gpu``) ``gpu_spread.json``
(suite.sharding.gpu_spread). The report never re-measures: everything it shows comes from these files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from kernels.params import Params
from suite.gate.baseline import is_confirmation
from suite.results import ROWS_FILE, RUN_FILE, Row, RunDir, flatten
from suite.selectors import grid_of

SPREAD_FILE = "gpu_spread.json"  # written by suite.runner in variance mode


class ReportError(ValueError):
    """A run directory or option the report cannot use; the message says which and why."""


def resolution_of(params: dict) -> int | None:
    """Image side in pixels: ``resolution`` when given, else grid side x patch."""
    if params.get("resolution") is not None:
        return int(params["resolution"])
    grid = grid_of(params)
    return None if grid is None else grid[0] * int(params.get("patch", Params.patch))


def scenario_hash(scenario: dict) -> str:
    """12-hex hash of a scenario's content (canonical JSON), for the environment table."""
    text = json.dumps(scenario, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def scenarios_of(meta: dict) -> list[dict]:
    """The scenarios stored in run.json under ``"scenarios"``, as scenario mappings.

    The runner stores ``suite.scenario.Scenario.record()``: name, path, sha256 and the file's
    ``contents`` (YAML text), which is parsed here; already-parsed mappings are accepted as they
    are. The record's path and hash are kept as ``_path`` and ``_sha256``.
    """
    raw = meta.get("scenarios") or []
    records = [{"name": k, **v} for k, v in raw.items()] if isinstance(raw, dict) else list(raw)
    out = []
    for record in records:
        if not isinstance(record, dict):
            raise ReportError(f"run.json scenarios: expected a mapping per scenario, got {type(record).__name__}")
        if isinstance(record.get("contents"), str):
            try:
                scenario = yaml.safe_load(record["contents"]) or {}
            except yaml.YAMLError as exc:
                raise ReportError(f"run.json scenario {record.get('name')!r}: contents are not valid YAML: {exc}") from None
            if not isinstance(scenario, dict):
                raise ReportError(f"run.json scenario {record.get('name')!r}: contents are not a mapping")
            scenario.setdefault("name", record.get("name", ""))
            scenario["_path"], scenario["_sha256"] = record.get("path", ""), record.get("sha256", "")
        else:
            scenario = dict(record)
        out.append(scenario)
    return out


@dataclass
class Run:
    """One run directory, loaded."""

    path: Path
    meta: dict[str, Any]
    rows: list[Row] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.meta.get("name") or self.meta.get("run_id") or self.path.name

    @property
    def environment(self) -> dict[str, Any]:
        return self.meta.get("environment") or {}

    @property
    def synthetic(self) -> bool:
        return bool(self.meta.get("synthetic"))

    @cached_property
    def scenarios(self) -> list[dict]:
        return scenarios_of(self.meta)

    @property
    def device_name(self) -> str:
        """The card: the environment's GPU name, else the rows' device, else the device type."""
        gpu = self.environment.get("gpu")
        if isinstance(gpu, dict) and gpu.get("name"):
            return gpu["name"]
        names = sorted({r.device for r in self.rows if r.device})
        return ", ".join(names) or str(self.meta.get("device", "unknown"))

    @cached_property
    def gpus(self) -> list[str]:
        """The distinct GPUs (or CPU ranks) the rows were measured on, as :func:`gpu_key` values, first seen first."""
        return list(dict.fromkeys(gpu_key(r) for r in self.rows))

    @property
    def multi_gpu(self) -> bool:
        return len(self.gpus) > 1

    @cached_property
    def spread(self) -> list[dict[str, Any]]:
        """The variance mode's per-case spread: gpu_spread.json as the runner wrote it, else (a run
        interrupted before the end) the same computation on the rows; empty when no case ran on two ranks."""
        path = self.path / SPREAD_FILE
        if path.exists():
            return read_spread(path)
        from suite.sharding import gpu_spread

        return gpu_spread(self.rows)

    @cached_property
    def case_rows(self) -> list[Row]:
        """One row per case (see :func:`one_row_per_case`), for figures and comparisons."""
        return one_row_per_case(self.rows)

    @cached_property
    def frame(self) -> pd.DataFrame:
        """One line per row: flat Row fields, ``p_<param>`` columns and derived grid columns."""
        return rows_frame(self.rows)


def gpu_key(row: Row) -> str:
    """Which card measured ``row``: its UUID (unique across hosts), else its rank (CPU ranks, old rows)."""
    return row.gpu_uuid or f"rank{row.rank}"


def gpu_label(row: Row) -> str:
    """``rank<r>/gpu<i>``, the label suite.sharding.gpu_spread uses for its per-GPU medians."""
    return f"rank{row.rank}" + (f"/gpu{row.gpu_index}" if row.gpu_index is not None else "")


SPREAD_FIELDS = ("case_id", "implementation", "level", "mode", "dtype", "params", "medians_ms")


def read_spread(path: Path) -> list[dict[str, Any]]:
    """gpu_spread.json: a list of per-case entries (case fields, ``medians_ms`` {label: ms}, ``spread``)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise ReportError(f"{path}: expected a list of per-case entries, got {type(data).__name__}")
    for i, entry in enumerate(data):
        missing = [k for k in SPREAD_FIELDS if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise ReportError(f"{path}: entry {i} lacks {', '.join(missing)} (fields: {', '.join(SPREAD_FIELDS)})")
        if not isinstance(entry["medians_ms"], dict) or not entry["medians_ms"]:
            raise ReportError(f"{path}: entry {i} medians_ms: expected a mapping GPU label -> ms")
    return data


def one_row_per_case(rows: list[Row]) -> list[Row]:
    """Rows with one row per case id, in first-seen order.

    In variance mode every GPU measured every case; a case's row is then its first ok row with
    ``median_ms`` replaced by the median over the GPUs' medians (``min_ms`` by the lowest), so
    figures draw one point per case and ``--compare`` matches one number per case. A case with
    no ok row keeps its first row. The graph-replay median is the median over the GPUs alike.
    """
    by_case: dict[str, list[Row]] = {}
    for row in rows:
        by_case.setdefault(row.case_id, []).append(row)
    out = []
    for group in by_case.values():
        ok = [r for r in group if r.status == "ok" and r.median_ms is not None]
        if len(ok) < 2:
            out.append(ok[0] if ok else group[0])
            continue
        medians = [r.median_ms for r in ok]
        lows = [r.min_ms for r in ok if r.min_ms is not None]
        graphs = [r.graph_median_ms for r in ok if r.graph_median_ms is not None]
        graph = statistics.median(graphs) if len(graphs) == len(ok) else None
        out.append(dataclasses.replace(ok[0], median_ms=statistics.median(medians), min_ms=min(lows) if lows else None,
                                       graph_median_ms=graph,
                                       host_overhead_ms=None if graph is None else statistics.median(medians) - graph))
    return out


def rows_frame(rows: list[Row]) -> pd.DataFrame:
    records = []
    for row in rows:
        rec = flatten(row)
        grid = grid_of(row.params)
        rec["grid_h"], rec["grid_w"] = grid if grid else (None, None)
        rec["resolution_px"] = resolution_of(row.params)
        rec["tokens"] = grid[0] * grid[1] if grid else None
        records.append(rec)
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        frame = pd.DataFrame(columns=["case_id", "implementation", "family", "level", "mode", "dtype", "status", "median_ms"])
    return frame


def load_run(path: str | Path) -> Run:
    """Load ``path`` (a run directory); raises :class:`ReportError` when it is not one."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"run directory {str(path)!r} does not exist")
    if not (path / RUN_FILE).exists() and not (path / ROWS_FILE).exists():
        raise ReportError(f"{str(path)!r} is not a run directory: neither {RUN_FILE} nor {ROWS_FILE} is there")
    run_dir = RunDir(path)
    # rows the gate's --confirm step appended are re-measurements of flagged cases, not the run's
    # own measurements: the report shows the run as it was measured (the gate's JSON has the rest)
    rows = [r for r in run_dir.rows() if not is_confirmation(r)]
    return Run(path=path, meta=run_dir.meta(), rows=rows)
