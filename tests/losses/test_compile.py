"""The loss under torch.compile: the traced path's values, gradients and stats, no graph break, no recompilation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import grad_of_sum, logits_and_target
from torch._dynamo.testing import CompileCounter, CompileCounterWithBackend

from ls_lightning.losses import (
    LabelSmoothedCrossEntropy,
    functional,
    label_smoothed_cross_entropy,
    label_smoothed_cross_entropy_with_stats,
)

C = 7


def _prior(matrix: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn((C, C) if matrix else (C,), generator=gen, dtype=torch.float64)
    return torch.softmax(logits, -1)


@pytest.fixture
def traced_path(monkeypatch):
    """Run the code torch.compile traces (functional._compute under is_compiling) eagerly: fast, every variant."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def error_on_recompile(fresh_dynamo):
    with torch._dynamo.config.patch(error_on_recompile=True):
        yield


@pytest.mark.parametrize("shape", [(10, C), (4, C, 3)])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("tensor_eps", [False, True])
def test_traced_path_matches_torch(traced_path, shape, reduction, weighted, tensor_eps):
    x, target = logits_and_target(shape)
    weight = torch.rand(C, dtype=torch.float64) + 0.1 if weighted else None
    kw = {"weight": weight, "reduction": reduction}
    eps = torch.tensor(0.3, dtype=torch.float64) if tensor_eps else 0.3
    out = label_smoothed_cross_entropy(x, target, eps, **kw)
    refs = [F.cross_entropy(x, target, label_smoothing=e, **kw) for e in (0.3, 0.0, 1.0)]
    for got, expected in zip(out, refs, strict=True):
        torch.testing.assert_close(got, expected)
    coefs = [torch.rand_like(r) for r in refs]  # gradients through loss, h_pq and h_uq at once
    (got,) = torch.autograd.grad(list(out), x, grad_outputs=coefs)
    (expected,) = torch.autograd.grad(refs, x, grad_outputs=coefs)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("matrix", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_traced_path_priors(traced_path, matrix, weighted):
    """The oracle of a prior: F.cross_entropy with the soft target (1-ε)·onehot + ε·u (row y of a (C, C) prior)."""
    x, target = logits_and_target((10, C), ignored=False)
    prior = _prior(matrix)
    weight = torch.rand(C, dtype=torch.float64) + 0.1 if weighted else None
    u = prior[target] if matrix else prior
    oracle = F.cross_entropy(x, 0.6 * F.one_hot(target, C).double() + 0.4 * u, weight=weight, reduction="sum")
    out = label_smoothed_cross_entropy(x, target, 0.4, prior=prior, weight=weight, reduction="sum")
    torch.testing.assert_close(out.loss, oracle)
    torch.testing.assert_close(grad_of_sum(out.loss, x), grad_of_sum(oracle, x))


def test_traced_path_all_ignored_is_zero(traced_path):
    x, target = logits_and_target((4, C))
    out = label_smoothed_cross_entropy(x, torch.full_like(target, -100), 0.1)
    assert out.loss.item() == 0.0 and out.h_pq.item() == 0.0 and out.h_uq.item() == 0.0
    assert torch.equal(grad_of_sum(out.loss, x), torch.zeros_like(x))


@pytest.mark.parametrize("shape", [(10, C), (4, C, 3)])
@pytest.mark.parametrize("brier", [True, False])
def test_traced_path_stats(traced_path, shape, brier):
    x, target = logits_and_target(shape)
    _, stats = functional._compute(x, target, 0.1, None, -100, "mean", None, with_stats=True, brier=brier)
    q = torch.softmax(x.detach(), 1).movedim(1, -1).reshape(-1, C)
    y = target.reshape(-1)
    torch.testing.assert_close(stats.confidence, q.max(1).values.float())
    assert torch.equal(stats.correct, q.argmax(1) == y) and torch.equal(stats.valid, y != -100)
    assert stats.weight_sum.item() == (y != -100).sum().item()
    if brier:
        torch.testing.assert_close(stats.brier, ((q - F.one_hot(y.clamp(min=0), C)) ** 2).sum(1).float())
    else:
        assert stats.brier.numel() == 0


def test_traced_path_half_precision(traced_path):
    """bfloat16 logits: float32 result equal to the float32 reference on the same values, gradient in bfloat16."""
    x, target = logits_and_target((10, C), dtype=torch.bfloat16)
    x32 = x.detach().float().requires_grad_()
    out = label_smoothed_cross_entropy(x, target, 0.2)
    expected = F.cross_entropy(x32, target, label_smoothing=0.2)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, expected)
    grad = grad_of_sum(out.loss, x)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad.float(), grad_of_sum(expected, x32).bfloat16().float())


