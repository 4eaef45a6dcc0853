"""A small stand-in for pynvml: the hardware CI cannot have, with readings the tests choose."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable


class NVMLError(Exception):
    def __init__(self, value: int = 3) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class FakeGpu:
    uuid: str
    pci_bus_id: str
    power_mw: Callable[[], int] = lambda: 200_000
    instant_power: bool = True
    energy_mj: list[int] | None = None
    """Successive counter readings; None when the counter is unsupported."""
    clock_event_bits: int = 0
    unsupported: set[str] = field(default_factory=set)
    used_bytes: int = 10 * 2**30
    util_pct: int = 97
    sm_clock: int = 1980
    temp_c: int = 61
    mig_mode: int = 0
    """1 when the GPU is in MIG mode (CUDA then sees only its instances)."""
    compute_pids: list[int] = field(default_factory=list)
    """The processes NVML lists with a compute context on the GPU."""
    power_limit_mw: int = 700_000
    app_clock_mhz: int = 1755
    ecc: int = 1


class FakeNvml:
    NVMLError = NVMLError

    def __init__(self, gpus: list[FakeGpu]) -> None:
        self.gpus = gpus
        self.calls: list[str] = []

    def _gpu(self, handle: FakeGpu, what: str) -> FakeGpu:
        self.calls.append(what)
        if what in handle.unsupported:
            raise NVMLError(3)
        return handle

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGpu:
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu
        raise NVMLError(13)

    def nvmlDeviceGetHandleByPciBusId(self, bus_id: str) -> FakeGpu:
        for gpu in self.gpus:
            if gpu.pci_bus_id == bus_id:
                return gpu
        raise NVMLError(13)

    def nvmlDeviceGetMigMode(self, handle: FakeGpu) -> list[int]:
        gpu = self._gpu(handle, "mig_mode")
        return [gpu.mig_mode, gpu.mig_mode]

    def nvmlDeviceIsMigDeviceHandle(self, handle: FakeGpu) -> int:
        return 0

    def nvmlDeviceGetFieldValues(self, handle: FakeGpu, ids: list[int]) -> list[Any]:
        gpu = self._gpu(handle, "field_values")
        assert ids == [186]
        if not gpu.instant_power:
            return [SimpleNamespace(nvmlReturn=3, valueType=1, value=SimpleNamespace(uiVal=0))]
        return [SimpleNamespace(nvmlReturn=0, valueType=1, value=SimpleNamespace(uiVal=gpu.power_mw()))]

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        return self._gpu(handle, "power_usage").power_mw()

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeGpu) -> int:
        gpu = self._gpu(handle, "energy")
        if gpu.energy_mj is None:
            raise NVMLError(3)
        value = gpu.energy_mj.pop(0)
        if isinstance(value, Exception):  # a reading that fails (a transient NVML error)
            raise value
        return value

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu) -> Any:
        return SimpleNamespace(used=self._gpu(handle, "memory").used_bytes, total=80 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu) -> Any:
        return SimpleNamespace(gpu=self._gpu(handle, "utilization").util_pct, memory=50)

    def nvmlDeviceGetClockInfo(self, handle: FakeGpu, clock: int) -> int:
        return self._gpu(handle, "sm_clock").sm_clock

    def nvmlDeviceGetMaxClockInfo(self, handle: FakeGpu, clock: int) -> int:
        self._gpu(handle, "sm_clock_max")
        return 1980

    def nvmlDeviceGetTemperature(self, handle: FakeGpu, sensor: int) -> int:
        return self._gpu(handle, "temperature").temp_c

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeGpu) -> int:
        return self._gpu(handle, "clock_events").clock_event_bits

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeGpu) -> int:
        return self._gpu(handle, "power_limit").power_limit_mw

    def nvmlDeviceGetApplicationsClock(self, handle: FakeGpu, clock: int) -> int:
        return self._gpu(handle, "sm_clock_app").app_clock_mhz

    def nvmlDeviceGetEccMode(self, handle: FakeGpu) -> list[int]:
        gpu = self._gpu(handle, "ecc_mode")
        return [gpu.ecc, gpu.ecc]

    def nvmlDeviceGetName(self, handle: FakeGpu) -> bytes:
        self._gpu(handle, "name")
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeGpu) -> list[Any]:
        gpu = self._gpu(handle, "compute_processes")
        return [SimpleNamespace(pid=pid, usedGpuMemory=2**30) for pid in gpu.compute_pids]

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.159.04"
