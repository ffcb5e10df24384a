"""Baselines per GPU model: ``results/baselines/<gpu-model-slug>.json``.

A baseline is one clean run frozen for a card: its rows (with every timing sample, without the
bulky profiler tables), the environment that produced it (GPU, driver, versions, commit) and
where it came from. A gate compares a run only against the baseline of the same GPU model,
because a ratio across cards measures the cards, not the code.

Both sides of a gate are read into a :class:`Snapshot` (rows + GPU model + environment), from a
baseline file or straight from a run directory.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite.gate.slowdown import was_slowed
from suite.results import Row, RowsError, RunDir, row_problem

FORMAT = "cgspn-bench-baseline/1"
DEFAULT_DIR = Path("results/baselines")
CONFIRM_MARKER = "gate-confirm"  # starts the message of rows re-measured by ``gate --confirm`` (suite.gate.confirm)


def is_confirmation(row: Row) -> bool:
    """Whether a run directory's row was appended by the gate's confirmation step, not by the run itself."""
    return (row.message or "").startswith(CONFIRM_MARKER)


class BaselineError(ValueError):
    """A baseline that cannot be written or read; the message says which file and why."""


def slugify(model: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"`` (the baseline file name)."""
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")
    if not slug:
        raise BaselineError(f"cannot make a file name from GPU model {model!r}")
    return slug


def _env_gpu_name(environment: dict[str, Any]) -> str | None:
    """The GPU model recorded by suite.environment (tolerant of a nested ``gpu`` record)."""
    for key in ("gpu", "gpu_name"):
        value = environment.get(key)
        if isinstance(value, dict):
            value = value.get("name")
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def gpu_model_of(environment: dict[str, Any], rows: list[Row]) -> str:
    """The device model a run measured on: the rows' ``device`` (most common), else the environment's GPU name.

    CPU runs are named by the environment's CPU model (the rows only say ``x86_64``)."""
    if environment.get("device") == "cpu" and environment.get("cpu"):
        return str(environment["cpu"])
    names = Counter(r.device.strip() for r in rows if r.device and r.device.strip())
    if names:
        return names.most_common(1)[0][0]
    return _env_gpu_name(environment) or "unknown"


def commit_of(environment: dict[str, Any]) -> str | None:
    """The git commit in suite.environment's record (``git.commit``), ``+dirty`` when the tree differed."""
    git = environment.get("git")
    if isinstance(git, dict) and git.get("commit"):
        return str(git["commit"]) + ("+dirty" if git.get("dirty") else "")
    return None


