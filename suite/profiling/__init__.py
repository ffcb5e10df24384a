"""Profiling depth: where a case's time goes and how full the GPU is.

- :func:`profile_step` -- torch.profiler trace of a warm step, per-kernel table, category roll-up
  and occupancy (``trace``, ``breakdown``, ``categories``, ``occupancy``, ``triton_meta``);
- :func:`ncu_case` -- an optional Nsight Compute pass on one registered case, in a subprocess (``ncu``).
"""

from suite.profiling.categories import CATEGORIES, categorize
from suite.profiling.ncu import ncu_case
from suite.profiling.occupancy import DeviceLimits, device_limits, limits_for, theoretical_occupancy
from suite.profiling.trace import analyze_trace, profile_step
from suite.profiling.triton_meta import triton_kernel_metadata

__all__ = [
    "CATEGORIES",
    "DeviceLimits",
    "analyze_trace",
    "categorize",
    "device_limits",
    "limits_for",
    "ncu_case",
    "profile_step",
    "theoretical_occupancy",
    "triton_kernel_metadata",
]
