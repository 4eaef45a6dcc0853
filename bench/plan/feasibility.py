"""Which configurations this machine and this lmbench version can run, and why not the others.

Anything refused here becomes a `skipped` row with the reason, decided in the parent before a
worker process is spent on it.
"""

from __future__ import annotations

from lmbench import __version__
from lmbench.measure.environment import Platform
from lmbench.models import float8
from lmbench.models.kernel_sets import KERNEL_SETS, apex_problem
from lmbench.models.registry import MODELS
from lmbench.models.versions import release
from lmbench.plan import layout
from lmbench.plan.config import CUDA_GRAPH_WARMUP, Config, one_device
from lmbench.plan.layout import DEFAULT_TP_DEGREE, DISTRIBUTED, MODEL_PARALLEL, problem

#: Axis values that a later version fills in; until then they are skipped, never a crash.
NOT_YET: dict[str, frozenset[str]] = {}


#: Processes per node for torchrun modes on a machine without GPUs (nproc=0).
CPU_NPROC = 2
#: Kernel sets that model-parallel modes run: the fused sets replace blocks whose layout TP and PP rewrite.
MODEL_PARALLEL_KERNELS = frozenset({"eager", "compile"})
#: Where precision=fp16's fp32 master copies cannot be taken: FSDP replaces the parameters (with DTensor shards)
#: after the copies are made from the whole fp32 ones (tensor parallelism alone is applied before them).
FP16_MASTERS_REPLACED = frozenset({"fsdp", "fsdp+tp", "fsdp+pp"})


def resolve(config: Config, platform: Platform) -> Config:
    """Settle what `auto` and 0 mean on this machine, and a kernel set's own optimizer; resolved values are part of
    the config key.

    device=auto becomes cuda when a GPU is visible, else cpu. nproc becomes the processes (or, for
    dp, the GPUs) the configuration really uses: 1 for none, every visible GPU for dp, and for
    the torchrun modes every visible GPU when nproc=0 (CPU_NPROC on a CPU). tp_degree=0 becomes
    DEFAULT_TP_DEGREE under fsdp+tp, pp_degree=0 DEFAULT_PP_DEGREE under fsdp+pp, pp_stages_per_rank=0 a
    multi-stage schedule's 2. Options of other
    parallel modes (DDP's, the pipeline's, tp_degree) are reset to their defaults.
    """
    device = config.device
    if device == "auto":
        device = "cuda" if platform.cuda_available else "cpu"
    device = one_device(device, config.parallel)
    nproc = config.nproc
    gpus = platform.device_count if device.startswith("cuda") else 0
    if config.parallel == "none":
        nproc = 1
    elif config.parallel == "dp":
        nproc = gpus
    elif nproc == 0:
        nproc = gpus or CPU_NPROC
    tp_degree = (config.tp_degree or DEFAULT_TP_DEGREE) if config.parallel == "fsdp+tp" else config.tp_degree
    pp_degree = (config.pp_degree or layout.DEFAULT_PP_DEGREE) if config.parallel == "fsdp+pp" else config.pp_degree
    # A multi-stage schedule's 0 is its 2 stages per rank; a one-stage schedule's 1 is its default 0 (the key of
    # every pipeline measured before the axis existed).
    per_rank = layout.stages_per_rank(config)
    per_rank = per_rank if config.pp_schedule in layout.MULTI_STAGE_SCHEDULES or per_rank > 1 else 0
    # A kernel set that brings its own optimizer (kernels=apex: Apex's FusedAdam) trains with it whatever
    # `optimizer` says: the key and the record say so, and two rows that differ only there are one configuration.
    optimizer = KERNEL_SETS[config.kernels].optimizer or config.optimizer
    # Options of other modes mean nothing here; defaults keep one key per real configuration.
    return config.replace(device=device, nproc=nproc, tp_degree=tp_degree, pp_degree=pp_degree,
                          pp_stages_per_rank=per_rank, optimizer=optimizer).without_foreign_options()


