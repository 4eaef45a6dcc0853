"""Our Triton kernels against their PyTorch references: forward and every gradient (TRITON_INTERPRET on CPU)."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from op_log import OpLog

from lmbench.kernels import cross_entropy, interpreter, norms
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
#: The norms run in bf16 in every Llama and GPT-2 configuration lmbench trains with amp-bf16 or bf16.
NORM_DTYPES = [*DTYPES, torch.bfloat16]
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=2e-2, rtol=1e-2),
       torch.bfloat16: dict(atol=5e-2, rtol=2e-2)}


def rand(*shape, dtype, requires_grad=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(DEVICE, dtype).requires_grad_(requires_grad)


def check(ours_fn, ref_fn, inputs, dtype, exact_fn=None):
    """Same outputs and same gradients for every input under a random upstream gradient; inputs untouched.

    Half-precision results are compared with `exact_fn` (default: the reference) run on float64 copies
    of the inputs, the accurate answer, since two half-precision computations round differently.
    """
    before = [t.detach().clone() for t in inputs]
    ours = ours_fn(*inputs)
    same_dtype = ref_fn(*inputs)
    exact = inputs if inputs[0].dtype == torch.float32 else [t.detach().double().requires_grad_() for t in inputs]
    ref = (exact_fn or ref_fn)(*exact)
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


@triton.jit
def _round_trip(X, Y, n, DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(X + offs, mask=offs < n)
    tl.store(Y + offs, x.to(DTYPE).to(tl.float32), mask=offs < n)


def kernel_rounded(t, dtype):
    """`t` rounded to `dtype` exactly as a kernel's `.to(dtype)` rounds it here, with the gradient passed through.

    Compiled Triton rounds to nearest even; the CPU interpreter truncates bf16. A reference rounded by
    torch would differ from the kernel by one unit in the last place in half the elements.
    """
    flat = t.detach().float().contiguous().view(-1)
    out = torch.empty_like(flat)
    _round_trip[(triton.cdiv(flat.numel(), 1024),)](flat, out, flat.numel(), DTYPE=_TL[dtype], BLOCK=1024)
    return t + (out.view(t.shape).to(t.dtype) - t).detach()


_TL = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def rms_norm_as_rounded(dtype):
    """Float64 RMSNorm with the Llama cast order's one rounding (of the normalised value to `dtype`) done as
    the kernel does it. The weight gradient sums dy * rounded(xhat) over rows: against an unrounded
    reference it is off by about 2**-9 * sqrt(rows), past any fixed tolerance at a few hundred rows."""
    def exact(x, weight, eps=1e-6):
        xhat = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        return weight * kernel_rounded(xhat, dtype)
    return exact


#: 3-D rows of an odd width under a block, 267 of them: the interpreter runs one forward program a row, so fewer rows
#: than the 1,269 this shape had save most of the norms' time, and 267 still leave the backward's last program a
#: tail of rows past M (8 programs of 34 rows here, 134 of 2 on an H100's 264).
ODD_ROWS = (3, 89, 17)


@pytest.mark.parametrize("dtype", NORM_DTYPES)
@pytest.mark.parametrize("shape", [(1, 64), (4, 1000), ODD_ROWS, (2, 3, 256)])
def test_layer_norm(dtype, shape):
    n = shape[-1]
    check(layer_norm, layer_norm_reference, [rand(*shape, dtype=dtype), rand(n, dtype=dtype, seed=1),
                                            rand(n, dtype=dtype, seed=2)], dtype)


@pytest.mark.parametrize("dtype", NORM_DTYPES)
@pytest.mark.parametrize("shape", [(1, 64), (4, 1000), ODD_ROWS])
def test_rms_norm(dtype, shape):
    check(rms_norm, rms_norm_reference, [rand(*shape, dtype=dtype), rand(shape[-1], dtype=dtype, seed=1)], dtype,
          rms_norm_as_rounded(dtype))


def test_bf16_rms_norm_weight_gradient_over_many_rows():
    # 512 rows: the unrounded reference is off by 2-3x the bf16 tolerance in the weight gradient here.
    x = rand(512, 256, dtype=torch.bfloat16)
    w = rand(256, dtype=torch.bfloat16, seed=1)
    check(rms_norm, rms_norm_reference, [x, w], torch.bfloat16, rms_norm_as_rounded(torch.bfloat16))


def test_rms_norm_llama_cast_order_with_fp32_weight_and_half_input():
    x = rand(5, 96, dtype=torch.float16)
    w = rand(96, dtype=torch.float32, seed=1)
    out = rms_norm(x, w)
    assert out.dtype == torch.float32  # weight * hidden.to(input_dtype) promotes, as in LlamaRMSNorm
    check(rms_norm, rms_norm_reference, [x, w], torch.float16, rms_norm_as_rounded(torch.float16))


def test_norms_read_a_strided_weight_and_bias_as_they_are():
    x = rand(6, 96, dtype=torch.float32)
    w = rand(2 * 96, dtype=torch.float32, seed=1, requires_grad=False)[::2].detach().requires_grad_(True)
    b = rand(3 * 96, dtype=torch.float32, seed=2, requires_grad=False)[::3].detach().requires_grad_(True)
    assert not w.is_contiguous() and not b.is_contiguous()
    check(layer_norm, layer_norm_reference, [x, w, b], torch.float32)
    check(rms_norm, rms_norm_reference, [x, w], torch.float32)


def test_outputs_can_be_modified_in_place_as_eager_ones_can():
    x = rand(4, 2, 64, dtype=torch.float32)
    w, b = rand(64, dtype=torch.float32, seed=1), rand(64, dtype=torch.float32, seed=2)
    for ours, ref, args in [(layer_norm, layer_norm_reference, (x, w, b)), (rms_norm, rms_norm_reference, (x, w)),
                            (gelu_tanh, gelu_tanh_reference, (x,)), (swiglu, swiglu_reference, (x, x))]:
        got, want = ours(*args).mul_(2), ref(*args).mul_(2)
        torch.testing.assert_close(got, want, **TOL[torch.float32])
        g_got = torch.autograd.grad(got.sum(), args)
        g_want = torch.autograd.grad(want.sum(), args)
        for a, e in zip(g_got, g_want):
            torch.testing.assert_close(a, e, **TOL[torch.float32])
    y, s = add_norm(x, x, w, eps=1e-6)
    y.add_(1)
    s.add_(1)


def test_second_derivatives_are_refused_not_silently_wrong():
    x = rand(4, 64, dtype=torch.float32)
    w, b = rand(64, dtype=torch.float32, seed=1), rand(64, dtype=torch.float32, seed=2)
    labels = torch.randint(0, 64, (4,), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    for out in (layer_norm(x, w, b), rms_norm(x, w), gelu_tanh(x), swiglu(x, x), add_norm(x, x, w)[0],
                linear_cross_entropy(x, w.view(1, 64).expand(64, 64), labels)):
        # The backward refuses to run when asked for a graph (it would come back as constants, and a second
        # derivative through it, e.g. of f(x) + x**3, would silently lose f's terms); a first derivative runs.
        with pytest.raises(RuntimeError, match="first derivatives only"):
            torch.autograd.grad(out.sum(), x, create_graph=True, retain_graph=True)
        torch.autograd.grad(out.sum(), x)


def test_norms_of_no_rows():
    x = rand(0, 64, dtype=torch.float32)
    w, b = rand(64, dtype=torch.float32, seed=1), rand(64, dtype=torch.float32, seed=2)
    for y in (layer_norm(x, w, b), rms_norm(x, w), add_norm(x, x, w)[0]):
        assert y.shape == (0, 64)
        gx, gw = torch.autograd.grad(y.sum(), (x, w))
        assert gx.shape == (0, 64) and torch.equal(gw, torch.zeros_like(gw))


def test_swiglu_returns_the_promoted_dtype():
    gate, up = rand(4, 8, dtype=torch.bfloat16), rand(4, 8, dtype=torch.float32, seed=1)
    y = swiglu(gate, up)
    assert y.dtype == swiglu_reference(gate, up).dtype == torch.float32
    ga, gu = torch.autograd.grad(y.sum(), (gate, up))
    assert ga.dtype == torch.bfloat16 and gu.dtype == torch.float32


def test_linear_cross_entropy_with_a_first_block_of_minus_infinity():
    """A row whose first BLOCK_V logits are all -inf (a masked vocabulary) has the loss of the rest."""
    width, vocab = 4, cross_entropy.BLOCK_V + 100
    h = torch.ones(2, width, device=DEVICE)
    w = rand(vocab, width, dtype=torch.float32, seed=1, requires_grad=False)
    bias = torch.zeros(vocab, device=DEVICE)
    bias[:cross_entropy.BLOCK_V] = float("-inf")
    labels = torch.tensor([cross_entropy.BLOCK_V + 3, cross_entropy.BLOCK_V + 50], device=DEVICE)
    loss = linear_cross_entropy(h, w, labels, bias)
    torch.testing.assert_close(loss, linear_cross_entropy_reference(h, w, labels, bias))


def test_non_contiguous_inputs():
    base = rand(8, 2 * 96, dtype=torch.float32, requires_grad=False)
    x = base[:, ::2].detach().requires_grad_(True)
    assert not x.is_contiguous()
    w, b = rand(96, dtype=torch.float32, seed=1), rand(96, dtype=torch.float32, seed=2)
    check(layer_norm, layer_norm_reference, [x, w, b], torch.float32)
    check(rms_norm, rms_norm_reference, [x, w], torch.float32)
    t = rand(96, 8, dtype=torch.float32).t()
    check(gelu_tanh, gelu_tanh_reference, [t], torch.float32)


@pytest.mark.parametrize("dtype", NORM_DTYPES)
@pytest.mark.parametrize("rms", [True, False])
def test_add_norm(dtype, rms):
    check_add_norm((3, 37, 130), dtype, rms)


def check_add_norm(shape, dtype, rms):
    x, r = rand(*shape, dtype=dtype), rand(*shape, dtype=dtype, seed=3)
    w, b = rand(shape[-1], dtype=dtype, seed=1), rand(shape[-1], dtype=dtype, seed=2)
    if rms:
        def exact(x, r, w):
            s = kernel_rounded(x + r, dtype)  # the sum is rounded to the input dtype, as `x + residual` is
            return rms_norm_as_rounded(dtype)(s, w), s

        check(lambda x, r, w: add_norm(x, r, w, rms=True), lambda x, r, w: add_norm_reference(x, r, w, rms=True),
              [x, r, w], dtype, exact)
    else:
        check(lambda x, r, w, b: add_norm(x, r, w, b, 1e-5, rms=False),
              lambda x, r, w, b: add_norm_reference(x, r, w, b, 1e-5, rms=False), [x, r, w, b], dtype)


@pytest.mark.parametrize("rms", [True, False])
def test_add_norm_of_a_bf16_branch_and_an_fp32_residual_reads_each_as_it_is(rms):
    """Under amp a block's output is bf16 and the residual stream fp32: the sum was cast to fp32 first, a copy of
    the whole activation every block (a reviewer: 22 bytes an element forward against eager's 18). Each is read in
    its own dtype now; the outputs, their dtypes and the gradients (bf16 for the branch) are eager's."""
    x, r = rand(6, 40, dtype=torch.bfloat16), rand(6, 40, dtype=torch.float32, seed=3)
    w, b = rand(40, dtype=torch.float32, seed=1), rand(40, dtype=torch.float32, seed=2)
    args = (w,) if rms else (w, b, 1e-5)
    log = OpLog()
    with log:
        y, s = add_norm(x, r, *args, rms=rms)
    assert torch.ops.aten._to_copy.default not in [f for f, _ in log.calls]  # x.to(float32) was the copy
    want_y, want_s = add_norm_reference(x, r, *args, rms=rms)
    assert (y.dtype, s.dtype) == (want_y.dtype, want_s.dtype) == (torch.float32, torch.float32)
    torch.testing.assert_close((y, s), (want_y, want_s), **TOL[torch.float32])
    upstream = rand(6, 40, dtype=torch.float32, requires_grad=False, seed=4)
    ours = torch.autograd.grad((y * upstream).sum() + s.square().sum(), (x, r, w))
    theirs = torch.autograd.grad((want_y * upstream).sum() + want_s.square().sum(), (x, r, w))
    assert [g.dtype for g in ours] == [g.dtype for g in theirs] == [torch.bfloat16, torch.float32, torch.float32]
    for mine, want, dtype in zip(ours, theirs, (torch.bfloat16, torch.float32, torch.float32)):
        torch.testing.assert_close(mine, want, **TOL[dtype])


def test_add_norm_gradients_of_a_residual_used_again_accumulate_apart():
    """The backward hands x and the residual one gradient tensor; the residual's other use adds to its gradient
    and never to x's (autograd does not accumulate in place into a tensor it holds twice)."""
    x, r = rand(4, 64, dtype=torch.float32), rand(4, 64, dtype=torch.float32, seed=3)
    w = rand(64, dtype=torch.float32, seed=1)
    grads = []
    for fn in (add_norm, add_norm_reference):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, r, w)]
        y, s = fn(*leaves, rms=True)
        (y.square().sum() + (s * 3).sum() + (leaves[1] * 5).sum()).backward()
        grads.append([t.grad for t in leaves])
    for mine, theirs in zip(*grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    assert not torch.equal(grads[0][0], grads[0][1])  # the residual's own use shows in its gradient only


@pytest.mark.parametrize("rms", [True, False])
@pytest.mark.parametrize("used", ["y", "s"])
def test_add_norm_with_one_output_unused(monkeypatch, rms, used):
    """One output alone reaches the loss (the last block's sum is never used): its gradient comes to the backward
    as None, so the kernel reads no tensor of zeros (the sum's) or does not run at all (the output's)."""
    from lmbench.kernels import norms

    x, r = rand(4, 64, dtype=torch.float32), rand(4, 64, dtype=torch.float32, seed=3)
    w = rand(64, dtype=torch.float32, seed=1)
    seen = []
    real = norms.norm_backward
    monkeypatch.setattr(norms, "norm_backward", lambda *args, **kw: seen.append(kw["ds"]) or real(*args, **kw))
    grads = []
    for fn in (add_norm, add_norm_reference):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, r, w)]
        y, s = fn(*leaves, rms=rms)
        ((y if used == "y" else s) * torch.arange(64.0, device=DEVICE)).sum().backward()
        grads.append([t.grad if t.grad is not None else torch.zeros_like(t) for t in leaves])
    assert seen == ([None] if used == "y" else [])
    for mine, theirs in zip(*grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


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
    # 2500 columns: three of the forward's online-softmax blocks (BLOCK_V) and three column programs in the
    # backward's grid, the last one partial.
    vocab = 2 * cross_entropy.BLOCK_V + 452
    h = rand(2, 33, 32, dtype=dtype)
    w = rand(vocab, 32, dtype=dtype, seed=1)
    labels = torch.randint(0, vocab, (2, 33), generator=torch.Generator().manual_seed(3)).to(DEVICE)
    labels[0, ::4] = -100
    inputs = [h, w] + ([rand(vocab, dtype=dtype, seed=2)] if with_bias else [])

    def ours(h, w, b=None):
        return linear_cross_entropy(h, w, labels, b, reduction=reduction)

    def ref(h, w, b=None):
        return linear_cross_entropy_reference(h, w, labels, b, reduction=reduction)

    labels_before = labels.clone()
    tol_dtype = dtype if reduction == "mean" else torch.bfloat16  # sums of 66 rows grow the absolute error
    check(ours, ref, inputs, tol_dtype)
    assert torch.equal(labels, labels_before)


@pytest.mark.parametrize("smoothing", [0.1, 0.4])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_linear_cross_entropy_label_smoothing_matches_torch(smoothing, reduction):
    """Loss and both gradients equal F.cross_entropy(label_smoothing=...) on the materialised logits."""
    h = rand(2, 33, 32, dtype=torch.float32)
    w = rand(1000, 32, dtype=torch.float32, seed=1)
    labels = torch.randint(0, 1000, (2, 33), generator=torch.Generator().manual_seed(3)).to(DEVICE)
    labels[1, ::3] = -100

    def torch_ce(h, w, smoothing=smoothing):
        return torch.nn.functional.cross_entropy(h.reshape(-1, 32) @ w.t(), labels.reshape(-1), ignore_index=-100,
                                                 reduction=reduction, label_smoothing=smoothing)

    check(lambda h, w: linear_cross_entropy(h, w, labels, reduction=reduction, label_smoothing=smoothing), torch_ce,
          [h, w], torch.float32 if reduction == "mean" else torch.bfloat16)
    # The smoothing is really applied: the loss is not the unsmoothed one.
    smoothed = linear_cross_entropy(h, w, labels, reduction=reduction, label_smoothing=smoothing).item()
    assert abs(smoothed - torch_ce(h, w, smoothing=0.0).item()) > 1e-2


def test_linear_cross_entropy_all_ignored_is_zero_with_zero_gradients():
    h = rand(5, 16, dtype=torch.float32)
    w = rand(50, 16, dtype=torch.float32, seed=1)
    labels = torch.full((5,), -100, device=DEVICE)
    loss = linear_cross_entropy(h, w, labels)
    assert loss.item() == 0.0
    gh, gw = torch.autograd.grad(loss, (h, w))
    assert not gh.any() and not gw.any()
    assert linear_cross_entropy_reference(h, w, labels).item() == 0.0


def test_linear_cross_entropy_chunks_many_rows(monkeypatch):
    monkeypatch.setattr(cross_entropy, "LOGITS_BUDGET_BYTES", 40 * 64 * 4)  # 40 rows a chunk: 4 chunks
    assert cross_entropy._chunk_rows(130, 64, 4) == 33
    h = rand(130, 8, dtype=torch.float32)
    w = rand(64, 8, dtype=torch.float32, seed=1)
    labels = torch.randint(0, 64, (130,), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    check(lambda h, w: linear_cross_entropy(h, w, labels), lambda h, w: linear_cross_entropy_reference(h, w, labels),
          [h, w], torch.float32)


def peaked_logits_inputs(n_rows=512, vocab=1024):
    """Hidden states and weights whose softmax puts ~0.99 on token 0 and ~1e-5 on every other token.

    Divided by 512 rows, 1e-5 is below half of fp16's smallest subnormal (2**-25) and rounds to 0, in eager code's
    fp16 gradient as in ours. Rows are (1, noise) and weights (logit, noise), so logits are about 0 for token 0 and
    -11.5 elsewhere.
    """
    g = torch.Generator().manual_seed(0)
    hidden = torch.stack([torch.ones(n_rows), 0.1 * torch.randn(n_rows, generator=g)], dim=1)
    weight = torch.stack([torch.full((vocab,), -11.5), 0.1 * torch.randn(vocab, generator=g)], dim=1)
    weight[0, 0] = 0.0
    labels = torch.randint(1, vocab, (n_rows,), generator=g)
    return hidden.to(DEVICE), weight.to(DEVICE), labels.to(DEVICE)


def ce_grads(fn, hidden, weight, labels, dtype, upstream=1.0):
    h, w = hidden.to(dtype).requires_grad_(), weight.to(dtype).requires_grad_()
    (fn(h, w, labels).float() * upstream).backward()
    return h.grad, w.grad


def eager_fp16_ce(h, w, labels):
    """What eager fp16 code computes: an fp16 LM head, the cross-entropy in fp32 (as autocast runs it)."""
    return F.cross_entropy(F.linear(h, w).float(), labels)


@pytest.mark.parametrize("upstream", [1.0, 2.0**10, 2.0**16])
def test_linear_cross_entropy_fp16_gradients_are_eager_fp16s(upstream):
    """The logits' gradient carries the whole factor (loss scale / tokens) into the fp16 matmuls, as eager's does:
    tiny entries flush where eager's flush, and nothing is kept that eager loses (a scale under the token count)."""
    hidden, weight, labels = peaked_logits_inputs()
    gh, gw = ce_grads(linear_cross_entropy, hidden, weight, labels, torch.float16, upstream)
    gh_eager, gw_eager = ce_grads(eager_fp16_ce, hidden, weight, labels, torch.float16, upstream)
    assert torch.equal(gw == 0, gw_eager == 0)
    torch.testing.assert_close(gw.float(), gw_eager.float(), atol=upstream * 1e-4, rtol=2e-2)
    torch.testing.assert_close(gh.float(), gh_eager.float(), atol=upstream * 1e-4, rtol=2e-2)


def test_linear_cross_entropy_fp16_overflows_only_where_eager_does():
    """512 tokens with one label and |h| = 160 sum to 81,920 in that label's weight-gradient row, past fp16's 65,504
    unscaled: with a loss scale under the token count eager's gradient fits, and so must ours, or a loss scaler
    that lowered its scale to get there would skip every step from then on. (The kernel runs a program a row under
    the interpreter: 512 rows at |h| = 160 and a scale of 2**8 give the same sums, 81,920 unscaled and ~40,300
    scaled, as 2048 rows at 40 and 2**10 did, in a quarter of the time.)"""
    n = 512
    hidden = torch.full((n, 8), 160.0)
    hidden[:, 1::2] = -160.0
    labels = torch.full((n,), 5)
    weight = torch.zeros(64, 8)
    for upstream in (1.0, 2.0**8):
        gh, gw = ce_grads(linear_cross_entropy, hidden.to(DEVICE), weight.to(DEVICE), labels.to(DEVICE),
                          torch.float16, upstream)
        _, gw_eager = ce_grads(eager_fp16_ce, hidden.to(DEVICE), weight.to(DEVICE), labels.to(DEVICE),
                               torch.float16, upstream)
        assert torch.isfinite(gw_eager).all()
        assert torch.isfinite(gw).all() and torch.isfinite(gh).all(), upstream
        torch.testing.assert_close(gw.float(), gw_eager.float(), atol=upstream * 1e-3, rtol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_linear_cross_entropy_takes_an_fp16_loss_scale(dtype):
    # precision=fp16 backpropagates (loss * 2**16): the scale must not pass through fp16 (max 65504).
    hidden, weight, labels = peaked_logits_inputs(n_rows=64, vocab=256)
    gh, gw = ce_grads(linear_cross_entropy, hidden, weight, labels, dtype, upstream=2.0**16)
    gh_ref, gw_ref = ce_grads(linear_cross_entropy_reference, hidden, weight, labels, torch.float64,
                              upstream=2.0**16)
    assert torch.isfinite(gh).all() and torch.isfinite(gw).all()
    torch.testing.assert_close(gh.double(), gh_ref, atol=2.0**16 * 1e-4, rtol=2e-2)
    torch.testing.assert_close(gw.double(), gw_ref, atol=2.0**16 * 1e-4, rtol=2e-2)


def fused_ce_forward_ops(monkeypatch, *, chunks, autocast):
    """The ops of one fused forward over 96 rows split in `chunks` chunks, fp32 weight, bf16 autocast or not."""
    rows, width, vocab = 96, 16, 200
    monkeypatch.setattr(cross_entropy, "LOGITS_BUDGET_BYTES", (rows // chunks) * vocab * 4)
    h = rand(rows, width, dtype=torch.float32)
    w = rand(vocab, width, dtype=torch.float32, seed=1)
    labels = torch.randint(0, vocab, (rows,), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    log = OpLog()
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast), log:
        linear_cross_entropy(h, w, labels)
    return log, (vocab, width)


def test_linear_cross_entropy_forward_never_waits_for_the_device(monkeypatch):
    log, _ = fused_ce_forward_ops(monkeypatch, chunks=4, autocast=False)
    assert log.host_reads() == []


def test_linear_cross_entropy_casts_the_weight_once_under_autocast(monkeypatch):
    log, weight_shape = fused_ce_forward_ops(monkeypatch, chunks=4, autocast=True)
    casts = [f for f in log.new_tensors(weight_shape) if f is torch.ops.aten._to_copy.default]
    assert len(casts) == 1


@pytest.mark.parametrize("autocast", [False, True])
def test_linear_cross_entropy_allocates_no_weight_sized_tensor_per_chunk(monkeypatch, autocast):
    one, weight_shape = fused_ce_forward_ops(monkeypatch, chunks=1, autocast=autocast)
    four, _ = fused_ce_forward_ops(monkeypatch, chunks=4, autocast=autocast)
    assert len(four.new_tensors(weight_shape)) == len(one.new_tensors(weight_shape)) <= 3


def test_chunks_fill_the_logits_budget():
    # GPT-2 (V=50257) and Llama-3 (V=128256) at 8 x 1023 tokens in bf16: 2 and 4 chunks.
    assert cross_entropy._chunk_rows(8184, 50257, 2) == 4092
    assert cross_entropy._chunk_rows(8184, 128256, 2) == 2046
    assert cross_entropy._chunk_rows(5, 1000, 4) == 5
    assert cross_entropy._chunk_rows(0, 1000, 4) == 1


def test_vocab_blocks_fill_the_logits_budget():
    # The backward's blocks of all 8192 rows in bf16: Llama-3 in 4 blocks of 32128 columns (the last 31872),
    # GPT-2 in 2 of 25216; multiples of 128 and within the 512 MiB.
    assert cross_entropy._vocab_block(8192, 128256, 2) == 32128
    assert cross_entropy._vocab_block(8192, 50257, 2) == 25216
    assert 8192 * 32128 * 2 <= cross_entropy.LOGITS_BUDGET_BYTES
    assert cross_entropy._vocab_block(5, 1000, 4) == 1000
    assert cross_entropy._vocab_block(0, 1000, 4) == 1000


#: 24 rows, a vocabulary of 290 and the budget of 8 rows of 290 logits: the forward's buffer rows are 384 columns
#: apart (VOCAB_ALIGN), so it runs 4 chunks of 6 rows; the backward 4 vocabulary blocks of 73, 73, 73 and 71 columns
#: (the last one a strided view of the buffer).
SWEEP_ROWS, SWEEP_VOCAB, SWEEP_WIDTH = 24, 290, 16
#: Every block's first and last column, ignored rows, and a few more.
SWEEP_LABELS = [0, 72, 73, 145, 146, 218, 219, 289, -100, 5, 100, 200, -100, 250, 30, 160, 289, 0, -100, 73, 146,
                219, 40, -100]


def force_sweep(monkeypatch, dtype, compute_dtype=None):
    itemsize = (compute_dtype or dtype).itemsize
    monkeypatch.setattr(cross_entropy, "LOGITS_BUDGET_BYTES", 8 * SWEEP_VOCAB * itemsize)
    assert cross_entropy._chunk_rows(SWEEP_ROWS, 384, itemsize) == 6
    assert cross_entropy._vocab_block(SWEEP_ROWS, SWEEP_VOCAB, itemsize) == 73
    labels = torch.tensor(SWEEP_LABELS, device=DEVICE)
    h = rand(SWEEP_ROWS, SWEEP_WIDTH, dtype=dtype)
    w = rand(SWEEP_VOCAB, SWEEP_WIDTH, dtype=dtype, seed=1)
    b = rand(SWEEP_VOCAB, dtype=dtype, seed=2)
    return h, w, b, labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_linear_cross_entropy_sweeps_vocab_blocks_and_row_chunks(monkeypatch, dtype, smoothing):
    """Several row chunks forward and vocabulary blocks backward, a label at every block's edges: all gradients."""
    h, w, b, labels = force_sweep(monkeypatch, dtype)
    # The sum: the mean's gradients (1/20 of these, 20 rows counted) would be under bf16's absolute tolerance.
    check(lambda h, w, b: linear_cross_entropy(h, w, labels, b, reduction="sum", label_smoothing=smoothing),
          lambda h, w, b: linear_cross_entropy_reference(h, w, labels, b, reduction="sum", label_smoothing=smoothing),
          [h, w, b], dtype)


def test_linear_cross_entropy_forward_writes_logits_rows_128_columns_apart(monkeypatch):
    """GPT-2's 50257 columns as the buffer's row stride left cuBLAS only its unaligned (align1) kernels."""
    h, w, b, labels = force_sweep(monkeypatch, torch.float32)
    log = OpLog()
    with log, torch.no_grad():
        linear_cross_entropy(h, w, labels, b)
    # (Under the interpreter, Triton's own host copies of the (6, 290) views show up as new_empty.)
    assert log.new_tensors((6, 384)) == [torch.ops.aten.empty.memory_format]


def test_linear_cross_entropy_refuses_an_empty_vocabulary_and_marks_a_label_past_it():
    h = rand(4, 8, dtype=torch.float32)
    with pytest.raises(ValueError, match="the weight has no rows"):
        linear_cross_entropy(h, rand(0, 8, dtype=torch.float32), torch.zeros(4, dtype=torch.long, device=DEVICE))
    # Eager code stops on a device assert; the fused loss never reads past the row and says NaN (a diverged run).
    labels = torch.tensor([1, 10, -100, 2], device=DEVICE)
    assert linear_cross_entropy(h, rand(10, 8, dtype=torch.float32), labels).isnan()
    labels = torch.tensor([1, 9, -100, 2], device=DEVICE)
    assert linear_cross_entropy(h, rand(10, 8, dtype=torch.float32), labels).isfinite()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_linear_cross_entropy_backward_twice_gives_the_same_gradients(monkeypatch, dtype):
    """retain_graph: the backward only reads what the forward saved (nothing is overwritten in place)."""
    h, w, b, labels = force_sweep(monkeypatch, dtype)
    loss = linear_cross_entropy(h, w, labels, b, label_smoothing=0.1) * 3.0
    first = torch.autograd.grad(loss, (h, w, b), retain_graph=True)
    second = torch.autograd.grad(loss, (h, w, b))
    for one, two in zip(first, second):
        assert torch.equal(one, two)
        assert one.any()


@pytest.mark.parametrize("autocast", [False, True])
def test_linear_cross_entropy_makes_no_fp32_weight_sized_tensor(monkeypatch, autocast):
    """Forward and backward allocate no fp32 tensor of V x H elements (under autocast with fp32 weights, the
    weight gradient itself only), no BT x V tensor, save nothing fp32 but per-row values, and never wait."""
    h, w, b, labels = force_sweep(monkeypatch, torch.float32 if autocast else torch.bfloat16, torch.bfloat16)
    log = OpLog()
    with log:
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
            loss = linear_cross_entropy(h, w, labels, b)
        saved = loss.grad_fn.saved_tensors
        loss.backward()
    assert all(t.numel() <= SWEEP_ROWS for t in saved if t is not None and t.dtype == torch.float32)
    fresh = [out for _, out in log.calls if out is not None and out.is_floating_point()]  # not the interpreter's bytes
    big_fp32 = [t for t in fresh if t.dtype == torch.float32 and t.numel() >= SWEEP_VOCAB * SWEEP_WIDTH]
    assert [(t.shape, t.data_ptr()) for t in big_fp32] == ([(w.grad.shape, w.grad.data_ptr())] if autocast else [])
    assert max(t.numel() for t in fresh) < SWEEP_ROWS * SWEEP_VOCAB
    assert log.host_reads() == []
    if autocast:  # the gradients are right too, as bf16 computes them
        hd, wd, bd = (t.detach().double().requires_grad_() for t in (h, w, b))
        linear_cross_entropy_reference(hd, wd, labels, bd).backward()
        for ours, ref in ((h.grad, hd.grad), (w.grad, wd.grad), (b.grad, bd.grad)):
            assert ours.dtype == torch.float32
            torch.testing.assert_close(ours.double(), ref, **TOL[torch.bfloat16])


@triton.jit
def _count_blocks(Out, N, BLOCK: tl.constexpr):
    total = 0
    for _ in range(0, N, BLOCK):
        total += 1
    tl.store(Out, total)


def test_a_loop_over_a_kernel_argument_runs():
    """Under TRITON_INTERPRET an integer argument is a one-element array, and `range(0, N, BLOCK)` needs an int
    from it: Triton 3.6's interpreter cannot make one under NumPy 2.4 unless lmbench.kernels mends it."""
    out = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    _count_blocks[(1,)](out, 1000, BLOCK=64)
    assert out.item() == 16
    if DEVICE == "cpu":
        assert not interpreter.broken()


@triton.jit
def _add_row(X, Out, row, N: tl.constexpr):
    cols = tl.arange(0, N)
    tl.store(Out + cols, tl.load(Out + cols) + tl.load(X + row * N + cols) + tl.zeros([N], dtype=tl.float32))


@triton.jit
def _sum_rows(X, Out, M, N: tl.constexpr):
    for row in range(0, M):
        _add_row(X, Out, row, N)


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter is how the tests run kernels on a CPU")
def test_the_interpreter_patches_the_language_once_a_launch_not_at_every_helper_call(monkeypatch):
    """Triton 3.9's interpreter re-patched triton.language at every call of one jit function from another (half
    of an interpreted training step went to it); lmbench.kernels makes it once per module per launch. A helper
    that sees another language module (tl.zeros: triton.language.core) still gets it patched, and the sums hold."""
    from triton.runtime import interpreter as triton_interpreter

    assert interpreter.quicken()
    walks = []
    real = triton_interpreter._patch_builtin
    monkeypatch.setattr(triton_interpreter, "_patch_builtin", lambda *args: walks.append(args[0]) or real(*args))
    x = torch.arange(64 * 8, dtype=torch.float32, device=DEVICE).reshape(64, 8)
    per_launch = []
    for rows in (1, 1, 64):  # the first launch, which may rewrite the functions, aside
        out = torch.zeros(8, dtype=torch.float32, device=DEVICE)
        walks.clear()
        _sum_rows[(1,)](x, out, rows, N=8)
        torch.testing.assert_close(out, x[:rows].sum(0))
        per_launch.append(len(walks))
    assert per_launch[1] == per_launch[2] > 0, per_launch


@pytest.mark.parametrize("kernels", ["norms", "elementwise"])
def test_kernels_address_elements_past_2_31(kernels):
    script = Path(__file__).with_name("far_offsets.py")
    done = subprocess.run([sys.executable, str(script), kernels], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-3000:])


def test_every_kernel_compiles_for_an_h100():
    """The installed Triton lowers every kernel to an sm_90 cubin, no GPU needed: a Triton release that cannot
    compile one fails here, not on a lent GPU (tests/compile_kernels.py, in a child without TRITON_INTERPRET)."""
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip(f"triton {triton.__version__} carries no ptxas to compile for sm_90 without a GPU")
    script = Path(__file__).with_name("compile_kernels.py")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok 50", (done.returncode, done.stderr[-3000:])


def test_norm_backward_plan_is_the_one_measured_at_each_width():
    # What the H100 sweep measured fastest for 16-bit rows at 1024-16384 (16 columns a thread at 2048-8192);
    # the plain loop with the old warps elsewhere, for fp32 rows, and where the pipeline would not fit.
    widths = (512, 1024, 2048, 4096, 8192, 16384, 65536)

    def plans(**how):
        return [dataclasses.astuple(norms.backward_plan(n, **how)) for n in widths]

    assert plans(rms=True) == [(2, 4, 0), (8, 4, 3), (2, 4, 3), (2, 8, 3), (2, 16, 3), (2, 32, 0), (2, 32, 0)]
    assert plans(rms=False) == [(2, 4, 0), (2, 4, 3), (2, 4, 3), (2, 8, 3), (2, 16, 3), (2, 16, 0), (2, 32, 0)]
    plain = [(2, 4, 0), (2, 4, 0), (2, 8, 0), (2, 16, 0), (2, 16, 0), (2, 32, 0), (2, 32, 0)]
    assert plans(rms=True, itemsize=4) == plain
    # Three stages keep two buffers of x and dy (and ds): 64 KiB at 8192 bf16, 96 KiB with a residual.
    assert norms.pipelined_bytes(norms.backward_plan(8192, rms=True), 8192, 2, residual=True) == 96 * 1024 + 1024
    assert norms.backward_plan(8192, rms=True, residual=True, shared_limit=99 * 1024).load_stages == 3  # an L4
    assert norms.backward_plan(8192, rms=True, residual=True, shared_limit=96 * 1024) == norms.BackwardPlan(2, 16)
    assert norms.backward_plan(8192, rms=True, shared_limit=96 * 1024).load_stages == 3
    # An RMSNorm of bf16 rows and an fp32 weight returns fp32: its gradient's buffers are twice x's (128 KiB).
    assert norms.pipelined_bytes(norms.backward_plan(8192, rms=True), 8192, 2, True, dy_itemsize=4) == \
        128 * 1024 + 1024
    assert norms.backward_plan(8192, rms=True, residual=True, shared_limit=99 * 1024, dy_itemsize=4) == \
        norms.BackwardPlan(2, 16)
    assert [norms._warps(n) for n in (1024, 2048, 4096, 8192)] == [4, 8, 8, 16]


@pytest.mark.gpu
def test_layer_norm_returns_what_eager_does_under_cuda_autocast():
    """CUDA autocast runs layer_norm in fp32 (its float32 list): eager returns fp32 for bf16 rows, and so do ours
    (a BERT MLM head's LayerNorm of a bf16 GELU output returned bf16). RMSNorm follows LlamaRMSNorm's own casts."""
    x, r = rand(8, 64, dtype=torch.bfloat16), rand(8, 64, dtype=torch.bfloat16, seed=3)
    w, b = rand(64, dtype=torch.float32, seed=1), rand(64, dtype=torch.float32, seed=2)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert layer_norm(x, w, b).dtype == layer_norm_reference(x, w, b).dtype == torch.float32
        assert add_norm(x, r, w, b, rms=False)[0].dtype == add_norm_reference(x, r, w, b, rms=False)[0].dtype
        assert rms_norm(x, w).dtype == rms_norm_reference(x, w).dtype
        torch.testing.assert_close(layer_norm(x, w, b), layer_norm_reference(x, w, b), **TOL[torch.float32])
    assert layer_norm(x, w.bfloat16(), b.bfloat16()).dtype == torch.bfloat16  # outside autocast: the rows'


@pytest.mark.gpu
@pytest.mark.parametrize("n", [2048, 4096, 8192])
def test_bf16_norms_on_gpu(n):
    x = rand(512, n, dtype=torch.bfloat16)
    w, b = rand(n, dtype=torch.bfloat16, seed=1), rand(n, dtype=torch.bfloat16, seed=2)
    check(layer_norm, layer_norm_reference, [x, w, b], torch.bfloat16)
    check(rms_norm, rms_norm_reference, [x, w], torch.bfloat16, rms_norm_as_rounded(torch.bfloat16))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n", [768, 4096, 8192])
@pytest.mark.parametrize("rms", [True, False])
def test_add_norm_under_each_backward_plan_on_gpu(dtype, n, rms):
    """The measured plans (eight programs an SM at 768, the pipelined loop at 4096 and 8192) and fp32's plain
    loop, with a residual, over rows enough for several a program and a remainder."""
    check_add_norm((3 * 8 * torch.cuda.get_device_properties(0).multi_processor_count + 5, n), dtype, rms)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [2048, 4096, 8192, 16384])
def test_norm_backward_does_not_spill_on_gpu(n):
    x = rand(64, n, dtype=torch.bfloat16, requires_grad=False)
    w = rand(n, dtype=torch.bfloat16, seed=1, requires_grad=False)
    _, _, mean, rstd = norms.norm_forward(x, w, None, 1e-6, rms=True)
    kernel = norms.launch_backward(torch.randn_like(x), x, w, False, mean, rstd, rms=True)[-1]
    print(f"norm backward N={n}: {kernel.n_regs} registers, {kernel.n_spills} spilled, "
          f"{kernel.metadata.num_warps} warps")
    assert kernel.n_spills == 0


@pytest.mark.gpu
def test_kernels_address_elements_past_2_31_on_gpu():
    # SwiGLU at batch 128 x 2048 tokens x 8192 (tune reaches it) and an RMSNorm of as many elements.
    n = 2**31 + 4096
    a = torch.empty(n, dtype=torch.bfloat16, device=DEVICE).normal_()
    b = torch.empty_like(a).normal_()
    y = swiglu(a, b)
    tail = slice(n - 8192, n)
    ref = swiglu_reference(a[tail].float(), b[tail].float())
    torch.testing.assert_close(y[tail].float(), ref, **TOL[torch.bfloat16])
    del y
    x = a.view(-1, 4096)[: 2**31 // 4096 + 1]
    w = torch.ones(4096, dtype=torch.bfloat16, device=DEVICE)
    out = rms_norm(x, w)
    torch.testing.assert_close(out[-4:].float(), rms_norm_reference(x[-4:].float(), w.float()), **TOL[torch.bfloat16])


@pytest.mark.gpu
def test_bf16_activations_and_cross_entropy_on_gpu():
    a, b = rand(64, 4096, dtype=torch.bfloat16), rand(64, 4096, dtype=torch.bfloat16, seed=1)
    check(swiglu, swiglu_reference, [a, b], torch.bfloat16)
    check(gelu_tanh, gelu_tanh_reference, [a], torch.bfloat16)
    h, w = rand(256, 512, dtype=torch.bfloat16), rand(32000, 512, dtype=torch.bfloat16, seed=1)
    labels = torch.randint(0, 32000, (256,), device=DEVICE)
    check(lambda h, w: linear_cross_entropy(h, w, labels), lambda h, w: linear_cross_entropy_reference(h, w, labels),
          [h, w], torch.bfloat16)
