"""How a configuration lays the model and the batch out over its processes: what each rank holds.

Pure arithmetic from the configuration and the model's shape, so the planner can refuse a layout
that cannot work (heads that do not divide the tensor-parallel degree) before a process starts,
the dry run can explain it, and the worker records the same degrees and global batch it trained with.

Degrees multiply to the world: data-parallel replicas (`dp`, independent batches per step) x
tensor-parallel group (`tp`) x pipeline stages (`pp`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from lmbench.models.registry import ModelSpec
from lmbench.plan.config import Config

#: Model-parallel modes: processes hold parts of the model, not whole replicas.
MODEL_PARALLEL = frozenset({"tp", "pp", "fsdp+tp", "fsdp+pp"})
#: Modes that cut the model into pipeline stages: over every rank (pp), or over pp_degree ranks, with FSDP across
#: the pipelines (fsdp+pp).
PIPELINES = frozenset({"pp", "fsdp+pp"})
#: Modes launched by torchrun, one process per device.
DISTRIBUTED = frozenset({"ddp", "fsdp"}) | MODEL_PARALLEL
#: Model families whose blocks lmbench knows how to shard (tp) and to cut into stages (pp).
MODEL_PARALLEL_FAMILIES = frozenset({"gpt2", "llama"})
#: tp_degree=0 under fsdp+tp.
DEFAULT_TP_DEGREE = 2
#: pp_degree=0 under fsdp+pp.
DEFAULT_PP_DEGREE = 2
#: Pipeline schedules that run several stages on each rank (torch.distributed.pipelining's multi-stage ones).
MULTI_STAGE_SCHEDULES = frozenset({"interleaved-1f1b", "zero-bubble", "zbv"})
#: Schedules that split each backward into its input and its weight gradients: torch refuses compiled stages there.
SPLIT_BACKWARD_SCHEDULES = frozenset({"zero-bubble", "zbv"})
#: Schedules whose stages sit on the ranks in a V (rank r holds stages r and 2p-1-r); the others loop (stage s on
#: rank s mod p).
V_SCHEDULES = frozenset({"zbv"})


def stages_per_rank(config: Config) -> int:
    """Pipeline stages each rank holds: pp_stages_per_rank, or the schedule's own when it is 0."""
    if config.pp_stages_per_rank:
        return config.pp_stages_per_rank
    return 2 if config.pp_schedule in MULTI_STAGE_SCHEDULES else 1


def rank_stages(ranks: int, per_rank: int, schedule: str) -> list[list[int]]:
    """The stage indices each rank holds, in order: looped (stage s on rank s mod ranks) or, for a V schedule, rank
    r holds stages r and 2 x ranks - 1 - r, so the first and the last stage share rank 0."""
    if schedule in V_SCHEDULES:
        return [[rank, 2 * ranks - 1 - rank] for rank in range(ranks)]
    return [list(range(rank, ranks * per_rank, ranks)) for rank in range(ranks)]


