"""The whole training step as one CUDA graph (`cuda_graph=true`): captured once in the warmup, replayed each step.

Eager PyTorch launches every kernel of a step from Python, and when the host needs longer to launch them than
the device needs to run them, the device waits: on the H100 (2026-11-27) GPT-2 with our Triton kernels ran 52.6
ms steps that held about 25 ms of device work, and every Triton norm's fwd+bwd cost 0.5-0.8 ms a call with the
host in the loop for 0.08 ms on the device. Captured, the forward, backward and optimizer update replay with
no host in between; what is left of the host each step is a copy of the next micro-batches into the graph's
input buffers, the replay and a copy of the loss out.

Before the capture, EAGER_STEPS ordinary steps run on a side stream, as torch.cuda.graphs' whole-network example
does (the optimizer's state, cuBLAS workspaces, Triton's compilation and autotuning come into being there),
under torch's sync debug mode set to "error": a step that waits for the device on the host (an `.item()`, a
data-dependent shape) cannot be captured, and most such steps say so there, before any capture (the mode does
not see a device-wide synchronize or a read of the generator's state; those fail the capture itself, whose
cause is then reported). A capture records without running, so the call that captures also replays. All of it
happens within the warmup (feasibility asks for warmup >= CUDA_GRAPH_WARMUP); nothing of it is in the
measured window.

transformers' packed-sequence check, a host read in every GPT-2 and Llama forward that would refuse the step
and, while capturing, an explicit attention mask, is answered without looking for every model lmbench builds
(lmbench.models.registry.for_unpadded_batches): the captured step attends as the eager one does.

Memory: the window's replays allocate nothing, so the allocator's peak over the window would leave out the
step's activations and gradients, which live in the graph's private pool; the peak of the capture is kept
(capture_peak_allocated_bytes) and the record's allocated peak is the larger of the two.

The optimizer's parameter groups are made capturable (its step count on the device) before its first step;
lmbench's learning rate is constant, so the captured update holds it as it is.
Gradients are set to None at the end of each step, so the backward inside the capture allocates them from the
graph's own memory pool, as the whole-network example does. Dropout draws from the default CUDA generator,
which the capture registers: each replay draws new masks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lmbench.errors import LmbenchError, one_line
from lmbench.measure.graphtime import HostWait, side_stream_refusing_host_waits
from lmbench.plan.config import CUDA_GRAPH_EAGER_STEPS as EAGER_STEPS
from lmbench.run.data import Batch

if TYPE_CHECKING:
    import torch


class StepNotCapturable(LmbenchError):
    """The training step cannot run as a CUDA graph; the message says why (the record's reason)."""


class StepGraph:
    """Runs `step` (a TrainingStep; `run`, its eager step) eagerly EAGER_STEPS times, then captures and replays it."""

    def __init__(self, step: Any, run: Callable[[], torch.Tensor]) -> None:
        device = step.batches[0].input_ids.device
        if device.type != "cuda":
            raise StepNotCapturable(f"cuda_graph=true needs a CUDA device, not {device}")
        self.step, self.run = step, run
        self.pool = step.batches
        accum = step.config.grad_accum
        # One input buffer per micro-batch of a step, refilled from the pool before each call.
        firsts = (self.pool[i % len(self.pool)] for i in range(accum))
        self.inputs = [Batch(batch.input_ids.clone(), batch.labels.clone()) for batch in firsts]
        step.batches = self.inputs
        self._next = 0
        self.eager_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None
        self.capture_peak_allocated_bytes: int | None = None
        self._side: torch.cuda.Stream | None = None
        """The eager steps' side stream, made at the first."""
        for group in step.precision.optimizer.param_groups:
            if "capturable" not in group:
                raise StepNotCapturable(f"optimizer {type(step.precision.optimizer).__name__} cannot be captured "
                                        "in a CUDA graph (it has no capturable mode)")
            group["capturable"] = True

    def _refill(self) -> None:
        """The next micro-batches of the pool into the graph's input buffers (device-to-device copies)."""
        for buffer in self.inputs:
            batch = self.pool[self._next % len(self.pool)]
            self._next += 1
            buffer.input_ids.copy_(batch.input_ids)
            buffer.labels.copy_(batch.labels)
        self.step._next = 0

    def __call__(self) -> torch.Tensor:
        self._refill()
        if self.graph is None:
            if self.eager_steps < EAGER_STEPS:
                self.eager_steps += 1
                return self._eager()
            self._capture()
        self.graph.replay()
        return self.loss.clone()

    def _eager(self) -> torch.Tensor:
        try:
            if self._side is None:
                self._side = torch.cuda.Stream()  # one for every eager step: each reuses the last one's freed blocks
            with side_stream_refusing_host_waits(side=self._side):
                return self.run()
        except HostWait as err:
            raise StepNotCapturable(f"cuda_graph=true: the step waits for the device on the host, which a CUDA graph "
                                    f"cannot hold ({err})") from err

    def _capture(self) -> None:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                loss = self.run()
        except RuntimeError as err:
            # torch.cuda.graph's exit reports "a previous error during capture"; the cause is the one it hides.
            cause = err.__context__ if isinstance(err.__context__, BaseException) else err
            if isinstance(cause, torch.OutOfMemoryError) or isinstance(err, torch.OutOfMemoryError):
                raise cause if isinstance(cause, torch.OutOfMemoryError) else err
            raise StepNotCapturable(f"cuda_graph=true: the capture of the step failed ({one_line(cause)})") from err
        self.capture_peak_allocated_bytes = torch.cuda.max_memory_allocated()
        self.graph, self.loss = graph, loss

    def with_capture_peak(self, peaks: dict[str, Any]) -> dict[str, Any]:
        """The window's allocator peaks, the allocated one raised to the capture's (see the module docstring)."""
        return with_graph_peak(peaks, self.capture_peak_allocated_bytes)


def with_graph_peak(peaks: dict[str, Any], recorded: int | None) -> dict[str, Any]:
    """Allocator peaks of a window of graph replays, which allocate nothing: the allocated one raised to the peak
    of the steps that recorded the graphs (their memory is what each replay writes into)."""
    window = peaks.get("mem_peak_allocated_bytes")
    if recorded is None or window is None:
        return peaks
    return {**peaks, "mem_peak_allocated_bytes": max(window, recorded)}

