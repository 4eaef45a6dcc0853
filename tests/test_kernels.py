"""Our Triton kernels against their PyTorch references: forward and every gradient (TRITON_INTERPRET on CPU)."""

import pytest
import torch

from lmbench.kernels.activations import (
    gelu_tanh,
    gelu_tanh_reference,
    swiglu,
    swiglu_reference,
)
from lmbench.kernels.cross_entropy import (
    linear_cross_entropy,
    linear_cross_entropy_reference,
)
from lmbench.kernels.norms import (
    add_norm,
    add_norm_reference,
    layer_norm,
    layer_norm_reference,
    rms_norm,
    rms_norm_reference,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16]
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=2e-2, rtol=1e-2),
       torch.bfloat16: dict(atol=5e-2, rtol=2e-2)}


def rand(*shape, dtype, requires_grad=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(DEVICE, dtype).requires_grad_(requires_grad)


def check(ours_fn, ref_fn, inputs, dtype):
    """Same outputs and same gradients for every input under a random upstream gradient; inputs untouched.

    Half-precision results are compared with the reference run on fp32 copies of the inputs (the
    accurate answer), since the two half-precision computations round differently.
    """
    before = [t.detach().clone() for t in inputs]
    ours = ours_fn(*inputs)
    same_dtype = ref_fn(*inputs)
    exact = inputs if inputs[0].dtype == torch.float32 else [t.detach().float().requires_grad_() for t in inputs]
    ref = ref_fn(*exact)
    ours, same_dtype, ref = (v if isinstance(v, tuple) else (v,) for v in (ours, same_dtype, ref))
    for o, d, r in zip(ours, same_dtype, ref):
        assert o.dtype == d.dtype and o.shape == r.shape
        torch.testing.assert_close(o.float(), r.float(), **TOL[dtype])
    upstream = [torch.randn(o.shape, generator=torch.Generator().manual_seed(7)).to(DEVICE, o.dtype) for o in ours]
    kept = [u.clone() for u in upstream]
    g_ours = torch.autograd.grad(ours, inputs, upstream)
    g_ref = torch.autograd.grad(ref, exact, [u.to(r.dtype) for u, r in zip(upstream, ref)])
    for go, gr in zip(g_ours, g_ref):
        torch.testing.assert_close(go.float(), gr.float(), **TOL[dtype])
    for t, b in zip(inputs, before):
        assert torch.equal(t.detach(), b), "an input was modified in place"
    for u, k in zip(upstream, kept):
        assert torch.equal(u, k), "grad_output was modified in place"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 64), (4, 1000), (3, 423, 17), (2, 3, 256)])
def test_layer_norm(dtype, shape):
    n = shape[-1]
    check(layer_norm, layer_norm_reference, [rand(*shape, dtype=dtype), rand(n, dtype=dtype, seed=1),
                                            rand(n, dtype=dtype, seed=2)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 64), (4, 1000), (3, 423, 17)])
def test_rms_norm(dtype, shape):
    check(rms_norm, rms_norm_reference, [rand(*shape, dtype=dtype), rand(shape[-1], dtype=dtype, seed=1)], dtype)


def test_rms_norm_llama_cast_order_with_fp32_weight_and_half_input():
    x = rand(5, 96, dtype=torch.float16)
    w = rand(96, dtype=torch.float32, seed=1)
    out = rms_norm(x, w)
    assert out.dtype == torch.float32  # weight * hidden.to(input_dtype) promotes, as in LlamaRMSNorm
    check(rms_norm, rms_norm_reference, [x, w], torch.float16)


def test_non_contiguous_inputs():
    base = rand(8, 2 * 96, dtype=torch.float32, requires_grad=False)
    x = base[:, ::2].detach().requires_grad_(True)
    assert not x.is_contiguous()
    w, b = rand(96, dtype=torch.float32, seed=1), rand(96, dtype=torch.float32, seed=2)
    check(layer_norm, layer_norm_reference, [x, w, b], torch.float32)
    check(rms_norm, rms_norm_reference, [x, w], torch.float32)
    t = rand(96, 8, dtype=torch.float32).t()
    check(gelu_tanh, gelu_tanh_reference, [t], torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rms", [True, False])
def test_add_norm(dtype, rms):
    shape = (3, 37, 130)
    x, r = rand(*shape, dtype=dtype), rand(*shape, dtype=dtype, seed=3)
    w, b = rand(130, dtype=dtype, seed=1), rand(130, dtype=dtype, seed=2)
    if rms:
        check(lambda x, r, w: add_norm(x, r, w, rms=True), lambda x, r, w: add_norm_reference(x, r, w, rms=True),
              [x, r, w], dtype)
    else:
        check(lambda x, r, w, b: add_norm(x, r, w, b, 1e-5, rms=False),
              lambda x, r, w, b: add_norm_reference(x, r, w, b, 1e-5, rms=False), [x, r, w, b], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (1000,), (3, 423, 5)])
