"""torch.compile as a kernel set: compiling the final module, and what dynamo and inductor say they made of it
(graphs, graph breaks, recompilations inside the measured window, graphs run without their CUDA graphs)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn

from lmbench.errors import KernelSwapError
from lmbench.models.versions import versions


def compile_mode_graphs(compile_mode: str) -> bool:
    """Whether torch.compile's `compile_mode` runs the compiled graphs as CUDA graphs, as torch itself says."""
    if compile_mode == "default":
        return False
    import torch._inductor

    return bool(torch._inductor.list_mode_options(compile_mode).get("triton.cudagraphs", False))


def compile_model(model: nn.Module, *, compile_mode: str = "default", in_place: bool = False) -> nn.Module:
    """torch.compile of the model: a wrapper module, or with `in_place` the model itself compiled (Module.compile),
    which keeps its class: an FSDP-sharded pipeline stage must stay an FSDPModule for torch's schedule to run FSDP's
    gradient sync once a pipeline step (a wrapper made it reduce-scatter and re-gather after every micro-batch)."""
    if compile_mode_graphs(compile_mode):
        import torch._inductor.config as inductor

        # The worker is a fresh process: these settings reach this configuration only.
        # A graph inductor cannot run as a CUDA graph (an input it mutates, a CPU op, too many re-recordings) is an
        # error at once, with inductor's reason, rather than a graph run without one.
        if hasattr(inductor.triton, "cudagraph_or_error"):
            inductor.triton.cudagraph_or_error = True
        # Graph partitioning (on by default) would instead split such a graph and run the parts around the offending
        # ops without CUDA graphs, some of them without a count or a message (torch 2.11 and 2.13 alike): off, a
        # graph replays whole or fails. On lmbench's models every compiled graph is the GPU's alone, with nothing
        # to split; one that is not says so as an error row.
        if hasattr(inductor, "graph_partition"):
            inductor.graph_partition = False
    # Past its recompile limit (8 graphs of one function by default) dynamo would run the function uncompiled from
    # then on, with a log line and nothing else: a kernels=compile row measured eagerly. An error instead.
    import torch._dynamo.config as dynamo

    if hasattr(dynamo, "fail_on_recompile_limit_hit"):
        dynamo.fail_on_recompile_limit_hit = True
    mode = None if compile_mode == "default" else compile_mode
    if in_place:
        model.compile(mode=mode)
        return model
    return torch.compile(model, mode=mode)


def compiled_graph_fallbacks() -> dict[str, int]:
    """What inductor has run outside CUDA graphs in this process so far, by its own counters: graphs it skipped,
    and partitions of graphs it split (only when a graph was split in more than one)."""
    from torch._dynamo.utils import counters

    return {"skipped": int(counters["inductor"]["cudagraph_skips"]),
            "partitions": int(counters["inductor"]["cudagraph_partitions"])}


def compiled_graph_counts() -> tuple[int, int]:
    """(graphs dynamo compiled, graph breaks it made) in this process so far, by its own counters. A break runs the
    code between two graphs eagerly on every call (GPT-2's loss once logged a warning there each forward)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"]), int(sum(counters["graph_break"].values()))


def attention_rewrites() -> int:
    """Attention patterns inductor's pattern matcher replaced with scaled_dot_product_attention in this process so
    far (its fuse_attention pass): a model's eager attention (BERT's, with dropout) then runs as SDPA, on a GPU a
    fused kernel, whatever `attention=eager` said."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["fuse_attention"])


def describe_compiled(compile_mode: str, *, cuda_graphs: bool) -> tuple[str, int, int]:
    """The record's kernels_applied line for kernels=compile, with its graph and break counts; raises
    KernelSwapError when a compile mode with CUDA graphs ran a graph without them (confirm_compiled_graphs)."""
    graphs, breaks = compiled_graph_counts()
    line = f"torch.compile: {graphs} graph(s), {breaks} graph break(s)"
    rewrites = attention_rewrites()
    if rewrites:
        line = f"{line}, {rewrites} attention pattern(s) rewritten to scaled_dot_product_attention"
    if cuda_graphs:
        line = f"{line}; {confirm_compiled_graphs(compile_mode)}"
    return line, graphs, breaks


