"""The worker: one configuration, one fresh process (or one per rank under torchrun), one result file.

    python -m lmbench.run.worker JOB_JSON RESULT_JSON

The parent writes the job (the configuration), starts this module with a wall-clock timeout, and
reads the result. Whatever happens in here (OOM, NaN loss, an exception) ends as a result with a
status; only a hard crash or a timeout leaves no file, and the parent records that instead.
Under torchrun every rank measures its own window and rank 0 alone writes the result.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmbench.analyze.results import write_json
from lmbench.measure import procstat
from lmbench.plan.config import Config
from lmbench.plan.layout import pipeline_split

#: Fallback start of the process where /proc cannot say (the module is imported at start-up).
_IMPORTED_AT = time.monotonic()

#: Whether main() paused the cyclic garbage collector for the start-up's imports (measure() resumes it).
_gc_paused = False

OOM_MARKERS = ("out of memory", "OutOfMemoryError", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
               "can't allocate memory", "MemoryCapExceeded")


def classify_failure(error: BaseException) -> str:
    """`oom` for memory exhaustion (CUDA or host), else `error`."""
    import torch

    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return "oom"
    if isinstance(error, RuntimeError) and any(m in str(error) for m in OOM_MARKERS):
        return "oom"
    return "error"


def worker_device(config: Config, info: Any) -> Any:
    """The torch device this process trains on, always with an index on CUDA.

    Under torchrun each rank takes the GPU of its local rank; `cuda` alone means the current device
    (torch.cuda.set_device and NVML lookups need the index spelled out).
    """
    import torch

    device = torch.device(config.device)
    if device.type != "cuda":
        return device
    if info is not None:
        return torch.device("cuda", info.local_rank)
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


def _rank_timeline(path: Path | None, rank: int, world: int) -> Path | None:
    if path is None or world == 1:
        return path
    return path.with_name(f"{path.stem}-rank{rank}{path.suffix}")


def _rank_trace(path: Path, rank: int, world: int) -> Path:
    """KEY-rN.json.gz, or KEY-rN-rankR.json.gz for each rank of a multi-process job."""
    if world == 1:
        return path
    stem = path.name.removesuffix(".json.gz")
    return path.with_name(f"{stem}-rank{rank}.json.gz")


def _watches_attention(config: Config) -> bool:
    """Whether the first warmup step runs under lmbench.models.sdpa.AttentionWatch: an eager step of one process or
    of DDP's (torch.compile's graphs and CUDA graphs' captures are no place for a dispatch mode; DTensors,
    DataParallel's replica threads and a pipeline's schedule are left alone); not a time-to-target run, whose clock
    runs through warmup and would carry the watch's host cost (a few microseconds an operator)."""
    return (config.warmup > 0 and config.kernels != "compile" and config.parallel in ("none", "ddp")
            and not config.has_target)


def process_age_s() -> float:
    """Seconds since this process started: interpreter, imports, CUDA context and model build included.

    Linux gives the start in clock ticks since boot (/proc/self/stat, field 22); elsewhere the time
    since this module was imported is the nearest figure.
    """
    try:
        started_s = int(procstat.field("self", procstat.START_TICKS) or "") / os.sysconf("SC_CLK_TCK")
        return float(Path("/proc/uptime").read_text().split()[0]) - started_s
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED_AT


class _TrainingPeaks:
    """Allocator peaks of the window's training steps: an evaluation inside the window (a quality run's) is set
    aside, since it may build what training never does (whole logits where the kernel set fuses the loss)."""

    def __init__(self, devices: list[Any]) -> None:
        self.devices = devices
        self.cuda = devices[0].type == "cuda"
        self._before = [(0, 0)] * len(devices)

    def _now(self) -> list[tuple[int, int]]:
        import torch

        return [(torch.cuda.max_memory_allocated(d), torch.cuda.max_memory_reserved(d)) for d in self.devices]

    @contextlib.contextmanager
    def excluded(self) -> Iterator[None]:
        """Keep the peaks so far, and start counting afresh after the block (host-side allocator statistics:
        no device synchronisation)."""
        import torch

        if self.cuda:
            self._before = [(max(a, b), max(r, s)) for (a, r), (b, s) in zip(self._before, self._now())]
        yield
        if self.cuda:
            for device in self.devices:
                torch.cuda.reset_peak_memory_stats(device)

    def read(self) -> dict[str, Any]:
        """The window's peaks: the largest over the devices used, and each device's when several."""
        if not self.cuda:
            return {"mem_peak_allocated_bytes": None, "mem_peak_reserved_bytes": None}
        both = [(max(a, b), max(r, s)) for (a, r), (b, s) in zip(self._before, self._now())]
        allocated, reserved = [a for a, _ in both], [r for _, r in both]
        peaks = {"mem_peak_allocated_bytes": max(allocated), "mem_peak_reserved_bytes": max(reserved)}
        if len(self.devices) > 1:
            peaks.update(mem_peak_allocated_bytes_per_device=allocated, mem_peak_reserved_bytes_per_device=reserved)
        return peaks


