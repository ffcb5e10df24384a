"""GPU state during a measurement: an NVML sampler thread (nvidia-ml-py) and its summary.

docs/design.md "Measurement rules": NVML is sampled during each measurement (SM/memory clocks, power,
temperature, utilization, memory, throttle reasons); a row whose clocks dropped or that throttled is
tagged; clocks and power limits are never changed. The sampler only reads. Without a GPU or without pynvml it records
``{"available": False, "reason": ...}`` and never raises, so CPU runs and CI go through the same
code path.

Usage::

    with NvmlSampler(device_index=0) as nvml:
        timing = measure(step, device, settings)
    row.nvml = nvml.summary(median_ms=timing.median_ms)   # nvml.samples: the time series
"""

from __future__ import annotations

import re
import statistics
import threading
import time
from typing import Any


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


def reason_table(module: Any = None) -> dict[int, str]:
    """Bit -> name of NVML's clocks-event reasons, from pynvml's own constants.

    ``nvmlClocksEventReason*`` (current name) first, then ``nvmlClocksThrottleReason*`` (older
    name, and bits the new list lacks, e.g. board_limit): ``SwPowerCap`` becomes
    ``sw_power_cap``. ``All``/``None`` and aliases of a bit already named are skipped. Empty
    without pynvml (masks then decode as hex).
    """
    if module is None:
        try:
            import pynvml as module
        except ImportError:
            return {}
    table: dict[int, str] = {}
    for prefix in ("nvmlClocksEventReason", "nvmlClocksThrottleReason"):
        for name in sorted(n for n in dir(module) if n.startswith(prefix)):
            bit, short = getattr(module, name), name[len(prefix):]
            if short in ("All", "None") or not isinstance(bit, int) or bit <= 0 or bit & (bit - 1) or bit in table:
                continue
            table[bit] = _snake(short)
    return dict(sorted(table.items()))


THROTTLE_REASONS = reason_table()
# Reasons that mean the card slowed itself down (idle, sync boost, app clocks are not throttling).
THROTTLING = {"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"}
CLOCK_DROP_LIMIT = 0.05  # a row is "throttled" when its min SM clock is > 5% below the max seen

# Highest SM clock seen per device in this process (the "run" for the clock-drop rule).
_MAX_SM_CLOCK: dict[str, float] = {}


