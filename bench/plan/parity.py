"""Loss parity: does a fast configuration still train like the reference (fp32, eager, no checkpointing)?

An FP8 configuration is judged against its bf16 reference instead (amp-bf16, eager, no checkpointing):
FP8 changes only the block linears of amp-bf16, so that is the difference parity must isolate; the
bf16 reference is itself judged against fp32 when both are in the plan.

Both runs start from the same seed, hence the same initial weights and the same batches. Their
per-step losses are smoothed with a short EMA and compared step by step; the verdict is
  ok        max relative deviation <= the precision's tolerance
  drift     above the tolerance but below DIVERGED_REL_DEV
  diverged  a non-finite loss, or a deviation of DIVERGED_REL_DEV or more
Tolerances come from measured reruns, see TOLERANCES.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lmbench.models.registry import DROPOUT_FAMILIES, MODELS
from lmbench.plan.config import Config
from lmbench.plan.layout import MODEL_PARALLEL, layout, single_device

#: Data-parallel modes: whole replicas (or FSDP's shards of them) on batches of their own.
DATA_PARALLEL = frozenset({"dp", "ddp", "fsdp"})

#: Weight of the newest loss in the EMA (a short one: about five steps).
EMA_ALPHA = 0.2
#: A deviation this large means the configuration no longer trains like the reference.
DIVERGED_REL_DEV = 0.5
#: Largest relative deviation of the smoothed loss from the fp32 reference that still counts as parity:
#: 3x the largest deviation measured on healthy runs by ci/parity-tolerances.sh (4 tiny models, Markov
#: data, 30 steps, lr 1e-3, seeds 0-4, 2-core CPU, torch 2.13; 2026-11-28, after BERT's MLM loss moved to fp32
#: and pure 16-bit weights stopped rounding Llama's RoPE frequencies), with a floor of 1e-4. Measured there:
#: fp32 rerun 0 (the CPU is deterministic), amp-fp16 4.92e-5, amp-bf16 6.76e-5, fp16 1.90e-5, bf16 2.98e-3
#: (before those fixes BERT's 16-bit loss alone put fp16 at 1.25e-2 and its tolerance at 4e-2, which passed a
#: run that skipped every third update). tf32 cannot run on a CPU and borrows amp-fp16's figure. CPU autocast
#: covers fewer ops than CUDA's, so these must be measured again on a GPU (same script, --device cuda) before
#: they judge GPU runs.
TOLERANCES: dict[str, float] = {
    "fp32": 1e-4,
    "tf32": 1.5e-4,
    "amp-fp16": 1.5e-4,
    "amp-bf16": 2.1e-4,
    "fp16": 1e-4,
    "bf16": 9e-3,
    # Against amp-bf16 (FP8_REFERENCE), 3x the largest of 20 healthy runs a recipe (4 tiny models x seeds 0-4,
    # same settings as above, eager): tensorwise 2.78e-4, rowwise 2.76e-4, both on tiny-llama. docs/parity.md.
    "fp8-tensorwise": 8.5e-4,
    "fp8-rowwise": 8.5e-4,
}
#: The precision an FP8 configuration's loss is compared with.
FP8_REFERENCE = "amp-bf16"
FP8_PRECISIONS = frozenset(p for p in TOLERANCES if p.startswith("fp8"))


def ema(values: Sequence[float], alpha: float = EMA_ALPHA) -> list[float]:
    out: list[float] = []
    for v in values:
        out.append(v if not out else alpha * v + (1 - alpha) * out[-1])
    return out


def reference_config(config: Config, *, nnodes: int = 1) -> Config:
    """The configuration a parity check compares against: same model, data, seed and batches, eager, no
    checkpointing, in plain fp32 (FP8: in amp-bf16).

    A configuration laid out over several devices (resolved: nproc settled) is compared with parallel=none
    training on the same global batch, which its ranks cut up (lmbench.run.training): the check that sharding,
    staging and gradient averaging left the arithmetic as it was. Data parallelism of a masked-LM model keeps its
    own layout as the reference: each rank's loss is the mean over its own masked positions, whose count differs
    between ranks, so the averaged loss is not the whole batch's mean (a causal LM's positions are equal a row).
    """
    precision = FP8_REFERENCE if config.precision in FP8_PRECISIONS else "fp32"
    # Eager holds a kernel set's options (compile_mode) at their defaults: the reference has one key.
    reference = config.replace(precision=precision, kernels="eager", checkpointing="none").without_foreign_options()
    if config.parallel in MODEL_PARALLEL:
        return single_device(reference, nnodes=nnodes)
    if config.parallel in DATA_PARALLEL and MODELS[config.model].objective != "mlm":
        batch = layout(reference, nnodes=nnodes).global_batch_sequences // config.grad_accum
        return reference.replace(parallel="none", nproc=1, batch_size=batch).without_foreign_options()
    return reference


def is_reference(config: Config) -> bool:
    """Whether `config` is the end of its reference chain (fp32 eager): judged by nothing."""
    return reference_config(config) == config


def reference_depth(config: Config) -> int:
    """References to run before `config` can be judged: 0 for fp32 eager, 2 for FP8 (amp-bf16, then fp32)."""
    depth = 0
    while not is_reference(config):
        config, depth = reference_config(config), depth + 1
    return depth


def verdict(reference: Sequence[float | None], losses: Sequence[float | None], *, precision: str
            ) -> dict[str, Any]:
    """Parity fields of a record: `parity`, `parity_max_rel_dev`, `parity_tolerance`."""
    tolerance = TOLERANCES[precision]
    if any(v is None or not math.isfinite(v) for v in losses):
        return {"parity": "diverged", "parity_max_rel_dev": None, "parity_tolerance": tolerance}
    if len(reference) != len(losses) or any(v is None or not math.isfinite(v) for v in reference):
        return {"parity": None, "parity_max_rel_dev": None, "parity_tolerance": tolerance}
    deviation = max(abs(a - b) / abs(b) for a, b in zip(ema(losses), ema(reference)))
    if deviation <= tolerance:
        result = "ok"
    elif deviation < DIVERGED_REL_DEV:
        result = "drift"
    else:
        result = "diverged"
    return {"parity": result, "parity_max_rel_dev": deviation, "parity_tolerance": tolerance}


def other_dropout_masks(config: Config) -> str | None:
    """Why `config`, with dropout on, draws other random masks than its eager reference (so its loss would differ
    by the masks, not the numerics a parity check judges), or None. Its parity runs turn dropout off, and so does
    its reference (reference_config keeps the row's dropout)."""
    if not config.dropout or MODELS[config.model].family not in DROPOUT_FAMILIES:
        return None
    if config.parallel in MODEL_PARALLEL:
        return "tensor and pipeline parallel rows (their shards and stages draw other masks than the whole model)"
    if config.parallel in DATA_PARALLEL and reference_config(config).parallel == "none":
        return "data-parallel rows (each rank draws its own masks for its part of the batch)"
    if config.kernels == "compile":
        return "compiled rows (inductor draws its own random numbers, not eager's masks)"
    if config.cuda_graph:
        return "rows captured as a CUDA graph (a replay draws its masks from other Philox offsets)"
    # A chain of references ends in fp32 and is 16-bit before it only where the row is (FP8's amp-bf16): the row says.
    if config.device.startswith("cuda") and _sixteen_bit(config):
        # tiny-gpt2 on an H100 (stage 5, 2026-11-27): amp-fp16 and amp-bf16 both strayed 4.3e-4 from fp32, alike
        # to two digits though their roundings differ 8x; tiny-llama, without dropout, 4.8e-6 and 1.6e-5.
        return ("16-bit rows on a GPU (SDPA's 16-bit attention kernel draws other dropout masks than fp32's, and "
                "CUDA's dropout is not shown to draw alike in every dtype)")
    return None


def _sixteen_bit(config: Config) -> bool:
    """Whether the model's activations, hence its attention's inputs, are 16-bit (fp16, bf16, autocast, FP8's bf16
    autocast): on CUDA, SDPA sends them to its flash kernel, fp32 ones to its memory-efficient kernel, and each
    draws masks of its own. On a CPU one seed gives one mask in every dtype (tests/test_parity.py)."""
    return config.precision not in ("fp32", "tf32")


def with_references(planned: list[Any], platform: Any = None, *, nnodes: int = 1) -> tuple[list[Any], list[str]]:
    """The plan for a parity run: learnable data, and every configuration's reference in the plan.

    Uniform synthetic tokens have no structure to learn (the loss stays at log(vocabulary)), so
    they are replaced by the Markov corpus. Rows that draw other dropout masks than eager (model-parallel,
    compiled, captured as a CUDA graph: other_dropout_masks) lose their dropout. With `platform`, rows are
    resolved for it first (a model-parallel reference depends on the number of processes).
    Returns (planned rows, notices for the user).
    """
    from lmbench.plan.feasibility import resolve
    from lmbench.plan.suite import Planned

    notices = []
    rows: list[Planned] = []
    for row in planned:
        config = resolve(row.config, platform) if platform is not None else row.config
        if config.data == "synthetic":
            config = config.replace(data="markov")
            if not any(n.startswith("parity: data=") for n in notices):
                notices.append("parity: data=synthetic replaced by data=markov (uniform tokens show no loss curve)")
        other_masks = other_dropout_masks(config)
        if other_masks:
            config = config.replace(dropout=False)
            notice = f"parity: dropout=false for {other_masks}"
            if notice not in notices:
                notices.append(notice)
        rows.append(Planned(config, row.conflict))
    keys = {row.config.key for row in rows}
    references = []
    for row in rows:
        config = row.config
        while not is_reference(config):  # an FP8 row needs its amp-bf16 reference and that one's fp32 reference
            config = reference_config(config, nnodes=nnodes)
            if config.key not in keys:
                keys.add(config.key)
                references.append(Planned(config, config.conflict()))
    if references:
        notices.append(f"parity: added {len(references)} reference configuration(s) (eager, no checkpointing; fp32, "
                       "and amp-bf16 for FP8)")
    return references + rows, notices
