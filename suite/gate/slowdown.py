"""A deliberate-slowdown switch, for testing that the gate catches a slower kernel.

``CGSPN_BENCH_TEST_SLOWDOWN="cgspn-scan=2"`` makes every ``cgspn-scan`` case run its forward
pass twice per step; ``"cgspn=3@block,attention-math=2"`` slows the ``cgspn`` block (only that
level) three times and ``attention-math`` at every level twice. It is real extra work on the
device (the same kernels, launched again), not a sleep or a doctored number, so the gate sees
exactly what a slower kernel would look like.

The extra forward passes run under ``torch.no_grad`` and their results are dropped: the
workload's output, its reference check and its backward are unchanged, so a ``fwd`` case gets
``K`` times slower and a ``fwd+bwd`` case pays ``K - 1`` extra forwards. Without the variable
nothing changes; when it applies, the workload's ``backend_detail`` says so (and so the row).
"""

from __future__ import annotations

import os

import torch

from kernels.registry import Workload

ENV_VAR = "CGSPN_BENCH_TEST_SLOWDOWN"
MARKER = "test-slowdown"  # written into backend_detail; baselines refuse rows that carry it


class SlowdownError(ValueError):
    """A malformed CGSPN_BENCH_TEST_SLOWDOWN value."""


def parse_slowdown(text: str) -> dict[tuple[str, str | None], int]:
    """``"name=K[@level],..."`` -> {(name, level or None): K}; K is an integer >= 1 (forward passes per step)."""
    spec: dict[tuple[str, str | None], int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, factor = item.partition("=")
        factor, _, level = factor.partition("@")
        if not sep or not name.strip():
            raise SlowdownError(f"{ENV_VAR}: expected 'implementation=K[@level]' items separated by commas, got {item!r}")
        try:
            k = int(factor)
        except ValueError:
            raise SlowdownError(f"{ENV_VAR}: {item!r}: K must be an integer >= 1 (forward passes per step)") from None
        if k < 1:
            raise SlowdownError(f"{ENV_VAR}: {item!r}: K must be >= 1, got {k}")
        spec[(name.strip(), level.strip() or None)] = k
    return spec


def slowdown_factor(implementation_name: str, level: str | None = None, environ=os.environ) -> int:
    """Forward passes per step requested for this implementation (1 = untouched)."""
    text = environ.get(ENV_VAR, "")
    if not text.strip():
        return 1
    spec = parse_slowdown(text)
    if level is not None and (implementation_name, level) in spec:
        return spec[(implementation_name, level)]
    return spec.get((implementation_name, None), 1)


def apply_test_slowdown(implementation_name: str, workload: Workload, level: str | None = None) -> Workload:
    """Return ``workload`` with its forward repeated K times per call when the variable asks for it.

    The measurement core calls this on every built workload; with ``CGSPN_BENCH_TEST_SLOWDOWN``
    unset (the normal case) it returns the workload untouched.
    """
    k = slowdown_factor(implementation_name, level)
    if k == 1:
        return workload
    fn = workload.fn

    def slowed():
        with torch.no_grad():
            for _ in range(k - 1):
                fn()  # real extra work; the result is dropped
        return fn()

    workload.fn = slowed
    note = f"{MARKER}: forward x{k} ({ENV_VAR})"
    workload.backend_detail = f"{workload.backend_detail}; {note}" if workload.backend_detail else note
    return workload


def was_slowed(backend_detail: str | None, message: str | None = None) -> bool:
    """Whether a row was measured with the test slowdown applied."""
    return MARKER in (backend_detail or "") or MARKER in (message or "")
