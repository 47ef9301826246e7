"""The narrow seam to NVIDIA's NVML: the only module that imports ``pynvml``.

``collectors/gpu.py`` talks to an ``NvmlBackend``; ``RealNvml`` is the one backed by pynvml (package
``nvidia-ml-py``), tests pass a fake with the same methods. Every NVML failure surfaces as ``NvmlError``
(with NVML's code), so the collector never sees a pynvml type. Raw NVML units are returned unchanged
(percent, bytes, degrees C, milliwatts, millijoules, MHz); the collector converts to base units.
"""

from __future__ import annotations

from typing import Any, Protocol

# NVML return codes the collector cares about (values from nvml.h, repeated so callers need no pynvml).
ERROR_NOT_SUPPORTED = 3
ERROR_NOT_FOUND = 6
ERROR_DRIVER_NOT_LOADED = 9
ERROR_LIBRARY_NOT_FOUND = 12
ERROR_GPU_IS_LOST = 15


class NvmlError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def not_supported(self) -> bool:
        return self.code == ERROR_NOT_SUPPORTED


class NvmlBackend(Protocol):
    def init(self) -> None: ...
    def shutdown(self) -> None: ...
    def device_count(self) -> int: ...
    def handle(self, index: int) -> Any: ...
    def name(self, h: Any) -> str: ...
    def uuid(self, h: Any) -> str: ...
    def utilization(self, h: Any) -> tuple[float, float]: ...  # (gpu %, memory %)
    def memory(self, h: Any) -> tuple[float, float]: ...  # (used bytes, total bytes)
    def temperature(self, h: Any) -> float: ...  # degrees C
    def power(self, h: Any) -> float: ...  # milliwatts
    def energy(self, h: Any) -> float: ...  # millijoules since the driver loaded
    def clocks(self, h: Any) -> tuple[float, float]: ...  # (SM MHz, memory MHz)
    def processes(self, h: Any) -> list[tuple[int, float | None]]: ...  # (pid, used bytes or None)


class RealNvml:
    """NvmlBackend backed by pynvml."""

    def __init__(self) -> None:
        import pynvml

        self._n = pynvml

    def _call(self, fn: str, *args: Any) -> Any:
        try:
            return getattr(self._n, fn)(*args)
        except self._n.NVMLError as e:
            raise NvmlError(int(getattr(e, "value", -1) or -1), f"{fn}: {e}") from None

    def init(self) -> None:
        self._call("nvmlInit")

    def shutdown(self) -> None:
        self._call("nvmlShutdown")

    def device_count(self) -> int:
        return int(self._call("nvmlDeviceGetCount"))

    def handle(self, index: int) -> Any:
        return self._call("nvmlDeviceGetHandleByIndex", index)

    def name(self, h: Any) -> str:
        v = self._call("nvmlDeviceGetName", h)
        return v.decode() if isinstance(v, bytes) else str(v)

    def uuid(self, h: Any) -> str:
        v = self._call("nvmlDeviceGetUUID", h)
        return v.decode() if isinstance(v, bytes) else str(v)

    def utilization(self, h: Any) -> tuple[float, float]:
        u = self._call("nvmlDeviceGetUtilizationRates", h)
        return float(u.gpu), float(u.memory)

    def memory(self, h: Any) -> tuple[float, float]:
        m = self._call("nvmlDeviceGetMemoryInfo", h)
        return float(m.used), float(m.total)

    def temperature(self, h: Any) -> float:
        return float(self._call("nvmlDeviceGetTemperature", h, self._n.NVML_TEMPERATURE_GPU))

    def power(self, h: Any) -> float:
        return float(self._call("nvmlDeviceGetPowerUsage", h))

    def energy(self, h: Any) -> float:
        return float(self._call("nvmlDeviceGetTotalEnergyConsumption", h))

    def clocks(self, h: Any) -> tuple[float, float]:
        sm = self._call("nvmlDeviceGetClockInfo", h, self._n.NVML_CLOCK_SM)
        mem = self._call("nvmlDeviceGetClockInfo", h, self._n.NVML_CLOCK_MEM)
        return float(sm), float(mem)

    def processes(self, h: Any) -> list[tuple[int, float | None]]:
        out: dict[int, float | None] = {}
        for fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            for p in self._call(fn, h):
                used = getattr(p, "usedGpuMemory", None)
                out[int(p.pid)] = None if used is None else float(used)
        return list(out.items())
