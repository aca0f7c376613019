"""The fused linear + label-smoothed loss against a computation that materialises the logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_to_largest, linear_inputs

from ls_lightning import linear_label_smoothed_cross_entropy
from ls_lightning.losses import linear_label_smoothed_cross_entropy_with_stats
from ls_lightning.losses.checks import MAX_MATRIX_PRIOR_CLASSES
from ls_lightning.losses.ops import fused as _fused
from ls_lightning.losses.ops import linear as _linear

V, D = 11, 6
EPS = 0.2


def _data(shape=(9,), bias=False, **kwargs):
    """Hidden states (*shape, D), a (V, D) weight of 0.7 × standard normal, a bias when ``bias``, class indices."""
    return linear_inputs(shape, kwargs.pop("classes", V), D, bias=bias, weight_scale=0.7, **kwargs)


def _reference(h, w, b, target, eps, weight=None, prior=None, reduction="mean", ignore_index=-100):
    """Both terms from the materialised logits' log-softmax (PyTorch's weighting: the mean divides by Σ w_y)."""
    logits = F.linear(h, w, b)
    logp = torch.log_softmax(logits.reshape(-1, logits.shape[-1]).double(), 1)
    y = target.reshape(-1)
    keep = y != ignore_index
    yc = torch.where(keep, y, 0)
    w_c = torch.ones(logp.shape[1], dtype=logp.dtype) if weight is None else weight.double()
    u = torch.full_like(logp, 1 / logp.shape[1]) if prior is None else prior.double()[yc] if prior.dim() == 2 else prior
    h_pq = -logp.gather(1, yc[:, None]).squeeze(1) * w_c[yc] * keep
    h_uq = -(logp * w_c * u).sum(1) * keep
    if reduction == "none":
        h_pq, h_uq = h_pq.view(target.shape), h_uq.view(target.shape)
    else:
        h_pq, h_uq = h_pq.sum(), h_uq.sum()
        if reduction == "mean":
            denominator = (w_c[yc] * keep).sum().clamp(min=1e-300)
            h_pq, h_uq = h_pq / denominator, h_uq / denominator
    return (1 - eps) * h_pq + eps * h_uq, h_pq, h_uq


def _grads(output, tensors):
    tensors = [t for t in tensors if t is not None]
    return torch.autograd.grad(output.sum(), tensors, allow_unused=True)


@pytest.fixture(params=[1, 3, 1000], ids=["1-row-chunks", "3-row-chunks", "one-chunk"])
def chunks(request, monkeypatch):
    """Chunk budgets of 1 and 3 rows (several chunks, one of them short) and of the whole input."""
    monkeypatch.setattr(_linear, "LINEAR_CHUNK_ELEMENTS", request.param * V)
    monkeypatch.setattr(_linear, "MIN_CHUNK_ROWS", 1)
    return request.param


@pytest.fixture(params=["softmax-kernel", "separate-ops"])
def kernel(request, monkeypatch):
    """Both per-chunk kernels of _fused (fused softmax for many classes, separate ops for few)."""
    monkeypatch.setattr(_fused, "SOFTMAX_MIN_CLASSES", 1 if request.param == "softmax-kernel" else 10**9)


def _assert_matches(out, ref, inputs, tol=1e-9):
    for got, expected in zip(out, ref, strict=True):
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    for got, expected in zip(_grads(out.loss, inputs), _grads(ref[0], inputs), strict=True):
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", [(9,), (2, 5)], ids=["2-D", "3-D"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_materialised_logits(chunks, kernel, shape, reduction, bias, weighted):
    h, w, b, target = _data(shape, bias)
    weight = torch.rand(V, dtype=torch.float64) + 0.2 if weighted else None
    out = linear_label_smoothed_cross_entropy(h, w, target, EPS, linear_bias=b, weight=weight, reduction=reduction)
    ref = _reference(h, w, b, target, EPS, weight, reduction=reduction)
    assert out.loss.shape == (shape if reduction == "none" else ())
    _assert_matches(out, ref, (h, w, b))


@pytest.mark.parametrize("kind", ["vector", "matrix"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_priors(chunks, kernel, kind, reduction, weighted):
    h, w, b, target = _data((2, 5), bias=True)
    prior = torch.rand((V, V) if kind == "matrix" else (V,), dtype=torch.float64) + 0.1
    prior /= prior.sum(-1, keepdim=True)
    weight = torch.rand(V, dtype=torch.float64) + 0.2 if weighted else None
    out = linear_label_smoothed_cross_entropy(
        h, w, target, EPS, linear_bias=b, weight=weight, prior=prior, reduction=reduction
    )
    _assert_matches(out, _reference(h, w, b, target, EPS, weight, prior, reduction), (h, w, b))


@pytest.mark.parametrize("far", [False, True])
def test_label_probability_underflow_falls_back(chunks, kernel, far):
    """The CPU training pass takes lse from the label's own probability; where that underflows in float32 (a label
    logit 200 below the top one) its block must remake the logits, take the full pass, and stay exact."""
    h, w, b, target = _data((9,), bias=True, dtype=torch.float32, ignored=False)
    if far:
        with torch.no_grad():
            h[4] = 0.0
            h[4, 0] = 1.0
            w[:, 0] = 0.0
            w[target[4], 0] = -100.0
            w[(target[4] + 1) % V, 0] = 100.0
    out = linear_label_smoothed_cross_entropy(h, w, target, EPS, linear_bias=b)
    hr, wr, br = (t.detach().double().requires_grad_() for t in (h, w, b))
    ref = F.cross_entropy(F.linear(hr, wr, br), target, label_smoothing=EPS)
    torch.testing.assert_close(out.loss.double(), ref, rtol=1e-5, atol=1e-5)
    for got, expected in zip(_grads(out.loss, (h, w, b)), _grads(ref, (hr, wr, br)), strict=True):
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)


def test_loss_equals_pytorch_cross_entropy(chunks):
    """The contract's own oracle: F.cross_entropy(label_smoothing=ε) of the materialised logits."""
    h, w, b, target = _data((3, 4), bias=True)
    out = linear_label_smoothed_cross_entropy(h, w, target, EPS, linear_bias=b)
    ref = F.cross_entropy(F.linear(h, w, b).reshape(-1, V), target.reshape(-1), label_smoothing=EPS)
    torch.testing.assert_close(out.loss, ref, rtol=1e-9, atol=1e-9)
    for got, expected in zip(_grads(out.loss, (h, w, b)), _grads(ref, (h, w, b)), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("term", ["h_pq", "h_uq", "mixed"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradient_through_the_terms(chunks, term, reduction):
    """A gradient through h_pq or h_uq (rare: they are usually logged) remakes the logits in backward."""
    h, w, b, target = _data((9,), bias=True)
    out = linear_label_smoothed_cross_entropy(h, w, target, EPS, linear_bias=b, reduction=reduction)
    ref = _reference(h, w, b, target, EPS, reduction=reduction)

    def combo(r):
        if term == "mixed":
            return (2 * r.loss if hasattr(r, "loss") else 2 * r[0]) + 3 * r[1] - r[2]
        return getattr(r, term) if hasattr(r, term) else r[1 if term == "h_pq" else 2]

    for got, expected in zip(_grads(combo(out), (h, w, b)), _grads(combo(ref), (h, w, b)), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_upstream_gradient_scales(chunks):
    h, w, b, target = _data((9,), bias=True)
    out = linear_label_smoothed_cross_entropy(h, w, target, EPS, linear_bias=b)
    ref = _reference(h, w, b, target, EPS)
    for got, expected in zip(_grads(out.loss * 2.5, (h, w, b)), _grads(ref[0] * 2.5, (h, w, b)), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_only_some_inputs_need_a_gradient(chunks):
    h, w, b, target = _data((9,), bias=True)
    w.requires_grad_(False)
    out = linear_label_smoothed_cross_entropy(h, w, target, EPS, linear_bias=b)
    ref = _reference(h, w, b, target, EPS)
    for got, expected in zip(_grads(out.loss, (h, b)), _grads(ref[0], (h, b)), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_non_contiguous_hidden_states(chunks):
    h = torch.randn(D, 9, dtype=torch.float64).t().requires_grad_()
    _, w, b, target = _data((9,), bias=True)
    out = linear_label_smoothed_cross_entropy(h, w, target, EPS, linear_bias=b)
    _assert_matches(out, _reference(h, w, b, target, EPS), (h, w, b))


def test_unbatched_input():
    h, w, _, _ = _data((9,))
    out = linear_label_smoothed_cross_entropy(h[0], w, torch.tensor(3), EPS, reduction="none")
    ref = _reference(h[0][None], w, None, torch.tensor([3]), EPS, reduction="sum")
    assert out.loss.shape == ()
    torch.testing.assert_close(out.loss, ref[0], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_is_zero_with_zero_gradient(reduction):
    h, w, b, target = _data((5,), bias=True)
    target.fill_(-100)
    out = linear_label_smoothed_cross_entropy(h, w, target, EPS, linear_bias=b, reduction=reduction)
    assert torch.equal(out.loss, torch.zeros_like(out.loss))
    for grad in _grads(out.loss, (h, w, b)):
        assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("shape", [(9,), (2, 5)])
@pytest.mark.parametrize("grad", [False, True])
def test_stats_against_materialised_softmax(chunks, kernel, shape, grad):
    h, w, b, target = _data(shape, bias=True)
    weight = torch.rand(V, dtype=torch.float64) + 0.2
    with torch.set_grad_enabled(grad):
        out, stats = linear_label_smoothed_cross_entropy_with_stats(h, w, target, EPS, linear_bias=b, weight=weight)
    q = torch.softmax(F.linear(h, w, b).detach().reshape(-1, V), 1)
    y = target.reshape(-1)
    valid = y != -100
    torch.testing.assert_close(stats.confidence, q.max(1).values.float())
    assert torch.equal(stats.correct, q.argmax(1) == y)
    assert torch.equal(stats.valid, valid)
    brier = ((q - F.one_hot(y.clamp(min=0), V)) ** 2).sum(1)
    torch.testing.assert_close(stats.brier, brier.float())
    torch.testing.assert_close(stats.weight_sum, weight[y[valid]].sum().float())
    assert out.loss.requires_grad == grad and not stats.confidence.requires_grad
    torch.testing.assert_close(out.loss, _reference(h, w, b, target, EPS, weight)[0], rtol=1e-9, atol=1e-9)


def test_stats_entry_for_the_mixin_skips_brier():
    h, w, b, target = _data((9,), bias=True)
    out, stats = linear_label_smoothed_cross_entropy_with_stats(h, w, target, EPS, linear_bias=b, brier=False)
    assert stats.brier.numel() == 0 and stats.confidence.shape == (9,)
    torch.testing.assert_close(out.loss, _reference(h, w, b, target, EPS)[0], rtol=1e-9, atol=1e-9)


def test_no_gradient_path_makes_no_gradient(monkeypatch):
    made = []
    real = _linear._Accumulator.add
    monkeypatch.setattr(_linear._Accumulator, "add", lambda self, *a: made.append(1) or real(self, *a))
    h, w, b, target = _data((9,), bias=True)
    with torch.no_grad():
        out = linear_label_smoothed_cross_entropy(h, w, target, EPS, linear_bias=b)
    assert not made and not out.loss.requires_grad
    torch.testing.assert_close(out.loss, _reference(h, w, b, target, EPS)[0], rtol=1e-9, atol=1e-9)


# Measured against float64 on the same half-precision values (the logits are a half-precision matmul): the loss to
# 3.8e-4 (bfloat16) and 9.0e-5 (float16) relative; each gradient's largest error over its largest element 3.6e-3 and
# 4.8e-4. Tolerances about 3 times that: a gradient 3 % off fails.
HALF_LOSS_RTOL = {torch.bfloat16: 1.2e-3, torch.float16: 3e-4}
HALF_GRAD_TOL = {torch.bfloat16: 1e-2, torch.float16: 1.5e-3}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(chunks, dtype):
    """Half-precision hidden states and weight against a float64 materialising reference on the same values."""
    h, w, b, target = _data((3, 4), bias=True, dtype=dtype, classes=V)
    out = linear_label_smoothed_cross_entropy(h, w, target, EPS, linear_bias=b)
    assert out.loss.dtype == torch.float32
    h64, w64, b64 = (t.detach().double().requires_grad_() for t in (h, w, b))
    ref = F.cross_entropy(F.linear(h64, w64, b64).reshape(-1, V), target.reshape(-1), label_smoothing=EPS)
    torch.testing.assert_close(out.loss.double(), ref, rtol=HALF_LOSS_RTOL[dtype], atol=0.0)
    grads = _grads(out.loss, (h, w, b))
    assert [g.dtype for g in grads] == [dtype] * 3
    for got, expected in zip(grads, _grads(ref, (h64, w64, b64)), strict=True):
        assert_close_to_largest(got.double(), expected, HALF_GRAD_TOL[dtype])


def test_autocast_casts_like_linear():
    h, w, b, target = _data((9,), bias=True, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_label_smoothed_cross_entropy(h, w, target, EPS, linear_bias=b)
        ref = F.cross_entropy(F.linear(h, w, b).float(), target, label_smoothing=EPS)
    # measured against that reference: the loss to 1.1e-7 relative; the input and weight gradients equal, the bias
    # gradient's largest error 2.3e-3 of its largest element. Tolerances 4 and 3 times that
    torch.testing.assert_close(out.loss, ref, rtol=5e-7, atol=0.0)
    grads = _grads(out.loss, (h, w, b))
    assert [g.dtype for g in grads] == [torch.float32] * 3
    for got, expected in zip(grads, _grads(ref, (h, w, b)), strict=True):
        assert_close_to_largest(got, expected, 7e-3)


def test_tied_embedding_gets_the_summed_gradient(chunks):
    """The output weight also used as the input embedding (tied): autograd sums both gradients."""
    _, w, _, target = _data((2, 5))
    tokens = torch.randint(0, V, (2, 5))

    def loss(fused):
        h = torch.tanh(F.embedding(tokens, w) * 1.3)
        if fused:
            return linear_label_smoothed_cross_entropy(h, w, target, EPS).loss
        return _reference(h, w, None, target, EPS)[0]

    (got,) = torch.autograd.grad(loss(True), w)
    (expected,) = torch.autograd.grad(loss(False), w)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_retain_graph_second_backward(chunks):
    h, w, b, target = _data((9,), bias=True)
    out = linear_label_smoothed_cross_entropy(h, w, target, EPS, linear_bias=b)
    first = torch.autograd.grad(out.loss, (h, w, b), retain_graph=True)
    second = torch.autograd.grad(out.loss, (h, w, b))
    for a, c in zip(first, second, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


def _bad_calls():
    h, w, b, t = _data((4,), bias=True)
    prior_big = torch.full((MAX_MATRIX_PRIOR_CLASSES + 1,), 1.0).diag()
    return [
        ("input", lambda: linear_label_smoothed_cross_entropy(torch.tensor(1.0), w, t)),
        ("linear_weight", lambda: linear_label_smoothed_cross_entropy(h, w[:, :3], t)),
        ("linear_weight", lambda: linear_label_smoothed_cross_entropy(h, w[0], t)),
        ("linear_weight", lambda: linear_label_smoothed_cross_entropy(h, w.float(), t)),
        ("linear_bias", lambda: linear_label_smoothed_cross_entropy(h, w, t, linear_bias=b[:3])),
        ("target", lambda: linear_label_smoothed_cross_entropy(h, w, t[:2])),
        ("target", lambda: linear_label_smoothed_cross_entropy(h, w, t.double())),
        ("target", lambda: linear_label_smoothed_cross_entropy(h, w, torch.full((4,), V))),
        ("label_smoothing", lambda: linear_label_smoothed_cross_entropy(h, w, t, 1.5)),
        ("weight", lambda: linear_label_smoothed_cross_entropy(h, w, t, weight=torch.ones(3))),
        ("reduction", lambda: linear_label_smoothed_cross_entropy(h, w, t, reduction="avg")),
        ("prior", lambda: linear_label_smoothed_cross_entropy(h, w, t, prior=torch.ones(V))),
        ("prior", lambda: linear_label_smoothed_cross_entropy(h, w.new_zeros(len(prior_big), D), t, prior=prior_big)),
    ]


@pytest.mark.parametrize("case", range(13))
def test_bad_input_names_the_argument(case):
    name, call = _bad_calls()[case]
    with pytest.raises(ValueError, match=f"`{name}`"):
        call()


# ------------------------------------------------------------------------------------------------ torch.compile


def test_compiled_fullgraph_matches_and_does_not_recompile_when_epsilon_changes():
    """One graph, no break. ε a 0-d tensor: never recompiled. ε a float: recompiled once, at its first change (torch
    2.13 does that for any float argument, see below), never after it."""
    h, w, b, target = _data((2, 5), bias=True)
    torch._dynamo.reset()
    fn = torch.compile(linear_label_smoothed_cross_entropy, fullgraph=True, backend="aot_eager")
    for eps in (0.1, 0.2):  # the second compiles the graph with ε symbolic
        _assert_matches(fn(h, w, target, eps, linear_bias=b), _reference(h, w, b, target, eps), (h, w, b))
    with torch._dynamo.config.patch(error_on_recompile=True):
        for eps in (0.3, 0.0, 1.0):
            _assert_matches(fn(h, w, target, eps, linear_bias=b), _reference(h, w, b, target, eps), (h, w, b))
    torch._dynamo.reset()
    fn = torch.compile(linear_label_smoothed_cross_entropy, fullgraph=True, backend="aot_eager")
    fn(h, w, target, torch.tensor(0.1, dtype=torch.float64), linear_bias=b)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for eps in (0.3, 0.7):
            out = fn(h, w, target, torch.tensor(eps, dtype=torch.float64), linear_bias=b)
            _assert_matches(out, _reference(h, w, b, target, eps), (h, w, b))


def test_a_plain_float_argument_recompiles_once_in_torch():
    """Why the float case above allows one recompilation: torch.compile does the same for ``x * eps``."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    fn = torch.compile(lambda x, eps: x * eps, fullgraph=True, backend=counter)
    for eps in (0.1, 0.2, 0.3):
        fn(torch.ones(2), eps)
    assert counter.frame_count == 2


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compiled_inductor_gradients_and_terms(reduction):
    h, w, b, target = _data((9,), bias=True)
    torch._dynamo.reset()
    fn = torch.compile(linear_label_smoothed_cross_entropy_with_stats, fullgraph=True)
    out, stats = fn(h, w, target, EPS, linear_bias=b, reduction=reduction)
    ref = _reference(h, w, b, target, EPS, reduction=reduction)
    _assert_matches(out, ref, (h, w, b))
    out, _ = fn(h, w, target, EPS, linear_bias=b, reduction=reduction)  # a gradient through h_pq: remade logits
    ref = _reference(h, w, b, target, EPS, reduction=reduction)
    for got, expected in zip(_grads(out.h_pq, (h, w, b)), _grads(ref[1], (h, w, b)), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    assert stats.confidence.shape == (9,) and not stats.confidence.requires_grad


# ------------------------------------------------------------------------------------------------------------- DDP


class _TiedLM(torch.nn.Module):
    """An embedding tied to the output layer, so that DDP reduces one parameter fed by both gradients."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = torch.nn.Embedding(V, D, dtype=torch.float64)
        self.bias = torch.nn.Parameter(torch.zeros(V, dtype=torch.float64))

    def forward(self, tokens: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.embedding(tokens))
        return linear_label_smoothed_cross_entropy(h, self.embedding.weight, target, EPS, linear_bias=self.bias).loss


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, V, (4, 6), generator=gen), torch.randint(0, V, (4, 6), generator=gen)


def _ddp_rank(rank: int, path: str, port: int) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_TiedLM())
        tokens, target = _batch()
        model(
            tokens[2 * rank : 2 * rank + 2], target[2 * rank : 2 * rank + 2]
        ).backward()  # equal halves: mean of means
        if rank == 0:
            torch.save([p.grad for p in model.module.parameters()], path)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_two_processes_equal_one(tmp_path):
    """Plain autograd: DDP's gradient hooks see the op's gradients like any other (tied weight included)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = str(tmp_path / "grads.pt")
    mp.spawn(_ddp_rank, args=(path, port), nprocs=2, join=True)
    model = _TiedLM()
    model(*_batch()).backward()
    for got, expected in zip(torch.load(path), (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_compiled_without_gradient_gives_the_stats():
    """Validation under torch.compile: no gradient made, the statistics as in eager."""
    h, w, b, target = _data((2, 5), bias=True)
    torch._dynamo.reset()
    fn = torch.compile(linear_label_smoothed_cross_entropy_with_stats, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        out, stats = fn(h, w, target, EPS, linear_bias=b)
    assert not out.loss.requires_grad
    torch.testing.assert_close(out.loss, _reference(h, w, b, target, EPS)[0], rtol=1e-9, atol=1e-9)
    q = torch.softmax(F.linear(h, w, b).detach().reshape(-1, V), 1)
    torch.testing.assert_close(stats.confidence, q.max(1).values.float())
    assert torch.equal(stats.correct, q.argmax(1) == target.reshape(-1))
    assert torch.equal(stats.valid, target.reshape(-1) != -100)
