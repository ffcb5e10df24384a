"""Test-only implementations (names start with ``test-``) for the runner, resume and sharding tests.

They are real workloads with known behaviour: a step that sleeps a known time, a workload that
raises CUDA out-of-memory, one that raises an error, one that is unavailable, outputs off their
reference, and a small linear layer with gradients. They never enter the shipped registry:

* in-process tests install them with ``monkeypatch.setitem(registry._REGISTRY, ...)`` via
  :func:`install`, undone after each test;
* subprocesses load this file with ``cgspn-bench run --import suite/tests/data/sample_impls.py``,
  which imports it as ``cgspn_plugin_sample_impls``; only then does it register itself.

``test-crash`` kills its own process (SIGKILL, as a crashed rank) while the file named by
``CGSPN_TEST_CRASH_FILE`` exists, deleting the file first so a resumed run goes through.
"""

from __future__ import annotations

import os
import signal
import time

import torch

from kernels.registry import Implementation, Workload

SHAPE = ("batch", "grid")


def _tensor(params, dtype, device) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(params.batch * 1000 + params.grid)
    return torch.randn(params.batch, params.grid, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


def build_sleep(params, dtype, device, mode) -> Workload:
    """Sleeps ``grid`` milliseconds per call, then doubles x (reference: 2x exactly)."""
    x = _tensor(params, dtype, device)

    def fn() -> torch.Tensor:
        time.sleep(params.grid * 1e-3)
        return x * 2

    return Workload(fn=fn, reference=lambda: x.double() * 2, flops=float(x.numel()),
                    bytes_ideal=2.0 * x.numel() * x.element_size())


def build_oom(params, dtype, device, mode) -> Workload:
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1024.00 GiB (test-oom)")


def build_error(params, dtype, device, mode) -> Workload:
    x = _tensor(params, dtype, device)

    def fn() -> torch.Tensor:
        raise ValueError(f"test-error: deliberate failure on {tuple(x.shape)}")

    return Workload(fn=fn)


def build_not_implemented(params, dtype, device, mode) -> Workload:
    raise NotImplementedError("test-not-implemented: this shape is not supported")


def build_wrong(params, dtype, device, mode) -> Workload:
    """Output 10% off its reference: must be reported failed-check, never timed."""
    x = _tensor(params, dtype, device)
    return Workload(fn=lambda: x * 1.1, reference=lambda: x.double())


def build_nan(params, dtype, device, mode) -> Workload:
    x = _tensor(params, dtype, device)
    return Workload(fn=lambda: x * float("nan"), reference=lambda: x.double())


def build_linear(params, dtype, device, mode) -> Workload:
    """A ``Linear(grid, grid)`` on ``(batch, grid)``; gradients for fwd+bwd."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(params.grid, params.grid).to(device=device, dtype=dtype)
    x = _tensor(params, dtype, device).requires_grad_(mode == "fwd+bwd")
    layer.requires_grad_(mode == "fwd+bwd")
    ref = torch.nn.Linear(params.grid, params.grid).to(device=device, dtype=torch.float64)
    ref.load_state_dict(layer.state_dict())
    return Workload(fn=lambda: layer(x), inputs=[x] if x.requires_grad else [], parameters=list(layer.parameters()),
                    reference=lambda: ref(x.detach().double()), flops=2.0 * x.numel() * params.grid, module=layer)


def build_crash(params, dtype, device, mode) -> Workload:
    marker = os.environ.get("CGSPN_TEST_CRASH_FILE")
    if marker and os.path.exists(marker):
        os.remove(marker)
        os.kill(os.getpid(), signal.SIGKILL)
    return build_sleep(params, dtype, device, mode)


def _impl(name: str, build, **options) -> Implementation:
    return Implementation(name=name, family="vit", level="sublayer", build=build, params=SHAPE,
                          dtypes=("float32", "float64"), description=f"test-only: {build.__doc__ or name}", **options)


IMPLEMENTATIONS = [
    _impl("test-sleep", build_sleep),
    _impl("test-oom", build_oom),
    _impl("test-error", build_error),
    _impl("test-not-implemented", build_not_implemented),
    _impl("test-unavailable", build_sleep, requires=lambda params, dtype, device: "test-unavailable: needs absent hardware"),
    _impl("test-wrong", build_wrong),
    _impl("test-nan", build_nan),
    _impl("test-linear", build_linear),
    _impl("test-crash", build_crash),
]


def install(monkeypatch) -> None:
    """Add the test implementations to the registry for one test (undone by monkeypatch)."""
    from kernels import registry

    registry.discover()
    for impl in IMPLEMENTATIONS:
        monkeypatch.setitem(registry._REGISTRY, (impl.name, impl.level), impl)


if __name__.startswith("cgspn_plugin_"):  # loaded by --import in a subprocess: register for real
    from kernels import registry

    registry.discover()
    for _impl_entry in IMPLEMENTATIONS:
        registry._REGISTRY[(_impl_entry.name, _impl_entry.level)] = _impl_entry
