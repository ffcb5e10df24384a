"""NVML sampler: the absent path never raises; the summary's throttle and energy rules."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from suite import nvml
from suite.nvml import NvmlSampler, decode_reasons, summarize


def test_no_gpu_is_reported_not_raised():
    with NvmlSampler(device_index=None) as sampler:
        pass
    assert sampler.samples == []
    assert sampler.summary(median_ms=1.0) == {"available": False, "reason": "no GPU: measurement ran on the CPU"}


def test_missing_pynvml_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with NvmlSampler(device_index=0) as sampler:
        pass
    summary = sampler.summary()
    assert summary["available"] is False and "nvidia-ml-py" in summary["reason"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the path of a machine without an NVIDIA driver")
def test_nvml_without_driver_is_reported():
    with NvmlSampler(device_index=0) as sampler:
        pass
    summary = sampler.summary()
    assert summary["available"] is False and summary["reason"]


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="interval_s"):
        NvmlSampler(0, interval_s=0)


def test_reason_table_comes_from_pynvml_constants():
    fake = types.SimpleNamespace(nvmlClocksEventReasonGpuIdle=0x1, nvmlClocksEventReasonSwPowerCap=0x4,
                                 nvmlClocksEventReasonAll=0xFF, nvmlClocksEventReasonNone=0,
                                 nvmlClocksThrottleReasonSwPowerCap=0x4, nvmlClocksThrottleReasonBoardLimit=0x200)
    assert nvml.reason_table(fake) == {0x1: "gpu_idle", 0x4: "sw_power_cap", 0x200: "board_limit"}
    pynvml = pytest.importorskip("pynvml")
    assert nvml.reason_table(pynvml)[pynvml.nvmlClocksEventReasonHwThermalSlowdown] == "hw_thermal_slowdown"
    assert nvml.THROTTLING <= set(nvml.reason_table(pynvml).values())  # the slowdown names exist in pynvml


def test_decode_reasons():
    assert decode_reasons(0) == []
    assert decode_reasons(0x4 | 0x40) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert decode_reasons(0x1000) == ["unknown_0x1000"]


def series(clocks, reasons=None, power=300.0, dt=0.05):
    return [{"t": i * dt, "sm_clock_mhz": c, "mem_clock_mhz": 2619, "power_w": power, "temp_c": 60 + i, "util_gpu": 100,
             "mem_used_bytes": 1 << 30, "throttle_reasons": (reasons or [])} for i, c in enumerate(clocks)]


def test_steady_clocks_are_not_throttled(monkeypatch):
    monkeypatch.setattr(nvml, "_MAX_SM_CLOCK", {})
    out = summarize(series([1980, 1980, 1965, 1980]), median_ms=2.0, device_key="a", interval_s=0.05)
    assert out["throttled"] is False
    assert out["sm_clock_min_mhz"] == 1965 and out["sm_clock_median_mhz"] == 1980
    assert out["clock_drop"] == pytest.approx(15 / 1980)
    assert out["temp_max_c"] == 63 and out["power_mean_w"] == 300.0
    assert out["energy_per_call_j"] == pytest.approx(300.0 * 2e-3)
    assert out["energy_source"] == nvml.ENERGY_SAMPLED and "energy_per_image_j" not in out


def test_clock_drop_beyond_5_percent_is_throttled(monkeypatch):
    monkeypatch.setattr(nvml, "_MAX_SM_CLOCK", {})
    summarize(series([1980, 1980]), device_key="a")  # an earlier row saw the boost clock
    out = summarize(series([1800, 1810]), device_key="a")  # 9% below the max seen in the run
    assert out["throttled"] is True and out["clock_drop"] == pytest.approx(1 - 1800 / 1980)
    other = summarize(series([1800, 1810]), device_key="b")  # another card has its own maximum
    assert other["throttled"] is False


def test_throttle_reason_marks_the_row(monkeypatch):
    monkeypatch.setattr(nvml, "_MAX_SM_CLOCK", {})
    out = summarize(series([1980, 1980], reasons=["sw_power_cap"]), device_key="c")
    assert out["throttled"] is True and out["throttle_reasons"] == ["sw_power_cap"]
    idle = summarize(series([1980, 1980], reasons=["gpu_idle"]), device_key="c")
    assert idle["throttled"] is False  # idle is not a slowdown


def test_energy_needs_several_sampling_periods(monkeypatch):
    monkeypatch.setattr(nvml, "_MAX_SM_CLOCK", {})
    out = summarize(series([1980, 1980], dt=0.01), median_ms=1.0, device_key="d", interval_s=0.05)
    assert "energy_per_call_j" not in out and out["power_mean_w"] == 300.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="NVML time series need an NVIDIA GPU")
def test_sampler_records_a_series_on_gpu():
    import time

    with NvmlSampler(torch.cuda.current_device(), interval_s=0.05) as sampler:
        time.sleep(0.3)
    summary = sampler.summary(median_ms=1.0)
    assert summary["available"] is True and len(sampler.samples) >= 5
    assert summary["sm_clock_min_mhz"] > 0 and summary["n_samples"] == len(sampler.samples)


def test_energy_from_the_counter_per_call_and_per_image(monkeypatch):
    monkeypatch.setattr(nvml, "_MAX_SM_CLOCK", {})
    # 90 J over 0.2 s by the counter: 450 W, though the 20 Hz samples say 300 W
    out = summarize(series([1980] * 5), median_ms=2.0, device_key="e", interval_s=0.05, energy_counter=(90_000.0, 0.2),
                    images=8)
    assert out["energy_source"] == nvml.ENERGY_COUNTER and out["power_counter_mean_w"] == pytest.approx(450.0)
    assert out["energy_window_j"] == pytest.approx(90.0)
    assert out["energy_per_call_j"] == pytest.approx(450.0 * 2e-3)
    assert out["energy_per_image_j"] == pytest.approx(450.0 * 2e-3 / 8)
    stuck = summarize(series([1980] * 5), median_ms=2.0, device_key="e", interval_s=0.05, energy_counter=(0.0, 0.2))
    assert stuck["energy_source"] == nvml.ENERGY_SAMPLED  # a counter that did not move is not a measurement


class FakeNvml:
    """The pynvml calls the sampler makes, on one fake card whose energy counter advances 50 J per read."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 0, 1, 0

    def __init__(self, energy: bool = True):
        self.energy, self.mj = energy, 1_000_000.0

    def nvmlInit(self): pass
    def nvmlShutdown(self): pass
    def nvmlDeviceGetHandleByUUID(self, uuid): return "h"
    def nvmlDeviceGetHandleByIndex(self, index): return "h"
    def nvmlDeviceGetUUID(self, h): return b"GPU-fake"
    def nvmlDeviceGetMaxClockInfo(self, h, kind): return 1980
    def nvmlDeviceGetClockInfo(self, h, kind): return 1980 if kind == 0 else 2619
    def nvmlDeviceGetPowerUsage(self, h): return 300_000
    def nvmlDeviceGetTemperature(self, h, kind): return 60
    def nvmlDeviceGetUtilizationRates(self, h): return types.SimpleNamespace(gpu=100)
    def nvmlDeviceGetMemoryInfo(self, h): return types.SimpleNamespace(used=1 << 30)
    def nvmlDeviceGetCurrentClocksEventReasons(self, h): return 0x4

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.energy:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        self.mj += 50_000.0
        return self.mj


@pytest.mark.parametrize("energy", [True, False])
def test_sampler_reads_the_energy_counter_or_falls_back(monkeypatch, energy):
    import time

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(energy))
    monkeypatch.setattr(nvml, "_MAX_SM_CLOCK", {})
    with NvmlSampler(0, interval_s=0.01) as sampler:
        time.sleep(0.1)
    summary = sampler.summary(median_ms=1.0, images=4)
    assert summary["throttle_reasons"] == ["sw_power_cap"] and summary["throttled"] is True
    assert summary["energy_source"] == (nvml.ENERGY_COUNTER if energy else nvml.ENERGY_SAMPLED)
    if energy:
        assert summary["energy_window_j"] == pytest.approx(50.0)
    else:
        assert summary["energy_per_call_j"] == pytest.approx(300.0 * 1e-3) and "energy_window_j" not in summary
    assert summary["energy_per_image_j"] == pytest.approx(summary["energy_per_call_j"] / 4)
