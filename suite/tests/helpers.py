"""Helpers shared by the tests: relative RMS errors that fail on NaN, NaN-poisoned allocations so
that an output element a kernel forgot to write cannot pass unnoticed, and the test-only
implementations of ``data/sample_impls.py``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

from suite.measure import compare


def relative_rms(out: torch.Tensor, ref: torch.Tensor) -> float:
    """RMS(out - ref) / RMS(ref) in float64; inf on NaN/inf. The 1e-9 floor only matters for
    gradients that are analytically zero (e.g. gates of a 1xW grid), where the reference holds
    rounding noise."""
    diff = (out.double() - ref.double()).pow(2).mean().sqrt()
    scale = ref.double().pow(2).mean().sqrt().clamp_min(1e-9)
    err = (diff / scale).item()
    return err if err == err and err != float("inf") else float("inf")


def assert_rel_rms(out: torch.Tensor, ref: torch.Tensor, tolerance: float, what: str) -> None:
    """The relative RMS error of :func:`suite.measure.compare` (NaN anywhere fails) within ``tolerance``."""
    err = compare(out, ref)["rel_rms"]
    assert err <= tolerance, f"{what}: relative RMS {err:.3g} > {tolerance:.0e}"


def poison_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fill freshly allocated float tensors (``torch.empty``, ``empty_like``, ``Tensor.new_empty``)
    with NaN for the rest of the test (fla's habit)."""
    real_empty, real_empty_like, real_new_empty = torch.empty, torch.empty_like, torch.Tensor.new_empty

    def poison(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(real_empty_like(*a, **k)))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: poison(real_new_empty(self, *a, **k)))


SAMPLE_IMPLS = Path(__file__).parent / "data" / "sample_impls.py"


def load_sample_impls(monkeypatch: pytest.MonkeyPatch | None = None) -> ModuleType:
    """A fresh import of ``data/sample_impls.py`` (the ``test-*`` implementations); with
    ``monkeypatch`` they are also put in the registry for the duration of one test."""
    spec = importlib.util.spec_from_file_location("cgspn_sample_impls", SAMPLE_IMPLS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if monkeypatch is not None:
        module.install(monkeypatch)
    return module
