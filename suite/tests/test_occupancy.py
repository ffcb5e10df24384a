"""The occupancy calculator against cases computed by hand from the published limits.

H100 SXM (sm_90): 132 SMs, 64 warps/SM, 32 blocks/SM, 65536 registers/SM allocated per warp in
units of 256 with a warp granularity of 4, 228 KB shared memory/SM (227 KB per block), 1 KB
reserved per block.
"""

from __future__ import annotations

import pytest

from suite.profiling.occupancy import (
    H100_SXM,
    OccupancyError,
    launch_occupancy,
    limits_for,
    limits_from_trace,
    theoretical_occupancy,
    waves,
)

KB = 1024


def test_register_limited_255_regs_128_threads():
    # 255 regs x 32 threads = 8160 -> rounded up to 256: 8192 regs per warp.
    # 65536 / 8192 = 8 warps fit the register file (8 is a multiple of 4).
    # 128 threads = 4 warps per block -> 8 / 4 = 2 blocks; warps alone would allow 64 / 4 = 16.
    occ = theoretical_occupancy(255, 128, 0, H100_SXM)
    assert occ["blocks_by"]["registers"] == 2
    assert occ["blocks_by"]["warps"] == 16
    assert occ["resident_blocks_per_sm"] == 2
    assert occ["active_warps_per_sm"] == 8
    assert occ["occupancy"] == pytest.approx(8 / 64)
    assert occ["limiter"] == "registers"
    assert occ["regs_per_warp_allocated"] == 8192


def test_shared_memory_limited_48kb():
    # 48 KB + 1 KB reserved = 50176 bytes per block; 233472 / 50176 = 4.65 -> 4 blocks.
    # 32 regs x 32 = 1024 per warp -> 64 warps -> 8 blocks of 8 warps; warps: 64 / 8 = 8.
    occ = theoretical_occupancy(32, 256, 48 * KB, H100_SXM)
    assert occ["blocks_by"] == {"warps": 8, "registers": 8, "shared_memory": 4, "blocks": 32}
    assert occ["resident_blocks_per_sm"] == 4
    assert occ["occupancy"] == pytest.approx(32 / 64)
    assert occ["limiter"] == "shared_memory"
    assert occ["smem_per_block_allocated"] == 50176


def test_1024_thread_blocks():
    # 32 warps per block: warps allow 64 / 32 = 2 blocks; 32 regs -> 64 warps -> 2 blocks: full.
    full = theoretical_occupancy(32, 1024, 0, H100_SXM)
    assert full["resident_blocks_per_sm"] == 2
    assert full["occupancy"] == pytest.approx(1.0)
    assert full["limiter"] == "warps+registers"
    # 64 regs -> 2048 per warp -> 32 warps -> 1 block of 32 warps: half.
    half = theoretical_occupancy(64, 1024, 0, H100_SXM)
    assert half["resident_blocks_per_sm"] == 1
    assert half["occupancy"] == pytest.approx(0.5)
    assert half["limiter"] == "registers"
    # 255 regs x 1024 threads needs 8192 x 32 = 262144 registers > 65536: cannot launch.
    assert theoretical_occupancy(255, 1024, 0, H100_SXM)["resident_blocks_per_sm"] == 0


def test_tiny_blocks_limited_by_32_blocks_per_sm():
    # 1 warp per block, 16 regs -> 512 per warp -> 128 warps -> 128 blocks; warps 64; smem
    # 233472 / 1024 = 228; the 32-blocks-per-SM limit wins: 32 warps = 50 %.
    occ = theoretical_occupancy(16, 32, 0, H100_SXM)
    assert occ["blocks_by"] == {"warps": 64, "registers": 128, "shared_memory": 228, "blocks": 32}
    assert occ["resident_blocks_per_sm"] == 32
    assert occ["occupancy"] == pytest.approx(0.5)
    assert occ["limiter"] == "blocks"


def test_warp_allocation_granularity():
    # 200 regs x 32 = 6400 per warp (a multiple of 256); 65536 / 6400 = 10.24 -> 10 warps,
    # rounded down to the granularity of 4 -> 8 warps -> 8 one-warp blocks.
    occ = theoretical_occupancy(200, 32, 0, H100_SXM)
    assert occ["blocks_by"]["registers"] == 8
    assert occ["resident_blocks_per_sm"] == 8


def test_sm86_has_48_warps_and_16_blocks():
    limits = limits_for((8, 6))
    # 1024 threads = 32 warps: 48 // 32 = 1 block -> 32 / 48 warps.
    assert theoretical_occupancy(32, 1024, 0, limits)["occupancy"] == pytest.approx(32 / 48)
    # 1 warp, 16 regs: the 16-blocks limit -> 16 / 48.
    assert theoretical_occupancy(16, 32, 0, limits)["occupancy"] == pytest.approx(16 / 48)


def test_waves_and_launch_occupancy():
    # 255 regs x 128 threads: 2 blocks/SM x 132 SMs = 264 resident blocks; 1000 blocks = 3.79 waves.
    row = launch_occupancy((250, 4, 1), (128, 1, 1), 255, 0, H100_SXM)
    assert row["grid_blocks"] == 1000
    assert row["resident_capacity_blocks"] == 264
    assert row["waves"] == pytest.approx(1000 / 264)
    assert waves(10, 0, 132) is None


def test_limits_from_trace_device_properties():
    props = {"name": "NVIDIA H100 80GB HBM3", "computeMajor": 9, "computeMinor": 0, "numSms": 132,
             "regsPerMultiprocessor": 65536, "sharedMemPerMultiprocessor": 233472, "sharedMemPerBlockOptin": 232448,
             "maxThreadsPerMultiprocessor": 2048}
    limits = limits_from_trace(props)
    assert (limits.sm_count, limits.max_warps_per_sm, limits.smem_per_sm) == (132, 64, 233472)
    assert limits.name == "NVIDIA H100 80GB HBM3"


@pytest.mark.parametrize("kwargs, field", [
    ({"regs_per_thread": 32, "threads_per_block": 2048, "smem_per_block": 0}, "threads_per_block"),
    ({"regs_per_thread": 300, "threads_per_block": 128, "smem_per_block": 0}, "regs_per_thread"),
    ({"regs_per_thread": 32, "threads_per_block": 128, "smem_per_block": 300 * KB}, "smem_per_block"),
])
def test_bad_launch_names_the_field(kwargs, field):
    with pytest.raises(OccupancyError, match=field):
        theoretical_occupancy(limits=H100_SXM, **kwargs)


def test_unknown_compute_capability_lists_known():
    with pytest.raises(OccupancyError, match="sm_90"):
        limits_for((7, 5))