@dataclass(frozen=True, kw_only=True)
class Layout:
    """The degrees of one configuration's layout and the batch one optimizer step consumes."""

    parallel: str
    world: int
    """Processes (ranks); for nn.DataParallel the GPUs of its one process."""
    dp: int
    """Data-parallel replicas: each draws its own batches."""
    tp: int
    pp: int
    microbatches: int
    """Pipeline micro-batches per step (1 outside pp)."""
    stages_per_rank: int = 1
    """Pipeline stages each rank holds (1 outside pp)."""
    schedule: str = ""
    """The pipeline's schedule ("" outside pp)."""
    batch_size: int
    grad_accum: int
    seq_len: int

    @property
    def global_batch_sequences(self) -> int:
        """Sequences one optimizer step trains on, over all ranks."""
        return self.batch_size * self.microbatches * self.grad_accum * self.dp

    @property
    def global_batch_tokens(self) -> int:
        return self.global_batch_sequences * self.seq_len

    @property
    def bubble_fraction_theory(self) -> float | None:
        """Idle share of a pipeline step with equal stages and free communication: (p-1)/(m+p-1), the same for
        GPipe and 1F1B (Huang et al. 2019, GPipe, section 2.3; Narayanan et al. 2021, Megatron-LM, section 2.2);
        (p-1)/(v m+p-1) with v stages per rank, interleaved, from m = p micro-batches (Narayanan et al. 2021,
        section 2.2.2: the bubble is 1/v of 1F1B's). With fewer, torch's interleaved schedule runs one round of m
        and each rank waits for the other ranks' stages of it: (v p+m-1-v m)/(v p+m-1), which meets the other at
        m = p (both hold for torch's own order of actions, tests/test_layout.py simulates it). None for the
        zero-bubble schedules, whose bubble depends on how the forward, input-gradient and weight-gradient times of
        a stage compare (Qi et al. 2024, section 3): there it is measured only."""
        if self.pp < 2 or self.schedule in SPLIT_BACKWARD_SCHEDULES:
            return None
        p, m, v = self.pp, self.microbatches, self.stages_per_rank
        if v > 1 and m < p:
            return (v * p + m - 1 - v * m) / (v * p + m - 1)
        return (p - 1) / (v * m + p - 1)

    def data_group(self, rank: int) -> int:
        """Which data-parallel replica (FSDP group) `rank` belongs to: the slice of the global batch it reads. fsdp+tp
        lays its mesh out (dp, tp), tensor-parallel groups of consecutive ranks; fsdp+pp (pp, dp), each pipeline
        rank's FSDP group consecutive, so pipeline d is ranks d, d + dp, d + 2 dp, ..."""
        if self.parallel == "fsdp+pp":
            return rank % self.dp
        return rank // (self.world // self.dp)

    def pipeline_rank(self, rank: int) -> int:
        """`rank`'s place in its pipeline (0 outside pipelines)."""
        if self.parallel == "fsdp+pp":
            return rank // self.dp
        return rank if self.parallel == "pp" else 0

    def pipelines(self) -> list[list[int]]:
        """The global ranks of each pipeline, in stage order."""
        return [[stage * self.dp + group for stage in range(self.pp)] for group in range(self.dp)] \
            if self.parallel == "fsdp+pp" else [list(range(self.pp))]

    def record(self) -> dict[str, int | float | None]:
        """The layout's fields in a result record."""
        return {"dp_degree": self.dp, "tp_degree": self.tp, "pp_degree": self.pp,
                "pp_microbatches": self.microbatches if self.pp > 1 else None,
                "pp_stages_per_rank": self.stages_per_rank if self.pp > 1 else None,
                "pp_bubble_fraction_theory": self.bubble_fraction_theory,
                "global_batch_sequences": self.global_batch_sequences,
                "global_batch_tokens": self.global_batch_tokens}


