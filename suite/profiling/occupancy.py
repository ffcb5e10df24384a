"""Theoretical occupancy and waves of a kernel launch, from the device's published limits.

How many blocks of a kernel fit on one SM at once is the minimum of four limits (the CUDA
Occupancy Calculator's model):

- **warps**: ``max_warps_per_sm // warps_per_block``;
- **registers**: registers are allocated per warp in units of 256
  (``ceil(regs_per_thread * 32 / 256) * 256`` per warp); the warps the register file can hold,
  ``max_regs_per_block // regs_per_warp``, are rounded down to the warp allocation granularity (4:
  the register file is split over the SM's four sub-partitions), then divided by warps per block;
- **shared memory**: each block takes its shared memory plus 1 KB the CUDA runtime reserves per
  block (sm_80 and later), rounded up to 128 bytes; ``smem_per_sm // that``. The SM's
  shared-memory carveout is assumed at its maximum (228 KB on H100), which is what the driver
  picks for a kernel that needs it;
- **blocks**: ``max_blocks_per_sm`` (32 on sm_80/sm_90, 16 on sm_86, 24 on sm_89).

Theoretical occupancy = resident warps / max warps per SM. ``waves = grid_blocks / (SMs x
resident blocks per SM)``: a launch of 1.01 waves runs two rounds, the second nearly empty; a
launch far below one wave leaves SMs idle -- the "concurrency wall" of many small launches.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

KB = 1024


@dataclass(frozen=True)
class DeviceLimits:
    """Per-SM resource limits of one GPU (CUDA Programming Guide, "Compute Capabilities" table)."""

    name: str
    compute_capability: tuple[int, int]
    sm_count: int
    max_warps_per_sm: int
    max_blocks_per_sm: int
    smem_per_sm: int  # bytes blocks can use at the largest carveout
    max_smem_per_block: int  # bytes, with the opt-in attribute
    regs_per_sm: int = 65536
    max_regs_per_block: int = 65536
    max_regs_per_thread: int = 255
    max_threads_per_block: int = 1024
    warp_size: int = 32
    reg_alloc_unit: int = 256  # registers per warp are allocated in these units
    warp_alloc_granularity: int = 4
    smem_alloc_unit: int = 128
    reserved_smem_per_block: int = 1 * KB  # CUDA runtime reservation, sm_80+
    source: str = "published table"


# Published limits per compute capability; sm_count is the named product's (the live device's
# count replaces it when known: H100 PCIe has 114 SMs, SXM and H200 132).
PUBLISHED_LIMITS: dict[tuple[int, int], DeviceLimits] = {
    (8, 0): DeviceLimits("A100 SXM (sm_80)", (8, 0), sm_count=108, max_warps_per_sm=64, max_blocks_per_sm=32,
                         smem_per_sm=164 * KB, max_smem_per_block=163 * KB),
    (8, 6): DeviceLimits("A40 (sm_86)", (8, 6), sm_count=84, max_warps_per_sm=48, max_blocks_per_sm=16,
                         smem_per_sm=100 * KB, max_smem_per_block=99 * KB),
    (8, 9): DeviceLimits("L40S (sm_89)", (8, 9), sm_count=142, max_warps_per_sm=48, max_blocks_per_sm=24,
                         smem_per_sm=100 * KB, max_smem_per_block=99 * KB),
    (9, 0): DeviceLimits("H100 SXM (sm_90)", (9, 0), sm_count=132, max_warps_per_sm=64, max_blocks_per_sm=32,
                         smem_per_sm=228 * KB, max_smem_per_block=227 * KB),
}
H100_SXM = PUBLISHED_LIMITS[(9, 0)]


class OccupancyError(ValueError):
    """A launch configuration the device cannot describe; the message names the field."""


def limits_for(compute_capability: tuple[int, int], *, sm_count: int | None = None, name: str | None = None) -> DeviceLimits:
    """Published limits of ``compute_capability``, with the live SM count and name when given."""
    cc = tuple(compute_capability)
    if cc not in PUBLISHED_LIMITS:
        known = ", ".join(f"sm_{a}{b}" for a, b in PUBLISHED_LIMITS)
        raise OccupancyError(f"compute_capability: no published limits for sm_{cc[0]}{cc[1]}; known: {known}")
    base = PUBLISHED_LIMITS[cc]
    return replace(base, sm_count=sm_count or base.sm_count, name=name or base.name)


def device_limits(device=None) -> DeviceLimits:
    """Limits of a live CUDA device: SM count, registers and shared memory from
    ``torch.cuda.get_device_properties``; warps/blocks per SM from the published table."""
    import torch

    props = torch.cuda.get_device_properties(device if device is not None else torch.cuda.current_device())
    base = limits_for((props.major, props.minor), sm_count=props.multi_processor_count, name=props.name)
    return replace(
        base,
        regs_per_sm=getattr(props, "regs_per_multiprocessor", None) or base.regs_per_sm,
        smem_per_sm=getattr(props, "shared_memory_per_multiprocessor", None) or base.smem_per_sm,
        max_smem_per_block=getattr(props, "shared_memory_per_block_optin", None) or base.max_smem_per_block,
        max_warps_per_sm=(getattr(props, "max_threads_per_multi_processor", 0) // base.warp_size) or base.max_warps_per_sm,
        source="torch.cuda.get_device_properties + published table",
    )


def limits_from_trace(properties: dict) -> DeviceLimits:
    """Limits from one entry of a Kineto trace's ``deviceProperties`` (so a stored trace can be
    analysed on another machine)."""
    cc = (int(properties["computeMajor"]), int(properties["computeMinor"]))
    base = limits_for(cc, sm_count=properties.get("numSms"), name=properties.get("name"))
    threads = properties.get("maxThreadsPerMultiprocessor")
    return replace(
        base,
        regs_per_sm=properties.get("regsPerMultiprocessor") or base.regs_per_sm,
        smem_per_sm=properties.get("sharedMemPerMultiprocessor") or base.smem_per_sm,
        max_smem_per_block=properties.get("sharedMemPerBlockOptin") or base.max_smem_per_block,
        max_warps_per_sm=(threads // base.warp_size) if threads else base.max_warps_per_sm,
        source="trace deviceProperties + published table",
    )


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def theoretical_occupancy(regs_per_thread: int | None, threads_per_block: int, smem_per_block: int,
                          limits: DeviceLimits = H100_SXM) -> dict:
    """Resident blocks per SM, active warps, occupancy and the limiting resource of one launch.

    ``regs_per_thread`` None (unknown) removes the register limit. Returns ``resident_blocks_per_sm``
    (0 when a block cannot fit at all: it would fail to launch), ``active_warps_per_sm``,
    ``occupancy`` (0..1), ``limiter`` (the resources giving the minimum, joined by "+" on a tie)
    and ``blocks_by`` (the four limits).
    """
    if not 1 <= threads_per_block <= limits.max_threads_per_block:
        raise OccupancyError(f"threads_per_block: {threads_per_block} outside 1..{limits.max_threads_per_block}")
    if regs_per_thread is not None and not 0 <= regs_per_thread <= limits.max_regs_per_thread:
        raise OccupancyError(f"regs_per_thread: {regs_per_thread} outside 0..{limits.max_regs_per_thread}")
    if not 0 <= smem_per_block <= limits.max_smem_per_block:
        raise OccupancyError(f"smem_per_block: {smem_per_block} bytes outside 0..{limits.max_smem_per_block}")
    warps_per_block = -(-threads_per_block // limits.warp_size)
    blocks_by = {"warps": limits.max_warps_per_sm // warps_per_block}
    regs_per_warp = None
    if regs_per_thread:
        regs_per_warp = _round_up(regs_per_thread * limits.warp_size, limits.reg_alloc_unit)
        warps_by_regs = limits.max_regs_per_block // regs_per_warp
        warps_by_regs -= warps_by_regs % limits.warp_alloc_granularity
        blocks_by["registers"] = (warps_by_regs // warps_per_block) * (limits.regs_per_sm // limits.max_regs_per_block)
    smem_allocated = _round_up(smem_per_block + limits.reserved_smem_per_block, limits.smem_alloc_unit)
    blocks_by["shared_memory"] = limits.smem_per_sm // smem_allocated
    blocks_by["blocks"] = limits.max_blocks_per_sm
    resident = min(blocks_by.values())
    active_warps = resident * warps_per_block
    return {
        "resident_blocks_per_sm": resident,
        "active_warps_per_sm": active_warps,
        "occupancy": active_warps / limits.max_warps_per_sm,
        "limiter": "+".join(k for k, v in blocks_by.items() if v == resident),
        "blocks_by": blocks_by,
        "warps_per_block": warps_per_block,
        "regs_per_warp_allocated": regs_per_warp,
        "smem_per_block_allocated": smem_allocated,
    }


def waves(grid_blocks: int, resident_blocks_per_sm: int, sm_count: int) -> float | None:
    """How many rounds of the whole GPU a launch needs: ``grid_blocks / (SMs x resident blocks)``."""
    if resident_blocks_per_sm <= 0:
        return None
    return grid_blocks / (sm_count * resident_blocks_per_sm)


def launch_occupancy(grid: tuple[int, int, int], block: tuple[int, int, int], regs_per_thread: int | None,
                     smem_per_block: int | None, limits: DeviceLimits) -> dict:
    """Theoretical occupancy, resident capacity and waves of one launch (grid/block as 3-tuples)."""
    grid_blocks = math.prod(grid)
    threads = math.prod(block)
    occ = theoretical_occupancy(regs_per_thread, threads, smem_per_block or 0, limits)
    capacity = occ["resident_blocks_per_sm"] * limits.sm_count
    return {
        "grid": list(grid),
        "block": list(block),
        "grid_blocks": grid_blocks,
        "threads_per_block": threads,
        "registers_per_thread": regs_per_thread,
        "shared_memory_bytes": smem_per_block,
        "theoretical_occupancy": occ["occupancy"],
        "resident_blocks_per_sm": occ["resident_blocks_per_sm"],
        "resident_capacity_blocks": capacity,  # blocks the whole GPU holds at once
        "waves": waves(grid_blocks, occ["resident_blocks_per_sm"], limits.sm_count),
        "limiter": occ["limiter"],
    }


def limits_record(limits: DeviceLimits) -> dict:
    """The limits as a JSON-ready dict, stored next to an occupancy table."""
    record = asdict(limits)
    record["compute_capability"] = f"{limits.compute_capability[0]}.{limits.compute_capability[1]}"
    return record
