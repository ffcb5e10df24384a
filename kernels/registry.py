"""The operator registry: the one place where every benchmarked implementation is declared.

An implementation registers itself at import time with :func:`register`; modules under
``kernels/`` are imported by :func:`discover`, so adding one touches no central list and no
runner code. Each entry says what it is (name, family, level, modes, dtypes), whether it can run
here (``available``), and how to build a runnable :class:`Workload` for one shape, dtype and
device. The runner, pytest benchmarks, profiler and gates all go through this module.

Example::

    @register("attention-math", family="attention", level="sublayer",
              params=("batch", "channels", "heads", "grid", "grid_h", "grid_w", "resolution", "patch"))
    def build_math(params, dtype, device, mode) -> Workload: ...
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from kernels.params import Params

FAMILIES = ("attention", "gspn", "cgspn", "vit")  # vit: parts shared by every block (e.g. the MLP half)
LEVELS = ("sublayer", "layer", "block", "network")
MODES = ("fwd", "fwd+bwd")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
GRID_PARAMS = ("grid", "grid_h", "grid_w", "resolution", "patch")

# Relative RMS error allowed against the reference, per dtype of the measured case (one block deep).
TOLERANCE = {"float64": 1e-9, "float32": 1e-4, "float16": 5e-3, "bfloat16": 2e-2}


def tolerance_for(dtype: str, level: str, depth: int = 1) -> float:
    """The allowed relative RMS error of a case against its higher-precision reference.

    A network stacks ``depth`` blocks, each adding its own independent rounding error to the
    residual stream, so the error of the whole grows like a random walk: ``sqrt(depth)`` times
    the one-block tolerance. Sublayers, layers and blocks get :data:`TOLERANCE` as it is.
    """
    scale = math.sqrt(depth) if level == "network" else 1.0
    return TOLERANCE[dtype] * scale


class RegistryError(KeyError):
    """Unknown implementation or level; the message lists what exists."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


@dataclass
class Workload:
    """A built case: inputs allocated, weights initialized, ready to time.

    ``fn`` runs the forward pass on the prepared inputs and returns the output tensor (or a
    tuple whose first element is the output). For ``fwd+bwd`` the measurement core calls ``fn``
    with grad enabled and back-propagates one fixed random upstream gradient into ``inputs`` and
    ``parameters`` (their ``.grad`` is set to None before each repetition).
    ``reference`` (optional) returns what ``fn`` should return, computed at higher precision
    from the same tensors; the harness compares the two with :data:`TOLERANCE`.
    """

    fn: Callable[[], Any]
    inputs: list[torch.Tensor] = field(default_factory=list)
    parameters: list[torch.Tensor] = field(default_factory=list)
    reference: Callable[[], torch.Tensor] | None = None
    flops: float | None = None  # forward FLOPs
    flops_bwd: float | None = None  # backward FLOPs (default: 2x forward)
    bytes_ideal: float | None = None  # forward bytes: each input read once, output written once
    bytes_ideal_bwd: float | None = None
    backend_detail: str = ""  # e.g. which FlashAttention actually ran
    tolerance: float | None = None  # override of TOLERANCE[dtype]
    module: torch.nn.Module | None = None  # the nn.Module under test, when there is one

    def flops_for(self, mode: str) -> float | None:
        if self.flops is None:
            return None
        if mode == "fwd":
            return self.flops
        return self.flops + (self.flops_bwd if self.flops_bwd is not None else 2 * self.flops)

    def bytes_for(self, mode: str) -> float | None:
        if mode == "fwd":
            return self.bytes_ideal
        if self.bytes_ideal is None or self.bytes_ideal_bwd is None:
            return None
        return self.bytes_ideal + self.bytes_ideal_bwd


Builder = Callable[[Params, torch.dtype, torch.device, str], Workload]


@dataclass(frozen=True)
class Implementation:
    """One registered implementation at one level."""

    name: str
    family: str
    level: str
    build: Builder
    params: tuple[str, ...]  # the Params fields this implementation reads
    modes: tuple[str, ...] = MODES
    dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16")
    devices: tuple[str, ...] = ("cuda", "cpu")
    description: str = ""
    # (params, dtype name, device type) -> None when runnable, else the reason it is not.
    requires: Callable[[Params, str, str], str | None] | None = None

    def unavailable(self, params: Params, dtype: str, device: str, mode: str) -> str | None:
        """Why this case cannot run here (recorded as ``unsupported``), or None."""
        if device not in self.devices:
            return f"{self.name}: runs on {'/'.join(self.devices)}, not {device}"
        if dtype not in self.dtypes:
            return f"{self.name}: dtype {dtype} not supported (supported: {', '.join(self.dtypes)})"
        if mode not in self.modes:
            return f"{self.name}: mode {mode} not supported (supported: {', '.join(self.modes)})"
        return self.requires(params, dtype, device) if self.requires else None


_REGISTRY: dict[tuple[str, str], Implementation] = {}


def register(
    name: str,
    *,
    family: str,
    level: str,
    params: tuple[str, ...],
    **options: Any,
) -> Callable[[Builder], Builder]:
    """Decorator: declare ``build(params, dtype, device, mode) -> Workload`` as ``name`` at ``level``."""
    if family not in FAMILIES:
        raise ValueError(f"register({name!r}): family {family!r} not in {FAMILIES}")
    if level not in LEVELS:
        raise ValueError(f"register({name!r}): level {level!r} not in {LEVELS}")
    unknown = set(params) - set(Params.names())
    if unknown:
        raise ValueError(f"register({name!r}): unknown params {sorted(unknown)}")

    def decorate(build: Builder) -> Builder:
        key = (name, level)
        if key in _REGISTRY and _REGISTRY[key].build.__qualname__ != build.__qualname__:
            raise ValueError(f"register: {name!r} at level {level!r} is registered twice")
        _REGISTRY[key] = Implementation(name=name, family=family, level=level, build=build, params=tuple(params), **options)
        return build

    return decorate


_DISCOVERED = False


def discover() -> None:
    """Import every module under ``kernels`` once so their ``@register`` calls run."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    import kernels

    for info in pkgutil.walk_packages(kernels.__path__, prefix="kernels."):
        importlib.import_module(info.name)
    _DISCOVERED = True


def implementations() -> list[Implementation]:
    discover()
    return sorted(_REGISTRY.values(), key=lambda i: (FAMILIES.index(i.family), i.name, LEVELS.index(i.level)))


def names() -> list[str]:
    return sorted({i.name for i in implementations()})


def get(name: str, level: str) -> Implementation:
    discover()
    try:
        return _REGISTRY[(name, level)]
    except KeyError:
        levels = sorted(lvl for (n, lvl) in _REGISTRY if n == name)
        if not levels:
            raise RegistryError(f"unknown implementation {name!r}; registered: {', '.join(names())}") from None
        raise RegistryError(f"{name!r} has no level {level!r}; it is registered at: {', '.join(levels)}") from None


def levels_of(name: str) -> list[str]:
    discover()
    return [lvl for lvl in LEVELS if (name, lvl) in _REGISTRY]
