"""One optimizer step of a configuration: model, optimizer, precision, parallelism, kernel set and batches."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from lmbench.measure.flops import matmul_params, rerun_params
from lmbench.models.kernel_sets import KERNEL_SETS
from lmbench.models.registry import MODELS, build_model, enable_checkpointing
from lmbench.plan.config import Config
from lmbench.plan.layout import MODEL_PARALLEL, PIPELINES, Layout, layout
from lmbench.run.data import POOL_SIZE, Batch, derived_seed, heldout_batches, make_batches
from lmbench.run.parallel import WRAPPERS, gradient_sync
from lmbench.run.precision import Precision, mode


def _by_kind(params: list[torch.Tensor]) -> list[dict[str, list[torch.Tensor]]]:
    """One parameter group per tensor kind and device mesh: under tensor parallelism the sharded weights are
    DTensors and the replicated ones (embeddings, norms) plain tensors, and under fsdp+tp the projections live
    on the 2-D mesh and the rest on FSDP's 1-D one; one fused or foreach kernel call can mix neither (older
    torch raises "DTensor does not support cross-mesh operation", pytorch/pytorch#134212)."""
    groups: dict[tuple[type, Any], list[torch.Tensor]] = {}
    for param in params:
        groups.setdefault((type(param.data), getattr(param, "device_mesh", None)), []).append(param)
    return [{"params": group} for group in groups.values()]


#: Decoupled weight decay of every optimizer, given explicitly: torch's AdamW defaults to 0.01 and Apex's FusedAdam
#: to 0, so `optimizer=apex-adam` trained another algorithm than adamw (a reviewer).
WEIGHT_DECAY = 0.01


def _adamw(params: list[torch.Tensor], *, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(_by_kind(params), lr=lr, weight_decay=WEIGHT_DECAY, foreach=True)


def _adamw_fused(params: list[torch.Tensor], *, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(_by_kind(params), lr=lr, weight_decay=WEIGHT_DECAY, fused=True)


def _apex_adam(params: list[torch.Tensor], *, lr: float) -> torch.optim.Optimizer:
    from apex.optimizers import FusedAdam

    return FusedAdam(params, lr=lr, weight_decay=WEIGHT_DECAY, adam_w_mode=True)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "adamw-fused": _adamw_fused,
    "apex-adam": _apex_adam,
}


def _attention_context(attention: str) -> Callable[[], contextlib.AbstractContextManager]:
    if attention != "math":
        return contextlib.nullcontext
    return _math_attention


@contextlib.contextmanager
def _math_attention() -> Iterator[None]:
    """SDPA's math backend in the step's own dtype: by default it casts fp16 and bf16 inputs to fp32 (torch's
    `allow_fp16_bf16_reduction_math_sdp`, off), so `math` under a 16-bit precision ran its attention matmuls in fp32
    where `eager` ran them in bf16 (a reviewer): unfused against fused is the comparison, not fp32 against bf16."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cuda = torch.backends.cuda
    allowed = cuda.fp16_bf16_reduction_math_sdp_allowed()
    cuda.allow_fp16_bf16_reduction_math_sdp(True)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        cuda.allow_fp16_bf16_reduction_math_sdp(allowed)


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, objective: str, label_smoothing: float = 0.0,
                        reduction: str = "mean") -> torch.Tensor:
    """The loss the transformers models compute (causal LMs shift labels by one; -100 is ignored), in fp32,
    with PyTorch's label smoothing: what the eager path trains with when label_smoothing > 0."""
    if objective == "causal-lm":
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                           label_smoothing=label_smoothing, reduction=reduction)


def counted_tokens(labels: torch.Tensor, objective: str) -> torch.Tensor:
    """Positions a batch's loss averages over: every predicted next token, or the masked tokens of MLM."""
    return ((labels[:, 1:] if objective == "causal-lm" else labels) != -100).sum()


def _agree_between_ranks(found_inf: torch.Tensor) -> None:
    """One rank's gradient overflow, every rank's: the ranks of a split model hold different parts of its gradients,
    and all must skip the step, or the parts go out of step. A MAX all-reduce of one number over the job, queued on
    the device like the gradients' own collectives (no host wait)."""
    import torch.distributed as dist

    dist.all_reduce(found_inf, op=dist.ReduceOp.MAX)


def replicas(config: Config) -> int:
    """GPUs one process drives: all visible ones under nn.DataParallel, else one."""
    return max(1, torch.cuda.device_count()) if config.parallel == "dp" else 1


