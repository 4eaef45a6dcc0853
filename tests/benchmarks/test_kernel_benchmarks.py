"""pytest-benchmark microbenchmarks of our kernels against eager PyTorch (CUDA only).

    python -m pytest tests/benchmarks -m gpu --benchmark-autosave
    python -m pytest tests/benchmarks -m gpu --benchmark-compare --benchmark-compare-fail=median:10%

Each round synchronises the device before the timer stops, and rounds rotate through copies of
the inputs whose total size exceeds the L2 cache, so no round reads a warm cache.
"""

import itertools

import pytest
import torch

pytestmark = pytest.mark.gpu

SHAPES = [(8192, 2048), (8192, 4096), (8192, 8192)]


def rotating(make, min_bytes: int):
    """Enough input sets that together they overflow L2; cycled one per round."""
    first = make()
    size = sum(t.numel() * t.element_size() for t in first)
    copies = [first] + [make() for _ in range(max(1, -(-min_bytes // size)))]
    return itertools.cycle(copies)


def l2_bytes() -> int:
    props = torch.cuda.get_device_properties(0)
    return 2 * getattr(props, "L2_cache_size", 64 * 2**20)


def run_synced(benchmark, fn, inputs):
    def once():
        args = next(inputs)
        fn(*args)
        torch.cuda.synchronize()

    once()
    benchmark.pedantic(once, rounds=50, iterations=1, warmup_rounds=5)


def norm_inputs(m, n):
    return (torch.randn(m, n, device="cuda", dtype=torch.bfloat16, requires_grad=True),
            torch.randn(n, device="cuda", dtype=torch.bfloat16, requires_grad=True),
            torch.randn(m, n, device="cuda", dtype=torch.bfloat16))


@pytest.mark.parametrize("impl", ["lmbench", "eager"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_rmsnorm_fwd_bwd(benchmark, impl, shape):
    from lmbench.kernels.norms import rms_norm, rms_norm_reference

    f = rms_norm if impl == "lmbench" else rms_norm_reference
    benchmark.group = f"rmsnorm-{shape[0]}x{shape[1]}"
    run_synced(benchmark, lambda x, w, dy: f(x, w).backward(dy), rotating(lambda: norm_inputs(*shape), l2_bytes()))


@pytest.mark.parametrize("impl", ["lmbench", "eager"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_layernorm_fwd_bwd(benchmark, impl, shape):
    from lmbench.kernels.norms import layer_norm, layer_norm_reference

    f = layer_norm if impl == "lmbench" else layer_norm_reference
    benchmark.group = f"layernorm-{shape[0]}x{shape[1]}"
    run_synced(benchmark, lambda x, w, dy: f(x, w, w).backward(dy), rotating(lambda: norm_inputs(*shape), l2_bytes()))
