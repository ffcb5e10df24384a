"""Scenario files: load, validate strictly, expand into cases.

A scenario (``scenarios/*.yaml``) names implementations, levels, modes, dtypes and a sweep over
:class:`kernels.params.Params` fields; docs/scenarios.md documents every key. Every
validation error names the file, the field and the allowed values, and all errors of a file are
reported together (:class:`ScenarioError.errors`).

Expansion: the cartesian product of ``sweep`` axes, crossed with the rows of ``zip`` (axes varied
together), on top of the fixed ``params``; then x implementations x levels (only registered
pairs) x modes x dtypes. A case keeps only the Params fields its implementation declares, so an
attention case ignores ``compression``, and cases are deduplicated by :func:`suite.results.case_id`.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kernels import registry
from kernels.params import ParamError, Params
from kernels.registry import DTYPES, LEVELS, MODES, Implementation
from suite import yaml_safe
from suite.case import Case, TimingError, TimingSettings
from suite.errors import unsafe_name
from suite.results import TIMINGS
from suite.selectors import GRID_SIZE_KEYS, describe, matches

DEVICES = ("cuda", "cpu", "any")
METRICS = ("latency", "memory", "nvml", "profile")
CLAIM_KINDS = ("ratio", "time", "share")
TOP_KEYS = ("name", "description", "paper", "device", "implementations", "levels", "modes", "dtypes", "params", "sweep",
            "zip", "timing", "check", "metrics", "paper_points", "claims")
REQUIRED = ("name", "description", "implementations", "levels")
SELECTOR_KEYS = ("implementation", "level", "params", "mode", "dtype")
POINT_KEYS = SELECTOR_KEYS + ("ms", "label")
CLAIM_KEYS = ("id", "text", "paper", "kind", "numerator", "denominator", "target", "unit", "note", "timing", "paper_card")
CLAIM_TIMINGS = TIMINGS
MAX_CASES, MAX_CASES_ENV = 10_000, "CGSPN_BENCH_MAX_CASES"  # per scenario, before expansion
DEFAULTS = {"device": "any", "modes": ["fwd"], "dtypes": ["bfloat16"], "check": True, "metrics": ["latency", "memory", "nvml"]}


class ScenarioError(ValueError):
    """One or more validation errors, each naming the file, the field and the allowed values."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


@dataclass
class Scenario:
    """A validated scenario file (see docs/scenarios.md)."""

    name: str
    description: str
    path: Path
    text: str  # the file's contents, stored in run.json with its hash
    implementations: list[str]
    levels: list[str]
    paper: str = ""
    device: str = "any"
    modes: list[str] = field(default_factory=lambda: ["fwd"])
    dtypes: list[str] = field(default_factory=lambda: ["bfloat16"])
    params: dict[str, int] = field(default_factory=dict)
    sweep: dict[str, list[int]] = field(default_factory=dict)
    zip: dict[str, list[int]] = field(default_factory=dict)
    timing: TimingSettings = field(default_factory=TimingSettings)
    check: bool = True
    metrics: list[str] = field(default_factory=lambda: ["latency", "memory", "nvml"])
    paper_points: list[dict] = field(default_factory=list)
    claims: list[dict] = field(default_factory=list)
    cases: list[Case] = field(default_factory=list)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def runs_on(self, device_type: str) -> bool:
        return self.device in ("any", device_type)

    def record(self) -> dict[str, Any]:
        """What run.json stores about this scenario."""
        return {"name": self.name, "path": str(self.path), "sha256": self.sha256, "contents": self.text}


# ---- validation helpers ------------------------------------------------------------------------


class _Errors:
    def __init__(self, where: str):
        self.where = where
        self.items: list[str] = []

    def add(self, field_name: str, message: str) -> None:
        text = f"{self.where}: {field_name}: {message}"
        if len(text) > 400:  # a value quoted in full could be huge
            text = text[:380] + " ... (shortened)"
        if text not in self.items:
            self.items.append(text)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _string_list(data: dict, key: str, allowed: tuple[str, ...] | list[str] | None, errors: _Errors) -> list[str]:
    value = data.get(key, DEFAULTS.get(key))
    hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        errors.add(key, f"expected a non-empty list of names{hint}; got {value!r}")
        return []
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            errors.add(f"{key}[{i}]", f"expected a name{hint}; got {item!r}")
        elif allowed is not None and item not in allowed:
            errors.add(f"{key}[{i}]", f"{item!r} is not allowed{hint}")
        elif item in out:
            errors.add(f"{key}[{i}]", f"{item!r} is listed twice")
        else:
            out.append(item)
    return out


