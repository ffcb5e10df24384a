"""What a measurement ran on: stored under ``"environment"`` in every run.json.

docs/design.md "Measurement rules": every run records the GPU name, driver, torch/triton/cuDNN
versions, git commit and the scenario; a comparison is a ratio from one run on one card. Every field is best effort:
a missing tool yields None, never an exception.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import importlib.util
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMIT_ENV = "CGSPN_BENCH_COMMIT"  # the commit of a tree copied without its .git


def git_state(root: Path = REPO_ROOT) -> dict[str, Any]:
    """Commit hash and whether tracked files differ from it (a dirty tree is not that commit)."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    if os.environ.get(COMMIT_ENV):
        # a copy of the tree shipped to a GPU box: the caller names its commit, and that wins over
        # whatever repository git finds around the copy (one such copy reported a stale commit)
        return {"commit": os.environ[COMMIT_ENV], "dirty": None, "branch": None, "source": COMMIT_ENV}
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    dirty = bool(status) if status is not None else None
    return {"commit": commit, "dirty": dirty, "branch": git("rev-parse", "--abbrev-ref", "HEAD")}


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # an optional package may fail on import for reasons other than absence
        return None
    return getattr(mod, "__version__", "unknown")


def _dist_version(*names: str) -> str | None:
    """Version of the first installed distribution among ``names`` (pip metadata; no import)."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def flash_attention_packages() -> dict[str, str | None]:
    """Versions of the FlashAttention packages (None: not installed).

    ``flash_attn``: FA2 (the ``flash-attn`` distribution); ``flash_attn_3``: FA3, the Hopper build
    importable as ``flash_attn_interface``; ``flash_attn_4``: FA4, the CuTe-DSL kernels as
    ``flash_attn.cute`` (what torch's SDPA FA4 implementation loads). Each is found on its own, so
    an FA3-only install is not reported as no FlashAttention.
    """
    def found(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package that is missing or broken
            return False

    def version(module: str, *distributions: str) -> str | None:
        return (_dist_version(*distributions) or "unknown") if found(module) else None

    return {"flash_attn": version("flash_attn", "flash-attn"),
            "flash_attn_3": version("flash_attn_interface", "flash-attn-3", "flash_attn_3"),
            "flash_attn_4": version("flash_attn.cute", "flash-attn-cute", "flash-attn-4", "flash-attn")}


def sdpa_flash() -> dict[str, str]:
    """Which FlashAttention SDPA runs (kernels.attention.sublayer.sdpa_flash_impl asks torch) and
    the alternatives registered with ``torch.nn.attention`` (torch >= 2.9; FA3/FA4 need their packages)."""
    import torch.nn.attention as attention

    from kernels.attention.sublayer import sdpa_flash_impl

    registered = attention.list_flash_attention_impls() if hasattr(attention, "list_flash_attention_impls") else []
    return {"sdpa_flash_impl": sdpa_flash_impl(), "sdpa_flash_impls_registered": ", ".join(registered) or "none"}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info(index: int) -> dict[str, Any]:
    """Name, UUID, SMs, L2, memory of CUDA device ``index``, plus NVML's driver view."""
    props = torch.cuda.get_device_properties(index)
    uuid = str(getattr(props, "uuid", "")) or None
    info: dict[str, Any] = {
        "index": index,
        "name": props.name,
        "uuid": uuid if uuid is None or uuid.startswith("GPU-") else f"GPU-{uuid}",
        "capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "l2_cache_bytes": getattr(props, "L2_cache_size", None),
        "memory_bytes": props.total_memory,
    }
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByUUID(info["uuid"]) if info["uuid"] else pynvml.nvmlDeviceGetHandleByIndex(index)
            info["sm_clock_max_mhz"] = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)
            info["mem_clock_max_mhz"] = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
            info["power_limit_w"] = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1e3
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # NVML absent or a query unsupported on this board
        info["nvml"] = f"unavailable: {exc}"
    return info


def driver_version() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:
        return None


GEMM_SIDE = 8192  # square bf16 GEMM for the compute ceiling: large enough to run at the tensor cores' peak


def gemm_tflops(device: torch.device, side: int = GEMM_SIDE) -> float | None:
    """Measured bf16 GEMM throughput (2 * side^3 FLOPs / median time), TFLOP/s: the compute
    ceiling of the report's roofline, measured with the suite's own timer; None on failure."""
    from suite.measure import TimingSettings, measure_cuda

    try:
        with torch.cuda.device(device):
            pair = [torch.randn(side, side, device=device, dtype=torch.bfloat16) for _ in range(2)]
            timing = measure_cuda(lambda: pair[0] @ pair[1], device,
                                  TimingSettings(budget_ms=200, warmup_ms=50, min_reps=10, max_reps=200, l2_flush=False))
            pair.clear()
            torch.cuda.empty_cache()
    except Exception:  # out of memory on a small card, no bf16 tensor cores: the report falls back to a datasheet value
        return None
    return 2.0 * side**3 / (timing.median_ms * 1e-3) / 1e12


def collect_environment(device: str | None = None, copy_bandwidth: bool = False) -> dict[str, Any]:
    """Software, hardware and source state of this process.

    ``device``: the device the run measures on (``cuda``/``cuda:1``/``cpu``; default cuda when
    available). ``copy_bandwidth``: also measure the device-to-device copy ceiling and the bf16
    GEMM ceiling (GPU only; the report's roofline).
    """
    cuda = torch.cuda.is_available()
    device = device or ("cuda" if cuda else "cpu")
    env: dict[str, Any] = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "device": device,
        "torch": torch.__version__,
        "triton": _version("triton"),
        **flash_attention_packages(),
        **sdpa_flash(),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "git": git_state(),
        "gpus": [],
    }
    if cuda:
        env["driver"] = driver_version()
        env["gpus"] = [gpu_info(i) for i in range(torch.cuda.device_count())]
        measured = torch.device(device)
        if measured.type == "cuda":
            index = measured.index if measured.index is not None else torch.cuda.current_device()
            env["gpu"] = env["gpus"][index]
            if copy_bandwidth:
                from suite.measure import copy_bandwidth_gbps

                env["copy_bandwidth_gbps"] = copy_bandwidth_gbps(torch.device("cuda", index))
                env["gemm_tflops"] = gemm_tflops(torch.device("cuda", index))
    return env