def test_gelu_tanh(dtype, shape):
    check(gelu_tanh, gelu_tanh_reference, [rand(*shape, dtype=dtype)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 1000), (3, 423, 2)])
def test_swiglu(dtype, shape):
    check(swiglu, swiglu_reference, [rand(*shape, dtype=dtype), rand(*shape, dtype=dtype, seed=5)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_cross_entropy(dtype, reduction, with_bias):
    h = rand(2, 33, 32, dtype=dtype)
    w = rand(1000, 32, dtype=dtype, seed=1)
    labels = torch.randint(0, 1000, (2, 33), generator=torch.Generator().manual_seed(3)).to(DEVICE)
    labels[0, ::4] = -100
    inputs = [h, w] + ([rand(1000, dtype=dtype, seed=2)] if with_bias else [])

    def ours(h, w, b=None):
        return linear_cross_entropy(h, w, labels, b, reduction=reduction)

    def ref(h, w, b=None):
        return linear_cross_entropy_reference(h, w, labels, b, reduction=reduction)

    labels_before = labels.clone()
    tol_dtype = dtype if reduction == "mean" else torch.bfloat16  # sums of 66 rows grow the absolute error
    check(ours, ref, inputs, tol_dtype)
    assert torch.equal(labels, labels_before)


def test_linear_cross_entropy_all_ignored_is_zero_with_zero_gradients():
    h = rand(5, 16, dtype=torch.float32)
    w = rand(50, 16, dtype=torch.float32, seed=1)
    labels = torch.full((5,), -100, device=DEVICE)
    loss = linear_cross_entropy(h, w, labels)
    assert loss.item() == 0.0
    gh, gw = torch.autograd.grad(loss, (h, w))
    assert not gh.any() and not gw.any()
    assert linear_cross_entropy_reference(h, w, labels).item() == 0.0


def test_linear_cross_entropy_chunks_many_rows():
    # More rows than one chunk (chunk ~ rows / ceil(V / H)) exercises the chunk loop.
    h = rand(130, 8, dtype=torch.float32)
    w = rand(64, 8, dtype=torch.float32, seed=1)
    labels = torch.randint(0, 64, (130,), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    check(lambda h, w: linear_cross_entropy(h, w, labels), lambda h, w: linear_cross_entropy_reference(h, w, labels),
          [h, w], torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [2048, 4096, 8192])
def test_bf16_norms_on_gpu(n):
    x = rand(512, n, dtype=torch.bfloat16)
    w, b = rand(n, dtype=torch.bfloat16, seed=1), rand(n, dtype=torch.bfloat16, seed=2)
    check(layer_norm, layer_norm_reference, [x, w, b], torch.bfloat16)
    check(rms_norm, rms_norm_reference, [x, w], torch.bfloat16)


@pytest.mark.gpu
def test_bf16_activations_and_cross_entropy_on_gpu():
    a, b = rand(64, 4096, dtype=torch.bfloat16), rand(64, 4096, dtype=torch.bfloat16, seed=1)
    check(swiglu, swiglu_reference, [a, b], torch.bfloat16)
    check(gelu_tanh, gelu_tanh_reference, [a], torch.bfloat16)
    h, w = rand(256, 512, dtype=torch.bfloat16), rand(32000, 512, dtype=torch.bfloat16, seed=1)
    labels = torch.randint(0, 32000, (256,), device=DEVICE)
    check(lambda h, w: linear_cross_entropy(h, w, labels), lambda h, w: linear_cross_entropy_reference(h, w, labels),
          [h, w], torch.bfloat16)