def skip_reason(config: Config, platform: Platform, *, nnodes: int = 1) -> str | None:
    """None when `config` can run here (on `nnodes` nodes: a torchrun job's world is nproc x nnodes), else a
    one-line reason for the `skipped` row."""
    conflict = config.conflict()
    if conflict:
        return conflict
    for axis, values in NOT_YET.items():
        value = getattr(config, axis)
        if value in values:
            return f"{axis}={value} is not implemented in lmbench {__version__}"
    if config.parallel == "dp" and not config.device.startswith("cuda"):
        return "parallel=dp (nn.DataParallel) needs CUDA GPUs"
    if config.parallel == "fsdp" and config.kernels == "triton":
        return ("kernels=triton is not available with parallel=fsdp: its fused loss reads the LM head's weight "
                "outside the head's forward, where FSDP2 keeps it sharded")
    if config.parallel == "dp" and config.kernels == "compile":
        return ("kernels=compile is not available with parallel=dp: nn.DataParallel runs its replicas in threads of "
                "its own, which torch.compile does not trace, so on two or more GPUs the model would run uncompiled; "
                "use parallel=ddp")
    if config.parallel == "dp" and config.kernels == "liger":
        return ("kernels=liger is not available with parallel=dp: Liger binds its forwards to the device-0 modules, "
                "which every DataParallel replica would then run")
    if config.precision == "fp16" and config.parallel in FP16_MASTERS_REPLACED:
        return (f"precision=fp16 (fp32 master weights) is not implemented for parallel={config.parallel}: FSDP's "
                "sharding replaces the parameters whose fp32 master copies the mode keeps; use amp-fp16 or bf16")
    if config.parallel in MODEL_PARALLEL:
        layout_problem = problem(config, MODELS[config.model], nnodes=nnodes)
        if layout_problem:
            return layout_problem
        if config.kernels not in MODEL_PARALLEL_KERNELS:
            return (f"kernels={config.kernels} is not available with parallel={config.parallel}: its fused blocks "
                    f"replace the modules that tensor and pipeline parallelism shard; use eager or compile")
        if config.precision in float8.RECIPES:
            return (f"precision={config.precision} is not implemented for parallel={config.parallel}: lmbench's tensor "
                    "and pipeline plans shard nn.Linear, not torchao's Float8Linear (which needs torchao's float8 "
                    "tensor-parallel styles); FP8 runs with parallel none, dp, ddp or fsdp")
        if config.parallel == "pp" and config.pp_schedule in layout.V_SCHEDULES and not config.device.startswith(
                "cuda") and release(platform.torch_version) < (2, 13):
            return (f"pp_schedule={config.pp_schedule} over gloo needs torch 2.13 or later: torch "
                    f"{platform.torch_version}'s first pipeline step sends between the two stages a rank holds in a V, "
                    "which gloo refuses ('Pair is not connected')")
    if config.device.startswith("cuda"):
        if not platform.cuda_available:
            return (f"device={config.device} but CUDA is not available (torch {platform.torch_version}, "
                    "no visible GPU)")
        index = int(config.device.partition(":")[2] or 0)
        if index >= platform.device_count:
            return f"device={config.device} but only {platform.device_count} CUDA device(s) are visible"
        if config.parallel in DISTRIBUTED and config.nproc > platform.device_count:
            return (f"parallel={config.parallel} with nproc={config.nproc} but only {platform.device_count} CUDA "
                    "device(s) are visible on this node")
        major = platform.capability[0] if platform.capability else 0
        if config.precision in ("tf32", "bf16", "amp-bf16") and major < 8:
            return f"precision={config.precision} needs compute capability 8.0 or later (Ampere); this GPU is {major}.x"
    elif config.precision == "tf32":
        return "precision=tf32 needs a CUDA GPU with TF32 tensor cores; on the CPU it would just be fp32"
    if config.precision in float8.RECIPES:
        # On a CPU FP8 runs through torch._scaled_mm's CPU kernel: the numbers (tests, parity), not the speed.
        fp8_problem = float8.unavailable(config.precision, config.device.partition(":")[0], platform.capability)
        if not fp8_problem and config.device.startswith("cuda"):
            fp8_problem = float8.shape_problem(config.precision, MODELS[config.model],
                                               config.batch_size * config.seq_len)
        if fp8_problem:
            return fp8_problem
    kernels_problem = KERNEL_SETS[config.kernels].unavailable(MODELS[config.model], config.device.partition(":")[0])
    if kernels_problem:
        return kernels_problem
    if config.optimizer == "apex-adam":
        apex_missing = apex_problem()
        if apex_missing or not config.device.startswith("cuda"):
            return f"optimizer=apex-adam needs a CUDA GPU and Apex's FusedAdam: {apex_missing or 'this is a CPU'}"
    if config.kernels == "compile" and config.warmup < 1:
        return "kernels=compile needs warmup >= 1 so compilation stays out of the measured window"
    return _cuda_graph_problem(config) or _compile_graph_problem(config)


