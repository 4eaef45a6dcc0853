"""One training configuration: a frozen, validated point of a suite's matrix."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmbench.errors import ConfigError
from lmbench.models.registry import ATTENTION_SUPPORT, DROPOUT_FAMILIES, MODELS

#: Allowed values of every enumerated axis (DESIGN.md names them; they are part of the interface).
CHOICES: dict[str, tuple[str, ...]] = {
    "model": tuple(MODELS),
    "precision": ("fp32", "tf32", "amp-fp16", "amp-bf16", "fp16", "bf16", "fp8-tensorwise", "fp8-rowwise"),
    "parallel": ("none", "dp", "ddp", "fsdp", "tp", "pp", "fsdp+tp", "fsdp+pp"),
    "kernels": ("eager", "compile", "triton", "apex", "liger"),
    "attention": ("sdpa", "math", "eager"),
    "checkpointing": ("none", "full", "selective"),
    "optimizer": ("adamw-fused", "adamw", "apex-adam"),
    "tokenizer": ("byte", "bpe"),
    "pp_schedule": ("gpipe", "1f1b", "interleaved-1f1b", "zero-bubble", "zbv"),
    "compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
}

#: Typo guards: a batch of sequences, their length and the measured steps past these are no plan (a 2**63 batch
#: passed planning and failed in the worker); the largest registry models train at a few thousand positions.
MAX_COUNTS = {"batch_size": 2**20, "seq_len": 2**20, "grad_accum": 2**20, "steps": 10**7, "warmup": 10**7}
#: Processes per node for ddp/fsdp: more than any node has accelerators; a larger number is a typo, not a plan.
MAX_NPROC = 64
#: Most micro-batches of one pipeline step: schedules unroll every micro-batch's actions up front, and far more
#: than stages x a few only shrinks a bubble that is already small; a larger count is a typo.
MAX_MICROBATCHES = 4096
#: Most pipeline stages one rank holds: each one more multiplies the point-to-point transfers of a step, so
#: interleaving uses a few; a larger count is a typo.
MAX_STAGES_PER_RANK = 16
#: Largest vocabulary padding multiple: tensor-core tiles want 8-128 rows; a larger multiple is a typo.
MAX_VOCAB_MULTIPLE = 1024
#: Longest wall-clock limit of one worker (30 days): beyond it, timers and process-group timeouts overflow.
MAX_TIMEOUT_S = 30 * 86400.0

#: Axes that mean something under some parallel modes only; elsewhere they are held at their defaults.
MODE_AXES: dict[str, frozenset[str]] = {
    "bucket_cap_mb": frozenset({"ddp"}),
    "gradient_as_bucket_view": frozenset({"ddp"}),
    "static_graph": frozenset({"ddp"}),
    "tp_degree": frozenset({"fsdp+tp"}),
    "pp_degree": frozenset({"fsdp+pp"}),
    "pp_schedule": frozenset({"pp", "fsdp+pp"}),
    "pp_stages_per_rank": frozenset({"pp", "fsdp+pp"}),
    "microbatches": frozenset({"pp", "fsdp+pp"}),
}
#: Axes that mean something under some kernel sets only; elsewhere they are held at their defaults too.
KERNEL_AXES: dict[str, frozenset[str]] = {
    "compile_mode": frozenset({"compile"}),
}


#: Options that mean something for some configurations only (Config.uses_conditional), and which those are.
CONDITIONAL_AXES = {"tokenizer": "data=PATH", "val_frac": "data=PATH",
                    "eval_tokens": "configurations that evaluate (eval_every or eval_every_tokens)",
                    "dropout": "the GPT-2 and BERT models (Llama and torch-transformer-lm have no dropout)"}


def applies(config: Mapping[str, Any], axis: str) -> bool:
    """Whether `axis` means something for `config` (a flat dict, as records keep it): an option of a parallel mode
    (MODE_AXES) or kernel set (KERNEL_AXES) it does not use is held at its default and means nothing."""
    modes, sets = MODE_AXES.get(axis), KERNEL_AXES.get(axis)
    return not ((modes is not None and config.get("parallel") not in modes)
                or (sets is not None and config.get("kernels") not in sets))


#: torch.compile modes whose compiled graphs run as CUDA graphs (inductor's cudagraph trees).
COMPILE_GRAPH_MODES = frozenset({"reduce-overhead", "max-autotune"})
#: cuda_graph=true: eager steps before the capture (lmbench.run.stepgraph), and the warmup that keeps them and the
#: capture out of the measured window.
CUDA_GRAPH_EAGER_STEPS = 2
CUDA_GRAPH_WARMUP = CUDA_GRAPH_EAGER_STEPS + 1
#: Axes excluded from the config key: they change how long or where we wait, not what is measured.
_UNKEYED = frozenset({"timeout_s"})
#: Axes that change nothing in the measured window, keyed at their default whatever they are set to: a profiled
#: run (its profiler steps come after the window) pairs with an unprofiled baseline in `compare`, and every key
#: measured before stays what it was (the first key format hashed `profile` at its default, false).
_KEYED_AT_DEFAULT = frozenset({"profile"})
#: Axes whose value never tells two configuration keys apart.
UNKEYED_AXES = _UNKEYED | _KEYED_AT_DEFAULT
#: The axes of the first key format. Every axis added since enters the key's hash only when it is set away
#: from its default, so adding an axis never changes the key of a configuration measured before it existed
#: (config_key is "the same across runs": baselines, noise floors and resumed runs match by it).
_KEY_V1_AXES = frozenset({
    "model", "batch_size", "seq_len", "grad_accum", "precision", "parallel", "nproc", "bucket_cap_mb",
    "gradient_as_bucket_view", "static_graph", "kernels", "attention", "checkpointing", "optimizer", "lr", "data",
    "tokenizer", "steps", "warmup", "seed", "timeout_s", "device", "max_memory_bytes", "telemetry",
    "telemetry_period_s", "profile"})
#: Axes spelled out in the readable part of the key, in this order.
KEY_AXES = ("model", "batch_size", "seq_len", "grad_accum", "precision", "parallel", "kernels", "attention",
             "checkpointing", "optimizer")


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything that defines one measured training configuration."""

    model: str = "tiny-gpt2"
    """Registry name of the model (see `lmbench list`)."""
    batch_size: int = 8
    """Sequences per micro-batch: per device under none, dp, ddp and fsdp; per tensor-parallel group under tp and
    fsdp+tp (its ranks read the same ones); per pipeline micro-batch under pp and fsdp+pp (docs/parallelism.md,
    the global batch of each mode)."""
    seq_len: int = 128
    """Tokens per sequence; at most the model's position count."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    precision: str = "fp32"
    """Numeric mode: fp32 (TF32 off), tf32, amp-fp16, amp-bf16, fp16 (master weights), bf16, and fp8-tensorwise /
    fp8-rowwise (amp-bf16 with the transformer blocks' linears in FP8 through torchao's float8 training)."""
    parallel: str = "none"
    """none; data parallelism: dp (nn.DataParallel), ddp (torchrun), fsdp (FSDP2 on torchrun); model parallelism
    on torchrun: tp (tensor parallel over every rank), pp (pipeline parallel, one stage per rank), fsdp+tp (a 2-D
    mesh: tensor parallel inside groups of tp_degree ranks, FSDP across them), fsdp+pp (a 2-D mesh: pipelines of
    pp_degree ranks, each stage sharded by FSDP over the pipelines)."""
    nproc: int = 0
    """Processes per node under torchrun; 0 means every visible GPU (2 on a CPU-only machine)."""
    tp_degree: int = 0
    """parallel=fsdp+tp: ranks in one tensor-parallel group (the rest of the world is the FSDP dimension); 0 means
    2. Under parallel=tp the group is the whole world."""
    pp_degree: int = 0
    """parallel=fsdp+pp: ranks in one pipeline (the rest of the world is the FSDP dimension: each stage is sharded
    over the pipelines); 0 means 2. Under parallel=pp the pipeline is the whole world."""
    pp_schedule: str = "1f1b"
    """parallel=pp and fsdp+pp: gpipe (all forwards, then all backwards), 1f1b (one forward, one backward in steady
    state), interleaved-1f1b (1F1B over several stages per rank, looped: Narayanan et al. 2021), zero-bubble
    (interleaved ZB1P: each backward split into input and weight gradients, the weight halves filling the bubble;
    Qi et al. 2024) or zbv (zero bubble with two stages per rank laid out in a V, the first and last stage on
    rank 0)."""
    pp_stages_per_rank: int = 0
    """parallel=pp and fsdp+pp: pipeline stages each rank holds (virtual stages); 0 means the schedule's own: 1 for
    gpipe and 1f1b, 2 for interleaved-1f1b, zero-bubble and zbv (zbv takes exactly 2)."""
    microbatches: int = 4
    """parallel=pp and fsdp+pp: micro-batches of batch_size sequences each that one pipeline step splits its batch
    into."""
    vocab_multiple: int = 1
    """Pad the embedding and LM head to a multiple of this many rows (1: the model's own vocabulary). 64 turns
    GPT-2's 50257 into 50304, as nanoGPT and llm.c do: on an H100, cuBLAS ran the unpadded LM head's three GEMMs
    on align1 sm75 kernels, 15.5 ms of a 66 ms amp-bf16 gpt2-124m step. Data never draws a padded token; the
    loss's softmax and the FLOPs (MFU) include the padded rows."""
    dropout: bool = True
    """true keeps the model's own dropout (GPT-2 and BERT 0.1, Llama none); false sets every dropout to 0, so
    that runs laid out differently over devices draw no different random masks (parity of tp/pp against none)."""
    bucket_cap_mb: int = 25
    """DDP gradient bucket size in MiB."""
    gradient_as_bucket_view: bool = False
    """DDP: gradients are views into the allreduce buckets (saves a copy and memory)."""
    static_graph: bool = False
    """DDP: the graph is the same every step, so DDP can skip per-step bookkeeping."""
    kernels: str = "eager"
    """Kernel set: eager, compile, triton, apex, liger."""
    compile_mode: str = "default"
    """kernels=compile: torch.compile's mode. default; reduce-overhead (the compiled forward and backward replay
    as CUDA graphs, inductor's cudagraph trees); max-autotune (Triton GEMM and kernel autotuning, plus those
    graphs); max-autotune-no-cudagraphs. A compiled graph that inductor would run without its CUDA graph is an
    `error` row saying why, never a silent fallback."""
    attention: str = "sdpa"
    """Attention implementation: sdpa (PyTorch picks), math (SDPA's math backend), eager."""
    checkpointing: str = "none"
    """Activation checkpointing: none, full (every block), selective."""
    optimizer: str = "adamw-fused"
    """adamw-fused (torch's fused AdamW kernel, the fastest correct implementation torch has on CPU and CUDA, and
    Hugging Face Trainer's default), adamw (foreach), apex-adam."""
    lr: float = 3e-4
    """Learning rate of the optimizer (constant)."""
    data: str = "synthetic"
    """`synthetic` (seeded uniform tokens), `markov` (a seeded Markov corpus a model can learn), or the path of
    a UTF-8 text file."""
    tokenizer: str = "byte"
    """How `data=PATH` is tokenized: byte (UTF-8 bytes) or bpe (trained locally on the file)."""
    steps: int = 20
    """Measured optimizer steps."""
    warmup: int = 5
    """Steps run before the measured window and left out of every figure."""
    seed: int = 0
    """Seeds weights and data."""
    timeout_s: float = 900.0
    """Wall-clock limit of the worker process, start-up included."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda or cuda:N."""
    max_memory_bytes: int = 0
    """Memory cap, 0 for none: the CUDA allocator's limit on a GPU; on a CPU, the largest growth of the
    resident set allowed during training (a run past it ends as `oom`)."""
    telemetry: bool = True
    """Sample NVML (power, energy, memory, clocks, throttling) over the measured window."""
    telemetry_period_s: float = 0.05
    """Seconds between telemetry samples."""
    cuda_graph: bool = False
    """Capture the whole training step (forward, backward, optimizer) into one CUDA graph during the warmup and
    replay it each step, so that the host's launch costs leave the step (one device; not with kernels=compile,
    whose own graphs are mode=reduce-overhead's). A step that cannot be captured is an `error` row saying why."""
    profile: bool = False
    """After the measured window (never inside it), a few more steps under torch.profiler: a gzipped Chrome
    trace beside the record and the breakdown of where the step time goes."""
    label_smoothing: float = 0.0
    """Label smoothing of the training loss, in [0, 1): the same formula in the eager loss and the fused
    linear cross-entropy (held-out perplexity is always the unsmoothed cross-entropy)."""
    val_frac: float = 0.1
    """Share of a text corpus held out for validation: the last tokens of `data=PATH`, which training never reads.
    `data=markov` holds out a separate stream of its chain whatever this is (the option means nothing there)."""
    eval_every: int = 0
    """Evaluate the held-out loss every this many optimizer steps (and before the first and after the last),
    outside every timed and sampled window; 0 for never."""
    eval_every_tokens: int = 0
    """Evaluate every this many trained tokens (all ranks and replicas) instead: after the first optimizer step that
    reaches each multiple, so rows of other global batches evaluate at the same token counts; 0 for never. Set
    this or eval_every."""
    eval_tokens: int = 65536
    """Held-out tokens read by each evaluation (the first ones of the split, the same every time)."""
    target_loss: float = 0.0
    """Time-to-target mode: train until the held-out loss (nats per token) is at most this; 0 for none."""
    target_ppl: float = 0.0
    """Time-to-target mode by perplexity (exp of the held-out loss); 0 for none."""
    max_steps: int = 0
    """Time-to-target mode: most optimizer steps (warmup included) before the run ends `not_reached`."""

    def __post_init__(self) -> None:
        for axis, allowed in CHOICES.items():
            value = getattr(self, axis)
            if value not in allowed:
                raise ConfigError(f"{axis}={value!r} is not one of: {', '.join(allowed)}")
        for axis in ("batch_size", "seq_len", "grad_accum", "steps", "bucket_cap_mb", "microbatches"):
            _require_int(axis, getattr(self, axis), minimum=1)
        for axis, most in MAX_COUNTS.items():
            if getattr(self, axis) > most:
                raise ConfigError(f"{axis}={getattr(self, axis)} is past what any model trains on one device "
                                  f"(allowed: up to {most:,}); a typo?")
        _require_int("nproc", self.nproc, minimum=0)
        _require_int("tp_degree", self.tp_degree, minimum=0)
        _require_int("pp_degree", self.pp_degree, minimum=0)
        if self.microbatches > MAX_MICROBATCHES:
            raise ConfigError(f"microbatches={self.microbatches} is more than a pipeline step splits a batch into; "
                              f"allowed: 1..{MAX_MICROBATCHES}")
        _require_int("pp_stages_per_rank", self.pp_stages_per_rank, minimum=0)
        if self.pp_stages_per_rank > MAX_STAGES_PER_RANK:
            raise ConfigError(f"pp_stages_per_rank={self.pp_stages_per_rank} cuts the model finer than lmbench runs; "
                              f"allowed: 0..{MAX_STAGES_PER_RANK}")
        _require_int("vocab_multiple", self.vocab_multiple, minimum=1)
        if self.vocab_multiple > MAX_VOCAB_MULTIPLE:
            raise ConfigError(f"vocab_multiple={self.vocab_multiple} pads to more rows than any kernel needs; "
                              f"allowed: 1..{MAX_VOCAB_MULTIPLE}")
        if self.nproc > MAX_NPROC:
            raise ConfigError(f"nproc={self.nproc} is more processes per node than lmbench runs (at most {MAX_NPROC})")
        _require_int("max_memory_bytes", self.max_memory_bytes, minimum=0)
        _require_int("warmup", self.warmup, minimum=0)
        _require_int("seed", self.seed, minimum=0)
        if not _positive_finite(self.lr):
            raise ConfigError(f"lr={self.lr!r} must be a positive, finite number")
        for axis in ("timeout_s", "telemetry_period_s"):
            value = getattr(self, axis)
            if not _positive_finite(value) or value > MAX_TIMEOUT_S:
                raise ConfigError(f"{axis}={value!r} must be a positive, finite number of seconds "
                                  f"(at most {MAX_TIMEOUT_S:,.0f})")
        for axis in ("telemetry", "gradient_as_bucket_view", "static_graph", "profile", "dropout", "cuda_graph"):
            if not isinstance(getattr(self, axis), bool):
                raise ConfigError(f"{axis}={getattr(self, axis)!r} must be true or false")
        if not (self.device in ("auto", "cpu", "cuda") or _is_cuda_index(self.device)):
            raise ConfigError(f"device={self.device!r} is not one of: auto, cpu, cuda, cuda:N")
        self._check_quality_axes()
        if self.reads_file:
            if not Path(self.data).is_file():
                raise ConfigError(f"data={self.data!r} is neither 'synthetic', 'markov' nor an existing text file")
            try:
                empty = Path(self.data).stat().st_size == 0
                binary = None if empty else not_text(self.data)
            except OSError as err:  # a corpus we may not read (permissions, a failing disk) is the user's to fix
                raise ConfigError(f"data={self.data!r}: cannot read it ({err.strerror or err})") from None
            if empty:
                raise ConfigError(f"data={self.data!r} is an empty file")
            if binary:
                raise ConfigError(f"data={self.data!r} is not UTF-8 text ({binary}); a corpus is a text file")

    def _check_quality_axes(self) -> None:
        """Held-out evaluation, label smoothing and time-to-target axes, each on its own (combinations: conflict)."""
        if not (isinstance(self.label_smoothing, (int, float)) and not isinstance(self.label_smoothing, bool)
                and 0.0 <= self.label_smoothing < 1.0):
            raise ConfigError(f"label_smoothing={self.label_smoothing!r} must be a number in [0, 1)")
        if not (isinstance(self.val_frac, (int, float)) and not isinstance(self.val_frac, bool)
                and 0.0 <= self.val_frac < 1.0):
            raise ConfigError(f"val_frac={self.val_frac!r} must be a number in [0, 1)")
        _require_int("eval_every", self.eval_every, minimum=0)
        _require_int("eval_every_tokens", self.eval_every_tokens, minimum=0)
        _require_int("eval_tokens", self.eval_tokens, minimum=1)
        _require_int("max_steps", self.max_steps, minimum=0)
        for axis in ("target_loss", "target_ppl"):
            value = getattr(self, axis)
            if not (value == 0 or _positive_finite(value)):
                raise ConfigError(f"{axis}={value!r} must be a positive, finite number (0 for no target)")
        if self.target_ppl and self.target_ppl <= 1.0:
            raise ConfigError(f"target_ppl={self.target_ppl!r} must be above 1 (perplexity is at least 1)")

    @property
    def has_target(self) -> bool:
        """Whether this is a time-to-target run."""
        return bool(self.target_loss or self.target_ppl)

    @property
    def target_loss_nats(self) -> float | None:
        """The target as a held-out loss in nats per token (a perplexity target converted), or None."""
        if self.target_ppl:
            return math.log(self.target_ppl)
        return self.target_loss or None

    @property
    def evaluates(self) -> bool:
        """Whether the run evaluates the held-out loss (and so trains on batches it never repeats)."""
        return self.eval_every > 0 or self.eval_every_tokens > 0

    def conflict(self) -> str | None:
        """Why two valid axis values cannot go together (e.g. seq_len past the model's positions), or None."""
        spec = MODELS[self.model]
        if self.evaluates and self.data == "synthetic":
            return ("data=synthetic is uniform random tokens: nothing to learn, so no held-out quality or target to "
                    "reach; use data=markov or data=PATH")
        quality = self._quality_conflict()
        if quality:
            return quality
        if self.label_smoothing and self.kernels == "liger":
            return ("label_smoothing with kernels=liger: Liger's patched Llama forward passes no label_smoothing to "
                    "its fused loss, so the run would train unsmoothed")
        if self.seq_len > spec.max_positions:
            return (f"seq_len={self.seq_len} exceeds the {spec.max_positions} positions of model {self.model}; "
                    f"allowed: 1..{spec.max_positions}")
        if self.attention not in ATTENTION_SUPPORT[spec.family]:
            return (f"attention={self.attention!r} is not available for model {self.model}; allowed: "
                    f"{', '.join(sorted(ATTENTION_SUPPORT[spec.family]))}")
        return None

    def _quality_conflict(self) -> str | None:
        if self.parallel in ("tp", "pp", "fsdp+tp", "fsdp+pp") and (self.evaluates or self.label_smoothing):
            what = "held-out evaluation (eval_every, eval_every_tokens)" if self.evaluates else "label_smoothing"
            return (f"{what} is not implemented for parallel={self.parallel}: it calls the whole model's forward and "
                    "computes the loss from its logits, which a pipeline stage or sharded model does not give")
        if self.target_loss and self.target_ppl:
            return "target_loss and target_ppl are two spellings of one target: set one of them"
        if self.eval_every and self.eval_every_tokens:
            return ("eval_every (optimizer steps) and eval_every_tokens (trained tokens) are two schedules of one "
                    "evaluation: set one of them and the other to 0 (the convergence suite sets eval_every_tokens)")
        if self.has_target:
            if not self.evaluates:
                return ("a target (target_loss/target_ppl) needs eval_every > 0 or eval_every_tokens > 0: the "
                        "held-out loss is only known where it is evaluated")
            if self.max_steps < self.warmup + self.steps:
                return (f"max_steps={self.max_steps} must be at least warmup + steps = {self.warmup + self.steps} "
                        "(a time-to-target run also measures throughput over those)")
        elif self.max_steps:
            return f"max_steps={self.max_steps} needs target_loss or target_ppl (time-to-target mode)"
        if self.evaluates and self.reads_file and self.val_frac == 0:
            return "held-out evaluation (eval_every, eval_every_tokens) needs val_frac > 0: nothing is held out"
        return self._corpus_conflict()

    def _corpus_conflict(self) -> str | None:
        """Why data=PATH is too short for this configuration, judged before a worker starts (one did, to fail):
        exact for tokenizer=byte, where a byte is a token; for bpe the bytes bound the tokens from above."""
        if not self.reads_file:
            return None
        size = Path(self.data).stat().st_size
        held = math.floor(size * self.val_frac)
        def tokens(count: int) -> str:
            return f"{count:,} tokens (a byte each)" if self.tokenizer == "byte" else f"at most {count:,} tokens (bpe)"

        if size - held < self.seq_len + 1:
            return (f"data={self.data!r} holds {tokens(size - held)} outside its held-out split (val_frac="
                    f"{self.val_frac:g}), fewer than one sequence of seq_len+1={self.seq_len + 1}")
        if self.evaluates and held < self.seq_len:
            return (f"data={self.data!r}: its held-out split (val_frac={self.val_frac:g}) holds {tokens(held)}, fewer "
                    f"than one window of seq_len={self.seq_len}; raise val_frac or use a longer file")
        return None

    def without_foreign_options(self) -> Config:
        """The same configuration with every option of another parallel mode (MODE_AXES) or kernel set
        (KERNEL_AXES) at its default: DDP's outside ddp, tp_degree outside fsdp+tp, the pipeline's outside pp and
        fsdp+pp, compile_mode outside kernels=compile; and the options it does not use (CONDITIONAL_AXES): the
        tokenizer of synthetic tokens, eval_tokens of a run that never evaluates, dropout of a model without any.
        One key per configuration measured."""
        foreign = {axis: DEFAULTS[axis] for axis, modes in MODE_AXES.items() if self.parallel not in modes}
        foreign.update({axis: DEFAULTS[axis] for axis, sets in KERNEL_AXES.items() if self.kernels not in sets})
        foreign.update({axis: DEFAULTS[axis] for axis in CONDITIONAL_AXES if not self.uses_conditional(axis)})
        return self.replace(**foreign)

    def uses_conditional(self, axis: str) -> bool:
        """Whether one of CONDITIONAL_AXES changes what this configuration runs: the tokenizer reads a file; val_frac
        splits a file (training reads only what it leaves; a Markov chain's held-out stream is drawn apart whatever
        it is); eval_tokens needs an evaluation; dropout a model that has some."""
        if axis == "tokenizer":
            return self.reads_file
        if axis == "val_frac":
            return self.reads_file
        if axis == "eval_tokens":
            return self.evaluates
        if axis == "dropout":
            return MODELS[self.model].family in DROPOUT_FAMILIES
        raise ValueError(f"{axis} is none of CONDITIONAL_AXES")

    @property
    def reads_file(self) -> bool:
        """Whether `data` is a text file's path (not the built-in synthetic or Markov tokens)."""
        return self.data not in ("synthetic", "markov")

    @property
    def compile_graphs(self) -> bool:
        """Whether torch.compile runs the compiled graphs as CUDA graphs (compile_mode reduce-overhead or
        max-autotune)."""
        return self.kernels == "compile" and self.compile_mode in COMPILE_GRAPH_MODES

    @property
    def padded_vocab(self) -> int:
        """The rows of the model's embedding and LM head: its vocabulary rounded up to vocab_multiple."""
        vocab = MODELS[self.model].vocab_size
        return -(-vocab // self.vocab_multiple) * self.vocab_multiple

    @property
    def tokens_per_step(self) -> int:
        """Tokens consumed by one optimizer step on one device."""
        return self.batch_size * self.seq_len * self.grad_accum

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    @property
    def key(self) -> str:
        """Stable identifier, the same across runs: readable axes plus a hash of all the rest."""
        values = {**self.to_dict(), **{axis: DEFAULTS[axis] for axis in _KEYED_AT_DEFAULT}}
        readable = "-".join(_key_part(axis, values[axis]) for axis in KEY_AXES)
        rest = {k: v for k, v in sorted(values.items())
                if k not in KEY_AXES and k not in _UNKEYED and (k in _KEY_V1_AXES or v != DEFAULTS[k])}
        digest = hashlib.sha1(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:8]
        return f"{readable}-{digest}"

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> Config:
        """Build from a flat dict (suite file, --set, results record); unknown keys are errors."""
        unknown = sorted(set(values) - set(FIELD_TYPES))
        if unknown:
            raise ConfigError(f"unknown axis {unknown[0]!r}; allowed: {', '.join(FIELD_TYPES)}")
        coerced = {name: coerce(name, value) for name, value in values.items()}
        return cls(**coerced)


FIELD_TYPES: dict[str, type] = {f.name: type(f.default) for f in dataclasses.fields(Config)}


def recorded_key(values: dict[str, Any]) -> str | None:
    """The key of a configuration as a record keeps it (every axis lmbench had when it wrote it), under today's
    key format; None for a mapping that names too little to say (no axis of the first key format may be missing:
    a hand-made one) or that this version cannot read (a newer one's axes)."""
    from lmbench.errors import ConfigError

    if not _KEY_V1_AXES <= set(values):
        return None
    try:
        config = Config.from_mapping(values)
    except (ConfigError, TypeError, ValueError):
        return None
    # What today's plan makes one configuration is one key in an older record too (a baseline measured with
    # tokenizer=bpe over synthetic tokens, or --device cuda:0, paired with nothing after they became one key).
    return config.replace(device=one_device(config.device, config.parallel)).without_foreign_options().key


def one_device(device: str, parallel: str) -> str:
    """The device as a key spells it: `cuda:0` is `cuda` (a fresh process's current device), and under torchrun any
    `cuda:N` is `cuda` (each rank takes its local rank's GPU, lmbench.run.worker.worker_device)."""
    # The torchrun modes (lmbench.plan.layout.DISTRIBUTED, which imports this module): every mode but these two.
    if device == "cuda:0" or (device.startswith("cuda:") and parallel not in ("none", "dp")):
        return "cuda"
    return device

#: Why each default is what it is (`lmbench list --defaults`); a test keeps it complete.
DEFAULT_REASONS: dict[str, str] = {
    "model": "the smallest GPT-2: a step in milliseconds on any machine; real suites name their model",
    "batch_size": "fits every registry model at seq_len 128 on a CPU; suites sweep it",
    "seq_len": "short enough for a CPU smoke run; suites set the length they study",
    "grad_accum": "one micro-batch per step: accumulation is a choice to measure, not a default",
    "precision": "fp32 with TF32 off is the reference every other mode is compared and parity-checked against",
    "parallel": "one device: parallelism is a choice to measure",
    "nproc": "every visible GPU, as torchrun users run data parallelism",
    "vocab_multiple": "the model as published (GPT-2's 50257 rows): padding changes the model, so it is a choice",
    "tp_degree": "the smallest tensor-parallel group, 2, leaves the most ranks to FSDP; suites sweep it",
    "pp_degree": "the shortest pipeline, 2 stages, has the smallest bubble and leaves the most ranks to FSDP",
    "pp_schedule": "1F1B holds at most as many micro-batches' activations in flight as there are stages, GPipe all "
                   "of them",
    "pp_stages_per_rank": "the schedule's own: one stage per rank for gpipe and 1f1b, two for the interleaved ones",
    "microbatches": "4: the bubble of 2 stages is then (p-1)/(m+p-1) = 20%; suites sweep it",
    "dropout": "the model as published: GPT-2 and BERT train with dropout 0.1",
    "bucket_cap_mb": "DDP's own default",
    "gradient_as_bucket_view": "DDP's own default",
    "static_graph": "DDP's own default",
    "kernels": "plain PyTorch, the baseline the fused sets are measured against",
    "compile_mode": "torch.compile as users call it first; CUDA graphs and autotuning are choices to measure",
    "attention": "PyTorch picks its fastest scaled-dot-product backend, as users get by default",
    "checkpointing": "none: recomputation trades speed for memory, a choice to measure",
    "optimizer": "torch's fused AdamW is the fastest correct implementation on CPU and CUDA (Trainer's default too)",
    "lr": "a common GPT-2-scale rate; throughput does not depend on it",
    "data": "seeded random tokens, staged on the device: the input pipeline stays out of the figure",
    "tokenizer": "bytes need no training and no download",
    "steps": "enough steps for a median and percentiles at tiny sizes; suites set more",
    "warmup": "covers allocator growth and cuDNN/cuBLAS autotuning; compiled sets need at least one",
    "seed": "reproducible weights and data",
    "timeout_s": "15 minutes: a hung worker becomes a timeout row, not a stuck suite",
    "device": "CUDA when visible, else the CPU",
    "max_memory_bytes": "no cap: the device's own memory",
    "telemetry": "power, energy and clocks are part of every measurement where NVML is there",
    "telemetry_period_s": "20 samples a second: enough for a power profile, costs well under 1% of a core",
    "profile": "off: the profiler runs extra steps after the window; turn it on for configurations to explain",
    "cuda_graph": "off: PyTorch as users run it, the host launching every kernel; a graph is a choice to measure",
    "label_smoothing": "none: the plain cross-entropy every model is trained with by default",
    "val_frac": "a tenth of the corpus held out, as WikiText-style splits hold out a few percent to a tenth",
    "eval_every": "off: a throughput run needs no held-out loss; quality runs set how often",
    "eval_every_tokens": "off: eval_every's steps are the other schedule; in tokens, batch sizes evaluate alike",
    "eval_tokens": "64k positions: a stable mean at the cost of a few forward passes on a GPU",
    "target_loss": "no target: the run measures throughput over a fixed number of steps",
    "target_ppl": "no target: the run measures throughput over a fixed number of steps",
    "max_steps": "no target, so no step budget beyond warmup + steps",
}
#: Every axis's default value.
DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Config)}


