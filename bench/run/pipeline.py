"""Pipeline parallelism: the model cut at block boundaries into stages, one or more per rank, run by
`torch.distributed.pipelining`: GPipe and 1F1B (one stage per rank), interleaved 1F1B and
zero-bubble (several, looped: stage s on rank s mod p) and ZBV (two, in a V).

Every rank builds the whole model from the same seed (the same weights as parallel=none), keeps
its own stages (lmbench.plan.layout.pipeline_split: the first stage the embeddings, the last the
final norm, the LM head and the loss) and lets the rest go. A stage calls the model's own blocks
in order, so the arithmetic is the unsplit model's. The loss is the model's (next-token cross
entropy, mean over tokens), computed by the schedule on the last stage per micro-batch; each
micro-batch's loss is divided by micro-batches x accumulation, so the summed gradients are the
whole batch's mean, as without a pipeline.

GPT-2 and Llama tie the LM head to the token embedding. Cut apart on two ranks, the first and
last stages each hold a copy; their gradients are summed between those two ranks before every
optimizer step (as Megatron-LM does), so both copies take the same update and stay equal. In a V
both stages are on rank 0 and share the one weight, whose gradient autograd sums.

The measured bubble: the schedule's own forward, backward (input and weight halves, where the
schedule splits them) and loss calls on each stage are timed (CUDA events on a GPU, no host
synchronisation), and so is the update after them (the optimizer step; the tied gradients'
all-reduce is a transfer); a rank's idle share of the window is 1 - busy / window. Idle is the
bubble plus point-to-point transfers the rank waited for.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmbench.models.registry import ModelSpec
from lmbench.plan.config import Config
from lmbench.plan.layout import MULTI_STAGE_SCHEDULES, V_SCHEDULES, pipeline_split, stage_split_problem

#: torch.distributed.pipelining's schedule class of each pp_schedule.
SCHEDULE_CLASSES = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B", "interleaved-1f1b": "ScheduleInterleaved1F1B",
                    "zero-bubble": "ScheduleInterleavedZeroBubble", "zbv": "ScheduleZBVZeroBubble"}


class PipelineError(ValueError):
    """The model cannot be cut into these stages (the planner refuses these first)."""


def _block_output(out: Any) -> torch.Tensor:
    # Older transformers return a tuple from a block, newer ones the hidden states alone.
    return out[0] if isinstance(out, tuple) else out


class Stage(nn.Module):
    """One stage's modules; `token_embedding` on the first stage, `lm_head` on the last. `autocast` is the
    precision's context (the schedule calls the stage directly, outside the training step's own)."""

    token_embedding: nn.Embedding | None
    lm_head: nn.Module | None

    def __init__(self) -> None:
        super().__init__()
        self.autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def tied_parameter(self) -> nn.Parameter:
        """This stage's copy of the weight the token embedding and the LM head share."""
        module = self.token_embedding if self.token_embedding is not None else self.lm_head
        return module.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.run(x)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def blocks(self) -> nn.ModuleList:
        """The stage's transformer blocks (FSDP's units under fsdp+pp)."""
        raise NotImplementedError


class GPT2Stage(Stage):
    """Part of a GPT2LMHeadModel: token and position embeddings first, blocks, final LayerNorm and LM head last."""

    def __init__(self, model: nn.Module, blocks: range, *, first: bool, last: bool) -> None:
        super().__init__()
        body = model.transformer
        self.token_embedding, self.wpe, self.drop = (body.wte, body.wpe, body.drop) if first else (None, None, None)
        self.h = nn.ModuleList(body.h[i] for i in blocks)
        self.ln_f, self.lm_head = (body.ln_f, model.lm_head) if last else (None, None)

    def blocks(self) -> nn.ModuleList:
        return self.h

    def run(self, x: torch.Tensor) -> torch.Tensor:
        if self.token_embedding is not None:
            positions = torch.arange(x.shape[1], device=x.device)
            x = self.drop(self.token_embedding(x) + self.wpe(positions)[None])
        for block in self.h:
            x = _block_output(block(x))
        if self.lm_head is not None:
            x = self.lm_head(self.ln_f(x))
        return x