def confirm_compiled_graphs(compile_mode: str) -> str:
    """The record's line for a compile mode with CUDA graphs; raises KernelSwapError when inductor ran any compiled
    graph, or part of one, without its CUDA graph."""
    found = compiled_graph_fallbacks()
    if found["skipped"] or found["partitions"]:
        parts = [f"{found['skipped']} graph(s) skipped" if found["skipped"] else "",
                 f"{found['partitions']} partitions of graphs split" if found["partitions"] else ""]
        detail = ", ".join(part for part in parts if part)
        raise KernelSwapError(f"compile_mode={compile_mode}: inductor ran compiled graphs without their CUDA graphs "
                              f"({detail}) with {versions()} (its log says why); refusing to measure it without them")
    return f"compile_mode={compile_mode}: every compiled graph replayed whole as a CUDA graph"


def failure_reason(error: BaseException) -> str | None:
    """A failed row's reason for dynamo's recompile limit (compile_model makes it an error), or None for any other
    error; dynamo's own message names only the setting."""
    if type(error).__name__ != "FailOnRecompileLimitHit":
        return None
    import torch._dynamo.config as dynamo

    limit = getattr(dynamo, "recompile_limit", None) or getattr(dynamo, "cache_size_limit", "?")
    return (f"torch.compile hit dynamo's recompile limit ({limit} graphs of one function): it "
            "would have run the model uncompiled from there on (TORCH_LOGS=recompiles names the failed guards)")


class WindowGraphs:
    """The graphs dynamo compiles over the measured window, less those of its excluded blocks: an evaluation in
    eval mode compiles graphs of its own, outside the window's clocks. Any other is a recompilation (a guard of
    the compiled step failed), whose compile time then sits inside the window's step times.

    With `cuda_graphs` (compile_mode reduce-overhead, max-autotune) it also counts the CUDA-graph work inductor's
    cudagraph trees did over the window: a function run eagerly to warm it up, or recorded as a graph. Either
    happens with no new dynamo graph (a static input's address changed, a new path through the tree) and silently
    until cudagraph_unexpected_rerecord_limit (128; a reviewer): a recording synchronizes the device in the window.
    """

    def __init__(self, *, cuda_graphs: bool = False) -> None:
        self._start = compiled_graph_counts()[0]
        self._excluded = 0
        self.tree_work = 0
        """Warmups and recordings of the cudagraph trees so far, less the excluded blocks'."""
        self._restore: list[tuple[Any, str, Any]] = []
        if cuda_graphs:
            from torch._inductor.cudagraph_trees import CUDAGraphTreeManager

            for name in ("run_eager", "record_function"):  # both torch 2.11's and 2.13's
                original = getattr(CUDAGraphTreeManager, name)
                self._restore.append((CUDAGraphTreeManager, name, original))
                setattr(CUDAGraphTreeManager, name, self._counted(original))

    def _counted(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.tree_work += 1
            return original(*args, **kwargs)

        return counted

    @contextlib.contextmanager
    def excluded(self) -> Iterator[None]:
        before, work = compiled_graph_counts()[0], self.tree_work
        try:
            yield
        finally:
            self._excluded += compiled_graph_counts()[0] - before
            self.tree_work = work

    def read(self) -> tuple[int, int | None]:
        """(graphs dynamo compiled in the window, CUDA-graph warmups and recordings in it, or None uncounted);
        the count stops here."""
        for owner, name, original in self._restore:
            setattr(owner, name, original)
        tree_work = self.tree_work if self._restore else None
        self._restore = []
        return compiled_graph_counts()[0] - self._start - self._excluded, tree_work
