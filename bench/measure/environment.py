"""What machine and software a measurement came from, and what this machine can run."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import importlib.util
import os
import platform
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmbench
from lmbench.measure import provenance


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """Commit of the lmbench checkout this code runs from (suffixed `-dirty` with local changes to its code,
    provenance.CODE_PATHS), or of the checkout a non-editable install was built from; None when neither is known."""
    package = Path(lmbench.__file__).resolve().parent
    if (package.parent / ".git").exists():
        return provenance.checkout_commit(package.parent)
    return provenance.built_commit(package)


#: Variables of the process's environment that change what a measurement runs or how fast: each record keeps those
#: set (its worker inherits the lmbench process's environment), and `compare` warns when two runs differ in them.
VARIABLES = ("CUDA_LAUNCH_BLOCKING", "CUDA_DEVICE_MAX_CONNECTIONS", "CUDA_MODULE_LOADING", "CUDA_CACHE_DISABLE",
             "NVIDIA_TF32_OVERRIDE", "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "PYTORCH_CUDA_ALLOC_CONF",
             "PYTORCH_ALLOC_CONF", "PYTORCH_NO_CUDA_MEMORY_CACHING", "CUBLAS_WORKSPACE_CONFIG",
             "CUBLASLT_WORKSPACE_SIZE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TRITON_INTERPRET", "TORCH_LOGS",
             "TORCH_COMPILE_DEBUG")
#: Families of them: inductor's and dynamo's switches, NCCL's (and torch's own NCCL ones), cuBLAS's and cuDNN's.
VARIABLE_PREFIXES = ("TORCHINDUCTOR_", "TORCHDYNAMO_", "NCCL_", "TORCH_NCCL_", "CUBLAS_", "CUDNN_")
#: Left out: a variable that names a place (a cache directory differs from machine to machine and changes nothing
#: measured) or a host's own hardware (NCCL's network interface and adapters: two hosts alike differ there), NCCL's
#: debug output, and anything that may hold a secret.
_PLACE = re.compile(r"_(DIR|PATH|FILE)$|^NCCL_(SOCKET_IFNAME|IB_HCA|HOSTID|DEBUG\w*)$")
_SECRET = re.compile(r"TOKEN|KEY|SECRET|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)
#: Set by the lmbench process for its workers: the names of VARIABLES it was started with. torchrun gives its ranks
#: OMP_NUM_THREADS=1 and TORCH_NCCL_ASYNC_ERROR_HANDLING=1 of its own, the same for every run of a mode: a worker
#: records only what lmbench was started with (a run of ddp and none rows read as two environments).
STARTED_WITH = "LMBENCH_VARIABLES"


def variables(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The set VARIABLES (and VARIABLE_PREFIXES' families) of `environ` (this process's by default), by name; in a
    worker, those of them the lmbench process was started with (STARTED_WITH)."""
    environ = os.environ if environ is None else environ
    found = {name: value for name, value in sorted(environ.items())
             if (name in VARIABLES or name.startswith(VARIABLE_PREFIXES)) and not _PLACE.search(name)
             and not _SECRET.search(name)}
    started = environ.get(STARTED_WITH)
    if started is not None:
        found = {name: value for name, value in found.items() if name in started.split(",")}
    return found


