"""One GPU as NVML sees it: found by UUID or PCI bus id (never by index), every reading optional.

NVML indexes devices in its own order, which CUDA_VISIBLE_DEVICES neither hides nor reorders;
the UUID (or PCI bus id) is the only safe link between a torch device and an NVML handle. Every
query may be unsupported on a given board or driver: it then returns None, once checked, for good.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

#: Clock event ("throttle") reason bits of nvmlDeviceGetCurrentClocksEventReasons, as named in nvml.h (0x200 and
#: 0x400 as pynvml's nvmlClocksThrottleReasonBoardLimit and nvmlClocksThrottleReasonReliability).
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x001: "gpu_idle",
    0x002: "applications_clocks_setting",
    0x004: "sw_power_cap",
    0x008: "hw_slowdown",
    0x010: "sync_boost",
    0x020: "sw_thermal_slowdown",
    0x040: "hw_thermal_slowdown",
    0x080: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
    0x200: "board_limit",
    0x400: "reliability",
}
#: Reasons that mean the card ran slower than it could because of power or heat. Not board_limit or reliability:
#: NVML's reference (docs.nvidia.com/deploy/nvml-api/group__nvmlClocksEventReasons.html) says "Board limit." and
#: "Reliability." and nothing of power or temperature, so they are named in throttle_reasons but raise no
#: power-or-heat flag (the card's power cap has its own bit, sw_power_cap).
POWER_OR_HEAT = frozenset({"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown",
                           "hw_power_brake_slowdown"})

NVML_FI_DEV_POWER_INSTANT = 186
NVML_DEVICE_MIG_ENABLE = 1
NVML_CLOCK_SM = 1
NVML_TEMPERATURE_GPU = 0
NVML_SUCCESS = 0


#: NVML's return codes for a query this device or driver does not have (nvml.h: NVML_ERROR_NOT_SUPPORTED,
#: NVML_ERROR_FUNCTION_NOT_FOUND); any other error is taken for a transient one.
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_FUNCTION_NOT_FOUND = 13


class NvmlUnavailable(Exception):
    """NVML cannot watch this device; the message says why in one line."""


def reason_names(bits: int) -> list[str]:
    """Names of the set clock-event bits, in bit order; unknown bits as hex."""
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if bits & bit]
    unknown = bits & ~sum(CLOCK_EVENT_REASONS)
    if unknown:
        names.append(f"unknown_0x{unknown:x}")
    return names


def load_nvml() -> ModuleType:
    """The pynvml module, initialised; NvmlUnavailable if the package or the driver library is missing."""
    try:
        import pynvml
    except ImportError:
        raise NvmlUnavailable("nvidia-ml-py is not installed (pip install nvidia-ml-py)") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        raise NvmlUnavailable(f"NVML failed to initialise: {err} (no NVIDIA driver on this machine?)") from None
    return pynvml


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlDevice:
    """Readings of one GPU; each method returns None when the board or driver does not support it."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self.nvml = nvml
        self.handle = handle
        self._unsupported: set[str] = set()
        self._power_sources: set[str] = set()

    @classmethod
    def open(cls, *, uuid: str | None, pci_bus_id: str | None = None, nvml: Any = None) -> NvmlDevice:
        """Handle for the GPU with this UUID (preferred) or PCI bus id."""
        nvml = nvml if nvml is not None else load_nvml()
        if uuid and uuid.startswith("MIG-"):
            raise NvmlUnavailable(f"{uuid} is a MIG instance: NVML reports no power or energy per instance")
        errors = []
        for lookup, key in ((nvml.nvmlDeviceGetHandleByUUID, uuid), (nvml.nvmlDeviceGetHandleByPciBusId, pci_bus_id)):
            if not key:
                continue
            try:
                handle = lookup(key)
            except nvml.NVMLError as err:
                errors.append(f"{key}: {err}")
                continue
            # A GPU in MIG mode is never a CUDA device itself, only its instances are: the device found
            # (by PCI bus id, since an instance's UUID is not the GPU's) is the parent, whose power and
            # energy the other instances share.
            if _is_mig(nvml, handle):
                raise NvmlUnavailable(f"{key} is a MIG instance (its GPU is in MIG mode): NVML reports power "
                                      "and energy only for the whole GPU, shared by every instance")
            return cls(nvml, handle)
        raise NvmlUnavailable("NVML has no device " + ("; ".join(errors) or "(no UUID or PCI bus id given)"))

    @property
    def power_source(self) -> str | None:
        """`instant` (NVML_FI_DEV_POWER_INSTANT) or `average` (nvmlDeviceGetPowerUsage: a 1 s average on Ampere and
        later, GA100 aside), whichever the power readings used; `average/instant` where the instant field failed for
        some readings and the average stood in; None before any reading."""
        return "/".join(sorted(self._power_sources)) or None

    def _query(self, name: str, call: Any, *args: Any) -> Any:
        """The call's value, or None: for good where the device does not support it (NOT_SUPPORTED, or a driver
        without the function), for this reading only on any other error (a transient one turned the query off
        for the rest of the run, and the energy's source then read `window too short`, a reviewer found)."""
        if name in self._unsupported:
            return None
        try:
            return call(self.handle, *args)
        except self.nvml.NVMLError as err:
            self._unsupported_if(name, getattr(err, "value", NVML_ERROR_NOT_SUPPORTED))
            return None

    def _unsupported_if(self, name: str, code: int) -> None:
        if code in (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND):
            self._unsupported.add(name)

    def instant_power_w(self) -> float | None:
        """The instant-power field, or None: for good where it is unsupported, for this reading on another error."""
        field = self._query("instant_power", self.nvml.nvmlDeviceGetFieldValues, [NVML_FI_DEV_POWER_INSTANT])
        if field is None:
            return None
        (field,) = field
        if field.nvmlReturn != NVML_SUCCESS:  # the field's own return code: the call itself succeeded
            self._unsupported_if("instant_power", field.nvmlReturn)
            return None
        return _field_value(field) / 1e3

    def power_w(self) -> float | None:
        """Instant board power when the driver has the field, else (and for a reading the field failed) the 1 s
        averaged power usage; power_source says which the readings came from."""
        value = self.instant_power_w()
        if value is not None:
            self._power_sources.add("instant")
            return value
        milliwatts = self._query("power_usage", self.nvml.nvmlDeviceGetPowerUsage)
        if milliwatts is None:
            return None
        self._power_sources.add("average")
        return milliwatts / 1e3

    def energy_mj(self) -> int | None:
        """Total energy since the driver loaded, in millijoules (Volta and later)."""
        return self._query("energy", self.nvml.nvmlDeviceGetTotalEnergyConsumption)

    def memory_used_bytes(self) -> int | None:
        info = self._query("memory", self.nvml.nvmlDeviceGetMemoryInfo)
        return None if info is None else int(info.used)

    def gpu_util_pct(self) -> float | None:
        rates = self._query("utilization", self.nvml.nvmlDeviceGetUtilizationRates)
        return None if rates is None else float(rates.gpu)

    def sm_clock_mhz(self) -> float | None:
        return self._query("sm_clock", self.nvml.nvmlDeviceGetClockInfo, NVML_CLOCK_SM)

    def temperature_c(self) -> float | None:
        return self._query("temperature", self.nvml.nvmlDeviceGetTemperature, NVML_TEMPERATURE_GPU)

    def clock_event_bits(self) -> int | None:
        """The clock-event reason bits, or None where neither name of the call answers."""
        # Renamed from "throttle reasons" in R535. An older pynvml has only the old name; a newer one has both, and on
        # an older driver the new one raises FUNCTION_NOT_FOUND (the library lacks the symbol) while the deprecated
        # one still answers.
        for name, function in (("clock_events", "nvmlDeviceGetCurrentClocksEventReasons"),
                               ("clock_throttle_reasons", "nvmlDeviceGetCurrentClocksThrottleReasons")):
            if getattr(self.nvml, function, None) is None:
                self._unsupported.add(name)
            bits = self._optional(name, function)
            if name not in self._unsupported:  # this one answers (None: a transient error, this reading only)
                return bits
        return None

    def compute_pids(self) -> list[int] | None:
        """The processes holding a CUDA compute context on the device, as NVML numbers them; None where it cannot
        tell."""
        try:
            processes = self._query("compute_processes", self.nvml.nvmlDeviceGetComputeRunningProcesses)
        except Exception:  # noqa: BLE001 - nvidia-ml-py's library-mismatch error is no NVMLError; a record is worth more
            return None
        return None if processes is None else sorted({int(p.pid) for p in processes})

    def _optional(self, name: str, function: str, *args: Any) -> Any:
        """_query of an NVML function an older nvidia-ml-py (or a stand-in) may not have: None without it."""
        call = getattr(self.nvml, function, None)
        return None if call is None else self._query(name, call, *args)

    def static_info(self) -> dict[str, Any]:
        """Read once per window: the settings that bound a measurement (the enforced power limit, the SM clock the
        applications clocks ask for, ECC, which costs memory bandwidth and capacity), the card's maximum SM clock
        (its hardware's, whatever a setting holds it to), the driver version and the name."""
        limit_mw = self._query("power_limit", self.nvml.nvmlDeviceGetEnforcedPowerLimit)
        ecc = self._optional("ecc_mode", "nvmlDeviceGetEccMode")  # (current, pending)
        try:
            driver = _decode(self.nvml.nvmlSystemGetDriverVersion())
        except self.nvml.NVMLError:
            driver = None
        name = self._query("name", self.nvml.nvmlDeviceGetName)
        return {
            "power_limit_w": None if limit_mw is None else limit_mw / 1e3,
            "power_limit_min_w": None if limit_mw is None else limit_mw / 1e3,
            "sm_clock_app_mhz": self._optional("sm_clock_app", "nvmlDeviceGetApplicationsClock", NVML_CLOCK_SM),
            "ecc_enabled": None if not ecc else bool(ecc[0]),
            "sm_clock_max_mhz": self._query("sm_clock_max", self.nvml.nvmlDeviceGetMaxClockInfo, NVML_CLOCK_SM),
            "driver_version": driver,
            "nvml_name": None if name is None else _decode(name),
        }


