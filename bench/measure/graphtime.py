"""A kernel's device time with the host taken out of the loop: CUDA-graph replay.

`lmbench kernels` times each call between CUDA events, as triton.testing.do_bench does. When the host
needs longer to launch a call (Python, autograd, Triton's launcher, torch.compile's guards) than the
device needs to run it, the device idles between the events and that time is the host's: on the H100
(2026-11-26) RMSNorm fwd+bwd at 8192x2048 read 0.50-0.68 ms a call for torch.compile, Liger and ours,
whatever the row width, against 0.11 ms for torch's native kernel, with a p20-p80 spread of a third.
Such a figure says nothing about the kernels' bandwidth.

Here the calls are captured once into a CUDA graph and replayed, so the device runs them back to back
with no host in between. Each call is preceded by an L2 flush (as do_bench does, so no call reads
what the previous one left in cache), and a second graph of the flushes alone is replayed beside it:
a call's device time is the difference over the number of calls. A callable that cannot be captured
(one that waits for the device on the host, such as a `.item()`) raises; the caller says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from lmbench.errors import LmbenchError, one_line

#: Bytes zeroed before each call: more than any current GPU's L2 (H100 50 MB, B200 126 MB), do_bench's size.
FLUSH_BYTES = 256 * 2**20
#: Device time one graph replay should take: long against event resolution (about 0.5 us), short enough
#: that ten replays of a slow op stay within seconds.
GRAPH_TARGET_MS = 40.0
MAX_CALLS = 100
REPLAYS = 10
#: From this ratio of a call's event-timed time to its device time, the host set the pace.
LAUNCH_BOUND_RATIO = 1.25
#: What torch's sync debug mode says, set to "error", when an operation waits for the device on the host
#: (c10/cuda/CUDAFunctions.cpp, warn_or_error_on_sync).
SYNC_ERROR = "called a synchronizing CUDA operation"


def calls_per_graph(estimate_ms: float, target_ms: float = GRAPH_TARGET_MS) -> int:
    """Calls captured in one graph, from one call's rough time: about `target_ms` a replay."""
    if estimate_ms <= 0:
        return MAX_CALLS
    return max(1, min(MAX_CALLS, int(target_ms / estimate_ms)))


def per_call_ms(work_ms: Sequence[float], flush_ms: Sequence[float], calls: int) -> list[float]:
    """Each replay pair: the calls' graph less the flushes' graph, over the number of calls."""
    if len(work_ms) != len(flush_ms) or not work_ms:
        raise ValueError("one flush replay for every work replay")
    return [(work - flush) / calls for work, flush in zip(work_ms, flush_ms, strict=True)]


def launch_bound(event_ms: float, device_ms: float) -> str | None:
    """A note when the event-timed call took LAUNCH_BOUND_RATIO times its device time or longer."""
    if device_ms <= 0 or event_ms < LAUNCH_BOUND_RATIO * device_ms:
        return None
    return (f"launch-bound: {event_ms:.3f} ms a call with the host in the loop, {device_ms:.3f} ms on the device "
            f"({event_ms / device_ms:.1f}x)")


class NotCapturable(LmbenchError):
    """The callable cannot be timed from a CUDA graph; the message says why (for the row's note)."""


class HostWait(LmbenchError):
    """Work meant for a CUDA graph waited for the device on the host; the message is torch's, on one line."""


@contextlib.contextmanager
def side_stream_refusing_host_waits(device: Any = None, side: Any = None) -> Iterator[None]:
    """The block runs on a side stream (`side`, else a fresh one) after the current stream's work, under torch's
    sync debug mode set to "error", as work must be warmed up before a capture (lazy initialisation, cuBLAS
    workspaces): a host wait (.item(), torch.equal, a copy to the host), which would fail the capture and on older
    torch the allocator with it, raises HostWait here instead. After the block the current stream waits for the
    side stream. Warmups that repeat pass one `side`: the caching allocator keeps freed blocks per stream, so a
    fresh stream each time could not reuse the last one's memory."""
    import torch

    caller = torch.cuda.current_stream(device)
    side = side if side is not None else torch.cuda.Stream(device)
    side.wait_stream(caller)
    before = torch.cuda.get_sync_debug_mode()
    try:
        torch.cuda.set_sync_debug_mode("error")
        with torch.cuda.stream(side):
            yield
    except RuntimeError as err:
        if SYNC_ERROR not in str(err):
            raise  # out of memory, or a fault of the work: not a host wait
        raise HostWait(one_line(err)) from err
    finally:
        torch.cuda.set_sync_debug_mode(before)
    caller.wait_stream(side)