class LlamaStage(Stage):
    """Part of a LlamaForCausalLM: token embedding first, decoder layers (rotary positions on every stage), final
    RMSNorm and LM head last."""

    def __init__(self, model: nn.Module, blocks: range, *, first: bool, last: bool) -> None:
        super().__init__()
        body = model.model
        self.token_embedding = body.embed_tokens if first else None
        self.rotary_emb = body.rotary_emb
        self.layers = nn.ModuleList(body.layers[i] for i in blocks)
        self.norm, self.lm_head = (body.norm, model.lm_head) if last else (None, None)

    def blocks(self) -> nn.ModuleList:
        return self.layers

    def run(self, x: torch.Tensor) -> torch.Tensor:
        if self.token_embedding is not None:
            x = self.token_embedding(x)
        positions = torch.arange(x.shape[1], device=x.device)[None]
        rotary = self.rotary_emb(x, position_ids=positions)
        for layer in self.layers:
            x = _block_output(layer(x, position_ids=positions, position_embeddings=rotary))
        if self.lm_head is not None:
            x = self.lm_head(self.norm(x))
        return x


STAGES: dict[str, type[Stage]] = {"gpt2": GPT2Stage, "llama": LlamaStage}


class RankStages(nn.ModuleList):
    """The stages one rank holds, in stage order: what the precision casts and the optimizer steps. Stages of a V
    that both hold the tied weight share it (one parameter, counted once)."""

    def __init__(self, stages: list[Stage], indices: list[int], num_stages: int) -> None:
        super().__init__(stages)
        self.indices = indices
        self.num_stages = num_stages

    @property
    def first(self) -> bool:
        return 0 in self.indices

    @property
    def last(self) -> bool:
        return self.num_stages - 1 in self.indices

    def tied_parameter(self) -> nn.Parameter:
        """This rank's copy of the weight the token embedding and the LM head share."""
        held = [stage for stage in self if stage.token_embedding is not None or stage.lm_head is not None]
        return held[0].tied_parameter()


def cut(model: nn.Module, spec: ModelSpec, config: Config, indices: list[int], num_stages: int) -> RankStages:
    """This rank's stages `indices` of `model` cut into `num_stages` (layout.pipeline_split); the blocks of other
    stages are left to be freed with the model."""
    refused = stage_split_problem(spec, num_stages)
    if refused:
        raise PipelineError(refused)
    ranges = pipeline_split(spec, config, num_stages)
    return RankStages([STAGES[spec.family](model, ranges[i], first=i == 0, last=i == num_stages - 1)
                       for i in indices], indices, num_stages)


def tied_weight(model: nn.Module) -> bool:
    """Whether the model's LM head shares its weight with the token embedding."""
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and head.weight is embedding.weight


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """transformers' causal-LM loss: position t predicts token t+1, mean over the tokens, in fp32."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())


class BusyClock:
    """Time spent inside the wrapped calls, per pipeline step: CUDA events on a GPU (read after the window, so
    no host synchronisation), the host clock on a CPU (where the calls run synchronously)."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._steps: list[list[tuple[Any, Any]]] = []

    def new_step(self) -> None:
        self._steps.append([])

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = self._mark()
            out = fn(*args, **kwargs)
            if self._steps:
                self._steps[-1].append((start, self._mark()))
            return out
        return timed

    def _mark(self) -> Any:
        if not self._cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def busy_s(self, steps: int) -> list[float]:
        """Busy seconds of each of the last `steps` steps (call after the device is synchronised)."""
        out = []
        for spans in self._steps[-steps:]:
            if self._cuda:
                out.append(sum(start.elapsed_time(end) for start, end in spans) / 1e3)
            else:
                out.append(sum(end - start for start, end in spans))
        return out


