"""Compile metadata of the Triton kernels a case launched: registers, spills, shared memory, warps.

The profiler trace says how a kernel was launched (grid, block, registers, shared memory); Triton
says why: ``n_regs``/``n_spills`` from ptxas, ``shared``, ``num_warps``, ``num_stages`` and, for
autotuned kernels, the chosen config. They live in each ``JITFunction``'s per-device cache of
``CompiledKernel`` s, which we read defensively because its layout changed between versions:
``device_caches[device]`` is ``(kernel_cache, target, backend, binder)`` up to Triton 3.4 and
``(kernel_cache, kernel_key_cache, target, backend, binder)`` in 3.6/3.9 -- the kernel cache is
the first item either way. ``n_regs``/``n_spills`` exist only once a kernel has been loaded on
the device (its first launch). Under ``TRITON_INTERPRET=1`` (the CPU test suite) nothing is
compiled, so there is no metadata; the result says so.

Kernels are found by scanning the loaded modules of the ``kernels`` package for Triton kernel
objects (``@triton.jit`` functions, possibly wrapped by ``@triton.autotune``/``@triton.heuristics``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _kernel_interface_type():
    try:
        from triton.runtime.jit import KernelInterface
    except ImportError:  # triton missing or too old
        return None
    return KernelInterface


def _base_function(kernel: Any) -> Any:
    """The Python function under any autotune/heuristics wrappers."""
    seen = 0
    while hasattr(kernel, "fn") and seen < 8:
        kernel = kernel.fn
        seen += 1
    return kernel


def _jit_function(kernel: Any) -> Any | None:
    """The wrapper layer that owns ``device_caches`` (the JITFunction), if any."""
    seen = 0
    while kernel is not None and seen < 8:
        if hasattr(kernel, "device_caches"):
            return kernel
        kernel = getattr(kernel, "fn", None)
        seen += 1
    return None


def find_triton_kernels(prefixes: Iterable[str] = ("kernels",)) -> dict[str, Any]:
    """Triton kernel objects defined in loaded modules under ``prefixes``, by function name."""
    interface = _kernel_interface_type()
    if interface is None:
        return {}
    found: dict[str, Any] = {}
    for module_name, module in list(sys.modules.items()):
        if module is None or not any(module_name == p or module_name.startswith(p + ".") for p in prefixes):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, interface):
                name = getattr(_base_function(value), "__name__", None)
                if name:
                    found.setdefault(name, value)
    return found


def _metadata_value(metadata: Any, key: str) -> Any:
    if isinstance(metadata, dict):
        return metadata.get(key)
    return getattr(metadata, key, None)


def compiled_variants(kernel: Any) -> list[dict]:
    """One dict per compiled specialization of ``kernel``, on every device it ran on."""
    jit = _jit_function(kernel)
    if jit is None:
        return []
    variants = []
    for device, caches in list(getattr(jit, "device_caches", {}).items()):
        cache = caches[0] if isinstance(caches, tuple) and caches and isinstance(caches[0], dict) else {}
        for compiled in list(cache.values()):
            metadata = getattr(compiled, "metadata", None)
            if metadata is None:  # a pending async compile, not a kernel yet
                continue
            variants.append({
                "name": getattr(compiled, "name", None) or _metadata_value(metadata, "name"),
                "device": device,
                "n_regs": getattr(compiled, "n_regs", None),
                "n_spills": getattr(compiled, "n_spills", None),
                "shared": _metadata_value(metadata, "shared"),
                "num_warps": _metadata_value(metadata, "num_warps"),
                "num_stages": _metadata_value(metadata, "num_stages"),
                "num_ctas": _metadata_value(metadata, "num_ctas"),
                "loaded": getattr(compiled, "n_regs", None) is not None,
            })
    return variants


def _config_record(config: Any) -> dict:
    return {"kwargs": dict(getattr(config, "kwargs", {}) or {}), "num_warps": getattr(config, "num_warps", None),
            "num_stages": getattr(config, "num_stages", None)}


def autotune_choices(kernel: Any) -> list[dict]:
    """Configs an autotuner picked (one per tuning key), most recent first."""
    seen, choices = 0, []
    while kernel is not None and seen < 8:
        if hasattr(kernel, "configs") and hasattr(kernel, "cache"):
            for key, config in list(getattr(kernel, "cache", {}).items()):
                choices.append({"key": [str(k) for k in key] if isinstance(key, tuple) else str(key), **_config_record(config)})
            best = getattr(kernel, "best_config", None)
            if best is not None and not choices:
                choices.append({"key": None, **_config_record(best)})
        kernel = getattr(kernel, "fn", None)
        seen += 1
    return choices


def triton_kernel_metadata(names: Iterable[str] | None = None, prefixes: Iterable[str] = ("kernels",)) -> dict:
    """Compile metadata of the Triton kernels named ``names`` (all found when None).

    Returns ``{"available": True, "kernels": {name: {"variants": [...], "autotune": [...]}}}``, or
    ``{"available": False, "reason": ...}`` under the interpreter or without Triton.
    """
    if interpreter_active():
        return {"available": False, "reason": "TRITON_INTERPRET=1: kernels run in the Triton interpreter, nothing is compiled"}
    if _kernel_interface_type() is None:
        return {"available": False, "reason": "triton is not importable"}
    kernels = find_triton_kernels(prefixes)
    wanted = set(names) if names is not None else set(kernels)
    out = {}
    for name in sorted(wanted & set(kernels)):
        variants = compiled_variants(kernels[name])
        if variants:
            out[name] = {"variants": variants, "autotune": autotune_choices(kernels[name])}
    return {"available": True, "kernels": out}


def match_launch(variants: list[dict], threads_per_block: int, shared_memory_bytes: int | None,
                 registers_per_thread: int | None, warp_size: int = 32) -> list[dict]:
    """The compiled variants consistent with a launch seen in the trace (block size, shared
    memory and registers agree wherever both sides know them)."""
    def agrees(v: dict) -> bool:
        if v.get("num_warps") is not None and v["num_warps"] * warp_size != threads_per_block:
            return False
        if shared_memory_bytes is not None and v.get("shared") is not None and v["shared"] != shared_memory_bytes:
            return False
        return not (registers_per_thread is not None and v.get("n_regs") is not None and v["n_regs"] != registers_per_thread)

    return [v for v in variants if agrees(v)]