def layout(config: Config, *, nnodes: int = 1) -> Layout:
    """The layout of a resolved configuration (nproc settled) on `nnodes` nodes."""
    world = max(1, config.nproc) * nnodes if config.parallel in DISTRIBUTED else max(1, config.nproc)
    dp, tp, pp, micro, per_rank, schedule = world, 1, 1, 1, 1, ""
    if config.parallel == "none":
        dp = world = 1
    elif config.parallel == "tp":
        dp, tp = 1, world
    elif config.parallel == "fsdp+tp":
        tp = config.tp_degree or DEFAULT_TP_DEGREE
        dp = max(1, world // tp)
    elif config.parallel == "pp":
        dp, pp, micro = 1, world, config.microbatches
        per_rank, schedule = stages_per_rank(config), config.pp_schedule
    elif config.parallel == "fsdp+pp":
        pp = config.pp_degree or DEFAULT_PP_DEGREE
        dp, micro = max(1, world // pp), config.microbatches
        per_rank, schedule = stages_per_rank(config), config.pp_schedule
    return Layout(parallel=config.parallel, world=world, dp=dp, tp=tp, pp=pp, microbatches=micro,
                  stages_per_rank=per_rank, schedule=schedule, batch_size=config.batch_size,
                  grad_accum=config.grad_accum, seq_len=config.seq_len)


def single_device(config: Config, *, nnodes: int = 1) -> Config:
    """The same configuration in one process on one device: the baseline of scaling efficiency and, for the
    model-parallel modes, of loss parity. Data parallelism keeps the per-device batch (weak scaling); the model-
    parallel modes train the whole global batch on the one device (strong scaling: the same work, split up)."""
    batch = config.batch_size
    if config.parallel in MODEL_PARALLEL:
        batch = layout(config, nnodes=nnodes).global_batch_sequences // config.grad_accum
    return config.replace(parallel="none", nproc=1, batch_size=batch).without_foreign_options()


def stage_layers(n_layers: int, stages: int, head_blocks: float = 0.0) -> list[range]:
    """Blocks of each pipeline stage, contiguous, one or more each, such that the busiest stage has the least
    work, where the last stage also runs the LM head and the loss, `head_blocks` blocks' worth (pipeline_split);
    of those, the split whose next busiest stage has the least, and so on (gpt2-124m over 4 stages: 4, 4, 3 and
    1 + the head, not 5, 5, 1 and 1 + the head); of equally busy splits, earlier stages take the extra blocks.
    With no head weight: as even as possible, the remainder on the earliest stages."""
    if not 1 <= stages <= n_layers:
        raise ValueError(f"{n_layers} blocks cannot make {stages} stages of one block or more")

    @functools.cache
    def best(start: int, left: int) -> tuple[tuple[float, ...], tuple[int, ...]]:
        """(the stages' work, busiest first; their block counts) of blocks start.. over `left` stages, the head's
        last. Adding one stage's work to two such orders keeps them in order, so the best split of the rest is part
        of the best split of the whole."""
        if left == 1:
            return (n_layers - start + head_blocks,), (n_layers - start,)
        splits = []
        for count in range(n_layers - start - left + 1, 0, -1):  # most blocks first: min() keeps the first of ties
            work, rest = best(start + count, left - 1)
            splits.append((tuple(sorted((count, *work), reverse=True)), (count, *rest)))
        return min(splits, key=lambda split: split[0])

    ranges, start = [], 0
    for count in best(0, stages)[1]:
        ranges.append(range(start, start + count))
        start += count
    return ranges


def head_blocks(spec: ModelSpec, config: Config) -> float:
    """The last pipeline stage's LM head in transformer blocks' worth of matmul FLOPs per token (the counts of
    lmbench.measure.flops): the head's 2·V·d forward against a block's 2·N_block + 4·T·d (its weights' matmuls and
    the full T×T attention, as PaLM counts it), each with its backward's twice that; a block that full
    checkpointing reruns does a forward more, and lmbench's fused linear cross-entropy (kernels=triton) recomputes
    the logits (8·V·d, not 6). gpt2-124m at T=1024: about 4.5 blocks; llama-1b at 2048: about 3.9. Torchtitan and
    Megatron-LM weigh the split alike (their output-layer weight, --account-for-loss-in-pipeline-split); an even
    split of gpt2-124m over 2 stages gave the last about 1.75 times the first's work, which read as bubble (a
    reviewer)."""
    d, kv_width = spec.hidden, spec.n_kv_heads * spec.head_dim
    mlp = (3 if spec.family == "llama" else 2) * d * spec.intermediate  # Llama's MLP is gated: three matmuls
    block = 2 * (2 * d * d + 2 * d * kv_width + mlp) + 4 * config.seq_len * d
    head = 2 * config.padded_vocab * d
    block_passes = 4 if config.checkpointing == "full" else 3
    head_passes = 4 if config.kernels == "triton" else 3
    return head * head_passes / (block * block_passes)


def pipeline_split(spec: ModelSpec, config: Config, stages: int) -> list[range]:
    """Each of `stages` pipeline stages' blocks of `spec` under `config`, weighed for the LM head (head_blocks)."""
    return stage_layers(spec.n_layers, stages, head_blocks(spec, config))


def tensor_split_problem(spec: ModelSpec, degree: int) -> str | None:
    """Why `spec`'s blocks cannot be split `degree` ways by tensor parallelism, or None."""
    if spec.family not in MODEL_PARALLEL_FAMILIES:
        return f"tensor parallelism is implemented for the GPT-2 and Llama families; {spec.name} is {spec.family}"
    for what, size in (("attention heads", spec.n_heads), ("key/value heads", spec.n_kv_heads),
                       ("MLP width", spec.intermediate)):
        if size % degree:
            return f"{spec.name} has {size} {what}, which tensor parallelism of degree {degree} cannot split evenly"
    return None


def stage_split_problem(spec: ModelSpec, stages: int) -> str | None:
    """Why `spec` cannot be cut into `stages` pipeline stages at block boundaries, or None."""
    if spec.family not in MODEL_PARALLEL_FAMILIES:
        return f"pipeline parallelism is implemented for the GPT-2 and Llama families; {spec.name} is {spec.family}"
    if spec.n_layers < stages:
        return f"{spec.name} has {spec.n_layers} layers, fewer than the {stages} pipeline stages"
    return None


def problem(config: Config, spec: ModelSpec, *, nnodes: int = 1) -> str | None:
    """Why this layout cannot be built for `spec`, or None. Only model-parallel modes have conditions here."""
    if config.parallel not in MODEL_PARALLEL:
        return None
    if spec.family not in MODEL_PARALLEL_FAMILIES:
        return (f"parallel={config.parallel} is implemented for the GPT-2 and Llama families; {spec.name} is "
                f"{spec.family}")
    shape = layout(config, nnodes=nnodes)
    if shape.world < 2:
        nodes = f" x {nnodes} nodes" if nnodes > 1 else ""
        return f"parallel={config.parallel} needs at least 2 processes; nproc={config.nproc}{nodes}"
    if config.parallel == "fsdp+tp":
        if shape.tp < 2 or shape.world % shape.tp or shape.tp == shape.world:
            return (f"parallel=fsdp+tp with tp_degree={shape.tp} needs a tensor-parallel group of 2 or more ranks "
                    f"that divides the {shape.world} ranks into 2 or more FSDP groups (use parallel=tp for one group)")
    if config.parallel == "fsdp+pp":
        if shape.pp < 2:
            return f"parallel=fsdp+pp needs pipelines of 2 or more stage ranks; pp_degree={shape.pp}"
        if shape.world % shape.pp:
            return (f"parallel=fsdp+pp with pp_degree={shape.pp} does not divide the {shape.world} ranks into "
                    "pipelines")
        if shape.pp == shape.world:
            return (f"parallel=fsdp+pp with pp_degree={shape.pp} on {shape.world} ranks leaves 1 pipeline: FSDP "
                    "across pipelines needs 2 or more (use parallel=pp for one pipeline)")
        if config.pp_schedule in V_SCHEDULES:
            return (f"pp_schedule={config.pp_schedule} with parallel=fsdp+pp: its V puts the tied embedding and LM "
                    "head, one parameter, in two stages of one rank, which FSDP would shard as two units; use "
                    "interleaved-1f1b or zero-bubble")
    if config.parallel in ("tp", "fsdp+tp"):
        split = tensor_split_problem(spec, shape.tp)
        if split:
            return split
    if config.parallel in PIPELINES:
        return _pipeline_problem(config, spec, shape)
    return None


def _rounds(micro: int, ranks: int) -> int:
    """Rounds an interleaved schedule of torch runs a step in: microbatches // ranks, at least one."""
    return max(1, micro // ranks)


def _pipeline_problem(config: Config, spec: ModelSpec, shape: Layout) -> str | None:
    schedule, per_rank, micro = config.pp_schedule, shape.stages_per_rank, config.microbatches
    if schedule not in MULTI_STAGE_SCHEDULES and per_rank > 1:
        return (f"pp_schedule={schedule} runs one stage per rank; pp_stages_per_rank={per_rank} needs "
                f"{', '.join(sorted(MULTI_STAGE_SCHEDULES))}")
    if schedule in V_SCHEDULES and per_rank != 2:
        return f"pp_schedule={schedule} lays exactly 2 stages on each rank (a V); pp_stages_per_rank={per_rank}"
    split = stage_split_problem(spec, shape.pp * per_rank)
    if split:
        return split + (f" ({shape.pp} ranks x {per_rank})" if per_rank > 1 else "")
    if config.attention == "eager":
        return (f"parallel={config.parallel} runs its stages' blocks without transformers' mask builder, so it needs "
                "SDPA's built-in causal masking: attention=sdpa or math, not eager")
    if schedule == "1f1b" and micro < shape.pp:
        return (f"pp_schedule=1f1b needs microbatches >= stages ({shape.pp}); microbatches={micro}"
                " (use gpipe for fewer)")
    if schedule in MULTI_STAGE_SCHEDULES - V_SCHEDULES and micro % _rounds(micro, shape.pp):
        # torch.distributed.pipelining's flexible interleaving runs microbatches // ranks rounds of equal size.
        fits = next(m for m in range(micro + 1, micro + 2 * shape.pp + 1) if m % _rounds(m, shape.pp) == 0)
        return (f"pp_schedule={schedule} runs microbatches // ranks = {_rounds(micro, shape.pp)} rounds of equal "
                f"size, which microbatches={micro} cannot make; the next count that can is {fits} (a multiple of "
                f"{shape.pp}, or fewer than {2 * shape.pp}, always can)")
    if schedule in SPLIT_BACKWARD_SCHEDULES and config.checkpointing == "selective":
        return (f"pp_schedule={schedule} splits each backward into input and weight gradients, which runs a "
                "selectively checkpointed block's backward twice (torch: 'Trying to backward an extra time'); use "
                "checkpointing none or full, or another schedule")
    if schedule in SPLIT_BACKWARD_SCHEDULES and config.kernels == "compile":
        return (f"pp_schedule={schedule} splits each backward into input and weight gradients, which torch does "
                "not support for compiled stages; use eager, or gpipe, 1f1b or interleaved-1f1b")
    return None


def _span(noun: str, count: int, start: int = 0) -> str:
    """"rank 0" for one, "ranks 0-3" for several."""
    return f"{noun} {start}" if count == 1 else f"{noun}s {start}-{start + count - 1}"


def explain(config: Config, spec: ModelSpec, *, nnodes: int = 1) -> list[str]:
    """What each rank holds and reads, one line per rank group (the dry run prints it)."""
    shape = layout(config, nnodes=nnodes)
    batch = (f"{shape.global_batch_sequences} sequences x {config.seq_len} tokens per optimizer step "
             f"({shape.global_batch_tokens:,} tokens)")
    if config.parallel == "none":
        return [f"one process holds the whole model, gradients and optimizer state; {batch}"]
    if config.parallel == "dp":
        return [f"one process, {shape.world} GPU replicas (nn.DataParallel), each {config.batch_size} sequences of "
                f"every micro-batch; {batch}"]
    if config.parallel == "ddp":
        return [f"{_span('rank', shape.world)}: a whole replica each, {config.batch_size} sequences of their own per "
                f"micro-batch, gradients all-reduced once per step; {batch}"]
    if config.parallel == "fsdp":
        return [f"{_span('rank', shape.world)}: 1/{shape.world} of every parameter, gradient and optimizer state "
                f"(FSDP2, one unit per block, gathered for its forward and backward), {config.batch_size} sequences "
                f"of their own; {batch}"]
    heads, kv, width = spec.n_heads // shape.tp, spec.n_kv_heads // shape.tp, spec.intermediate // shape.tp
    tp_part = (f"1/{shape.tp} of every block's projections: {heads} of {spec.n_heads} attention heads"
               f"{f' ({kv} of {spec.n_kv_heads} key/value heads)' if spec.n_kv_heads != spec.n_heads else ''}, "
               f"{width} of {spec.intermediate} MLP columns (q/k/v and MLP-in column-wise, attention-out and "
               f"MLP-out row-wise); embeddings, norms and the LM head whole")
    if config.parallel == "tp":
        return [f"{_span('rank', shape.world)} (one tensor-parallel group): {tp_part}; every rank reads the same "
                f"{config.batch_size} sequences; {batch}"]
    if config.parallel == "fsdp+tp":
        return [f"{shape.dp} x {shape.tp} mesh (FSDP x TP): rank r is tensor-parallel shard r % {shape.tp} of FSDP "
                f"group r // {shape.tp}",
                f"each rank: {tp_part}, and of all that 1/{shape.dp} at rest (FSDP over the {shape.dp} groups)",
                f"the {shape.tp} ranks of a group read the same {config.batch_size} sequences, each group its own; "
                f"{batch}"]
    stages = shape.pp * shape.stages_per_rank
    ranges = pipeline_split(spec, config, stages)
    head = f"final norm, LM head and loss (the head about {head_blocks(spec, config):.1f} layers' work)"

    def holds(stage: int) -> str:
        blocks = ranges[stage]
        parts = (["embeddings"] if stage == 0 else []) + [_span("layer", blocks.stop - blocks.start, blocks.start)] + (
            [head] if stage == stages - 1 else [])
        return ", ".join(parts)

    lines = []
    sharded = config.parallel == "fsdp+pp"
    if sharded:
        lines.append(f"{shape.pp} x {shape.dp} mesh (PP x FSDP): rank r is stage rank r // {shape.dp} of pipeline "
                     f"r % {shape.dp}; each stage 1/{shape.dp} at rest, sharded by FSDP over the {shape.dp} ranks "
                     "that hold it")
    for rank, held in enumerate(rank_stages(shape.pp, shape.stages_per_rank, config.pp_schedule)):
        who = _span("rank", shape.dp, rank * shape.dp) if sharded else f"rank {rank}"
        if len(held) == 1:
            lines.append(f"{who} (stage {held[0]}): {holds(held[0])}")
        else:
            lines.append(f"{who} (stages {', '.join(map(str, held))}): "
                         + "; ".join(f"stage {stage}: {holds(stage)}" for stage in held))
    theory = shape.bubble_fraction_theory
    if theory is None:
        bubble = ("no closed-form bubble (it depends on how a stage's forward, input-gradient and weight-gradient "
                  "times compare): measured only")
    elif shape.stages_per_rank > 1 and shape.microbatches < shape.pp:
        bubble = f"bubble (v p+m-1-v m)/(v p+m-1) = {theory:.0%} in theory (fewer micro-batches than ranks)"
    elif shape.stages_per_rank > 1:
        bubble = f"bubble (p-1)/(v m+p-1) = {theory:.0%} in theory"
    else:
        bubble = f"bubble (p-1)/(m+p-1) = {theory:.0%} in theory"
    tied = ("tied embedding and LM head: one weight on rank 0, in its first and last stage"
            if config.pp_schedule in V_SCHEDULES else
            "tied embedding and LM head gradients summed between the first and last stage")
    each = f" (each of the {shape.dp} pipelines its own)" if sharded else ""
    lines.append(f"{config.pp_schedule} over {config.microbatches} micro-batches of {config.batch_size} sequences"
                 f"{each}; {bubble}; {tied}; {batch}")
    return lines


def explain_plan(configs: list[Config], *, nnodes: int = 1) -> list[str]:
    """The dry run's account of what each rank holds, once per distinct layout among `configs` (none when every
    configuration runs in one process on one device)."""
    from lmbench.models.registry import MODELS

    groups: dict[tuple[str, ...], list[Config]] = {}
    for config in configs:
        if config.parallel != "none":
            groups.setdefault(tuple(explain(config, MODELS[config.model], nnodes=nnodes)), []).append(config)
    lines = []
    for text, members in groups.items():
        first = members[0]
        more = f" and {len(members) - 1} more configuration(s) laid out alike" if len(members) > 1 else ""
        lines.append(f"{first.parallel} x {layout(first, nnodes=nnodes).world} ({first.key}{more}):")
        lines.extend(f"  {line}" for line in text)
    return (["", "what each rank holds:"] + lines) if lines else []
