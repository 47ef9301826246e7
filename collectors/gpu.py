"""Per-GPU utilization, memory, temperature, power, energy, clocks and per-process memory (NVML).

Names follow NVIDIA dcgm-exporter's fields in Prometheus base units: ``DCGM_FI_DEV_GPU_UTIL`` (%) ->
``fleetmon_gpu_utilization_ratio``, ``DCGM_FI_DEV_FB_USED`` / ``FB_FREE`` (MiB) -> ``fleetmon_gpu_memory_used_bytes``
/ ``..._total_bytes``, ``DCGM_FI_DEV_GPU_TEMP`` -> ``fleetmon_gpu_temperature_celsius``, ``DCGM_FI_DEV_POWER_USAGE``
(W) -> ``fleetmon_gpu_power_watts``, ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` (mJ) ->
``fleetmon_gpu_energy_joules_total``, ``DCGM_FI_DEV_SM_CLOCK`` / ``MEM_CLOCK`` (MHz) -> ``..._clock_hertz``.
Per-process memory is summed per configured process group (``platform.processes``; others ``other``) so the
label set stays bounded.

Read in the background poll (NVML calls can block on a sick GPU) and served from a cache. No NVML library,
no driver or no GPU is not an error: the collector reports ``fleetmon_gpu_available 0`` and nothing else,
logs it once, and tries again at the next poll (a driver loaded later is picked up). A GPU that fails
mid-run (e.g. ``GPU_IS_LOST``) disappears from the output; the others stay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from collectors.nvml import NvmlBackend, NvmlError
from collectors.processes import ProcessMatcher
from fleetmon.config import Config
from fleetmon.exporter import register

log = logging.getLogger(__name__)


@dataclass
class GpuReading:
    index: int
    uuid: str
    name: str
    util: float | None = None  # 0..1
    mem_util: float | None = None
    mem_used: float | None = None  # bytes
    mem_total: float | None = None
    temp: float | None = None  # celsius
    power: float | None = None  # watts
    energy: float | None = None  # joules
    sm_clock: float | None = None  # hertz
    mem_clock: float | None = None
    proc_mem: dict[str, float] = field(default_factory=dict)  # group -> bytes


def _real_backend() -> NvmlBackend:
    from collectors.nvml import RealNvml

    return RealNvml()


@register("gpu", help="NVIDIA GPUs via NVML (dcgm-exporter meanings); fleetmon_gpu_available 0 without.")
class GpuCollector:
    """GPU readings from NVML, polled in the background."""

    def __init__(self, cfg: Config, backend_factory: Callable[[], NvmlBackend] | None = None) -> None:
        self.enabled = cfg.platform.gpu
        self._factory = backend_factory or _real_backend
        self._backend: NvmlBackend | None = None
        self._matcher = ProcessMatcher(cfg.platform.processes)
        self._available = False
        self._readings: list[GpuReading] = []
        self._logged: set[str] = set()  # causes already logged (log each once)

    def _log_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.info(msg, *args)

    def _ensure(self) -> NvmlBackend | None:
        if self._backend is not None:
            return self._backend
        try:
            b = self._factory()
            b.init()
        except (NvmlError, ImportError, OSError) as e:
            self._log_once("init", "no NVML here (%s): reporting fleetmon_gpu_available 0", e)
            return None
        self._backend = b
        return b

    def _reset(self) -> None:
        if self._backend is not None:
            try:
                self._backend.shutdown()
            except NvmlError:
                pass
        self._backend = None

    def poll(self) -> None:
        if not self.enabled:
            return
        b = self._ensure()
        if b is None:
            self._available, self._readings = False, []
            return
        try:
            count = b.device_count()
        except NvmlError as e:
            self._log_once(f"count:{e.code}", "NVML cannot count GPUs (%s): reporting unavailable", e)
            self._reset()
            self._available, self._readings = False, []
            return
        readings = []
        for i in range(count):
            try:
                readings.append(self._read(b, i))
            except NvmlError as e:  # this GPU is gone or broken; the others stay
                self._log_once(f"gpu{i}:{e.code}", "GPU %d cannot be read (%s): leaving it out", i, e)
        if count == 0:
            self._log_once("none", "NVML reports no GPU: reporting fleetmon_gpu_available 0")
        self._available, self._readings = bool(readings), readings  # published atomically

    def _read(self, b: NvmlBackend, i: int) -> GpuReading:
        h = b.handle(i)
        r = GpuReading(index=i, uuid=b.uuid(h), name=b.name(h))

        def opt(fn: Callable[[], Any]) -> Any:
            # A field this GPU does not support is left out; any other error means the GPU is in trouble.
            try:
                return fn()
            except NvmlError as e:
                if e.not_supported:
                    return None
                raise

        if (u := opt(lambda: b.utilization(h))) is not None:
            r.util, r.mem_util = u[0] / 100.0, u[1] / 100.0
        if (m := opt(lambda: b.memory(h))) is not None:
            r.mem_used, r.mem_total = m
        r.temp = opt(lambda: b.temperature(h))
        if (p := opt(lambda: b.power(h))) is not None:
            r.power = p / 1000.0
        if (e := opt(lambda: b.energy(h))) is not None:
            r.energy = e / 1000.0
        if (c := opt(lambda: b.clocks(h))) is not None:
            r.sm_clock, r.mem_clock = c[0] * 1e6, c[1] * 1e6
        for pid, used in opt(lambda: b.processes(h)) or []:
            if used is None:
                continue
            group = self._group_of(pid)
            r.proc_mem[group] = r.proc_mem.get(group, 0.0) + used
        return r

    def _group_of(self, pid: int) -> str:
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                group = self._matcher.group_of(pid, p.create_time(), p.name(), p.cmdline())
        except (psutil.Error, OSError):
            return "other"
        return group or "other"

    def close(self) -> None:
        self._reset()

    def collect(self) -> Iterator[Metric]:
        if not self.enabled:
            return
        available, readings = self._available, self._readings
        yield GaugeMetricFamily(
            "fleetmon_gpu_available",
            "1 if NVML works and at least one GPU is readable.",
            value=float(available),
        )
        if not readings:
            return
        lb = ["gpu"]
        info = GaugeMetricFamily(
            "fleetmon_gpu_info", "GPU identity (value 1).", labels=["gpu", "uuid", "name"]
        )
        gauges = {
            "util": ("fleetmon_gpu_utilization_ratio", "GPU busy ratio (DCGM_FI_DEV_GPU_UTIL / 100)."),
            "mem_util": (
                "fleetmon_gpu_memory_utilization_ratio",
                "Memory controller busy ratio (DCGM_FI_DEV_MEM_COPY_UTIL / 100).",
            ),
            "mem_used": ("fleetmon_gpu_memory_used_bytes", "Framebuffer memory used (DCGM_FI_DEV_FB_USED)."),
            "mem_total": ("fleetmon_gpu_memory_total_bytes", "Framebuffer memory total."),
            "temp": ("fleetmon_gpu_temperature_celsius", "GPU temperature (DCGM_FI_DEV_GPU_TEMP)."),
            "power": ("fleetmon_gpu_power_watts", "Power draw (DCGM_FI_DEV_POWER_USAGE)."),
            "sm_clock": ("fleetmon_gpu_sm_clock_hertz", "SM clock (DCGM_FI_DEV_SM_CLOCK)."),
            "mem_clock": ("fleetmon_gpu_memory_clock_hertz", "Memory clock (DCGM_FI_DEV_MEM_CLOCK)."),
        }
        fams = {k: GaugeMetricFamily(n, h, labels=lb) for k, (n, h) in gauges.items()}
        energy = CounterMetricFamily(
            "fleetmon_gpu_energy_joules",
            "Energy used since the driver loaded (DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION).",
            labels=lb,
        )
        proc = GaugeMetricFamily(
            "fleetmon_gpu_process_memory_used_bytes",
            "GPU memory used by processes, per configured process group (others: other).",
            labels=["gpu", "group"],
        )
        for r in readings:
            g = str(r.index)
            info.add_metric([g, r.uuid, r.name], 1.0)
            for k, fam in fams.items():
                v = getattr(r, k)
                if v is not None:
                    fam.add_metric([g], v)
            if r.energy is not None:
                energy.add_metric([g], r.energy)
            for group, used in sorted(r.proc_mem.items()):
                proc.add_metric([g, group], used)
        yield info
        yield from fams.values()
        yield energy
        yield proc
