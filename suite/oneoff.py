"""One-off runs without a YAML file: ``cgspn-bench run --impl ... --level ... --sweep ...``.

    cgspn-bench run --impl attention-cudnn,cgspn-scan --level sublayer --sweep resolution=518,1036 \\
        --mode fwd --dtype bfloat16 --csv

The options are turned into the mapping a scenario file would hold and validated by the same code
(:func:`suite.scenario.parse_scenario`), so an unknown implementation, a bad parameter or a
compression that does not divide the width fails exactly as it would in a file, naming the
option's field. The scenario's YAML is stored in run.json like any other, so the run's report and
``--resume`` work as for a file. ``--csv`` prints the run's result table to stdout (any run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from suite.results import Row, flatten

WHERE = "<command line>"  # the scenario's path in errors and run.json
# The printed table: what a reader compares first (every column of a row is in rows.csv).
CSV_FIELDS = ("implementation", "level", "mode", "dtype", "status", "median_ms", "iqr_ms", "min_ms", "n", "tflops", "gbps",
              "bw_fraction", "peak_mem_bytes", "backend_detail", "case_id", "message")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The one-off options of ``run`` (used instead of scenario files)."""
    group = parser.add_argument_group("one-off run without a scenario file (validated as a scenario would be)")
    group.add_argument("--impl", metavar="NAMES", help="comma-separated registered implementations (cgspn-bench list)")
    group.add_argument("--level", metavar="LEVELS", help="comma-separated levels: sublayer, layer, block, network")
    group.add_argument("--mode", metavar="MODES", help="comma-separated: fwd, fwd+bwd (default fwd)")
    group.add_argument("--dtype", metavar="DTYPES",
                       help="comma-separated: bfloat16, float16, float32, float64 (default bfloat16)")
    group.add_argument("--param", action="append", metavar="NAME=INT", help="a fixed parameter, e.g. batch=8 (repeatable)")
    group.add_argument("--sweep", action="append", metavar="NAME=V1,V2", help="a swept parameter, e.g. resolution=518,1036 "
                                                                             "(repeatable; axes are crossed)")
    group.add_argument("--name", help="scenario name (default: cli-<implementations>-<levels>)")
    parser.add_argument("--csv", action="store_true", help="print the run's result table as CSV to stdout at the end")


def wants_oneoff(args: argparse.Namespace) -> bool:
    return any(getattr(args, key, None) for key in ("impl", "level", "mode", "dtype", "param", "sweep", "name"))


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def _number(text: str) -> Any:
    """An integer when the text is one; else the text, for the validator to reject with its message."""
    try:
        return int(text)
    except ValueError:
        return text.strip()


def _assignments(items: list[str] | None, option: str, many: bool) -> tuple[dict[str, Any], list[str]]:
    out, errors = {}, []
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            errors.append(f"{WHERE}: {option} {item!r}: expected NAME={'V1,V2,...' if many else 'INT'}")
            continue
        values = [_number(v) for v in value.split(",")]
        out[name.strip()] = values if many else (values[0] if len(values) == 1 else value)
    return out, errors


def scenario_mapping(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """The scenario mapping the one-off options describe, and errors in the options' own syntax."""
    impls, levels = _names(args.impl), _names(args.level)
    params, errors = _assignments(args.param, "--param", many=False)
    sweep, sweep_errors = _assignments(args.sweep, "--sweep", many=True)
    errors += sweep_errors
    if not impls:
        errors.append(f"{WHERE}: --impl: required for a run without scenario files (comma-separated names; cgspn-bench list)")
    if not levels:
        errors.append(f"{WHERE}: --level: required for a run without scenario files (sublayer, layer, block, network)")
    name = args.name or "cli-" + "-".join([*(impls or []), *(levels or [])])
    data: dict[str, Any] = {"name": name, "description": "one-off run from the command line: " + " ".join(sys.argv[1:]),
                            "implementations": impls or [], "levels": levels or []}
    for key, value in (("modes", _names(args.mode)), ("dtypes", _names(args.dtype))):
        if value is not None:
            data[key] = value
    if params:
        data["params"] = params
    if sweep:
        data["sweep"] = sweep
    return data, errors


def oneoff_scenario(args: argparse.Namespace):
    """([scenario], []) from the one-off options, or ([], errors) naming the option's field."""
    from suite.scenario import ScenarioError, parse_scenario

    data, errors = scenario_mapping(args)
    if errors:
        return [], errors
    try:
        return [parse_scenario(yaml.safe_dump(data, sort_keys=False), WHERE)], []
    except ScenarioError as exc:
        return [], exc.errors


def select_scenarios(args: argparse.Namespace):
    """The scenarios of a ``run``: from files, or from the one-off options (never both)."""
    from suite.scenario import load_scenarios

    if wants_oneoff(args):
        if args.scenarios:
            return [], [f"{WHERE}: give scenario files or --impl/--level/--sweep options, not both"]
        return oneoff_scenario(args)
    if not args.scenarios:
        return [], [f"{WHERE}: no scenario: give scenario files, or --impl and --level for a one-off run"]
    return load_scenarios(args.scenarios)


def result_table(rows: list[Row], case_ids: set[str] | None = None):
    """The rows (of ``case_ids``, when given) as a frame: :data:`CSV_FIELDS` with one ``p_<name>`` column per parameter."""
    import pandas as pd

    flats = [flatten(r) for r in rows if case_ids is None or r.case_id in case_ids]
    params = sorted({k for flat in flats for k in flat if k.startswith("p_")})
    columns = [*CSV_FIELDS[:4], *params, *CSV_FIELDS[4:]]
    frame = pd.DataFrame.from_records([{k: flat.get(k) for k in columns} for flat in flats], columns=columns)
    return frame.astype({p: "Int64" for p in params})  # integers even where another case lacks the parameter


def print_csv(out: Path, scenarios: list, stream=None) -> None:
    """``--csv``: the rows of these scenarios' cases in run directory ``out``, as CSV on ``stream`` (stdout)."""
    from suite.results import RunDir

    ids = {case.id for s in scenarios for case in s.cases}
    result_table(RunDir(out).rows(), ids).to_csv(stream or sys.stdout, index=False)