def _set(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in ("", "0", "false", "no", "off")


def variable_warnings(environ: Mapping[str, str] | None = None, *, cuda: bool = True) -> list[str]:
    """Warnings for variables set that make a measurement something other than what it says it is; those of the
    GPU only with `cuda` (on a CPU TRITON_INTERPRET is how Triton's kernels run at all)."""
    found = variables(environ)
    warnings = []
    if _set(found.get("TORCHDYNAMO_DISABLE")):
        warnings.append("TORCHDYNAMO_DISABLE is set: torch.compile compiles nothing (kernels=compile and the "
                        "compiled kernel sets run eager)")
    if not cuda:  # the rest are the GPU's
        return warnings
    if _set(found.get("CUDA_LAUNCH_BLOCKING")):
        warnings.append("CUDA_LAUNCH_BLOCKING is set: every kernel launch waits for its kernel, so the host never "
                        "runs ahead of the GPU and the step times are not training's")
    if found.get("NVIDIA_TF32_OVERRIDE", "").strip() == "0":
        warnings.append("NVIDIA_TF32_OVERRIDE=0: the libraries run no TF32, whatever a configuration asks "
                        "(precision=tf32 measures fp32)")
    if _set(found.get("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE")):
        warnings.append("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE is set: cuBLAS runs fp32 matmuls in TF32 whatever a "
                        "configuration asks (precision=fp32 measures tf32)")
    if _set(found.get("PYTORCH_NO_CUDA_MEMORY_CACHING")):
        warnings.append("PYTORCH_NO_CUDA_MEMORY_CACHING is set: every CUDA allocation goes to the driver, which "
                        "slows the steps and changes the memory figures")
    if _set(found.get("TRITON_INTERPRET")):
        warnings.append("TRITON_INTERPRET is set: Triton's kernels run in its interpreter on the CPU, not on the "
                        "GPU")
    return warnings


def nvml_driver_version() -> str | None:
    from lmbench.measure.nvml import NvmlUnavailable, load_nvml

    try:
        nvml = load_nvml()
        version = nvml.nvmlSystemGetDriverVersion()
    except (NvmlUnavailable, Exception):  # noqa: BLE001 - any NVML failure means "unknown", never a crash
        return None
    return version.decode() if isinstance(version, bytes) else version


def nvml_rows(device_count: int) -> list[tuple[str, str]]:
    """NVML's view of each visible GPU: power limit and which power/energy readings it supports."""
    from lmbench.measure.nvml import NvmlDevice, NvmlUnavailable, load_nvml, torch_device_ids

    try:
        nvml = load_nvml()
    except NvmlUnavailable as err:
        return [("NVML", f"unavailable: {err}")]
    rows = [("NVML", f"driver {nvml_driver_version() or 'unknown'}")]
    for index in range(device_count):
        uuid, pci = torch_device_ids(index)
        try:
            device = NvmlDevice.open(uuid=uuid, pci_bus_id=pci, nvml=nvml)
        except NvmlUnavailable as err:
            rows.append((f"NVML cuda:{index}", f"unavailable: {err}"))
            continue
        info = device.static_info()
        limit = "unknown" if info["power_limit_w"] is None else f"{info['power_limit_w']:.0f} W"
        energy = "yes" if device.energy_mj() is not None else "no (power is integrated instead)"
        instant = "yes" if device.instant_power_w() is not None else "no (1 s averaged power usage instead)"
        rows.append((f"NVML cuda:{index}", f"power limit {limit}; energy counter: {energy}; instant power: {instant}"))
    return rows


def _proc_fields(path: str) -> list[tuple[str, str]]:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in text.splitlines()) if _]


def usable_cores() -> int | None:
    """The CPUs this process may run on (the union of its threads' affinity masks, e.g. a Slurm or cgroup share:
    lmbench.measure.hostload.affinity, not the calling thread's, which OpenMP's binding pins to one core), else all
    of them."""
    from lmbench.measure.hostload import affinity

    cpus = affinity()
    return len(cpus) if cpus else os.cpu_count()


def cpu_info() -> dict[str, Any]:
    """The CPU as a device: model, physical and logical cores, the cores this process may use, torch's
    intra-op threads and total memory, so two machines are told apart as GPUs are (Linux /proc; else less)."""
    import torch

    cpuinfo = _proc_fields("/proc/cpuinfo")
    model = next((v for k, v in cpuinfo if k in ("model name", "Model", "Processor")), None)
    cores, physical = set(), "0"
    for key, value in cpuinfo:
        if key == "physical id":
            physical = value
        elif key == "core id":
            cores.add((physical, value))
    memory = next((v for k, v in _proc_fields("/proc/meminfo") if k == "MemTotal"), None)
    return {
        "type": "cpu",
        "name": model or platform.processor() or platform.machine(),
        "count": os.cpu_count(),
        "physical_cores": len(cores) or None,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "memory_total_bytes": int(memory.split()[0]) * 1024 if memory else None,
    }


