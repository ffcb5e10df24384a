"""Row selectors: which measured case a claim, a paper point or a threshold rule names.

A selector is a mapping ``{implementation, level, params, mode?, dtype?}``. It matches a case
(or a row, which carries the same fields) whose implementation is equal, whose level, mode and
dtype are equal where the selector gives them, and whose params contain the selector's
params. Grid keys (:data:`GRID_KEYS`) are compared through the derived token grid, so
``resolution: 2058`` matches ``grid: 147``; any other key the case does not carry is ignored,
because a case records only the Params fields its implementation reads (an attention case has
no ``compression``). Used by scenario validation (claims must name exactly one of the
scenario's cases) and by the report's claims table.
"""

from __future__ import annotations

from kernels.params import ParamError, Params
from kernels.registry import GRID_PARAMS

# Params fields that only describe the token grid; selectors and sweeps compare the derived grid.
GRID_KEYS = GRID_PARAMS
# The ones that give the grid a size (``patch`` alone only scales a resolution into a grid).
GRID_SIZE_KEYS = tuple(k for k in GRID_KEYS if k != "patch")


def grid_of(params: dict) -> tuple[int, int] | None:
    """Token grid ``(H, W)`` of a case's params, or None when it has no grid (e.g. a bad row)."""
    try:
        p = Params(**{k: v for k, v in params.items() if k in Params.names()})
        return p.H, p.W
    except (ParamError, TypeError):
        return None


def matches(selector: dict, implementation: str, level: str, mode: str, dtype: str, params: dict) -> bool:
    """Whether the case (implementation, level, mode, dtype, params) is one ``selector`` names."""
    if implementation != selector.get("implementation"):
        return False
    if selector.get("level") is not None and level != selector["level"]:
        return False
    if selector.get("mode") is not None and mode != selector["mode"]:
        return False
    if selector.get("dtype") is not None and dtype != selector["dtype"]:
        return False
    wanted = selector.get("params") or {}
    if any(k in GRID_KEYS for k in wanted):
        grid_keys = {k: v for k, v in wanted.items() if k in GRID_KEYS}
        if "patch" in params:
            grid_keys.setdefault("patch", params["patch"])
        if grid_of(grid_keys) != grid_of(params):
            return False
    return all(key in GRID_KEYS or key not in params or params[key] == value for key, value in wanted.items())


def describe(selector: dict) -> str:
    """``implementation level (params, mode, dtype)`` for messages."""
    params = ", ".join(f"{k}={v}" for k, v in (selector.get("params") or {}).items())
    extra = "".join(f", {selector[k]}" for k in ("mode", "dtype") if selector.get(k))
    return f"{selector.get('implementation')} {selector.get('level')}" + (f" ({params}{extra})" if params or extra else "")
