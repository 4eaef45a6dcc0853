"""A small stand-in for pynvml: the hardware CI cannot have, with readings the tests choose.

It fails as the real library does (pynvml.py, nvidia-ml-py): a handle not found is NOT_FOUND or INVALID_ARGUMENT,
a query the board lacks NOT_SUPPORTED, a function the driver lacks FUNCTION_NOT_FOUND, and the MIG handle check
answers a ctypes c_uint.
"""

from __future__ import annotations

import re
from ctypes import c_uint
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_UNKNOWN = 999


class NVMLError(Exception):
    def __init__(self, value: int = NVML_ERROR_NOT_SUPPORTED) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class FakeGpu:
    uuid: str
    pci_bus_id: str
    power_mw: Callable[[], int] = lambda: 200_000
    instant_power: bool = True
    instant_power_returns: list[int | Exception] = field(default_factory=list)
    """The instant-power field's next answers, one a call before it reads normally again: a per-field return code
    (nvmlReturn, e.g. 999 for a transient failure) or an NVMLError the call raises."""
    energy_mj: list[int | Exception] | None = None
    """Successive counter readings (an NVMLError among them fails that reading); None when the counter is unsupported.
    Past the last one a reading fails as NVML's unknown error."""
    clock_event_bits: int = 0
    event_reasons_function: bool = True
    """False: a driver older than R535, whose library lacks nvmlDeviceGetCurrentClocksEventReasons (pynvml has it and
    raises FUNCTION_NOT_FOUND); the deprecated nvmlDeviceGetCurrentClocksThrottleReasons still answers."""
    unsupported: set[str] = field(default_factory=set)
    used_bytes: int = 10 * 2**30
    util_pct: int = 97
    sm_clock: int = 1980
    temp_c: int = 61
    mig_mode: int = 0
    """1 when the GPU is in MIG mode (CUDA then sees only its instances)."""
    mig_device: bool = False
    """A MIG instance's own handle (nvmlDeviceIsMigDeviceHandle answers 1)."""
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

    def _gpu(self, handle: FakeGpu, what: str, support: str | None = None) -> FakeGpu:
        """The call's GPU, logged as `what`; NOT_SUPPORTED where the test made `support` (else `what`) unsupported."""
        self.calls.append(what)
        if (support or what) in handle.unsupported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return handle

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGpu:
        if not re.fullmatch(r"(GPU|MIG)-[0-9a-fA-F-]+", uuid):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetHandleByPciBusId(self, bus_id: str) -> FakeGpu:
        for gpu in self.gpus:
            if gpu.pci_bus_id == bus_id:
                return gpu
        if not re.fullmatch(r"([0-9a-fA-F]{4,8}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]", bus_id):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetMigMode(self, handle: FakeGpu) -> list[int]:
        gpu = self._gpu(handle, "mig_mode")
        return [gpu.mig_mode, gpu.mig_mode]

    def nvmlDeviceIsMigDeviceHandle(self, handle: FakeGpu) -> c_uint:
        return c_uint(int(handle.mig_device))

    def nvmlDeviceGetFieldValues(self, handle: FakeGpu, ids: list[int]) -> list[Any]:
        gpu = self._gpu(handle, "field_values")
        assert ids == [186]
        answer = gpu.instant_power_returns.pop(0) if gpu.instant_power_returns else 0
        if isinstance(answer, Exception):
            raise answer
        if not gpu.instant_power:
            answer = NVML_ERROR_NOT_SUPPORTED
        value = gpu.power_mw() if answer == 0 else 0
        return [SimpleNamespace(nvmlReturn=answer, valueType=1, value=SimpleNamespace(uiVal=value))]

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        return self._gpu(handle, "power_usage").power_mw()

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeGpu) -> int:
        gpu = self._gpu(handle, "energy")
        if gpu.energy_mj is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if not gpu.energy_mj:
            raise NVMLError(NVML_ERROR_UNKNOWN)
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
        gpu = self._gpu(handle, "clock_events")
        if not gpu.event_reasons_function:
            raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
        return gpu.clock_event_bits

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: FakeGpu) -> int:
        return self._gpu(handle, "clock_throttle_reasons", "clock_events").clock_event_bits

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