class Pipeline:
    """One rank's stages and their schedule; `run(batch)` is one pipeline step (all micro-batches, forward and
    backward), leaving the gradients for the optimizer."""

    def __init__(self, stage_modules: list[nn.Module], held: RankStages, *, pipelines: list[list[int]],
                 device: torch.device, schedule: str, microbatches: int, grad_accum: int, tied: bool,
                 group: Any = None, scaled: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss) -> None:
        """`stage_modules` are `held`'s stages as they run (compiled, where the kernel set compiles); `pipelines` the
        global ranks of every pipeline of the job in stage order (one under parallel=pp, one per FSDP group under
        fsdp+pp); `group` this rank's pipeline's process group (None: the whole world is the pipeline); `scaled` the
        precision's loss scaling (the schedule runs the backward from the loss it is given)."""
        import torch.distributed as dist
        from torch.distributed import pipelining

        self.first, self.last = held.first, held.last
        self.module = held
        self.stages = [pipelining.PipelineStage(module, index, held.num_stages, device, group=group)
                       for module, index in zip(stage_modules, held.indices)]
        self.clock = BusyClock(device)
        # The schedule calls these on its stage objects: timing them times the stages' compute, nothing else.
        for stage in self.stages:
            for name in ("forward_one_chunk", "backward_one_chunk", "backward_weight_one_chunk"):
                setattr(stage, name, self.clock.wrap(getattr(stage, name)))
            stage.perform_reduce_grad = self._on_the_last_batch(stage.perform_reduce_grad)
        self._grad_accum = grad_accum
        self._batch = 0
        self._scale = 1.0 / (microbatches * grad_accum)
        self._scaled = scaled
        self._microbatches = microbatches
        self._losses: list[torch.Tensor] = []
        # Gradients are scaled in the loss instead: the schedule's own scaling would rescale what earlier
        # accumulation steps left in .grad.
        options = {"loss_fn": self.clock.wrap(self._loss), "scale_grads": False}
        stages = self.stages if schedule in MULTI_STAGE_SCHEDULES else self.stages[0]
        self.schedule = getattr(pipelining, SCHEDULE_CLASSES[schedule])(stages, microbatches, **options)
        self._step_kwargs = ({"return_outputs": False}
                             if "return_outputs" in inspect.signature(self.schedule.step).parameters else {})
        # In a V the first and last stage are on rank 0 and share the weight. Otherwise new_group is collective:
        # every rank creates every pipeline's group of its two end ranks, in the same order, and keeps its own.
        self._tied_group = None
        if tied and schedule not in V_SCHEDULES:
            me = dist.get_rank()
            for ranks in pipelines:
                ends = dist.new_group([ranks[0], ranks[-1]])
                if me in (ranks[0], ranks[-1]):
                    self._tied_group = ends

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = next_token_loss(logits, labels)
        self._losses.append(loss.detach())
        return self._scaled(loss * self._scale)

    def _on_the_last_batch(self, reduce: Callable[..., Any]) -> Callable[..., Any]:
        """A stage's gradient reduction (FSDP's reduce-scatter and reshard, which the schedule runs after its last
        backward) on the optimizer step's last accumulated batch only: after every batch, an FSDP stage would
        reduce-scatter and gather again once per accumulated batch, not once per optimizer step as fsdp without a
        pipeline does. Until then the unsharded gradients add up, as in FSDP's own no-sync accumulation."""
        def once_per_step(*args: Any, **kwargs: Any) -> Any:
            if self._batch == self._grad_accum:
                return reduce(*args, **kwargs)
            return None
        return once_per_step

    def new_step(self) -> None:
        self.clock.new_step()
        self._batch = 0

    def run(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """One pipeline step over a batch of micro-batches (the `grad_accum`-th since `new_step` reduces the
        gradients); the mean loss on the last stage, None elsewhere."""
        self._losses = []
        self._batch += 1
        args = (input_ids,) if self.first else ()
        target = {"target": labels} if self.last else {}
        self.schedule.step(*args, **target, **self._step_kwargs)
        # torch 2.13's first step calls the loss once more, before the batch's own calls, to learn the gradients'
        # shapes (2.11 does not): only the last `microbatches` losses are the batch's.
        return torch.stack(self._losses[-self._microbatches:]).mean() if self.last else None

    def sum_tied_gradients(self) -> None:
        """First and last stage add up their copies' gradients of the tied embedding / LM head weight."""
        import torch.distributed as dist

        if self._tied_group is not None:
            grad = self.module.tied_parameter().grad
            # Under fsdp+pp a shard (a DTensor): both end stages shard the weight alike, so the shards add up.
            dist.all_reduce(grad.to_local() if hasattr(grad, "to_local") else grad, group=self._tied_group)
