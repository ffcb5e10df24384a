"""What one measurement is: a :class:`Case` (implementation x level x mode x dtype x params, from
a scenario) and its :class:`TimingSettings` (the scenario's ``timing:`` block).

Below :mod:`suite.measure` (which measures a Case) and :mod:`suite.scenario` (which expands a
scenario file into Cases); both re-export these names.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from kernels.params import Params
from kernels.registry import Implementation
from suite.results import case_id

L2_FLUSH_CHOICES = ("auto", True, False)


class TimingError(ValueError):
    """Timing settings that cannot be used; the message names the field."""


@dataclass(frozen=True)
class TimingSettings:
    """How long and how to time one case (the scenario's ``timing:`` block)."""

    budget_ms: float = 300.0  # total time of the timed repetitions
    warmup_ms: float = 50.0  # time of the untimed warm-up calls after the first call
    min_reps: int = 5
    max_reps: int = 500
    l2_flush: bool | str = "auto"  # "auto": flush when the workload's ideal bytes fit in ~2x L2
    cuda_graph: bool = True  # on CUDA also time replays of a captured CUDA graph (device time)

    def __post_init__(self) -> None:
        self.check()

    def check(self, where: str = "timing") -> None:
        for name in ("budget_ms", "warmup_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
                raise TimingError(f"{where}.{name}: expected a number >= 0, got {value!r}")
        for name in ("min_reps", "max_reps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TimingError(f"{where}.{name}: expected an integer >= 1, got {value!r}")
        if self.max_reps < self.min_reps:
            raise TimingError(f"{where}.max_reps: {self.max_reps} is below min_reps={self.min_reps}")
        if self.l2_flush not in L2_FLUSH_CHOICES or not isinstance(self.l2_flush, (bool, str)):
            raise TimingError(f"{where}.l2_flush: expected one of auto, true, false; got {self.l2_flush!r}")
        if not isinstance(self.cuda_graph, bool):
            raise TimingError(f"{where}.cuda_graph: expected true or false, got {self.cuda_graph!r}")

    @classmethod
    def from_dict(cls, values: dict, where: str = "timing") -> TimingSettings:
        allowed = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in allowed:
                raise TimingError(f"{where}.{key}: unknown timing setting; allowed: {', '.join(allowed)}")
        try:
            return cls(**values)
        except TimingError as exc:  # re-anchor "timing.<field>" at the caller's location
            raise TimingError(f"{where}{str(exc)[len('timing'):]}") from None

    def scaled(self, factor: float) -> TimingSettings:
        """Budget and warm-up times multiplied by ``factor`` (``--budget-scale``); counts unchanged."""
        if not factor > 0:
            raise TimingError(f"budget scale: expected a number > 0, got {factor!r}")
        return dataclasses.replace(self, budget_ms=self.budget_ms * factor, warmup_ms=self.warmup_ms * factor)


@dataclass(frozen=True)
class Case:
    """One measurable point: implementation x level x mode x dtype x params."""

    implementation: Implementation
    params: Params  # only the fields the implementation declares are set; the rest are defaults
    mode: str
    dtype: str
    scenario: str
    timing: TimingSettings
    check: bool = True
    profile: bool = False
    nvml: bool = True

    @property
    def values(self) -> dict[str, int]:
        return self.params.subset(self.implementation.params)

    @property
    def id(self) -> str:
        return case_id(self.implementation.name, self.implementation.level, self.mode, self.dtype, self.values)

    @property
    def label(self) -> str:
        """Readable id, e.g. ``attention-math/sublayer/fwd/bfloat16/batch=2,grid=5``."""
        shape = ",".join(f"{k}={v}" for k, v in sorted(self.values.items()))
        return f"{self.implementation.name}/{self.implementation.level}/{self.mode}/{self.dtype}/{shape}"
