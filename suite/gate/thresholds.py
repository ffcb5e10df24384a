"""Per-case slowdown thresholds: a default plus rules that match cases, from a YAML file.

Two times are judged (docs/design.md "Host time and device time"): the **device time** (CUDA-graph
replays where both sides have them, else the eager time) with ``default`` / ``max_slowdown``, and
the **eager time** (what a user's call costs, host launches included) with ``eager`` for
device-bound cases and ``host_bound`` for host-bound ones (in the baseline, eager beyond 10% over the
graph time). ``off`` means reported, never failing: a host-bound case's eager time measures how
fast this runner's CPU launches kernels, which a stored baseline from another machine cannot judge.

Format (all percentages; the ``%`` is optional, ``10`` means 10%)::

    default: 5%                         # device time
    eager: 15%                          # eager time of device-bound cases (default: off)
    host_bound: off                     # eager time of host-bound cases (default: off)
    rules:                              # the LAST matching rule wins (put general rules first)
      - implementation: attention-math  # selector: implementation, level, mode, dtype, params
        max_slowdown: 25%               # a noisy eager reference: looser
      - implementation: cgspn-scan
        params: {grid: 27}
        eager_max_slowdown: 50%         # this case's eager time, whether host-bound or not
      - case_id: 3f2a9c01d4e7           # or one case by its id (suite.results.case_id)
        max_slowdown: 30%

A selector matches a row whose implementation/level/mode/dtype equal the given values and whose
params contain the given params (the scenario selector rule).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from suite import yaml_safe
from suite.errors import describe
from suite.results import Row

SELECTOR_KEYS = ("implementation", "level", "mode", "dtype", "params")
LIMIT_KEYS = ("max_slowdown", "eager_max_slowdown")
RULE_KEYS = SELECTOR_KEYS + ("case_id",) + LIMIT_KEYS
OFF = "off"


class ThresholdError(ValueError):
    """A bad thresholds file or percentage; the message names the field and what is allowed."""


def parse_percent(value: Any, where: str) -> float:
    """``"10%"``, ``"10"``, ``10`` or ``12.5`` -> 0.10 / 0.10 / 0.10 / 0.125 (a fraction)."""
    text = str(value).strip()
    number = text[:-1].strip() if text.endswith("%") else text
    try:
        pct = float(number)
    except ValueError:
        raise ThresholdError(f"{where}: expected a percentage like '10%' or 10, got {value!r}") from None
    if isinstance(value, bool) or not pct >= 0 or pct == float("inf"):
        raise ThresholdError(f"{where}: expected a non-negative percentage like '10%', got {value!r}")
    return pct / 100.0


def parse_limit(value: Any, where: str) -> float | None:
    """A percentage, or ``off`` (None: reported, never failing)."""
    if value is False or (isinstance(value, str) and value.strip().lower() == OFF):
        return None
    try:
        return parse_percent(value, where)
    except ThresholdError:
        raise ThresholdError(f"{where}: expected a percentage like '15%' or off, got {value!r}") from None


def row_matches(row: Row, selector: dict[str, Any]) -> bool:
    """The selector rule: equal implementation/level/mode/dtype, params containing the given values."""
    for key in ("implementation", "level", "mode", "dtype", "case_id"):
        if key in selector and getattr(row, key) != selector[key]:
            return False
    params = selector.get("params") or {}
    return all(key in row.params and row.params[key] == value for key, value in params.items())


@dataclass
class Thresholds:
    """Max slowdowns (fractions): device time, eager time of device-bound and of host-bound cases,
    plus ordered rules; :meth:`for_row` and :meth:`eager_for_row` give a case's thresholds."""

    default: float = 0.10
    rules: list[tuple[dict[str, Any], dict[str, float | None]]] = field(default_factory=list)
    eager: float | None = None  # None: not judged
    host_bound: float | None = None

    def for_row(self, row: Row) -> float:
        threshold = self.default
        for selector, limits in self.rules:
            if "max_slowdown" in limits and row_matches(row, selector):
                threshold = limits["max_slowdown"]
        return threshold

    def eager_for_row(self, row: Row, host_bound: bool) -> float | None:
        threshold = self.host_bound if host_bound else self.eager
        for selector, limits in self.rules:
            if "eager_max_slowdown" in limits and row_matches(row, selector):
                threshold = limits["eager_max_slowdown"]
        return threshold

    @classmethod
    def load(cls, path: str | Path, default: float | None = None) -> Thresholds:
        """Read and validate a thresholds file; ``default`` (from ``--max-slowdown``) overrides the file's."""
        path = Path(path)
        try:
            data = yaml_safe.load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ThresholdError(f"{path}: thresholds file not found") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ThresholdError(f"{path}: cannot read: {describe(err)}") from None
        except yaml.YAMLError as err:
            raise ThresholdError(f"{path}: not valid YAML: {yaml_safe.describe(err)}") from None
        return cls.from_dict(data or {}, where=str(path), default=default)

    @classmethod
    def from_dict(cls, data: Any, where: str = "thresholds", default: float | None = None) -> Thresholds:
        if not isinstance(data, dict):
            raise ThresholdError(f"{where}: expected a mapping with keys 'default', 'eager', 'host_bound' and 'rules'")
        unknown = set(data) - {"default", "eager", "host_bound", "rules"}
        if unknown:
            raise ThresholdError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: default, eager, host_bound, rules")
        base = parse_percent(data["default"], f"{where}: default") if "default" in data else 0.10
        eager = parse_limit(data["eager"], f"{where}: eager") if "eager" in data else None
        host_bound = parse_limit(data["host_bound"], f"{where}: host_bound") if "host_bound" in data else None
        rules_data = data.get("rules") or []
        if not isinstance(rules_data, list):
            raise ThresholdError(f"{where}: rules: expected a list of mappings")
        rules = []
        for i, rule in enumerate(rules_data):
            at = f"{where}: rules[{i}]"
            if not isinstance(rule, dict):
                raise ThresholdError(f"{at}: expected a mapping with a selector and max_slowdown or eager_max_slowdown")
            bad = set(rule) - set(RULE_KEYS)
            if bad:
                raise ThresholdError(f"{at}: unknown key(s) {sorted(bad)}; allowed: {', '.join(RULE_KEYS)}")
            if not set(LIMIT_KEYS) & set(rule):
                raise ThresholdError(f"{at}: max_slowdown is required (or eager_max_slowdown)")
            selector = {k: v for k, v in rule.items() if k not in LIMIT_KEYS}
            if not selector:
                raise ThresholdError(f"{at}: give a selector ({', '.join(SELECTOR_KEYS)}) or a case_id")
            if "params" in selector and not isinstance(selector["params"], dict):
                raise ThresholdError(f"{at}.params: expected a mapping of Params fields to values")
            for key in ("implementation", "level", "mode", "dtype", "case_id"):
                if key in selector and not isinstance(selector[key], str):
                    raise ThresholdError(f"{at}.{key}: expected a string, got {selector[key]!r}")
            limits: dict[str, float | None] = {}
            if "max_slowdown" in rule:
                limits["max_slowdown"] = parse_percent(rule["max_slowdown"], f"{at}.max_slowdown")
            if "eager_max_slowdown" in rule:
                limits["eager_max_slowdown"] = parse_limit(rule["eager_max_slowdown"], f"{at}.eager_max_slowdown")
            rules.append((selector, limits))
        return cls(default=base if default is None else default, rules=rules, eager=eager, host_bound=host_bound)