def seed_replica(config: Config, shape: Layout, rank: int) -> None:
    """Gives each data-parallel replica a random stream of its own (its dropout masks), once the model is built from
    `seed` alike everywhere: without it every DDP and FSDP rank applied the same masks to its other rows, and ddp
    2 x 8 trained another model than parallel=none x 16 (a reviewer). Each pipeline stage of a replica draws its own
    too (stages run other layers: sharing a stream gave block k on one stage block k's masks on the next, which
    parallel=none never does; Megatron offsets its seed by pipeline rank alike). Replica 0's first stage goes on
    with the stream the build left (parallel=none's, unchanged); the ranks of one tensor-parallel group share their
    stage's, as its replicated activations need one mask on every rank. nn.DataParallel's replicas draw from their
    GPUs' own generators, one a replica."""
    group, stage = shape.data_group(rank), shape.pipeline_rank(rank)
    if group or stage:
        torch.manual_seed(derived_seed(config.seed, f"replica {group}" + (f" stage {stage}" if stage else "")))
    if config.parallel == "dp":
        for index in range(1, shape.dp):
            torch.cuda.default_generators[index].manual_seed(derived_seed(config.seed, f"replica {index}"))


def devices_used(config: Config, device: torch.device) -> list[torch.device]:
    """The devices one process trains on: nn.DataParallel replicates over cuda:0..N-1 (its default device_ids)."""
    count = replicas(config)
    return [device] if count == 1 else [torch.device("cuda", index) for index in range(count)]