def _compile_graph_problem(config: Config) -> str | None:
    """Why torch.compile's CUDA graphs (compile_mode reduce-overhead or max-autotune) cannot run this configuration,
    or None."""
    if not config.compile_graphs:
        return None
    mode = f"compile_mode={config.compile_mode}"
    if not config.device.startswith("cuda"):
        return f"{mode} needs a CUDA GPU: its compiled graphs replay as CUDA graphs"
    if config.parallel != "none":
        return (f"{mode} is implemented for parallel=none; under parallel={config.parallel} the gradient "
                "collectives run between the compiled graphs, and lmbench has not validated CUDA graphs around them")
    if config.grad_accum > 1:
        return (f"{mode} with grad_accum={config.grad_accum}: lmbench has not yet checked on a GPU that the graphs "
                "accumulate micro-batch gradients as the default mode does (tests/test_compile_modes.py holds that "
                "check)")
    if config.warmup < CUDA_GRAPH_WARMUP:
        return (f"{mode} needs warmup >= {CUDA_GRAPH_WARMUP}: the compilation, the graphs' warm-up run and their "
                "recording stay out of the measured window")
    return None


def host_read_in_step(config: Config) -> str | None:
    """What reads a device value on the host inside every step of this configuration, or None: a sync the GPU
    waits on, against the rule of none inside a step; a run on these paths says so (its record's warning)."""
    optimizer = KERNEL_SETS[config.kernels].optimizer or config.optimizer
    if config.kernels == "liger":
        return "Liger's fused linear cross-entropy counts the labels on the host (an .item() every step)"
    if config.precision == "fp16" and optimizer != "adamw-fused":
        return (f"precision=fp16 with optimizer={optimizer} reads the overflow flag on the host (the fused optimizer, "
                "optimizer=adamw-fused, takes it on the device)")
    if config.precision == "amp-fp16" and optimizer != "adamw-fused":
        return (f"GradScaler with optimizer={optimizer} reads the overflow flags on the host (the fused optimizer, "
                "optimizer=adamw-fused, takes them on the device)")
    return None


def _cuda_graph_problem(config: Config) -> str | None:
    """Why cuda_graph=true cannot run this configuration, or None (lmbench.run.stepgraph)."""
    if not config.cuda_graph:
        return None
    if not config.device.startswith("cuda"):
        return "cuda_graph=true needs a CUDA GPU: a CUDA graph holds the step's kernels"
    if config.parallel != "none":
        return (f"cuda_graph=true is implemented for parallel=none; parallel={config.parallel} would need its "
                "collectives captured too")
    if config.kernels == "compile":
        return ("cuda_graph=true with kernels=compile: torch.compile makes its own CUDA graphs; set "
                "compile_mode=reduce-overhead instead")
    if config.kernels == "liger":
        return ("cuda_graph=true with kernels=liger: Liger's fused linear cross-entropy counts the labels on the "
                "host (an .item() every step), which a CUDA graph cannot hold")
    optimizer = KERNEL_SETS[config.kernels].optimizer or config.optimizer
    if optimizer == "apex-adam":
        return ("cuda_graph=true with Apex's FusedAdam (optimizer=apex-adam, or kernels=apex's): lmbench does not "
                "build it capturable (its capturable mode is a constructor argument with the lr on the device)")
    if config.precision == "fp16" and optimizer != "adamw-fused":
        return (f"cuda_graph=true with precision=fp16 and optimizer={optimizer}: its loss scaling reads the overflow "
                "flag on the host unless the optimizer is fused (optimizer=adamw-fused), which a CUDA graph cannot "
                "hold")
    if config.precision == "amp-fp16" and optimizer != "adamw-fused":
        return (f"cuda_graph=true with precision=amp-fp16 and optimizer={optimizer}: GradScaler reads the overflow "
                "flags on the host unless the optimizer is fused (optimizer=adamw-fused)")
    if config.checkpointing != "none":
        return (f"cuda_graph=true with checkpointing={config.checkpointing}: torch.utils.checkpoint saves and "
                "restores the CUDA generator's state, which a capture forbids")
    if config.warmup < CUDA_GRAPH_WARMUP:
        return (f"cuda_graph=true needs warmup >= {CUDA_GRAPH_WARMUP}: its eager steps and the capture stay out of the "
                "measured window")
    return None