def measure(config: Config, *, timeline_path: Path | None = None, trace_path: Path | None = None
            ) -> dict[str, Any] | None:
    """Build, warm up and time `config` in this process; returns the result payload (None off rank 0).

    The telemetry timeline, when there is one, is written to `timeline_path` (one file per rank), and
    with `config.profile` the profiler's trace of the extra steps after the window to `trace_path`.
    """
    import torch

    from lmbench.measure import environment, gpushare, hostload, hostmem, metrics
    from lmbench.measure.flops import head_extra_flops_per_token, palm_flops_per_token, recompute_flops_per_token
    from lmbench.measure.mathmode import matmul_mode
    from lmbench.measure.telemetry import Telemetry, energy_warning, for_devices, power_trace, sampling_warning
    from lmbench.measure.timer import StepTimer
    from lmbench.models.compiled import WindowGraphs, attention_rewrites, describe_compiled
    from lmbench.models.kernel_sets import KERNEL_SETS
    from lmbench.models.registry import MODELS, import_family
    from lmbench.models.sdpa import AttentionWatch, fell_back
    from lmbench.plan.feasibility import host_read_in_step
    from lmbench.plan.layout import PIPELINES
    from lmbench.run import distributed
    from lmbench.run.training import TrainingStep, devices_used

    # Where start-up goes (each phase's end as the process's age): interpreter and imports (the model family's
    # library, transformers, included), the device (CUDA context) and process group, then the model, optimizer
    # and kernel set.
    import_family(MODELS[config.model].family)
    imported_s = process_age_s()
    _resume_gc()
    info = distributed.RankInfo.from_env()
    device = worker_device(config, info)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # The primary context is created lazily (cudaSetDevice on the current device does nothing): a
        # synchronisation creates it here rather than at the model's first allocation.
        torch.cuda.synchronize(device)
    backend = distributed.init(info, device, timeout_s=config.timeout_s) if info else None
    if info:
        distributed.agree_on(config.key)
    rank, world = (info.rank, info.world_size) if info else (0, 1)
    if device.type == "cuda" and config.max_memory_bytes:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, config.max_memory_bytes / total), device)
    device_ready_s = process_age_s()
    with matmul_mode(config.precision):
        step = TrainingStep(config, device, rank=rank, world=world)
        if device.type == "cuda":
            # Every rank builds the whole model before cutting or sharding it (tp, pp, fsdp): the freed blocks stayed
            # in the caching allocator, and the window's reserved peak (and NVML's memory used) started from them,
            # above what training a shard or a stage takes. Warmup grows the cache again to what a step needs.
            torch.cuda.empty_cache()
        built_s = process_age_s()
        # Ranks of a pipeline hold different stages: there is nothing to compare between them.
        checksums = world > 1 and config.parallel not in PIPELINES
        initial_checksum = distributed.param_checksum(step.base_model) if checksums else None
        budget = hostmem.Budget(config.max_memory_bytes if device.type == "cpu" else 0)
        # Under nn.DataParallel every GPU it replicates over spends memory and energy on the tokens.
        devices = devices_used(config, device)
        quality = _convergence(config, step, devices, world) if config.evaluates else None
        # What a suite's wall time is made of besides the window: start-up, then warmup (compilation).
        startup_s = process_age_s()
        # A time-to-target run's clock runs from here to its target, mostly after the window: its host is watched
        # over the whole span too, or other work there would slow the ranked figure without a flag.
        to_target = hostload.HostLoad() if quality is not None and config.has_target else None
        if quality is not None:
            # The host's watch starts before the clock, so its span covers all of time_to_target_s.
            quality.start(before_clock=to_target.start if to_target is not None else lambda: None)
        warmup_start = time.perf_counter()
        done = 0
        # Warmup steps are timed too, as their own distribution (compilation, autotuning, allocator growth).
        warmup_timer = StepTimer(device)
        # The first warmup step's operators say which attention kernel SDPA picked (a dispatch mode: not under
        # torch.compile, whose graphs it would break, nor over DTensors, threads or a pipeline's schedule).
        attention = AttentionWatch() if _watches_attention(config) else None
        warmup_losses = _StepLosses()
        # The warmup's peaks (compile_graphs: they stand in for the window's, below), an evaluation's set aside.
        warmup_peaks = _TrainingPeaks(devices)
        with warmup_timer.window():
            for _ in range(config.warmup):
                watched = attention if attention is not None and done == 0 else contextlib.nullcontext()
                with warmup_timer.step(), watched:
                    loss = step()
                warmup_losses.add(loss)
                done += 1
                if done == 1 and step.compile_graphs and device.type == "cuda":
                    # torch.compile's CUDA graphs: the window's replays allocate nothing, so its allocated peak
                    # would leave out activations and gradients. The peak of the warmup's later steps, which record
                    # the graphs (the first compiles them and autotunes, in memory the step never needs again),
                    # stands in for them (lmbench.run.stepgraph.with_graph_peak).
                    for used in devices:
                        torch.cuda.synchronize(used)
                        torch.cuda.reset_peak_memory_stats(used)
                budget.check()
                if quality is not None and quality.due(done):
                    with warmup_timer.paused(), warmup_peaks.excluded():
                        quality.evaluate(done, warmup_timer.device_s)
        recorded_peak = None
        if device.type == "cuda":
            for used in devices:
                torch.cuda.synchronize(used)
            if step.compile_graphs:
                recorded_peak = warmup_peaks.read()["mem_peak_allocated_bytes"]
            for used in devices:
                torch.cuda.reset_peak_memory_stats(used)
        warmup_s = time.perf_counter() - warmup_start - (quality.eval_s if quality is not None else 0.0)
        host_window = hostmem.Budget(0)
        training_peaks = _TrainingPeaks(devices)
        timer = StepTimer(device)
        telemetry = (for_devices(devices, period_s=config.telemetry_period_s) if config.telemetry
                     else Telemetry(None, unavailable="turned off (telemetry=false)"))
        # Loss-scale overflows so far (warmup's): read outside the window, where the device is idle.
        skipped_before = step.precision.skipped_steps
        losses_t = _StepLosses()
        window_graphs = WindowGraphs(cuda_graphs=step.compile_graphs) if config.kernels == "compile" else None
        # The host's watch spans the timed window: it opens after the ranks' barrier and closes once the timer's
        # closing synchronisation has drained the window's steps.
        load = hostload.HostLoad()
        # Ranks open their timed windows together, so per-step times and power traces line up: the barrier comes
        # after each rank's telemetry set-up, right before the energy counter and the timer (Telemetry.window).
        with telemetry.window(ready=distributed.barrier), load.window(), timer.window():
            for _ in range(config.steps):
                with timer.step():
                    loss = step()
                losses_t.add(loss)
                done += 1
                if quality is not None and quality.due(done):
                    # Outside the window: its timer, wall time, samples, energy and host watch leave the evaluation
                    # out (the host's pause comes after the timer's drain of the window's steps).
                    with timer.paused(), telemetry.paused(), training_peaks.excluded(), load.paused(), \
                            (window_graphs.excluded() if window_graphs else contextlib.nullcontext()):
                        quality.evaluate(done, warmup_timer.device_s + timer.device_s)
        load_span = load.span
        # The window's own: the profiled steps and a quality run's further steps come after it.
        skipped_window = step.precision.skipped_steps - skipped_before
        compiled = None
        if window_graphs is not None:
            step.kernels_applied, *compiled = describe_compiled(config.compile_mode, cuda_graphs=step.compile_graphs)
            compiled.extend(window_graphs.read())
        # Read before profiling: the profiler's steps and buffers are not part of the measurement.
        peaks = training_peaks.read()
        if step.graph is not None:
            peaks = step.graph.with_capture_peak(peaks)
        elif recorded_peak is not None:
            from lmbench.run.stepgraph import with_graph_peak

            peaks = with_graph_peak(peaks, recorded_peak)
        busy_s = sum(step.pipeline.clock.busy_s(config.steps)) if step.pipeline else None
        host_growth = host_window.growth_bytes if device.type == "cpu" else None
        # What --max-memory caps on a CPU: the growth since training started (optimizer state and activations).
        training_growth = budget.growth_bytes if device.type == "cpu" else None
        if quality is not None:
            _train_on(config, step, quality, done, warmup_timer.device_s + timer.device_s, budget)
        target_load = to_target.stop() if to_target is not None else None
        # --max-memory caps training's growth: checked before the profiled steps, whose trace buffers are the
        # profiler's (checked after them, a profiled row ran out of a cap its unprofiled twin and tune's probes fit).
        budget.check()
        profiled, profile_error = None, None
        if config.profile:
            from lmbench.run.profiling import ProfileError, profile_steps

            trace = _rank_trace(trace_path or Path(tempfile.mkdtemp()) / "trace.json.gz", rank, world)
            try:
                profiled = {**profile_steps(step, device, trace), "trace": str(trace)}
            except ProfileError as error:  # after the window: it costs the breakdown, not the figures
                traceback.print_exc()
                profile_error = str(error)
    own_timeline = _rank_timeline(timeline_path, rank, world)
    if own_timeline is not None and telemetry.samples:
        telemetry.write_timeline(own_timeline)
    shape = step.layout
    local = {
        "step_times_s": timer.times_s(),
        "window_s": timer.window_s,
        "startup_s": startup_s,
        "startup_imports_s": imported_s,
        "startup_device_s": device_ready_s - imported_s,
        "startup_build_s": built_s - device_ready_s,
        "warmup_s": warmup_s,
        "warmup_step_times_s": warmup_timer.times_s(),
        "losses": losses_t.values() if step.owns_loss else None,
        "warmup_losses": warmup_losses.values() if step.owns_loss else None,
        "pp_busy_s": busy_s,
        **peaks,
        "mem_host_peak_growth_bytes": host_growth,
        "mem_host_training_growth_bytes": training_growth,
        "mem_host_peak_reset": device.type != "cpu" or (budget.peak_reset and host_window.peak_reset),
        "profile": profiled,
        "profile_error": profile_error,
        # Each process's share of the tokens, for its own energy per token.
        "telemetry": telemetry.summary(tokens=shape.global_batch_tokens * config.steps / world),
        "power_trace": power_trace(telemetry.samples),
        "param_checksum": distributed.param_checksum(step.base_model) if checksums else None,
        # Every card this process trained on (nn.DataParallel's replicas among them): one datasheet peak needs one.
        "device_names": sorted({torch.cuda.get_device_name(used) for used in devices if used.type == "cuda"}),
        "quality": quality.fields() if quality is not None else None,
        "host_load": load_span,
        "host_load_to_target": target_load,
        "overflow_skipped_steps": skipped_window,
        "compiled_graphs": compiled[0] if compiled else None,
        "compile_graph_breaks": compiled[1] if compiled else None,
        "compiled_graphs_in_window": compiled[2] if compiled else None,
        "cudagraph_recordings_in_window": compiled[3] if compiled else None,
        "overflow_skipped_warmup_steps": skipped_before,
        "attention_kernel": attention.kernel if attention is not None else None,
    }
    per_rank = distributed.gather(local)
    distributed.finish(step)
    if per_rank is None:
        return None

    spec = step.spec
    losses = distributed.mean_losses(per_rank)
    # Throughput counts each data-parallel replica's batch once: the ranks of a tensor-parallel group or of a
    # pipeline share theirs.
    result = distributed.aggregate(per_rank, tokens_per_step=shape.global_batch_tokens // shape.dp,
                                   samples_per_step=shape.global_batch_sequences // shape.dp,
                                   steps=config.steps, replicas=shape.dp, devices_per_replica=shape.world // shape.dp)
    result.update(shape.record())
    if step.pipeline:
        result.update(distributed.pipeline_idle(per_rank))
        result["pp_layers_per_stage"] = [len(blocks) for blocks in
                                         pipeline_split(spec, config, shape.pp * shape.stages_per_rank)]
    dims = {"n_layers": spec.n_layers, "n_heads": spec.n_heads, "head_dim": spec.head_dim, "seq_len": config.seq_len}
    flops = palm_flops_per_token(n_matmul_params=step.matmul_params, **dims)
    # The hardware's FLOPs are the model's plus what checkpointing reruns, what the fused loss recomputes and what
    # tensor parallelism runs twice.
    extra = recompute_flops_per_token(checkpointing=config.checkpointing, n_rerun_params=step.rerun_params,
                                      attention_rerun=step.reruns_attention, **dims)
    extra += head_extra_flops_per_token(vocab=config.padded_vocab, hidden=spec.hidden, seq_len=config.seq_len,
                                        tp=shape.tp, fused_recompute=step.fused_loss,
                                        causal=spec.objective == "causal-lm")
    # One datasheet peak for the job: cards of several kinds have none (MFU null, and a warning below).
    cards = sorted({name for r in per_rank for name in r["device_names"]})
    result.update(metrics.flops_utilisation(flops_per_token=flops, hardware_flops_per_token=flops + extra,
                                            tokens_per_s_per_device=result["tokens_per_s_per_device"],
                                            device_name=cards[0] if len(cards) == 1 else None,
                                            precision=config.precision))
    # The job's warmup steps as its window's: each ends when the last rank has finished it (warmup_s is the slowest's).
    result.update(metrics.warmup(distributed.slowest_steps(
        [{"step_times_s": r["warmup_step_times_s"]} for r in per_rank])))
    notes = []
    if config.profile:
        from lmbench.run.profiling import reported_rank

        shown = reported_rank([r["profile"] for r in per_rank], pipeline=bool(step.pipeline))
        if shown is not None:
            result.update(metrics.profile_fields(per_rank[shown]["profile"]), profile_rank=shown)
            if world > 1:
                notes.append(f"rank {shown}'s steps, the busiest of the pipeline's {world} ranks (the least idle or "
                             "waiting on transfers)" if step.pipeline else f"rank {shown}'s steps, of {world} ranks")
            if step.replicas > 1:
                notes.append(f"the first GPU's kernels, of the {step.replicas} nn.DataParallel ran on")
            # The profiled steps' host, as the window's: a slowdown under a busy host is not the profiler's alone.
            profiled_spans = [r["profile"]["host_load"] for r in per_rank if r["profile"] is not None]
            profiled_load = hostload.job_load(profiled_spans)
            result.update(profile_host_other_cpu_cores=profiled_load.other_cores if profiled_load else None,
                          profile_wall_s=max((s["wall_s"] for s in profiled_spans if s is not None), default=None))
    if config.cuda_graph and result.get("time_frac_optimizer") is not None:
        # A replay has no host ranges: the breakdown cannot tell the optimizer's kernels from the others.
        result.update(time_frac_optimizer=None)
        notes.append("a replayed CUDA graph: the optimizer's kernels are counted in matmul and other")
    graphed = config.cuda_graph or step.compile_graphs
    if graphed and result.get("time_frac_idle") is not None and graph_timing_suspect():
        notes.append(f"kernels replayed from CUDA graphs, which CUPTI before CUDA 13.1 Update 1 times wrongly "
                     f"(pytorch/kineto#1165; this torch: CUDA {torch.version.cuda}): the shares are indicative; the "
                     "window's figures come from CUDA events")
    if notes:
        result["profile_note"] = "; ".join(notes)
    result.update(metrics.loss_health(losses))
    result.update({
        "window_s": max(r["window_s"] for r in per_rank),
        "startup_s": max(r["startup_s"] for r in per_rank),
        # The slowest rank's phases, each on its own: they need not all come from the same rank.
        **{phase: max(r[phase] for r in per_rank)
           for phase in ("startup_imports_s", "startup_device_s", "startup_build_s")},
        "warmup_s": max(r["warmup_s"] for r in per_rank),
        "steps_measured": config.steps,
        # Ranks of a data-parallel job unscale the same reduced gradients: they skip together; the most, to be sure.
        "overflow_skipped_steps": max(r["overflow_skipped_steps"] for r in per_rank),
        "overflow_skipped_warmup_steps": max(r["overflow_skipped_warmup_steps"] for r in per_rank),
        "loss_scale_final": step.precision.loss_scale,
        "parallel_backend": backend or ("DataParallel" if config.parallel == "dp" else None),
        "nnodes": info.nnodes if info else 1,
        "nproc_per_node": info.local_world_size if info else 1,
        "devices": world * step.replicas,
        "device_names": cards,
        "param_checksum_initial": initial_checksum,
        "kernels_note": KERNEL_SETS[config.kernels].note,
        "kernels_applied": step.kernels_applied,
        # Dynamo's own counts (kernels=compile), the most any rank compiled or broke.
        **{key: max(r[key] for r in per_rank) if per_rank[0][key] is not None else None
           for key in ("compiled_graphs", "compile_graph_breaks", "compiled_graphs_in_window",
                       "cudagraph_recordings_in_window")},
        "attention_kernel": per_rank[0]["attention_kernel"],
        "precision_applied": step.precision.applied,
        # torchao's FP8 is meant to run compiled; the record says whether it was.
        "fp8_compiled": config.kernels == "compile" if config.precision.startswith("fp8") else None,
        "params": step.param_count,
    })
    result.update({key: value for key, value in local.items() if key.endswith("_per_device")})
    if per_rank[0]["quality"] is not None:
        from lmbench.run.convergence import merge_ranks

        result.update(merge_ranks([r["quality"] for r in per_rank]))
        result["label_smoothing"] = config.label_smoothing
    # Counted over the job's CPUs (the union of its ranks' affinity masks on the worst host), and judged against them.
    load = hostload.job_load([r["host_load"] for r in per_rank])
    result["host_other_cpu_cores"] = load.other_cores if load else None
    result["host_steal_cpu_cores"] = load.steal_cores if load else None
    result["host_usable_cores"] = load.usable_cores if load else environment.usable_cores()
    spans = [r["host_load_to_target"] for r in per_rank if r["host_load_to_target"] is not None]
    to_target_load = hostload.job_load(spans)
    if spans:
        result["host_other_cpu_cores_to_target"] = to_target_load.other_cores if to_target_load else None
        result["host_steal_cpu_cores_to_target"] = to_target_load.steal_cores if to_target_load else None
        result["host_to_target_wall_s"] = max(span["wall_s"] for span in spans)
    warnings = []
    contention = hostload.contention_warning(result["host_other_cpu_cores"], result["host_usable_cores"],
                                             result.get("window_s"), steal_cores=result["host_steal_cpu_cores"],
                                             cpu_threads=torch.get_num_threads() if device.type == "cpu" else None)
    if contention:
        warnings.append(contention)
    contention = hostload.contention_warning(result.get("host_other_cpu_cores_to_target"),
                                             result["host_usable_cores"], result.get("host_to_target_wall_s"),
                                             steal_cores=result.get("host_steal_cpu_cores_to_target"),
                                             span="the run to its target")
    if contention:
        warnings.append(contention)
    # Counters that did not advance: the figures are null, and the record says why (not a quiet host).
    warnings += [f"host load over {span}: {known.unknown}" for span, known in
                 (("the window", load), ("the run to its target", to_target_load if spans else None))
                 if known is not None and known.unknown]
    if not all(r["mem_host_peak_reset"] for r in per_rank):
        warnings.append("the kernel would not reset the peak resident set (/proc/self/clear_refs): the host memory "
                        "growth figures are null where the peak did not rise past the one before their span, and "
                        "--max-memory was checked against the resident set there")
    if len(cards) > 1:
        warnings.append(f"the job ran on cards of {len(cards)} kinds ({', '.join(cards)}): no one datasheet peak, so "
                        "no MFU or HFU; its throughput is the slowest card's pace")
    unquotable = energy_warning(result)
    if unquotable:
        warnings.append(unquotable)
    short = sampling_warning(result)
    if short:
        warnings.append(short)
    shared = gpushare.sharing_warning(result)
    if shared:
        warnings.append(shared)
    if result.get("throttled_power_or_heat"):
        # An H100 at full load sits at its 700 W cap: the usual state, which the figures then describe.
        share = result.get("throttled_sample_frac")
        warnings.append("clocks were throttled for power or heat during the window "
                        + (f"(in {share:.0%} of its samples; " if share is not None else "(")
                        + f"{', '.join(result['throttle_reasons'])}): the figures are this card's under that limit, "
                        "not at its boost clock")
    for rank_of, failed in enumerate(r["profile_error"] for r in per_rank):
        if failed:
            where = f" on rank {rank_of}" if world > 1 else ""
            warnings.append(f"{failed}{where}: no breakdown; the window's figures stand")
    if config.precision.startswith("fp8") and config.kernels != "compile":
        warnings.append(f"precision={config.precision} with kernels={config.kernels}: without torch.compile torchao's "
                        "FP8 scaling and casts run as separate kernels, so expect it slower than amp-bf16; "
                        "measure FP8 speed with kernels=compile")
    # Our kernels and Liger's are Triton's, and so are torch.compile's on a GPU (inductor's on a CPU are C++).
    runs_triton = config.kernels in ("triton", "liger") or (config.kernels == "compile" and device.type == "cuda")
    if runs_triton and os.environ.get("TRITON_INTERPRET") == "1":
        warnings.append(f"kernels={config.kernels} ran in Triton's interpreter (TRITON_INTERPRET=1): it checks that "
                        "the kernels work, and its figures are no speed")
    unfused = fell_back(config.attention, result["attention_kernel"], device.type)
    if unfused:
        warnings.append(unfused)
    rewrites = attention_rewrites() if config.kernels == "compile" and config.attention == "eager" else 0
    if rewrites:
        warnings.append(f"torch.compile rewrote the model's eager attention into scaled_dot_product_attention "
                        f"{rewrites} time(s) (inductor's fuse_attention): on a GPU the row may time a "
                        "fused attention kernel, not attention=eager")
    if result["compile_graph_breaks"]:
        warnings.append(f"torch.compile broke the model's graph {result['compile_graph_breaks']} time(s) "
                        f"({result['compiled_graphs']} graphs): the code between graphs ran eagerly every step "
                        "(TORCH_LOGS=graph_breaks names the reasons)")
    if result["compiled_graphs_in_window"]:
        warnings.append(f"torch.compile compiled {result['compiled_graphs_in_window']} graph(s) inside the measured "
                        "window (a guard of the compiled step failed; TORCH_LOGS=recompiles names it): the compilation "
                        "is in the window's step times, not the compiled steady state")
    if result["cudagraph_recordings_in_window"]:
        warnings.append(f"inductor's cudagraph trees warmed up or recorded {result['cudagraph_recordings_in_window']} "
                        "CUDA graph(s) inside the measured window (an input's address changed, or a new path through "
                        "the tree; no new dynamo graph says so): each synchronizes the device and runs eagerly, in the "
                        "window's step times, not the replayed steady state")
    host_read = host_read_in_step(config) if device.type == "cuda" else None
    if host_read:
        warnings.append(f"{host_read}: a host sync inside every step, which the GPU may wait on")
    if config.parallel == "dp" and step.replicas == 1:
        warnings.append("parallel=dp on one GPU is degenerate: DataParallel's scatter/gather without a second replica")
    if result["overflow_skipped_steps"]:
        warnings.append(f"{result['overflow_skipped_steps']} of {config.steps} measured steps skipped the optimizer "
                        "update (loss-scale overflow: inf/NaN gradients): timed like the others, they updated "
                        "nothing, so the throughput flatters the recipe")
    if result.get("params_in_sync") is False:
        warnings.append("parameters differ between ranks after the window: data parallelism lost sync")
    status, reason = "ok", None
    if result["nonfinite_losses"]:
        first_bad = next(i for i, v in enumerate(losses) if not math.isfinite(v))
        status, reason = "diverged", f"non-finite loss at measured step {first_bad} of {len(losses)}"
        # Where it began, when that was before the window: the warmup's losses, read after it as the window's are.
        warm = distributed.mean_losses([{"losses": r.get("warmup_losses")} for r in per_rank])
        early = next((i for i, v in enumerate(warm) if not math.isfinite(v)), None)
        if first_bad == 0 and early is not None:
            reason += f" (non-finite since warmup step {early} of {len(warm)})"
    return {"status": status, "reason": reason, "metrics": result, "losses": losses,
            "step_times_s": distributed.slowest_steps(per_rank), "warnings": warnings}


def graph_timing_suspect() -> bool:
    """Whether this torch's CUDA is older than 13.2, so its CUPTI may predate 13.1 Update 1, which fixed the timing
    of kernels replayed from CUDA graphs (pytorch/kineto#1165). torch names its CUDA's minor release, not the
    update, so 13.1 counts as suspect too."""
    import torch

    from lmbench.models.versions import release

    return torch.version.cuda is not None and release(torch.version.cuda) < (13, 2)


class _StepLosses:
    """The window's losses, read on the host after it. On a CPU each is read at once (as a bare loop's `loss.item()`:
    no device to wait for): 2,000 scalar tensors kept among each step's freed activations held the heap from
    shrinking (a new user's tiny-gpt2 grew its resident set by 1,013 MiB over 2,000 steps, 24 MiB over 8;
    --max-memory caps that growth). On a GPU they are kept as they come, in the caching allocator's small blocks,
    and read after the window: reading one there would wait for the device."""

    def __init__(self) -> None:
        self.kept: list[Any] = []

    def add(self, loss: Any) -> None:
        self.kept.append(loss.item() if loss.device.type == "cpu" else loss)

    def values(self) -> list[float]:
        import torch

        if not self.kept or isinstance(self.kept[0], float):
            return list(self.kept)
        return torch.stack(self.kept).cpu().tolist()


def _convergence(config: Config, step: Any, devices: list[Any], world: int) -> Any:
    """The held-out evaluations of a quality run: clocks drained on every device used, energy from NVML's
    counters (unless telemetry is off), the loss summed over ranks so every rank takes the same decisions."""
    import torch

    from lmbench.measure.telemetry import EnergyCounter
    from lmbench.run import distributed
    from lmbench.run.convergence import Convergence

    def synchronize() -> None:
        for used in devices:
            if used.type == "cuda":
                torch.cuda.synchronize(used)

    energy = EnergyCounter.for_devices(devices) if config.telemetry else None
    return Convergence(config, evaluate=step.evaluate, synchronize=synchronize,
                       tokens_per_step=step.layout.global_batch_tokens,
                       read_energy_j=energy.read_j if energy else lambda: None,
                       all_reduce=distributed.sum_pair if world > 1 else lambda values: values)


def _train_on(config: Config, step: Any, quality: Any, done: int, device_s: float, budget: Any) -> None:
    """After the window: a time-to-target run trains on until the target is met (checked at each evaluation)
    or max_steps are spent; every quality run ends with an evaluation after its last step."""
    from lmbench.measure.timer import StepTimer

    tail = StepTimer(step.batches[0].input_ids.device)
    with tail.window():
        while config.has_target and not quality.finished(done):
            with tail.step():
                step()
            done += 1
            budget.check()
            if quality.due(done):
                with tail.paused():
                    quality.evaluate(done, device_s + tail.device_s)
    if not quality.points or quality.points[-1].step != done:
        quality.evaluate(done, device_s + tail.device_s)


def trace_path(job: dict[str, Any], timeline: Path | None) -> Path | None:
    """Where a profiled job's trace goes: RUN_DIR/traces/KEY-rN.json.gz, beside RUN_DIR/telemetry/KEY-rN.csv."""
    if job.get("trace_path"):
        return Path(job["trace_path"])
    return timeline.parent.parent / "traces" / f"{timeline.stem}.json.gz" if timeline else None


#: The longest reason a failed record keeps (the worker's log keeps the whole traceback).
REASON_CHARS = 500


def run_job(job_path: Path, result_path: Path) -> int:
    """Measure the job and write its result; a rank under torchrun ends its process here (`_end_rank`)."""
    from lmbench.run.distributed import RankInfo

    if RankInfo.from_env() is None:
        return _run_job(job_path, result_path)
    try:
        code = _run_job(job_path, result_path)
    except BaseException:  # noqa: BLE001 - e.g. no room for the result: the rank still must not tear down
        traceback.print_exc()
        code = 1
    _end_rank(code)
    return code  # not reached


def _end_rank(code: int) -> None:
    """Exit without tearing the process group down: its destructor joins gloo's threads holding the GIL, which
    one of them may need to free a tensor (lmbench.run.distributed._HELD). Everything is written by now."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run_job(job_path: Path, result_path: Path) -> int:
    job = json.loads(job_path.read_text())
    config = Config.from_mapping(job["config"])
    from lmbench.run import stacks
    from lmbench.run.distributed import RankInfo

    info = RankInfo.from_env()
    if isinstance(job.get("deadline"), (int, float)):  # a hang is named by where each rank was just before it
        stacks.arm(result_path, info.rank if info else 0, deadline=job["deadline"], timeout_s=config.timeout_s)
    from lmbench.measure import environment

    device = worker_device(config, info)
    from lmbench.run.data import DRAW_VERSION

    env = {**environment.capture(device), "data_draw": DRAW_VERSION}
    try:
        timeline = Path(job["timeline_path"]) if job.get("timeline_path") else None
        payload = measure(config, timeline_path=timeline, trace_path=trace_path(job, timeline))
    except Exception as error:  # noqa: BLE001 - every failure of a config is data, not a crash
        failed_at = time.time()
        traceback.print_exc()
        from lmbench.models.compiled import failure_reason

        status = classify_failure(error)
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        reason = failure_reason(error) or f"{type(error).__name__}: {first_line}"
        # Cut at REASON_CHARS with an ellipsis (an OOM message ended mid-URL, as if whole); the log has it all.
        reason = reason if len(reason) <= REASON_CHARS else reason[:REASON_CHARS - 1] + "…"
        failure = {"status": status, "reason": reason, "failed_at": failed_at}
        if info is not None and info.rank != 0:
            # torchrun sees the failed rank and stops the others. Rank 0 may fail too, of this rank's failure (a
            # connection reset in its collective): the parent reads every rank's failure and names the first.
            with contextlib.suppress(OSError):
                write_json(rank_failure_path(result_path, info.rank), {**failure, "rank": info.rank})
            return 1
        payload = {**failure, "metrics": None, "losses": None, "step_times_s": None}
        write_json(result_path, {**payload, "env": env})
        # Under torchrun other ranks may wait in a collective: a non-zero exit makes torchrun stop them.
        return 1 if info is not None else 0
    if payload is not None:
        write_json(result_path, {**payload, "env": env})
    return 0


def rank_failure_path(result_path: Path, rank: int) -> Path:
    """Where rank `rank` (not 0, whose failure is the result itself) leaves its failure for the parent."""
    return result_path.with_name(f"{result_path.name}.rank{rank}")


def exit_with_parent() -> None:
    """Die with the lmbench process that started this worker ($LMBENCH_PARENT_PID), however it ends.

    A direct child asks Linux for SIGKILL when its parent exits (PR_SET_PDEATHSIG). A rank under
    torchrun also gets that from the agent, and watches the lmbench parent once a second: if it is
    gone, the rank kills its own session (torchrun gives each rank one), and torchrun stops the rest.
    """
    import ctypes
    import signal
    import threading

    parent = int(os.environ.get("LMBENCH_PARENT_PID") or 0)
    if not parent:
        return
    try:
        armed = ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        armed = False  # not Linux: the watch below covers direct children too
    if armed and os.getppid() == parent:
        return
    if not _alive(parent):  # gone before the request took effect
        os._exit(1)

    def watch() -> None:
        while _alive(parent):
            time.sleep(1.0)
        if os.getsid(0) == os.getpid():
            os.killpg(0, signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, name="lmbench-parent-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting to be reaped counts as gone)."""
    state = procstat.field(pid, procstat.STATE)
    if state is not None:
        return state not in ("Z", "X")
    # No /proc (or not visible in it): ask the kernel.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _pause_gc() -> None:
    """Start-up is mostly imports (torch and the model family's transformers module: 7-8 s of a process on a 2-core
    CPU), and about 1 s of that is the cyclic collector walking the new modules' objects again and again, which an
    import never frees. It waits until measure() has imported the family, and runs as usual from the build on."""
    global _gc_paused
    if gc.isenabled():
        gc.disable()
        _gc_paused = True


def _resume_gc() -> None:
    global _gc_paused
    if _gc_paused:
        gc.enable()
        _gc_paused = False


def main(argv: list[str] | None = None) -> int:
    import faulthandler

    # A fatal signal (SIGSEGV in a kernel's launch, SIGABRT from a library) writes the Python stacks and "Fatal
    # Python error: ..." to the log, which the record's reason quotes: without it a crash left the last line of
    # whatever had printed before (a library's import warning; a reviewer).
    faulthandler.enable()
    _pause_gc()
    exit_with_parent()
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m lmbench.run.worker JOB_JSON RESULT_JSON", file=sys.stderr)
        return 2
    return run_job(Path(args[0]), Path(args[1]))


if __name__ == "__main__":
    sys.exit(main())