#: Set once a capture failed in this process. On torch before 2.12 a failed capture leaves the caching allocator
#: believing a capture is under way (pytorch#180395): every later empty_cache() then fails an internal assert and
#: the failed graph's memory pool is never released, so no later capture in the process is trusted.
_failed: list[str] = []


def empty_cache() -> None:
    """torch.cuda.empty_cache(), unless a capture failed in this process: torch before 2.12 then fails an internal
    assert in it (pytorch#180395), and no later capture is made anyway."""
    import torch

    if not _failed:
        torch.cuda.empty_cache()


class Captured:
    """`calls` calls, each after an L2 flush, captured in one CUDA graph beside a graph of the flushes alone."""

    def __init__(self, work: Any, flushes: Any, calls: int) -> None:
        self._work, self._flushes, self.calls = work, flushes, calls

    def release(self) -> None:
        """Drop the graphs (their memory pools go with the last reference): `captured` does it when its block ends,
        so a Captured kept past the block holds nothing."""
        self._work = self._flushes = None

    def sample(self) -> float:
        """Replay both graphs once: one call's device milliseconds (the calls' replay less the flushes', over the
        number of calls)."""
        return per_call_ms([_replay_ms(self._work)], [_replay_ms(self._flushes)], self.calls)[0]


def _replay_ms(graph: Any) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


@contextlib.contextmanager
def captured(fn: Callable[[], Any], grads: Sequence[Any], *, estimate_ms: float, device: Any,
             target_ms: float = GRAPH_TARGET_MS, flush: Any = None) -> Iterator[Captured]:
    """`fn` captured as a Captured pair of graphs (CUDA only), held until the block ends; `flush` a buffer of
    FLUSH_BYTES to zero before each call (one is made when None; several captures may share one).

    Raises NotCapturable when `fn` waits for the device on the host (found in the warm-up, before any
    capture: torch's sync debug mode turns such a wait into an error) or when a capture failed earlier in
    this process."""
    import torch

    if _failed:
        raise NotCapturable(f"an earlier capture in this process failed ({_failed[0]}); no later one is trusted")

    def reset() -> None:
        for tensor in grads:
            tensor.grad = None

    caller = torch.cuda.current_stream(device)
    try:
        with side_stream_refusing_host_waits(device):
            for _ in range(2):
                reset()
                fn()
    except HostWait as err:
        raise NotCapturable(f"it waits for the device on the host ({err})") from None
    torch.cuda.synchronize(device)
    # What the warm-up left cached (on its side stream) is no capture's to use: a capture allocates from its own pool
    # and frees no cached block while it runs.
    empty_cache()
    if flush is None:
        flush = torch.empty(FLUSH_BYTES, dtype=torch.int8, device=device)
    calls = calls_per_graph(estimate_ms, target_ms)
    work, flushes = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    try:
        try:
            with torch.cuda.graph(work):
                for _ in range(calls):
                    reset()
                    flush.zero_()
                    fn()
            with torch.cuda.graph(flushes):
                for _ in range(calls):
                    flush.zero_()
        except Exception as err:
            # torch.cuda.graph's exit reports "a previous error during capture"; the cause is the one it hides.
            _failed.append(one_line(err.__context__ or err))
            raise NotCapturable(f"the capture failed ({_failed[-1]})") from err
        work.replay()  # the first replay uploads the graph
        flushes.replay()
        held = Captured(work, flushes, calls)
        try:
            yield held
        finally:
            held.release()
    finally:
        # A failed capture's exit skips restoring the stream it captured on.
        torch.cuda.set_stream(caller)
        torch.cuda.synchronize(device)  # no replay may still run when the graphs' memory is released
        reset()
        del work, flushes