VARIANTS = {
    "weights, ignored": ((10, C), {"weight": torch.rand(C, dtype=torch.float64) + 0.1}),
    "(N, C, d), sum": ((4, C, 3), {"reduction": "sum"}),
    "none": ((6, C), {"reduction": "none"}),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_compiled_matches_torch(fresh_dynamo, variant):
    """fullgraph=True: a graph break would raise. aot_eager runs the traced forward and backward graphs."""
    shape, kw = VARIANTS[variant]
    x, target = logits_and_target(shape)
    compiled = torch.compile(label_smoothed_cross_entropy, backend="aot_eager", fullgraph=True)
    out = compiled(x, target, torch.tensor(0.2, dtype=torch.float64), **kw)
    expected = F.cross_entropy(x, target, label_smoothing=0.2, **kw)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.h_pq, F.cross_entropy(x, target, **kw))
    torch.testing.assert_close(grad_of_sum(out.loss, x), grad_of_sum(expected, x))


def test_compiled_matrix_prior_and_probability_targets(fresh_dynamo):
    x, target = logits_and_target((10, C), ignored=False)
    prior = _prior(matrix=True)
    soft = 0.6 * F.one_hot(target, C).double() + 0.4 * prior[target]
    compiled = torch.compile(label_smoothed_cross_entropy, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, target, 0.4, prior=prior).loss, F.cross_entropy(x, soft))
    probabilities = torch.softmax(torch.randn(10, C, dtype=torch.float64), 1)
    expected = F.cross_entropy(x, probabilities, label_smoothing=0.3)
    torch.testing.assert_close(compiled(x, probabilities, 0.3).loss, expected)


def test_compiled_all_ignored_and_unbatched(fresh_dynamo):
    """Every position ignored: 0 with zero gradient, not NaN; an unbatched (C) input: PyTorch's value."""
    x, target = logits_and_target((4, C))
    compiled = torch.compile(label_smoothed_cross_entropy, backend="aot_eager", fullgraph=True)
    out = compiled(x, torch.full_like(target, -100), 0.1)
    assert out.loss.item() == 0.0 and torch.equal(grad_of_sum(out.loss, x), torch.zeros_like(x))
    row, label = x[0].detach().requires_grad_(), target.new_tensor(3)
    expected = F.cross_entropy(row, label, label_smoothing=0.1)
    out = compiled(row, label, 0.1)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(grad_of_sum(out.loss, row), grad_of_sum(expected, row))


def test_inductor_with_stats_matches_eager(fresh_dynamo):
    """The default backend (Inductor) on the mixin's call: loss, gradient and stats against the eager kernel."""
    x, target = logits_and_target((6, C, 2), dtype=torch.float32)
    x_eager = x.detach().clone().requires_grad_()
    weight = torch.rand(C) + 0.1
    compiled = torch.compile(label_smoothed_cross_entropy_with_stats, fullgraph=True)
    out, stats = compiled(x, target, 0.1, weight=weight)
    ref, ref_stats = label_smoothed_cross_entropy_with_stats(x_eager, target, 0.1, weight=weight)
    torch.testing.assert_close(out.loss, F.cross_entropy(x_eager, target, weight=weight, label_smoothing=0.1))
    torch.testing.assert_close(grad_of_sum(out.loss, x), grad_of_sum(ref.loss, x_eager))
    for got, expected in zip(stats, ref_stats, strict=True):
        torch.testing.assert_close(got, expected)


def test_tensor_epsilon_never_recompiles(error_on_recompile):
    x, target = logits_and_target((8, C))
    counter = CompileCounter()
    compiled = torch.compile(label_smoothed_cross_entropy_with_stats, backend=counter, fullgraph=True)
    for eps in (0.1, 0.2, 0.0, 1.0, 0.05):
        out, _ = compiled(x, target, torch.tensor(eps, dtype=torch.float64))
        torch.testing.assert_close(out.loss, F.cross_entropy(x, target, label_smoothing=eps))
    assert counter.frame_count == 1


def test_compiled_module_never_recompiles(error_on_recompile):
    x, target = logits_and_target((8, C), dtype=torch.float32)
    criterion = LabelSmoothedCrossEntropy(0.1)
    counter = CompileCounter()
    compiled = torch.compile(criterion, backend=counter, fullgraph=True)
    for eps in (0.1, 0.2, 0.0, 1.0, 0.05):
        criterion.label_smoothing = eps
        torch.testing.assert_close(compiled(x, target).loss, F.cross_entropy(x, target, label_smoothing=eps))
    assert counter.frame_count == 1


@pytest.mark.parametrize("dynamic", [None, True])
def test_float_epsilon_compiles_at_most_twice(fresh_dynamo, dynamic):
    """A Python float is Dynamo's to specialise: by default the first compile takes it as a constant and the first
    change compiles once more with ε as an input (automatic dynamic); no later value recompiles. With
    ``dynamic=True`` it is an input from the start. Inside, nothing specialises on it (no value guard)."""
    x, target = logits_and_target((8, C))
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(label_smoothed_cross_entropy, backend=counter, fullgraph=True, dynamic=dynamic)
    for eps in (0.1, 0.2, 0.3, 0.0, 1.0, 0.05, 0.7):
        torch.testing.assert_close(compiled(x, target, eps).loss, F.cross_entropy(x, target, label_smoothing=eps))
    assert counter.frame_count == (1 if dynamic else 2)