@dataclass
class Snapshot:
    """One side of a comparison: rows measured on one GPU model."""

    rows: list[Row]
    gpu_model: str
    environment: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the file or directory it was read from
    created: str = ""
    source_run: str = ""  # for a baseline: the run it was frozen from

    @property
    def commit(self) -> str | None:
        return commit_of(self.environment)

    @property
    def slug(self) -> str:
        return slugify(self.gpu_model)

    @classmethod
    def from_run(cls, path: str | Path) -> Snapshot:
        """The run's own rows; rows a gate appended while confirming (:func:`is_confirmation`) are
        evidence of that gate, not part of the run, so judging or freezing the run again ignores them."""
        run = RunDir(path)
        if not run.rows_path.exists():
            raise BaselineError(f"{path}: not a run directory (no {run.rows_path.name}); "
                                f"run `cgspn-bench run SCENARIO --out {path}` first")
        try:
            meta = run.meta()
            rows = [r for r in run.rows() if not is_confirmation(r)]
        except RowsError as err:
            raise BaselineError(str(err)) from None
        environment = meta.get("environment") or {}
        return cls(rows=rows, gpu_model=gpu_model_of(environment, rows), environment=environment, source=str(path))

    @classmethod
    def from_baseline(cls, path: str | Path) -> Snapshot:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise BaselineError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        except IsADirectoryError:
            raise BaselineError(f"{path}: a directory, not a baseline file") from None
        except FileNotFoundError:
            raise BaselineError(f"{path}: no such baseline; create it with `cgspn-bench baseline update --from RUN`") from None
        except json.JSONDecodeError as err:
            raise BaselineError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BaselineError(f"{path}: not a cgspn-bench baseline (expected format {FORMAT!r})")
        rows = data.get("rows")
        if not isinstance(rows, list):
            raise BaselineError(f"{path}: rows: expected a list of rows, got {type(rows).__name__}")
        bad = [f"rows[{i}]: {problem}" for i, r in enumerate(rows) if (problem := row_problem(r))]
        if bad:
            raise BaselineError(f"{path}: {'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
        if not isinstance(data.get("gpu_model"), str):
            raise BaselineError(f"{path}: gpu_model: expected the GPU model name (a string)")
        return cls(
            rows=[Row.from_dict(r) for r in rows],
            gpu_model=data["gpu_model"],
            environment=data.get("environment") or {},
            source=str(path),
            created=data.get("created", ""),
            source_run=data.get("source_run", ""),
        )

    @classmethod
    def load(cls, path: str | Path) -> Snapshot:
        """A baseline file (``*.json``) or a run directory."""
        path = Path(path)
        return cls.from_run(path) if path.is_dir() else cls.from_baseline(path)


def check_comparable(baseline: Snapshot, current: Snapshot) -> None:
    """Refuse a comparison that would judge nothing: an empty side, or no case in common
    (a gate that compares nothing must not print PASSED)."""
    for side, snap in (("baseline", baseline), ("current run", current)):
        if not snap.rows:
            raise BaselineError(f"the {side} {snap.source} holds no rows; nothing to compare")
    if not {r.case_id for r in baseline.rows} & {r.case_id for r in current.rows}:
        raise BaselineError(f"the baseline {baseline.source} and the current run {current.source} have no case in common "
                            f"({len({r.case_id for r in baseline.rows})} vs {len({r.case_id for r in current.rows})} cases); "
                            "measure the baseline's scenario, or refresh the baseline")


def baseline_path(directory: str | Path, gpu_model: str) -> Path:
    return Path(directory) / f"{slugify(gpu_model)}.json"


def _blockers(rows: list[Row]) -> list[str]:
    """Why a run must not become a baseline: correctness failures or the test slowdown."""
    problems = []
    for r in rows:
        failed = r.status == "failed-check" or (r.correctness or {}).get("passed") is False
        if failed:
            problems.append(f"{r.implementation}/{r.level}/{r.mode}/{r.dtype} {r.params}: failed its correctness check")
        if was_slowed(r.backend_detail, r.message):
            problems.append(f"{r.implementation}/{r.level}/{r.mode}/{r.dtype} {r.params}: measured with the test slowdown on")
    return problems


def update_baseline(run_path: str | Path, directory: str | Path = DEFAULT_DIR, force: bool = False) -> Path:
    """Freeze the run at ``run_path`` as ``<directory>/<gpu-model-slug>.json`` (replacing an older one).

    Refuses a run with correctness failures or test-slowed rows unless ``force``; a run with no
    ``ok`` row is always refused (it would gate nothing).
    """
    snap = Snapshot.from_run(run_path)
    if not any(r.status == "ok" for r in snap.rows):
        raise BaselineError(f"{run_path}: no row with status ok; a baseline needs measured cases")
    problems = _blockers(snap.rows)
    if problems and not force:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise BaselineError(f"{run_path}: refusing to make a baseline from this run (use --force to override):\n  {shown}")
    meta = RunDir(run_path).meta()
    rows = [dataclasses.asdict(r) | {"profile": None} for r in snap.rows]  # profiler tables are bulky, not gated
    data = {
        "format": FORMAT,
        "gpu_model": snap.gpu_model,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source_run": str(run_path),
        "commit": snap.commit,
        "environment": snap.environment,
        "settings": meta.get("settings"),
        "scenarios": [_scenario_ref(s) for s in meta.get("scenarios") or []],
        "rows": rows,
    }
    out = baseline_path(directory, snap.gpu_model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(out)
    return out


def _scenario_ref(scenario: Any) -> Any:
    """Name and hash of a scenario stored in run.json (not its whole contents)."""
    if isinstance(scenario, dict):
        return {k: scenario[k] for k in ("name", "path", "file", "sha256", "hash") if k in scenario} or scenario
    return scenario
