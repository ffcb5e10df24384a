"""Per-case slowdown thresholds: a default plus rules that match cases, from a YAML file.

Format (all percentages; the ``%`` is optional, ``10`` means 10%)::

    default: 10%
    rules:                              # the LAST matching rule wins (put general rules first)
      - implementation: attention-math  # selector: implementation, level, mode, dtype, params
        max_slowdown: 25%               # a noisy eager reference: looser
      - implementation: cgspn-scan
        params: {grid: 27}
        max_slowdown: 15%
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
RULE_KEYS = SELECTOR_KEYS + ("case_id", "max_slowdown")


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


def row_matches(row: Row, selector: dict[str, Any]) -> bool:
    """The selector rule: equal implementation/level/mode/dtype, params containing the given values."""
    for key in ("implementation", "level", "mode", "dtype", "case_id"):
        if key in selector and getattr(row, key) != selector[key]:
            return False
    params = selector.get("params") or {}
    return all(key in row.params and row.params[key] == value for key, value in params.items())


@dataclass
class Thresholds:
    """Default max slowdown plus ordered rules; :meth:`for_row` gives a case's threshold."""

    default: float = 0.10
    rules: list[tuple[dict[str, Any], float]] = field(default_factory=list)

    def for_row(self, row: Row) -> float:
        threshold = self.default
        for selector, value in self.rules:
            if row_matches(row, selector):
                threshold = value
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
            raise ThresholdError(f"{where}: expected a mapping with keys 'default' and 'rules'")
        unknown = set(data) - {"default", "rules"}
        if unknown:
            raise ThresholdError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: default, rules")
        base = parse_percent(data["default"], f"{where}: default") if "default" in data else 0.10
        rules_data = data.get("rules") or []
        if not isinstance(rules_data, list):
            raise ThresholdError(f"{where}: rules: expected a list of mappings")
        rules = []
        for i, rule in enumerate(rules_data):
            at = f"{where}: rules[{i}]"
            if not isinstance(rule, dict):
                raise ThresholdError(f"{at}: expected a mapping with a selector and max_slowdown")
            bad = set(rule) - set(RULE_KEYS)
            if bad:
                raise ThresholdError(f"{at}: unknown key(s) {sorted(bad)}; allowed: {', '.join(RULE_KEYS)}")
            if "max_slowdown" not in rule:
                raise ThresholdError(f"{at}: max_slowdown is required")
            selector = {k: v for k, v in rule.items() if k != "max_slowdown"}
            if not selector:
                raise ThresholdError(f"{at}: give a selector ({', '.join(SELECTOR_KEYS)}) or a case_id")
            if "params" in selector and not isinstance(selector["params"], dict):
                raise ThresholdError(f"{at}.params: expected a mapping of Params fields to values")
            for key in ("implementation", "level", "mode", "dtype", "case_id"):
                if key in selector and not isinstance(selector[key], str):
                    raise ThresholdError(f"{at}.{key}: expected a string, got {selector[key]!r}")
            rules.append((selector, parse_percent(rule["max_slowdown"], f"{at}.max_slowdown")))
        return cls(default=base if default is None else default, rules=rules)
