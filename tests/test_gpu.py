"""GPU collector: a fake at the NVML seam (collectors/nvml.py), and the real NVML on this GPU-less machine."""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from collectors.gpu import GpuCollector
from collectors.nvml import (
    ERROR_GPU_IS_LOST,
    ERROR_LIBRARY_NOT_FOUND,
    ERROR_NOT_SUPPORTED,
    NvmlError,
    RealNvml,
)
from fleetmon.config import Config, PlatformConfig, ProcessMatch


class FakeNvml:
    """Two GPUs; GPU 1 does not support energy readings; ``lose(i)`` makes a GPU fail like a lost one."""

    def __init__(self) -> None:
        self.lost: set[int] = set()
        self.inits = 0
        self.broken_driver = False

    def lose(self, i: int) -> None:
        self.lost.add(i)

    def _check(self, h: int) -> None:
        if h in self.lost:
            raise NvmlError(ERROR_GPU_IS_LOST, "GPU is lost")

    def init(self) -> None:
        self.inits += 1

    def shutdown(self) -> None:
        pass

    def device_count(self) -> int:
        if self.broken_driver:
            raise NvmlError(9, "driver not loaded")
        return 2

    def handle(self, index: int) -> Any:
        self._check(index)
        return index

    def name(self, h: Any) -> str:
        return "NVIDIA A100-SXM4-40GB"

    def uuid(self, h: Any) -> str:
        self._check(h)
        return f"GPU-0000000{h}-aaaa-bbbb-cccc-dddddddddddd"

    def utilization(self, h: Any) -> tuple[float, float]:
        self._check(h)
        return (87.0, 40.0)

    def memory(self, h: Any) -> tuple[float, float]:
        self._check(h)
        return (10 * 2**30, 40 * 2**30)

    def temperature(self, h: Any) -> float:
        return 65.0

    def power(self, h: Any) -> float:
        return 250_000.0  # mW

    def energy(self, h: Any) -> float:
        if h == 1:
            raise NvmlError(ERROR_NOT_SUPPORTED, "not supported")
        return 3_600_000.0  # mJ

    def clocks(self, h: Any) -> tuple[float, float]:
        return (1410.0, 1215.0)

    def processes(self, h: Any) -> list[tuple[int, float | None]]:
        return [(os.getpid(), 2.0 * 2**30), (1, None), (2**22 + 7, 1.0 * 2**20)]


def make(fake: FakeNvml | None = None, **platform: Any) -> tuple[GpuCollector, CollectorRegistry]:
    cfg = Config(platform=PlatformConfig(processes=[ProcessMatch(name="pytest", match="pytest")], **platform))
    coll = GpuCollector(cfg, backend_factory=(lambda: fake) if fake else None)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(coll)  # type: ignore[arg-type]
    return coll, reg


def test_readings_in_base_units_with_dcgm_meanings() -> None:
    coll, reg = make(FakeNvml())
    coll.poll()
    g0 = {"gpu": "0"}
    assert reg.get_sample_value("fleetmon_gpu_available") == 1
    assert reg.get_sample_value("fleetmon_gpu_utilization_ratio", g0) == 0.87
    assert reg.get_sample_value("fleetmon_gpu_memory_utilization_ratio", g0) == 0.40
    assert reg.get_sample_value("fleetmon_gpu_memory_used_bytes", g0) == 10 * 2**30
    assert reg.get_sample_value("fleetmon_gpu_memory_total_bytes", g0) == 40 * 2**30
    assert reg.get_sample_value("fleetmon_gpu_temperature_celsius", g0) == 65
    assert reg.get_sample_value("fleetmon_gpu_power_watts", g0) == 250
    assert reg.get_sample_value("fleetmon_gpu_energy_joules_total", g0) == 3600
    assert reg.get_sample_value("fleetmon_gpu_energy_joules_total", {"gpu": "1"}) is None  # not supported
    assert reg.get_sample_value("fleetmon_gpu_sm_clock_hertz", g0) == 1.41e9
    assert reg.get_sample_value("fleetmon_gpu_memory_clock_hertz", g0) == 1.215e9
    info = {"gpu": "1", "uuid": "GPU-00000001-aaaa-bbbb-cccc-dddddddddddd", "name": "NVIDIA A100-SXM4-40GB"}
    assert reg.get_sample_value("fleetmon_gpu_info", info) == 1
    # per-process memory, summed per configured process group (this pytest process matches "pytest")
    assert (
        reg.get_sample_value("fleetmon_gpu_process_memory_used_bytes", {**g0, "group": "pytest"}) == 2 * 2**30
    )
    assert reg.get_sample_value("fleetmon_gpu_process_memory_used_bytes", {**g0, "group": "other"}) == 2**20


def test_a_gpu_that_disappears_is_left_out_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeNvml()
    coll, reg = make(fake)
    coll.poll()
    fake.lose(1)
    with caplog.at_level(logging.INFO, logger="collectors.gpu"):
        for _ in range(3):
            coll.poll()
            assert reg.get_sample_value("fleetmon_gpu_available") == 1
            assert reg.get_sample_value("fleetmon_gpu_utilization_ratio", {"gpu": "0"}) == 0.87
            assert reg.get_sample_value("fleetmon_gpu_utilization_ratio", {"gpu": "1"}) is None
    assert sum("GPU 1 cannot be read" in r.message for r in caplog.records) == 1
    fake.lose(0)
    coll.poll()
    assert [s.name for m in reg.collect() for s in m.samples if s.name.startswith("fleetmon_gpu")] == [
        "fleetmon_gpu_available"
    ]
    assert reg.get_sample_value("fleetmon_gpu_available") == 0


def test_driver_failure_reports_unavailable_and_recovers() -> None:
    fake = FakeNvml()
    coll, reg = make(fake)
    fake.broken_driver = True
    coll.poll()
    assert reg.get_sample_value("fleetmon_gpu_available") == 0
    fake.broken_driver = False
    coll.poll()
    assert reg.get_sample_value("fleetmon_gpu_available") == 1
    assert fake.inits == 2  # NVML re-initialised after the failure


def test_no_nvml_on_this_machine_reports_available_0_once_and_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        RealNvml().init()
        pytest.skip("this machine has a working NVML")
    except NvmlError as e:
        assert e.code in (ERROR_LIBRARY_NOT_FOUND, 9)
    coll, reg = make()  # the real backend
    with caplog.at_level(logging.INFO, logger="collectors.gpu"):
        for _ in range(3):
            coll.poll()
            text = generate_latest(reg).decode()
            samples = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
            assert samples == ["fleetmon_gpu_available 0.0"]
    assert sum("no NVML here" in r.message for r in caplog.records) == 1
    coll.close()


def test_gpu_switched_off_in_config_exports_nothing() -> None:
    coll, _ = make(FakeNvml(), gpu=False)
    coll.poll()
    assert list(coll.collect()) == []