_VALUE_FIELDS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


def _field_value(field: Any) -> float:
    return float(getattr(field.value, _VALUE_FIELDS.get(field.valueType, "uiVal")))


def _is_mig(nvml: Any, handle: Any) -> bool:
    """Whether `handle` is a MIG instance or a GPU in MIG mode; boards without MIG answer "not supported"."""
    for query in ("nvmlDeviceIsMigDeviceHandle", "nvmlDeviceGetMigMode"):
        call = getattr(nvml, query, None)
        if call is None:
            continue
        try:
            answer = call(handle)
        except nvml.NVMLError:
            continue
        # nvmlDeviceIsMigDeviceHandle answers a ctypes c_uint (pynvml.py), which is never == 1; the MIG mode a list.
        current = answer[0] if isinstance(answer, (list, tuple)) else getattr(answer, "value", answer)
        if current == NVML_DEVICE_MIG_ENABLE:
            return True
    return False


def is_mig_instance(device_name: str, visible_devices: str | None) -> bool:
    """Whether the CUDA device is a MIG instance: CUDA names one "<GPU> MIG <profile>" (e.g. "NVIDIA H100 80GB
    HBM3 MIG 1g.10gb"), and CUDA_VISIBLE_DEVICES can select one only by its MIG- UUID."""
    return " MIG " in f" {device_name} " or any(
        entry.strip().startswith("MIG-") for entry in (visible_devices or "").split(","))


def torch_device_ids(index: int) -> tuple[str | None, str | None]:
    """(UUID as NVML spells it, PCI bus id) of CUDA device `index` as torch numbers it.

    torch gives the bare UUID; NVML prefixes a whole GPU's with GPU- and a MIG instance's with MIG-.
    """
    import os

    import torch

    props = torch.cuda.get_device_properties(index)
    uuid = getattr(props, "uuid", None)
    uuid = None if uuid is None else str(uuid)
    if uuid and not uuid.startswith(("GPU-", "MIG-")):
        mig = is_mig_instance(props.name, os.environ.get("CUDA_VISIBLE_DEVICES"))
        uuid = f"{'MIG' if mig else 'GPU'}-{uuid}"
    pci = None
    if hasattr(props, "pci_bus_id"):
        pci = f"{getattr(props, 'pci_domain_id', 0):08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
    return uuid, pci