def _param_value(axis: str, value: Any, where: str, errors: _Errors) -> bool:
    """One Params value on its own: a known field and an integer in range. Cross-field rules
    (heads dividing channels, ...) are checked by Params.from_dict on each expanded point."""
    if axis not in Params.names():
        errors.add(where, f"unknown parameter {axis!r}; allowed: {', '.join(Params.names())}")
        return False
    minimum = 0 if axis == "attn_blocks" else 1  # the same bounds as Params.from_dict
    if not _is_int(value):
        errors.add(where, f"expected an integer >= {minimum}, got {value!r} ({type(value).__name__})")
        return False
    if value < minimum:
        errors.add(where, f"must be >= {minimum}, got {value}")
        return False
    return True


def _fixed_params(data: dict, errors: _Errors) -> dict[str, int]:
    raw = data.get("params", {})
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.add("params", f"expected a mapping of parameter: integer; allowed keys: {', '.join(Params.names())}")
        return {}
    out = {}
    for key, value in raw.items():
        if _param_value(key, value, f"params.{key}", errors):
            out[key] = value
    return out


def _axes(data: dict, key: str, errors: _Errors) -> dict[str, list[int]]:
    raw = data.get(key, {})
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.add(key, f"expected a mapping of parameter: list of integers; allowed keys: {', '.join(Params.names())}")
        return {}
    out = {}
    for axis, values in raw.items():
        if not isinstance(values, list) or not values:
            errors.add(f"{key}.{axis}", f"expected a non-empty list of values, got {values!r}")
            continue
        good = [v for i, v in enumerate(values) if _param_value(axis, v, f"{key}.{axis}[{i}]", errors)]
        if len(good) == len(values):
            out[axis] = values
    return out


def _timing(data: dict, errors: _Errors) -> TimingSettings:
    raw = data.get("timing", {}) or {}
    if not isinstance(raw, dict):
        errors.add("timing", "expected a mapping; allowed keys: budget_ms, warmup_ms, min_reps, max_reps, l2_flush, cuda_graph")
        return TimingSettings()
    try:
        return TimingSettings.from_dict(raw, where="timing")
    except TimingError as exc:
        field_name, message = str(exc).split(": ", 1)
        errors.add(field_name, message)
        return TimingSettings()


def _selector(raw: Any, where: str, keys: tuple[str, ...], scenario: dict, errors: _Errors) -> dict | None:
    """A row selector (claims numerator/denominator, paper_points): names must be in the scenario."""
    if not isinstance(raw, dict):
        errors.add(where, f"expected a mapping with keys {', '.join(keys)}; got {raw!r}")
        return None
    ok = True
    for key in raw:
        if key not in keys:
            errors.add(f"{where}.{key}", f"unknown key; allowed: {', '.join(keys)}")
            ok = False
    impl = raw.get("implementation")
    names = ", ".join(scenario["implementations"])
    if impl is None:
        errors.add(f"{where}.implementation", f"required; one of the scenario's implementations: {names}")
        ok = False
    elif impl not in scenario["implementations"]:
        errors.add(f"{where}.implementation", f"{impl!r} is not in this scenario; allowed: {names}")
        ok = False
    for key, allowed in (("level", scenario["levels"]), ("mode", scenario["modes"]), ("dtype", scenario["dtypes"])):
        if key in raw and raw[key] not in allowed:
            errors.add(f"{where}.{key}", f"{raw[key]!r} is not in this scenario; allowed: {', '.join(allowed)}")
            ok = False
    params = raw.get("params", {})
    if not isinstance(params, dict):
        errors.add(f"{where}.params", "expected a mapping of parameter: integer")
        ok = False
    else:
        for key, value in params.items():
            ok &= _param_value(key, value, f"{where}.params.{key}", errors)
    return raw if ok else None


def _paper_points(data: dict, scenario: dict, errors: _Errors) -> list[dict]:
    raw = data.get("paper_points", []) or []
    if not isinstance(raw, list):
        errors.add("paper_points", "expected a list of {implementation, level, params, ms}")
        return []
    out = []
    for i, point in enumerate(raw):
        where = f"paper_points[{i}]"
        selected = _selector(point, where, POINT_KEYS, scenario, errors)
        if selected is None:
            continue
        if not _is_number(point.get("ms")) or not point["ms"] > 0:
            errors.add(f"{where}.ms", f"expected the paper's time in ms (a number > 0), got {point.get('ms')!r}")
            continue
        out.append(point)
    return out


