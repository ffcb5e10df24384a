"""Triton's mode for this process, set in one place.

On the CPU, Triton kernels run in its interpreter, chosen by ``TRITON_INTERPRET=1``. Triton reads
the variable when a kernel is defined, so :func:`interpret_on_cpu` must run before any module that
defines a Triton kernel is imported; an explicit setting in the environment is never overridden.
"""

from __future__ import annotations

import os

# the environment of a child process that runs Triton kernels on the CPU
INTERPRETER_ENV = {"TRITON_INTERPRET": "1"}


def interpret_on_cpu(cpu: bool) -> None:
    """Select Triton's interpreter (unless the environment already chose) when ``cpu`` is true."""
    if cpu:
        for name, value in INTERPRETER_ENV.items():
            os.environ.setdefault(name, value)