def device_info(device: Any) -> dict[str, Any]:
    """Name, UUID, capability and memory of a torch device (only `type` for the CPU)."""
    import torch

    if device.type != "cuda":
        return cpu_info()
    from lmbench.measure.nvml import torch_device_ids

    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    uuid, _ = torch_device_ids(index)
    return {
        "type": "cuda",
        "index": index,
        "name": props.name,
        "uuid": uuid,
        "mig": bool(uuid and uuid.startswith("MIG-")),
        "capability": f"{props.major}.{props.minor}",
        "memory_total_bytes": props.total_memory,
        "multiprocessors": props.multi_processor_count,
        "count": torch.cuda.device_count(),
        "driver": nvml_driver_version(),
    }


def capture(device: Any) -> dict[str, Any]:
    """The `env` block of a result record."""
    import torch

    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "lmbench": lmbench.__version__,
        "lmbench_commit": git_commit(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "torchao": _version("torchao"),
        "liger_kernel": _version("liger-kernel"),
        "device": device_info(device),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "env_vars": variables(),
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


@dataclass(frozen=True, kw_only=True)
class Platform:
    """What the machine running the parent can do; decides which configurations are skipped."""

    cuda_available: bool
    device_count: int
    capability: tuple[int, int] | None
    """Compute capability of cuda:0, None without CUDA."""
    torch_version: str
    apex_available: bool
    liger_available: bool


def probe_platform() -> Platform:
    import torch

    cuda = torch.cuda.is_available()
    return Platform(
        cuda_available=cuda,
        device_count=torch.cuda.device_count() if cuda else 0,
        capability=torch.cuda.get_device_capability(0) if cuda else None,
        torch_version=torch.__version__,
        apex_available=importlib.util.find_spec("apex") is not None,
        liger_available=importlib.util.find_spec("liger_kernel") is not None,
    )


def describe() -> list[tuple[str, str]]:
    """Rows of `lmbench env`: what this machine is and which optional back-ends it has."""
    import torch

    info = probe_platform()
    rows = [
        ("lmbench", f"{lmbench.__version__} ({git_commit() or 'commit unknown: no git checkout, or git cannot say'})"),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("triton", _version("triton") or "not installed"),
        ("transformers", _version("transformers") or "not installed"),
        ("CUDA (torch build)", torch.version.cuda or "none (CPU build)"),
    ]
    if info.cuda_available:
        rows.append(("driver", nvml_driver_version() or "unknown (NVML unavailable)"))
        for index in range(info.device_count):
            d = device_info(torch.device("cuda", index))
            rows.append((f"cuda:{index}", f"{d['name']}, sm_{d['capability'].replace('.', '')}, "
                                          f"{d['memory_total_bytes'] / 2**30:.1f} GiB, {d['uuid']}"))
    else:
        rows.append(("GPU", "none visible: runs use the CPU (device=cpu)"))
    cpu = cpu_info()
    memory = f", {cpu['memory_total_bytes'] / 2**30:.1f} GiB" if cpu["memory_total_bytes"] else ""
    rows.append(("cpu", f"{cpu['name']}, {cpu['physical_cores'] or '?'} physical / {cpu['logical_cores']} logical "
                        f"cores ({cpu['usable_cores']} usable), torch threads {cpu['torch_threads']}{memory}"))
    rows.extend(nvml_rows(info.device_count))
    rows.append(("apex", "installed" if info.apex_available else "not installed"))
    extra = "the {} extra: pip install '.[{}]' in lmbench's checkout"
    rows.append(("liger-kernel", "installed" if info.liger_available
                 else f"not installed ({extra.format('liger', 'liger')})"))
    rows.append(("torchao (FP8)", _version("torchao") or f"not installed ({extra.format('fp8', 'fp8')})"))
    return rows