def claim_problems(claim: dict) -> list[tuple[str, str]]:
    """What is wrong with a claim's kind, timing and denominator, as ``(field suffix, message)`` pairs
    (none when it is right): the one check behind scenario validation and the report's claims table."""
    problems = []
    kind = claim.get("kind")
    if kind not in CLAIM_KINDS:
        problems.append((".kind", f"{kind!r} is not one of {', '.join(CLAIM_KINDS)}"))
    if claim.get("timing", "device") not in CLAIM_TIMINGS:
        problems.append((".timing", f"{claim['timing']!r} is not one of {', '.join(CLAIM_TIMINGS)}"))
    if kind in ("ratio", "share") and "denominator" not in claim:
        problems.append(("", f"kind {kind!r} needs a denominator"))
    elif kind not in ("ratio", "share") and "denominator" in claim:
        problems.append((".denominator", f"a {kind!r} claim has no denominator (only ratio and share do)"))
    return problems


def _claims(data: dict, scenario: dict, errors: _Errors) -> list[dict]:
    raw = data.get("claims", []) or []
    if not isinstance(raw, list):
        errors.add("claims", "expected a list of {id, text, paper, kind, numerator, denominator, target}")
        return []
    out, ids = [], set()
    for i, claim in enumerate(raw):
        where = f"claims[{i}]"
        if not isinstance(claim, dict):
            errors.add(where, f"expected a mapping with keys {', '.join(CLAIM_KEYS)}")
            continue
        ok = True
        for key in claim:
            if key not in CLAIM_KEYS:
                errors.add(f"{where}.{key}", f"unknown key; allowed: {', '.join(CLAIM_KEYS)}")
                ok = False
        for key in ("id", "text"):
            if not isinstance(claim.get(key), str) or not claim.get(key):
                errors.add(f"{where}.{key}", "required; expected a non-empty string")
                ok = False
        if claim.get("id") in ids:
            errors.add(f"{where}.id", f"{claim['id']!r} is used twice; claim ids must be unique")
            ok = False
        ids.add(claim.get("id"))
        kind = claim.get("kind")
        for field_suffix, message in claim_problems(claim):
            errors.add(where + field_suffix, message)
            ok = False
        for key in ("paper", "target"):
            if key in claim and claim[key] is not None and not _is_number(claim[key]):
                errors.add(f"{where}.{key}", f"expected a number, got {claim[key]!r}")
                ok = False
        if "paper" not in claim:
            errors.add(f"{where}.paper", "required; the paper's number (null if the paper gives none)")
            ok = False
        if "paper_card" in claim and (not isinstance(claim["paper_card"], str) or not claim["paper_card"].strip()):
            errors.add(f"{where}.paper_card", f"expected the paper's card as a non-empty string, got {claim['paper_card']!r}")
            ok = False
        ok &= _selector(claim.get("numerator"), f"{where}.numerator", SELECTOR_KEYS, scenario, errors) is not None
        if kind in ("ratio", "share") and "denominator" in claim:
            ok &= _selector(claim.get("denominator"), f"{where}.denominator", SELECTOR_KEYS, scenario, errors) is not None
        if ok:
            out.append(claim)
    return out