def decode_reasons(mask: int) -> list[str]:
    """Names of the set bits of a clocks-event-reason mask; unknown bits as hex."""
    names = [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
    unknown = mask & ~sum(THROTTLE_REASONS, 0)
    if unknown:
        names.append(f"unknown_0x{unknown:x}")
    return names


def _torch_uuid(device_index: int) -> str | None:
    """The UUID torch sees for ``device_index`` (CUDA_VISIBLE_DEVICES renumbers torch's indices
    but not NVML's, so the handle is looked up by UUID when possible)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        uuid = str(torch.cuda.get_device_properties(device_index).uuid)
    except Exception:
        return None
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


class NvmlSampler:
    """Context manager sampling one GPU at ``1 / interval_s`` Hz in a daemon thread.

    ``samples``: list of dicts ``t`` (s since start), ``sm_clock_mhz``, ``mem_clock_mhz``,
    ``power_w``, ``temp_c``, ``util_gpu`` (%), ``mem_used_bytes``, ``throttle_reasons`` (names).
    One sample is also taken on entry and on exit so even a short measurement has two.
    """

    def __init__(self, device_index: int | None = 0, interval_s: float = 0.05):
        if not interval_s > 0:
            raise ValueError(f"NvmlSampler.interval_s: expected a number > 0, got {interval_s!r}")
        self.device_index = device_index
        self.interval_s = interval_s
        self.samples: list[dict[str, Any]] = []
        self.reason = ""
        self.uuid: str | None = None
        self.max_clock_mhz: float | None = None
        self._nvml = None
        self._handle = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self.energy_mj: list[tuple[float, float]] = []  # (t, total-energy counter in mJ) on entry and exit

    @property
    def available(self) -> bool:
        return self._handle is not None

    def _open(self) -> None:
        if self.device_index is None:
            self.reason = "no GPU: measurement ran on the CPU"
            return
        try:
            import pynvml
        except ImportError as exc:
            self.reason = f"pynvml not importable ({exc}); install nvidia-ml-py"
            return
        try:
            pynvml.nvmlInit()
        except Exception as exc:
            self.reason = f"NVML could not be initialized: {exc}"
            return
        try:
            handle = None
            uuid = _torch_uuid(self.device_index)
            if uuid is not None:
                try:
                    handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
                except Exception:  # e.g. a MIG instance: fall back to the index
                    handle = None
            if handle is None:
                handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
            self.uuid = _decode(pynvml.nvmlDeviceGetUUID(handle))
        except Exception as exc:
            self.reason = f"NVML has no device {self.device_index}: {exc}"
            pynvml.nvmlShutdown()
            return
        self._nvml, self._handle = pynvml, handle
        try:
            self.max_clock_mhz = float(pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM))
        except Exception:
            self.max_clock_mhz = None

    def sample(self) -> dict[str, Any]:
        """One reading; a query the driver does not support is recorded as None."""
        nv, h = self._nvml, self._handle

        def read(fn, *args, scale=1.0):
            try:
                return fn(h, *args) * scale
            except Exception:
                return None

        reasons_fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or nv.nvmlDeviceGetCurrentClocksThrottleReasons
        mask = read(reasons_fn)
        try:
            util = nv.nvmlDeviceGetUtilizationRates(h).gpu
        except Exception:
            util = None
        try:
            mem_used = nv.nvmlDeviceGetMemoryInfo(h).used
        except Exception:
            mem_used = None
        return {
            "t": round(time.perf_counter() - self._t0, 4),
            "sm_clock_mhz": read(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM),
            "mem_clock_mhz": read(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_MEM),
            "power_w": read(nv.nvmlDeviceGetPowerUsage, scale=1e-3),
            "temp_c": read(nv.nvmlDeviceGetTemperature, nv.NVML_TEMPERATURE_GPU),
            "util_gpu": util,
            "mem_used_bytes": mem_used,
            "throttle_reasons": decode_reasons(int(mask)) if mask is not None else None,
        }

    def read_energy(self) -> None:
        """Read NVML's total-energy counter (mJ since the driver loaded; Volta and newer), if the card has one."""
        try:
            mj = float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception:  # not supported on this board: the summary falls back to sampled power
            return
        self.energy_mj.append((time.perf_counter() - self._t0, mj))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(self.sample())

    def __enter__(self) -> NvmlSampler:
        self._open()
        if self.available:
            self._t0 = time.perf_counter()
            self.samples.append(self.sample())
            self.read_energy()
            self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.samples.append(self.sample())
            self.read_energy()
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass

    def summary(self, median_ms: float | None = None, images: int | None = None) -> dict[str, Any]:
        """Per-row summary (see :func:`summarize`); ``available: False`` with the reason otherwise.
        ``images``: images per call (the batch), for the energy per image."""
        if not self.available:
            return {"available": False, "reason": self.reason or "NVML sampler was not started"}
        counter = None
        if len(self.energy_mj) == 2:
            (t0, e0), (t1, e1) = self.energy_mj
            counter = (e1 - e0, t1 - t0)
        return summarize(self.samples, median_ms=median_ms, device_key=self.uuid or str(self.device_index),
                         device_max_clock_mhz=self.max_clock_mhz, interval_s=self.interval_s, energy_counter=counter,
                         images=images)


ENERGY_COUNTER = "nvml total-energy counter"
ENERGY_SAMPLED = "mean sampled power x median time"


def summarize(samples: list[dict[str, Any]], *, median_ms: float | None = None, device_key: str = "0",
              device_max_clock_mhz: float | None = None, interval_s: float | None = None,
              energy_counter: tuple[float, float] | None = None, images: int | None = None) -> dict[str, Any]:
    """Min/median SM clock, max temperature, mean power, energy per call and per image, throttle flag.

    ``clock_drop``: 1 - min SM clock / max SM clock seen on this device in this process (the run),
    so a card that starts at boost and sags under load is caught while a card that never boosts
    is not blamed for its own maximum. ``throttled``: clock_drop > 5% or a throttling reason
    (power cap, thermal or hardware slowdown) in any sample.

    Energy: ``energy_counter`` is (mJ, seconds) read from NVML's total-energy counter around the
    measurement; its mean power (``power_counter_mean_w``: integrated by the driver, unlike 20 Hz
    samples) times the median time is ``energy_per_call_j``. Without a counter the mean sampled
    power is used instead; ``energy_source`` says which. The window holds warm-up and
    synchronization gaps besides the timed calls, so this is the power of the loaded card applied
    to one call. ``energy_per_image_j`` = per call / ``images``. Both need a measurement that
    lasted several sampling periods.
    """
    def values(key: str) -> list[float]:
        return [s[key] for s in samples if s.get(key) is not None]

    sm, mem, power, temp, util = (values(k) for k in ("sm_clock_mhz", "mem_clock_mhz", "power_w", "temp_c", "util_gpu"))
    reasons = sorted({r for s in samples for r in (s.get("throttle_reasons") or [])})
    out: dict[str, Any] = {"available": True, "n_samples": len(samples), "duration_s": samples[-1]["t"] if samples else 0.0,
                           "throttle_reasons": reasons}
    if sm:
        seen = max(max(sm), _MAX_SM_CLOCK.get(device_key, 0.0))
        _MAX_SM_CLOCK[device_key] = seen
        out.update(sm_clock_min_mhz=min(sm), sm_clock_median_mhz=statistics.median(sm), sm_clock_max_seen_mhz=seen,
                   clock_drop=1.0 - min(sm) / seen if seen else 0.0)
    else:
        out["clock_drop"] = None
    if device_max_clock_mhz:
        out["sm_clock_device_max_mhz"] = device_max_clock_mhz
    if mem:
        out["mem_clock_median_mhz"] = statistics.median(mem)
    if temp:
        out["temp_max_c"] = max(temp)
    if util:
        out["util_gpu_mean"] = statistics.fmean(util)
    if power:
        out["power_mean_w"] = statistics.fmean(power)
        out["power_max_w"] = max(power)
    watts, source = out.get("power_mean_w"), ENERGY_SAMPLED
    if energy_counter is not None and energy_counter[0] > 0 and energy_counter[1] > 0:
        out["energy_window_j"] = energy_counter[0] * 1e-3
        watts = out["power_counter_mean_w"] = out["energy_window_j"] / energy_counter[1]
        source = ENERGY_COUNTER
    long_enough = interval_s is None or out["duration_s"] >= 3 * interval_s
    if watts is not None and median_ms is not None and long_enough:
        out["energy_per_call_j"] = watts * median_ms * 1e-3
        out["energy_source"] = source
        if images:
            out["energy_per_image_j"] = out["energy_per_call_j"] / images
    drop = out.get("clock_drop")
    out["throttled"] = bool((drop is not None and drop > CLOCK_DROP_LIMIT) or THROTTLING.intersection(reasons))
    return out


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