class TrainingStep:
    """Callable that runs one optimizer step (all micro-batches) and returns its mean loss, unsynchronised.

    Under pipeline parallelism only the last stage has a loss (`owns_loss`); the others return a zero.
    """

    def __init__(self, config: Config, device: torch.device, *, rank: int = 0, world: int = 1) -> None:
        self.config = config
        self.spec = MODELS[config.model]
        self.replicas = replicas(config)
        self.layout: Layout = layout(config.replace(nproc=world if world > 1 else self.replicas))
        """Degrees of data, tensor and pipeline parallelism and the global batch of this job."""
        torch.manual_seed(config.seed)
        # The model alone gets the padded vocabulary (vocab_multiple); the data keeps drawing from the real one.
        built = dataclasses.replace(self.spec, vocab_size=config.padded_vocab)
        model = build_model(built, attention=config.attention, device=device, dropout=config.dropout)
        # Counted on the whole model, before a pipeline keeps only its stage of it.
        self.matmul_params = matmul_params(model)
        self.rerun_params = rerun_params(model, self.spec.family, dropout=config.dropout,
                                         fp8=config.precision.startswith("fp8"))
        self.param_count = sum(p.numel() for p in model.parameters())
        self.random_reruns: collections.Counter[str] = collections.Counter()
        """Random ops (attention with dropout among them) that selective checkpointing left to its recompute, by ATen
        name."""
        if config.checkpointing != "none":
            enable_checkpointing(model, selective=config.checkpointing == "selective", reruns=self.random_reruns)
        model.train()
        self.pipeline = None
        stage, mesh = None, None
        if config.parallel in PIPELINES:
            from lmbench.plan.layout import rank_stages
            from lmbench.run.pipeline import cut, tied_weight

            tied = tied_weight(model)
            shape = self.layout
            held = rank_stages(shape.pp, shape.stages_per_rank, config.pp_schedule)[shape.pipeline_rank(rank)]
            model = stage = cut(model, self.spec, config, held, shape.pp * shape.stages_per_rank)
            if config.parallel == "fsdp+pp":
                from torch.distributed.device_mesh import init_device_mesh

                # Pipelines of consecutive stage ranks d, d + dp, ...; each stage's FSDP group consecutive ranks.
                mesh = init_device_mesh(device.type, (shape.pp, shape.dp), mesh_dim_names=("pp", "dp"))
        self.base_model = model
        """The model (a pipeline rank's stages of it) as built: not wrapped, not compiled."""
        kernel_set = KERNEL_SETS[config.kernels]
        model, self.kernels_applied = kernel_set.swap(model, self.spec)
        """What the kernel set swapped in, e.g. "norms 5/5, GELU-tanh 2/2" (None for eager and compile)."""
        make_optimizer = partial(OPTIMIZERS[kernel_set.optimizer or config.optimizer], lr=config.lr)
        wrap = partial(WRAPPERS[config.parallel], config=config, device=device,
                       **({"mesh": mesh["dp"]} if mesh is not None else {}))
        if config.parallel == "tp":
            # Tensor parallelism rewrites the model in place (its projections' parameters become DTensor shards;
            # a cast to 16 bits after it keeps them so) rather than wrapping it: done before the precision, so that
            # a mode that copies the parameters (fp16's fp32 masters) copies the shards the model trains.
            model, wrap = wrap(model), partial(WRAPPERS["none"], config=config, device=device)
        split = config.parallel in MODEL_PARALLEL
        self.precision: Precision = mode(config.precision, split=split)(
            model, make_optimizer, device, wrap, agree=_agree_between_ranks if split else None)
        self.parallel_model = self.precision.model
        # A pipeline's stages are finished (compiled) one by one: the schedule calls each on its own.
        self.model = (self.parallel_model if stage is not None
                      else kernel_set.finish(self.parallel_model, compile_mode=config.compile_mode))
        self.compile_graphs = config.compile_graphs
        """torch.compile replays the compiled forward and backward as CUDA graphs (inductor's cudagraph trees): each
        step marks its start for them, and the loss it returns is copied out of their memory, which the next
        replay overwrites."""
        if stage is not None:
            from lmbench.run.pipeline import Pipeline

            runs = []
            for part in stage:
                part.autocast = self.precision.autocast
                runs.append(kernel_set.finish(part, compile_mode=config.compile_mode,
                                              in_place=config.parallel == "fsdp+pp"))
            self.pipeline = Pipeline(runs, stage, pipelines=self.layout.pipelines(), device=device,
                                     schedule=config.pp_schedule, microbatches=config.microbatches,
                                     grad_accum=config.grad_accum, tied=tied, scaled=self.precision.scaled,
                                     group=mesh["pp"].get_group() if mesh is not None else None)
        self.owns_loss = self.pipeline is None or self.pipeline.last
        self.fused_loss = config.kernels == "triton"
        """The model is a FusedLossLM: it takes label_smoothing and reduction itself."""
        seed_replica(config, self.layout, rank)
        self.batches = self._batches(device, rank)
        self.heldout: list[Batch] = []
        if config.evaluates:
            # Each data-parallel replica evaluates its share of the held-out set (the sums are all-reduced over the
            # ranks): a full evaluation on every rank made a scaled-out row's time to target carry world times the
            # work, and counted the positions world times.
            self.heldout = heldout_batches(spec=self.spec, batch_size=config.batch_size * self.replicas,
                                           seq_len=config.seq_len, data=config.data, tokenizer=config.tokenizer,
                                           seed=config.seed, eval_tokens=config.eval_tokens,
                                           val_frac=config.val_frac, device=device,
                                           shard=self.layout.data_group(rank) if world > 1 else 0,
                                           shards=self.layout.dp if world > 1 else 1)
        self._attention = _attention_context(config.attention)
        self._next = 0
        self.graph = None
        """With cuda_graph=true: the StepGraph that captures and replays the step (lmbench.run.stepgraph)."""
        if config.cuda_graph:
            from lmbench.run.stepgraph import StepGraph

            self.graph = StepGraph(self, self._eager_step)

    @property
    def reruns_attention(self) -> bool:
        """Selective checkpointing left a fused attention op (one with dropout) to its recompute, in a step so far."""
        return any("scaled_dot_product" in name for name in self.random_reruns)

    def _batches(self, device: torch.device, rank: int) -> list[Batch]:
        """This rank's pool of micro-batches.

        Every layout cuts the global batch that parallel=none with the same global batch size would train on, so
        that its losses can be checked against parallel=none: data-parallel rank r (ddp, fsdp) takes the r-th
        slice, every rank of a pipeline or a tensor-parallel group reads the same sequences, a pipeline step's
        batch holds all its micro-batches, and FSDP group g of fsdp+tp (pipeline g of fsdp+pp) takes the g-th
        slice. nn.DataParallel's
        one process reads the whole global batch and splits it over its replicas itself.
        """
        config, shape = self.config, self.layout
        steps = config.max_steps if config.has_target else config.steps + config.warmup
        # A run that measures held-out quality never repeats a batch; a throughput run cycles a small pool.
        pool = config.grad_accum * steps if config.evaluates else min(POOL_SIZE, config.grad_accum * steps)
        per_draw, part = config.batch_size * self.replicas, None
        if config.parallel in MODEL_PARALLEL:
            per_draw = config.batch_size * shape.microbatches * shape.dp
            if shape.dp > 1:
                part = shape.data_group(rank)
        elif config.parallel in ("ddp", "fsdp"):
            per_draw, part = config.batch_size * shape.dp, rank
        # A replica's share: its batch_size sequences, times the micro-batches of a pipeline step.
        share = config.batch_size * shape.microbatches
        rows = None if part is None else slice(part * share, (part + 1) * share)
        return make_batches(spec=self.spec, batch_size=per_draw, seq_len=config.seq_len, data=config.data,
                            tokenizer=config.tokenizer, seed=config.seed, count=pool, device=device,
                            val_frac=config.val_frac, rows=rows)

    def __call__(self) -> torch.Tensor:
        """One optimizer step; its loss (detached, fp32) as a device tensor, never read on the host here."""
        return self.graph() if self.graph is not None else self._eager_step()

    def _eager_step(self) -> torch.Tensor:
        if self.pipeline is not None:
            return self._pipeline_step()
        if self.compile_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        accum = self.config.grad_accum
        total = self._micro_step(last=accum == 1)
        for micro in range(1, accum):
            total = total + self._micro_step(last=micro == accum - 1)
        self.precision.step()
        # One micro-batch (the common case) runs exactly a hand-written loop's operations: no scaling, no sum.
        return total if accum == 1 else total / accum

    def _pipeline_update(self) -> None:
        # The tied all-reduce is a transfer: the wait in it for the other end stage is idle, like a stage's wait
        # for its activations. The optimizer step is the stage's own work, timed with its forward and backward; a
        # loss-scaled mode's overflow agreement between them is a collective over every rank, whose wait for the
        # slowest stage is idle too (timed inside the step, it read a middle stage 92% busy for 98% idle; a reviewer).
        self.pipeline.sum_tied_gradients()
        clock = self.pipeline.clock
        clock.wrap(self.precision.check)()
        self.precision.agree()
        clock.wrap(self.precision.apply)()

    def _pipeline_step(self) -> torch.Tensor:
        """All pipeline steps of one optimizer step (one per accumulated batch), then the update."""
        pipeline = self.pipeline
        pipeline.new_step()
        losses = []
        for _ in range(self.config.grad_accum):
            batch = self.batches[self._next % len(self.batches)]
            self._next += 1
            with self._attention():
                losses.append(pipeline.run(batch.input_ids, batch.labels))
        self._pipeline_update()
        if not self.owns_loss:
            return torch.zeros((), device=self.batches[0].input_ids.device)
        return torch.stack(losses).mean() if len(losses) > 1 else losses[0]

    def _micro_step(self, *, last: bool) -> torch.Tensor:
        """Forward and backward of the next micro-batch; its loss, detached, in fp32."""
        accum = self.config.grad_accum
        batch = self.batches[self._next % len(self.batches)]
        self._next += 1
        with gradient_sync(self.parallel_model, self.config.parallel, last), self._attention():
            with self.precision.autocast():
                loss = self._loss(batch, self.config.label_smoothing)
            # nn.DataParallel returns one loss per replica.
            loss = loss.mean() if loss.dim() else loss
            self.precision.backward(loss if accum == 1 else loss / accum)
        return loss.detach().float().clone() if self.compile_graphs else loss.detach().float()

    def _loss(self, batch: Batch, label_smoothing: float, reduction: str = "mean") -> torch.Tensor:
        """The model's loss on a batch, in fp32; with label smoothing (or a sum), or for a masked LM, the eager path
        computes it from the logits (token_cross_entropy), since the transformers losses take no label_smoothing."""
        if self.fused_loss:
            return self.model(input_ids=batch.input_ids, labels=batch.labels, label_smoothing=label_smoothing,
                              reduction=reduction).loss
        # The causal LMs' own loss upcasts the logits; BERT's MLM loss does not, so under fp16 or bf16 weights it
        # was a 16-bit loss (recorded losses rounded to bf16's steps, and parity's 16-bit tolerances set by it).
        if not label_smoothing and reduction == "mean" and self.spec.objective == "causal-lm":
            return self.model(input_ids=batch.input_ids, labels=batch.labels).loss
        logits = self.model(input_ids=batch.input_ids).logits
        return token_cross_entropy(logits, batch.labels, objective=self.spec.objective,
                                   label_smoothing=label_smoothing, reduction=reduction)

    @torch.no_grad()
    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed cross-entropy in nats, positions counted) over the held-out set, unsmoothed, in eval mode.

        Dropout is off while evaluating and the training mode is restored after; nothing here draws from a
        random generator, so training goes on exactly as it would have without the evaluation.
        """
        self.model.eval()
        try:
            total = torch.zeros((), dtype=torch.float64, device=self.heldout[0].input_ids.device)
            count = torch.zeros((), dtype=torch.int64, device=total.device)
            with self._attention(), self.precision.autocast():
                for batch in self.heldout:
                    loss = self._loss(batch, 0.0, reduction="sum")
                    total += loss.sum().double()  # nn.DataParallel: one sum per replica
                    count += counted_tokens(batch.labels, self.spec.objective)
        finally:
            self.model.train()
        return total, count