def _claims_resolve(claims: list[dict], cases: list[Case], errors: _Errors) -> None:
    """Each claim's numerator and denominator must name exactly one of the scenario's cases."""
    for i, claim in enumerate(claims):
        for part in ("numerator", "denominator"):
            if part not in claim:
                continue
            selector = claim[part]
            found = [c for c in cases if matches(selector, c.implementation.name, c.implementation.level, c.mode, c.dtype,
                                                 c.values)]
            where = f"claims[{i}] ({claim['id']}).{part}"
            if not found:
                errors.add(where, f"{describe(selector)} names none of this scenario's cases")
            elif len(found) > 1:
                listed = "; ".join(c.label for c in found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
                errors.add(where, f"{describe(selector)} names {len(found)} cases, expected exactly one (add mode, dtype "
                                  f"or params to the selector): {listed}")


# ---- loading and expansion -------------------------------------------------------------------


def _points(params: dict, sweep: dict, zipped: dict) -> list[tuple[str, dict]]:
    """(label, values) for every sweep x zip point on top of the fixed params."""
    axes = list(sweep)
    zip_rows = [dict(zip(zipped, row, strict=True)) for row in zip(*zipped.values(), strict=True)] if zipped else [{}]
    out = []
    for combo in itertools.product(*(sweep[a] for a in axes)):
        for z, zrow in enumerate(zip_rows):
            label = ", ".join([f"sweep.{a}={v}" for a, v in zip(axes, combo, strict=True)] + ([f"zip[{z}]"] if zipped else []))
            out.append((label or "params", {**params, **dict(zip(axes, combo, strict=True)), **zrow}))
    return out


def _relative(exc: Exception, where: str) -> str:
    """A Params error without its ``where`` prefix (the caller adds file and point)."""
    message = str(exc)
    if message.startswith(where):
        message = message[len(where):].lstrip(".: ")
    elif message.startswith("params: "):  # Params.H names no location
        message = message[len("params: "):]
    return message


def _pairs(implementations: list[str], levels: list[str], errors: _Errors) -> list[Implementation]:
    known = registry.names()
    pairs = []
    for i, name in enumerate(implementations):
        if name not in known:
            errors.add(f"implementations[{i}]", f"unknown implementation {name!r}; registered: {', '.join(known)}")
            continue
        registered = registry.levels_of(name)
        found = [registry.get(name, lvl) for lvl in levels if lvl in registered]
        if not found:
            errors.add(f"implementations[{i}]", f"{name!r} is registered at {', '.join(registered)}, "
                                                f"none of this scenario's levels ({', '.join(levels)})")
        pairs.extend(found)
    return pairs


def _within_case_cap(sweep: dict, zipped: dict, per_point: int, errors: _Errors) -> bool:
    """Refuse (before expanding anything) a scenario that would expand to more than the case cap."""
    try:
        cap = int(os.environ.get(MAX_CASES_ENV, MAX_CASES))
    except ValueError:
        cap = MAX_CASES
    points = math.prod(len(v) for v in sweep.values()) * (len(next(iter(zipped.values()))) if zipped else 1)
    count = points * max(1, per_point)
    if count <= cap:
        return True
    axes = " x ".join(f"{a}: {len(v)}" for a, v in sweep.items()) or "no sweep"
    errors.add("sweep", f"expands to {count} cases ({axes}{', zip: ' + str(len(next(iter(zipped.values())))) if zipped else ''}"
                        f" points x {per_point} implementation/level/mode/dtype combinations), above the cap of {cap}; "
                        f"split the scenario, or raise the cap with {MAX_CASES_ENV}={count}")
    return False


def parse_scenario(text: str, path: str | Path = "<string>") -> Scenario:
    """Validate the YAML ``text`` of a scenario and expand its cases; raises :class:`ScenarioError`."""
    path = Path(path)
    errors = _Errors(str(path))
    try:
        data = yaml_safe.load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError([f"{path}: not valid YAML: {yaml_safe.describe(exc)}"]) from None
    if not isinstance(data, dict):
        raise ScenarioError([f"{path}: expected a mapping with keys {', '.join(TOP_KEYS)}; got {type(data).__name__}"])
    for key in data:
        if key not in TOP_KEYS:
            errors.add(str(key), f"unknown key; allowed: {', '.join(TOP_KEYS)}")
    for key in REQUIRED:
        if key not in data:
            errors.add(key, "required key is missing")
    for key in ("name", "description", "paper"):
        if key in data and (not isinstance(data[key], str) or not data[key].strip()):
            errors.add(key, f"expected a non-empty string, got {data[key]!r}")
    if isinstance(data.get("name"), str) and data["name"].strip() and unsafe_name(data["name"]):
        errors.add("name", unsafe_name(data["name"]))  # the name becomes the run's folder name
    device = data.get("device", "any")
    if device not in DEVICES:
        errors.add("device", f"{device!r} is not allowed; allowed: {', '.join(DEVICES)}")
    check = data.get("check", True)
    if not isinstance(check, bool):
        errors.add("check", f"expected true or false, got {check!r}")

    known = registry.names()
    implementations = _string_list(data, "implementations", None, errors) if "implementations" in data else []
    levels = _string_list(data, "levels", LEVELS, errors) if "levels" in data else []
    modes = _string_list(data, "modes", MODES, errors)
    dtypes = _string_list(data, "dtypes", tuple(DTYPES), errors)
    metrics = _string_list(data, "metrics", METRICS, errors)
    shape_errors = len(errors.items)
    params = _fixed_params(data, errors)
    sweep = _axes(data, "sweep", errors)
    zipped = _axes(data, "zip", errors)
    for axis in sweep:
        if axis in params:
            errors.add(f"sweep.{axis}", "also given in params; give each parameter in one place")
    for axis in zipped:
        if axis in params or axis in sweep:
            other = "params" if axis in params else "sweep"
            errors.add(f"zip.{axis}", f"also given in {other}; give each parameter in one place")
    lengths = {axis: len(values) for axis, values in zipped.items()}
    if len(set(lengths.values())) > 1:
        errors.add("zip", f"zipped axes must have equal lengths; got {', '.join(f'{a}: {n}' for a, n in lengths.items())}")
        zipped = {}
    shape_ok = len(errors.items) == shape_errors  # expand points only from valid values
    timing = _timing(data, errors)
    names = {"implementations": [i for i in implementations if i in known], "levels": levels, "modes": modes, "dtypes": dtypes}
    paper_points = _paper_points(data, names, errors)
    claims = _claims(data, names, errors)
    impls = _pairs(implementations, levels, errors)

    name = data.get("name") if isinstance(data.get("name"), str) else path.stem
    profile = "profile" in metrics
    cases: dict[str, Case] = {}
    if shape_ok:
        shape_ok = _within_case_cap(sweep, zipped, len(impls) * len(modes) * len(dtypes), errors)
    for where, values in _points(params, sweep, zipped) if shape_ok else []:
        try:
            point = Params.from_dict(values, where=where)
        except ParamError as exc:
            errors.add(where, _relative(exc, where))
            continue
        for impl in impls:
            try:
                if set(impl.params) & set(GRID_SIZE_KEYS):
                    _ = point.H  # the implementation needs a token grid
                if impl.family == "cgspn" or "compression" in impl.params:
                    point.check_compression(where)
            except ParamError as exc:
                errors.add(where, f"{impl.name}: {_relative(exc, where)}")
                continue
            case_params = Params(**point.subset(impl.params))
            for mode in modes:
                for dtype in dtypes:
                    case = Case(impl, case_params, mode, dtype, name, timing, check is True, profile, "nvml" in metrics)
                    cases.setdefault(case.id, case)
    if not errors.items:
        _claims_resolve(claims, list(cases.values()), errors)
    if errors.items:
        raise ScenarioError(errors.items)
    order = {impl.name: i for i, impl in enumerate(impls)}
    ordered = sorted(cases.values(), key=lambda c: order[c.implementation.name])  # stable: implementation-major
    return Scenario(name=name, description=data["description"], path=path, text=text, implementations=implementations,
                    levels=levels, paper=data.get("paper", ""), device=device, modes=modes, dtypes=dtypes, params=params,
                    sweep=sweep, zip=zipped, timing=timing, check=check, metrics=metrics, paper_points=paper_points,
                    claims=claims, cases=ordered)


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ScenarioError([f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the file as UTF-8"]) from None
    return parse_scenario(text, path)


def scenario_files(paths: list[str | Path]) -> list[Path]:
    """Files named directly plus every ``*.yaml``/``*.yml`` under named folders (recursively)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix in (".yaml", ".yml") and f.is_file()))
        else:
            out.append(p)
    return out


def load_scenarios(paths: list[str | Path]) -> tuple[list[Scenario], list[str]]:
    """Load every file (see :func:`scenario_files`); returns (valid scenarios, all errors).

    Scenario names must be unique across the files loaded together.
    """
    scenarios, errors, seen = [], [], {}
    files = scenario_files(paths)
    if not files:
        errors.append(f"{', '.join(map(str, paths))}: no scenario files (*.yaml) found")
    for path in files:
        try:
            scenario = load_scenario(path)
        except ScenarioError as exc:
            errors.extend(exc.errors)
            continue
        if scenario.name in seen:
            errors.append(f"{path}: name: {scenario.name!r} is already used by {seen[scenario.name]}; names must be unique")
            continue
        seen[scenario.name] = path
        scenarios.append(scenario)
    return scenarios, errors
