"""Run one case under ``torch.profiler`` and turn its trace into tables.

``profile_step`` is called by the runner (``--profile``) after the timed repetitions, never
inside them: the profiler's own overhead would pollute the samples. It runs the (already warm)
step ``warmup + reps`` times under a profiler schedule, exports a Chrome trace and reads it back
(``suite.profiling.events``) into the per-kernel table, the category roll-up and, on CUDA, the
occupancy table.

Trace files: ``<trace_dir>/<name>/<name>.<time_ns>.pt.trace.json[.gz]`` -- the naming of
``torch.profiler.tensorboard_trace_handler``, one folder per case, so
``tensorboard --logdir <trace_dir>`` (with the ``tb`` extra, ``torch-tb-profiler``) lists each
case as a run; the same file opens in https://ui.perfetto.dev and chrome://tracing.

On CUDA the tables come from the GPU kernels' device time. Without CUDA (or when the profiler
recorded no kernel) they come from the CPU ops' *self* time, with the same columns and
categories (an op name such as ``aten::addmm`` plays the kernel's part); there is no occupancy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

from suite.profiling.breakdown import category_totals, kernel_table, occupancy_table
from suite.profiling.categories import DEFAULT_MLP_HIDDEN
from suite.profiling.events import cpu_op_activities, device_activities, load_trace, profiler_steps, trace_device_properties
from suite.profiling.occupancy import DeviceLimits, OccupancyError, device_limits, limits_from_trace, limits_record
from suite.profiling.triton_meta import triton_kernel_metadata

TRACE_GLOB = "*.pt.trace.json*"


def safe_name(name: str) -> str:
    """A file-system and TensorBoard friendly run name."""
    cleaned = re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("_")
    if not cleaned:
        raise ValueError(f"name: {name!r} has no usable characters (allowed: letters, digits, _ . + -)")
    return cleaned


def profile_step(step: Callable[[], None], *, device: torch.device | str, trace_dir: str | Path, name: str,
                 reps: int = 2, warmup: int = 1, mlp_hidden: int | None = DEFAULT_MLP_HIDDEN, gzip: bool = False) -> dict:
    """Profile ``reps`` repetitions of ``step`` and return its breakdown.

    Args:
        step: zero-argument callable running one repetition (``suite.measure.make_step``); warm.
        device: where the step runs; ``cuda`` adds CUDA activities to the CPU ones.
        trace_dir: TensorBoard log dir; the trace goes to ``trace_dir/<name>/``.
        name: case name (sanitized for the file system).
        reps: profiled repetitions (times are reported per repetition).
        warmup: repetitions the profiler runs untraced first (its own start-up skew).
        mlp_hidden: MLP width used to tell MLP kernels apart (``suite.profiling.categories``).
        gzip: write ``.json.gz``.

    Returns ``{"trace", "source", "reps", "device_time_ms", "kernels", "categories",
    "occupancy", "limits", "triton", "notes"}`` (see :func:`analyze_trace`).
    """
    if reps < 1 or warmup < 0:
        raise ValueError(f"reps must be >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    run_name = safe_name(name)
    run_dir = Path(trace_dir) / run_name
    before = set(run_dir.glob(TRACE_GLOB))
    handler = tensorboard_trace_handler(str(run_dir), worker_name=run_name, use_gzip=gzip)
    with profile(activities=activities, record_shapes=True, on_trace_ready=handler,
                 schedule=schedule(wait=0, warmup=warmup, active=reps, repeat=1)) as prof:
        for _ in range(warmup + reps):
            step()
            if on_cuda:  # every kernel of the repetition lands inside its ProfilerStep window
                torch.cuda.synchronize(device)
            prof.step()
    written = sorted(set(run_dir.glob(TRACE_GLOB)) - before, key=lambda p: p.stat().st_mtime)
    if not written:
        raise RuntimeError(f"profile_step({name!r}): the profiler wrote no trace into {run_dir}")
    limits = _live_limits(device) if on_cuda else None
    return analyze_trace(written[-1], reps=reps, mlp_hidden=mlp_hidden, limits=limits, with_triton=on_cuda)


def _live_limits(device: torch.device) -> DeviceLimits | None:
    try:
        return device_limits(device)
    except OccupancyError:  # a GPU generation without published limits: no occupancy, still a breakdown
        return None


def analyze_trace(path: str | Path, *, reps: int | None = None, mlp_hidden: int | None = DEFAULT_MLP_HIDDEN,
                  limits: DeviceLimits | None = None, with_triton: bool = False) -> dict:
    """The breakdown of a stored trace (what :func:`profile_step` returns).

    ``reps`` defaults to the number of ``ProfilerStep#`` ranges; ``limits`` to the trace's own
    ``deviceProperties``. ``with_triton`` adds compile metadata of the Triton kernels loaded
    in this process (only meaningful right after the run that wrote the trace).
    """
    trace = load_trace(path)
    reps = reps or profiler_steps(trace) or 1
    notes: list[str] = []
    activities = device_activities(trace)
    source = "cuda-kernels"
    if not activities:
        activities = cpu_op_activities(trace)
        source = "cpu-ops"
        notes.append("no GPU activity in the trace: times are CPU op self times; occupancy needs CUDA kernels")
    table = kernel_table(activities, reps, mlp_hidden=mlp_hidden)
    result = {
        "trace": str(path),
        "source": source,
        "reps": reps,
        "device_time_ms": sum(r["total_ms"] for r in table),
        "kernels": table,
        "categories": category_totals(table),
        "occupancy": [],
        "limits": None,
        "triton": None,
        "notes": notes,
    }
    if source != "cuda-kernels":
        return result
    if with_triton:
        result["triton"] = triton_kernel_metadata({r["name"] for r in table})
    if limits is None:
        devices = {a.device for a in activities if a.device is not None}
        limits = _trace_limits(trace, notes, min(devices) if devices else 0)
    if limits is not None:
        result["limits"] = limits_record(limits)
        result["occupancy"] = occupancy_table(activities, limits, reps, mlp_hidden=mlp_hidden, triton=result["triton"])
    return result


def _trace_limits(trace: dict, notes: list[str], device_index: int) -> DeviceLimits | None:
    properties = trace_device_properties(trace)
    if not properties:
        notes.append("trace has no deviceProperties: occupancy not computed")
        return None
    chosen = next((p for p in properties if p.get("id") == device_index), properties[0])
    try:
        return limits_from_trace(chosen)
    except (OccupancyError, KeyError) as exc:
        notes.append(f"occupancy not computed: {exc}")
        return None
