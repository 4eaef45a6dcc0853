"""The worker: one configuration, one fresh process, one result file.

    python -m lmbench.worker JOB_JSON RESULT_JSON

The parent writes the job (the configuration), starts this module with a wall-clock timeout, and
reads the result. Whatever happens in here (OOM, NaN loss, an exception) ends as a result with a
status; only a hard crash or a timeout leaves no file, and the parent records that instead.
"""

from __future__ import annotations

import json
import math
import sys
import traceback
from pathlib import Path
from typing import Any

from lmbench.config import Config
from lmbench.results import write_json

OOM_MARKERS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")


def classify_failure(error: BaseException) -> str:
    """`oom` for memory exhaustion (CUDA or host), else `error`."""
    import torch

    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return "oom"
    if isinstance(error, RuntimeError) and any(m in str(error) for m in OOM_MARKERS):
        return "oom"
    return "error"


def measure(config: Config, *, timeline_path: Path | None = None) -> dict[str, Any]:
    """Build, warm up and time `config` in this process; returns the result payload.

    The telemetry timeline, when there is one, is written to `timeline_path`.
    """
    import torch

    from lmbench import metrics
    from lmbench.flops import matmul_params, palm_flops_per_token
    from lmbench.precision import matmul_mode
    from lmbench.telemetry import Telemetry
    from lmbench.timer import StepTimer
    from lmbench.training import TrainingStep

    device = torch.device(config.device)
    with matmul_mode(config.precision):
        step = TrainingStep(config, device)
        for _ in range(config.warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        timer = StepTimer(device)
        telemetry = (Telemetry.for_device(device, period_s=config.telemetry_period_s) if config.telemetry
                     else Telemetry(None, unavailable="turned off (telemetry=false)"))
        losses_t = []
        with telemetry.window(), timer.window():
            for _ in range(config.steps):
                with timer.step():
                    losses_t.append(step())
    losses = torch.stack(losses_t).cpu().tolist()
    step_times = timer.times_s()

    spec = step.spec
    result = metrics.throughput(step_times_s=step_times, tokens_per_step=config.tokens_per_step,
                                samples_per_step=config.batch_size * config.grad_accum)
    flops = palm_flops_per_token(n_matmul_params=matmul_params(step.base_model), n_layers=spec.n_layers,
                                 n_heads=spec.n_heads, head_dim=spec.head_dim, seq_len=config.seq_len)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    result.update(metrics.flops_utilisation(flops_per_token=flops,
                                            tokens_per_s_per_device=result["tokens_per_s_per_device"],
                                            device_name=device_name, precision=config.precision))
    result.update(metrics.loss_health(losses))
    result.update({
        "window_s": timer.window_s,
        "steps_measured": len(step_times),
        "overflow_skipped_steps": step.precision.skipped_steps,
        "loss_scale_final": step.precision.loss_scale,
        "mem_peak_allocated_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "mem_peak_reserved_bytes": torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None,
    })
    result.update(telemetry.summary(tokens=config.tokens_per_step * config.steps))
    if timeline_path is not None and telemetry.samples:
        telemetry.write_timeline(timeline_path)
    warnings = []
    if result.get("throttled_power_or_heat"):
        warnings.append(f"clocks were throttled for power or heat during the window "
                        f"({', '.join(result['throttle_reasons'])}); the figures may not be representative")
    status, reason = "ok", None
    if result["nonfinite_losses"]:
        first_bad = next(i for i, v in enumerate(losses) if not math.isfinite(v))
        status, reason = "diverged", f"non-finite loss at measured step {first_bad} of {len(losses)}"
    return {"status": status, "reason": reason, "metrics": result, "losses": losses, "step_times_s": step_times,
            "warnings": warnings}


def run_job(job_path: Path, result_path: Path) -> int:
    job = json.loads(job_path.read_text())
    config = Config.from_mapping(job["config"])
    import torch

    from lmbench import environment

    device = torch.device(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    env = environment.capture(device)
    try:
        timeline = job.get("timeline_path")
        payload = measure(config, timeline_path=Path(timeline) if timeline else None)
    except Exception as error:  # noqa: BLE001 - every failure of a config is data, not a crash
        traceback.print_exc()
        status = classify_failure(error)
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        payload = {"status": status, "reason": f"{type(error).__name__}: {first_line}"[:500], "metrics": None,
                   "losses": None, "step_times_s": None}
    write_json(result_path, {**payload, "env": env})
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m lmbench.worker JOB_JSON RESULT_JSON", file=sys.stderr)
        return 2
    return run_job(Path(args[0]), Path(args[1]))


if __name__ == "__main__":
    sys.exit(main())