#: How messages name each axis type.
TYPE_NAMES: dict[type, str] = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def coerce(axis: str, value: Any) -> Any:
    """Convert a TOML or command-line value to the axis's type, naming the axis when it cannot."""
    wanted = FIELD_TYPES[axis]
    if wanted is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "on", "off", "1", "0"):
            return value.lower() in ("true", "on", "1")
        if not isinstance(value, bool):
            raise ConfigError(f"{axis}={value!r} must be true or false (on/off and 1/0 are read as those)")
        return value
    if isinstance(value, str) and wanted is not str:
        # ASCII only: int() reads '٤' as 4 and '1_000' as 1000, which no command line means.
        if not value.isascii() or "_" in value:
            raise ConfigError(f"{axis}={value!r} is not {TYPE_NAMES[wanted]} (ASCII digits, no '_')")
        try:
            return wanted(value)
        except ValueError:
            raise ConfigError(f"{axis}={value!r} is not {TYPE_NAMES[wanted]}") from None
    if wanted is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, wanted) or isinstance(value, bool):
        raise ConfigError(f"{axis}={value!r} must be {TYPE_NAMES[wanted]}")
    return value


def _require_int(axis: str, value: Any, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        bound = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{axis}={value!r} must be {bound}")


def _positive_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def not_text(path: str) -> str | None:
    """Where the file at `path` stops being UTF-8 (`byte 17: b'\\xff'`), or None."""
    return _scan(*_identity(path))[0]


def corpus_identity(path: str) -> dict[str, Any]:
    """What a record says of the corpus it trained on: its SHA-256 and size, so that a resume or a comparison over an
    edited file at the same path shows it."""
    resolved, size, mtime_ns = _identity(path)
    return {"data_sha256": _scan(resolved, size, mtime_ns)[1], "data_bytes": size}


def _identity(path: str) -> tuple[str, int, int]:
    stat = Path(path).stat()
    return str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=16)
def _scan(path: str, size: int, mtime_ns: int) -> tuple[str | None, str]:
    """(where the file stops being UTF-8 or None, its SHA-256), read once per size and modification time in 16 MiB
    pieces."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    digest = hashlib.sha256()
    offset, problem = 0, None
    with open(path, "rb") as f:
        while piece := f.read(16 * 2**20):
            digest.update(piece)
            if problem is None:
                try:
                    decoder.decode(piece)
                except UnicodeDecodeError as err:
                    problem = f"byte {offset + err.start:,}: {piece[err.start:err.start + 1]!r}"
            offset += len(piece)
    if problem is None:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            problem = f"it ends inside a character, at byte {size:,}"
    return problem, digest.hexdigest()


def _is_cuda_index(device: str) -> bool:
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()


def _key_part(axis: str, value: Any) -> str:
    short = {"batch_size": "b", "seq_len": "s", "grad_accum": "a", "checkpointing": "ckpt-"}
    return f"{short.get(axis, '')}{value}"
