"""Read a PyTorch-profiler (Kineto) Chrome trace into kernels with their launch context.

The exported trace is the one source for every table: it holds the GPU kernels (``cat:
"kernel"``, with ``grid``, ``block``, ``registers per thread``, ``shared memory`` and ``est.
achieved occupancy %`` in their args), memcpy/memset activities, the CUDA runtime/driver calls
that launched them (same ``correlation`` id) and the CPU ops and ``record_function`` ranges
(``cpu_op`` / ``user_annotation``, with ``Input Dims`` when ``record_shapes=True``). Parsing the
file rather than the in-memory profiler keeps one code path for a live run and a stored trace.

A kernel's context is the CPU op (or ``record_function`` range) whose ``External id`` the kernel
carries -- Kineto links a launch to the innermost op open at launch time -- followed by that op's
ancestors; when the id is missing or unknown, it is the stack of CPU ranges open on the
launching thread when the kernel's runtime/driver call (same ``correlation``) ran.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suite.profiling.categories import KernelContext, OpFrame

CPU_RANGE_CATEGORIES = ("cpu_op", "user_annotation")  # python_function (with_stack) is left out: file names mislead rules
LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")
DEVICE_CATEGORIES = {"kernel": "kernel", "gpu_memcpy": "memcpy", "gpu_memset": "memset"}


@dataclass(frozen=True)
class LaunchConfig:
    """A kernel launch as the trace records it (CUPTI's kernel record)."""

    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    registers_per_thread: int | None
    shared_memory_bytes: int | None  # static + dynamic, per block
    est_achieved_occupancy_pct: float | None  # CUPTI's estimate, when present
    cupti_occupancy: dict | None = None  # newer Kineto: CUPTI's own calculator (activeBlocksPerMultiprocessor...)

    @property
    def grid_blocks(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def threads_per_block(self) -> int:
        return self.block[0] * self.block[1] * self.block[2]


@dataclass(frozen=True)
class Activity:
    """One timed item of a case: a GPU kernel/memcpy/memset, or (CPU profiles) one CPU op's self time."""

    name: str
    kind: str  # kernel | memcpy | memset | cpu_op
    dur_us: float
    context: KernelContext
    launch: LaunchConfig | None = None
    device: int | None = None


def load_trace(path: str | Path) -> dict:
    """The trace JSON (``.json`` or ``.json.gz``) as a dict."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def trace_device_properties(trace: dict) -> list[dict]:
    """Kineto's ``deviceProperties`` (numSms, regsPerMultiprocessor, sharedMemPerMultiprocessor...)."""
    return list(trace.get("deviceProperties") or [])


def _frame(event: dict) -> OpFrame:
    dims = event.get("args", {}).get("Input Dims") or ()
    operands: list[tuple] = []
    for d in dims:
        if isinstance(d, list) and d and all(isinstance(x, list) for x in d):
            operands.extend(tuple(x) for x in d)  # a TensorList input: one operand per tensor
        elif isinstance(d, list):
            operands.append(tuple(d))
    return OpFrame(name=event.get("name", ""), input_dims=tuple(operands))


def _complete_events(trace: dict) -> list[dict]:
    return [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]


@dataclass
class _OpNode:
    event: dict
    context: tuple[OpFrame, ...]  # this op, then its ancestors
    children_us: float = 0.0


def _walk_cpu_threads(events: list[dict]) -> tuple[list[_OpNode], dict[int, tuple[OpFrame, ...]]]:
    """Nest CPU ranges per thread; return every range and the open stack at each launch call.

    Returns (nodes, launch_context) where ``launch_context[correlation]`` is the context of the
    runtime/driver call with that correlation id.
    """
    by_thread: dict[tuple, list[dict]] = defaultdict(list)
    for e in events:
        if e.get("cat") in CPU_RANGE_CATEGORIES or e.get("cat") in LAUNCH_CATEGORIES:
            by_thread[(e.get("pid"), e.get("tid"))].append(e)
    nodes: list[_OpNode] = []
    launch_context: dict[int, tuple[OpFrame, ...]] = {}
    for thread_events in by_thread.values():
        # Parents first: earlier start, then longer duration; launches are leaves.
        thread_events.sort(key=lambda e: (e["ts"], -e["dur"], e.get("cat") in LAUNCH_CATEGORIES))
        stack: list[_OpNode] = []
        for e in thread_events:
            while stack and stack[-1].event["ts"] + stack[-1].event["dur"] <= e["ts"]:
                stack.pop()
            if e.get("cat") in LAUNCH_CATEGORIES:
                correlation = e.get("args", {}).get("correlation")
                if correlation is not None:
                    launch_context[correlation] = stack[-1].context if stack else ()
                continue
            if stack:
                stack[-1].children_us += e["dur"]
            node = _OpNode(event=e, context=(_frame(e),) + (stack[-1].context if stack else ()))
            nodes.append(node)
            stack.append(node)
    return nodes, launch_context


def _launch_config(args: dict) -> LaunchConfig | None:
    grid, block = args.get("grid"), args.get("block")
    if not grid or not block:
        return None
    occupancy = args.get("est. achieved occupancy %")
    if occupancy is None and args.get("est. achieved occupancy") is not None:  # older torch: a 0..1 fraction
        occupancy = 100.0 * float(args["est. achieved occupancy"])
    cupti = args.get("occupancy")
    return LaunchConfig(
        grid=tuple(int(x) for x in grid),
        block=tuple(int(x) for x in block),
        registers_per_thread=_int_or_none(args.get("registers per thread")),
        shared_memory_bytes=_int_or_none(args.get("shared memory")),
        est_achieved_occupancy_pct=float(occupancy) if occupancy is not None else None,
        cupti_occupancy=cupti if isinstance(cupti, dict) else None,
    )


def _external_id(event: dict) -> int | None:
    args = event.get("args", {})
    value = args.get("External id", args.get("external id"))  # spelled both ways across Kineto versions
    return value if value else None  # 0: not linked


def _int_or_none(value: Any) -> int | None:
    return int(value) if value is not None else None


def device_activities(trace: dict) -> list[Activity]:
    """Every GPU kernel, memcpy and memset of the trace, each with its launch context."""
    events = _complete_events(trace)
    nodes, launch_context = _walk_cpu_threads(events)
    by_external_id = {_external_id(n.event): n.context for n in nodes if _external_id(n.event) is not None}
    out = []
    for e in events:
        kind = DEVICE_CATEGORIES.get(e.get("cat"))
        if kind is None:
            continue
        args = e.get("args", {})
        frames = by_external_id.get(_external_id(e))
        if frames is None:
            frames = launch_context.get(args.get("correlation"), ())
        out.append(Activity(name=e.get("name", ""), kind=kind, dur_us=float(e["dur"]), context=KernelContext(frames),
                            launch=_launch_config(args) if kind == "kernel" else None, device=args.get("device")))
    return out


def cpu_op_activities(trace: dict) -> list[Activity]:
    """Each CPU op's *self* time (its duration minus the ranges nested in it), with its context.

    Self times of all ops add up to the time spent inside ops without double counting; Python
    time between ops (the ``ProfilerStep#`` ranges' own time) is not an op and is left out.
    """
    nodes, _ = _walk_cpu_threads(_complete_events(trace))
    return [Activity(name=n.event.get("name", ""), kind="cpu_op", dur_us=max(n.event["dur"] - n.children_us, 0.0),
                     context=KernelContext(n.context))
            for n in nodes if n.event.get("cat") == "cpu_op"]


def profiler_steps(trace: dict) -> int:
    """Number of ``ProfilerStep#N`` ranges (the active repetitions) in the trace."""
    return sum(1 for e in _complete_events(trace)
               if e.get("cat") == "user_annotation" and e.get("name", "").startswith("ProfilerStep#"))
