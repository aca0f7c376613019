"""The functional loss and its module against PyTorch's ``F.cross_entropy`` and soft-target oracles."""

from __future__ import annotations

import doctest
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_to_largest, grad_of_sum, logits_and_target

from ls_lightning import losses
from ls_lightning.losses import LabelSmoothedCE, LabelSmoothedCrossEntropy, functional, label_smoothed_cross_entropy

C = 5
SHAPES = [(C,), (6, C), (3, C, 4), (2, C, 3, 2)]
EPSILONS = [0.0, 0.1, 0.5, 1.0]
REDUCTIONS = ["none", "sum", "mean"]
EVERY_THIRD = slice(None, None, 3)  # the ignored positions


@pytest.fixture(autouse=True, params=["kernel", "small"])
def path(request, monkeypatch):
    """Every test runs on both class-index paths: the chunked kernel and the short path for small inputs."""
    monkeypatch.setattr(functional, "SMALL_ELEMENTS", 0 if request.param == "kernel" else 10**9)
    return request.param


def _soft(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One-hot of class indices in the input's layout (N, C, d1, …)."""
    return F.one_hot(target, x.shape[1]).movedim(-1, 1).to(x.dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignored", [False, True])
def test_index_targets_match_torch(shape, eps, reduction, weighted, ignored):
    x, target = logits_and_target(shape, EVERY_THIRD if ignored else False)
    weight = torch.rand(C, dtype=torch.float64) + 0.1 if weighted else None
    kwargs = {"weight": weight, "reduction": reduction}
    expected = F.cross_entropy(x, target, label_smoothing=eps, **kwargs)
    expected_pq = F.cross_entropy(x, target, **kwargs)
    out = label_smoothed_cross_entropy(x, target, eps, **kwargs)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.h_pq, expected_pq)
    torch.testing.assert_close((1 - eps) * out.h_pq + eps * out.h_uq, out.loss)
    torch.testing.assert_close(grad_of_sum(out.loss, x), grad_of_sum(expected, x))
    out = label_smoothed_cross_entropy(x, target, eps, **kwargs)  # fresh graph for the second gradient
    torch.testing.assert_close(grad_of_sum(out.h_pq, x), grad_of_sum(expected_pq, x))


@pytest.mark.parametrize("shape", SHAPES[1:])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_h_uq_is_torch_loss_at_epsilon_one(shape, reduction, weighted):
    x, target = logits_and_target(shape, EVERY_THIRD, seed=1)
    weight = torch.rand(C, dtype=torch.float64) + 0.1 if weighted else None
    out = label_smoothed_cross_entropy(x, target, 0.3, weight=weight, reduction=reduction)
    expected = F.cross_entropy(x, target, weight=weight, reduction=reduction, label_smoothing=1.0)
    torch.testing.assert_close(out.h_uq, expected)
    torch.testing.assert_close(grad_of_sum(out.h_uq, x), grad_of_sum(expected, x))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_probability_targets_match_torch(shape, eps, reduction, weighted):
    x, _ = logits_and_target(shape, False)
    p = torch.softmax(torch.randn(shape, dtype=torch.float64), 1 if len(shape) > 1 else 0).requires_grad_()
    weight = torch.rand(C, dtype=torch.float64) + 0.1 if weighted else None
    out = label_smoothed_cross_entropy(x, p, eps, weight=weight, reduction=reduction)
    expected = F.cross_entropy(x, p, weight=weight, reduction=reduction, label_smoothing=eps)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.h_pq, F.cross_entropy(x, p, weight=weight, reduction=reduction))
    got = torch.autograd.grad(out.loss.sum(), [x, p])
    torch.testing.assert_close(got, torch.autograd.grad(expected.sum(), [x, p]))


def _prior(kind: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    rows = torch.rand((C, C) if kind == "matrix" else (C,), generator=gen, dtype=torch.float64) + 0.05
    return rows / rows.sum(-1, keepdim=True)


@pytest.mark.parametrize("shape", SHAPES[1:])
@pytest.mark.parametrize("kind", ["vector", "matrix"])
@pytest.mark.parametrize("eps", [0.1, 1.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_prior_matches_soft_target_oracle(shape, kind, eps, reduction):
    x, target = logits_and_target(shape, False, seed=2)
    prior = _prior(kind)
    u = prior[target].movedim(-1, 1) if kind == "matrix" else prior.view(1, C, *[1] * (len(shape) - 2))
    oracle = F.cross_entropy(x, (1 - eps) * _soft(x, target) + eps * u, reduction=reduction)
    out = label_smoothed_cross_entropy(x, target, eps, reduction=reduction, prior=prior)
    torch.testing.assert_close(out.loss, oracle)
    torch.testing.assert_close(out.h_uq, F.cross_entropy(x, u.expand_as(x), reduction=reduction))
    torch.testing.assert_close(grad_of_sum(out.loss, x), grad_of_sum(oracle, x))


@pytest.mark.parametrize("kind", ["vector", "matrix"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_prior_with_weight_and_ignored(kind, reduction):
    """none/sum equal the weighted soft-target oracle; mean divides by Σ w_y over valid positions (documented)."""
    x, target = logits_and_target((7, C), EVERY_THIRD, seed=4)
    prior, weight = _prior(kind), torch.rand(C, dtype=torch.float64) + 0.1
    valid = target != -100
    y = target.clamp(min=0)
    u = prior[y] if kind == "matrix" else prior.expand(7, C)
    soft = (0.8 * _soft(x, y) + 0.2 * u) * valid[:, None]
    per_row = F.cross_entropy(x, soft, weight=weight, reduction="none")
    expected = {"none": per_row, "sum": per_row.sum(), "mean": per_row.sum() / weight[y][valid].sum()}[reduction]
    out = label_smoothed_cross_entropy(x, target, 0.2, weight=weight, reduction=reduction, prior=prior)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(grad_of_sum(out.loss, x), grad_of_sum(expected, x))


@pytest.mark.parametrize("kind", ["vector", "matrix"])
def test_prior_with_probability_targets(kind):
    x, _ = logits_and_target((6, C, 2), False)
    p = torch.softmax(torch.randn(6, C, 2, dtype=torch.float64), 1)
    prior = _prior(kind)
    u = torch.einsum("ncd,ck->nkd", p, prior) if kind == "matrix" else prior.view(1, C, 1)
    oracle = F.cross_entropy(x, 0.7 * p + 0.3 * u)
    out = label_smoothed_cross_entropy(x, p, 0.3, prior=prior)
    torch.testing.assert_close(out.loss, oracle)
    torch.testing.assert_close(grad_of_sum(out.loss, x), grad_of_sum(oracle, x))


@pytest.mark.parametrize("shape", SHAPES[1:])
@pytest.mark.parametrize("weighted", [False, True])
def test_all_ignored_mean_is_zero_with_zero_gradient(shape, weighted):
    x, target = logits_and_target(shape, False)
    target.fill_(-100)
    weight = torch.rand(C, dtype=torch.float64) if weighted else None
    assert torch.isnan(F.cross_entropy(x, target, weight=weight, label_smoothing=0.1))  # the difference we fix
    out = label_smoothed_cross_entropy(x, target, 0.1, weight=weight)
    assert out.loss.item() == out.h_pq.item() == out.h_uq.item() == 0.0
    assert torch.count_nonzero(grad_of_sum(out.loss, x)) == 0


# Half-precision logits against PyTorch in float64 on the same (rounded) values, both paths. Measured
# (tests/losses, this machine): the loss to 1.3e-7 relative (float32 accumulation); the gradient's largest error over
# its largest element 3.3e-4 in float16 and 2.7e-3 in bfloat16 (the rounding of the gradient to its dtype). The
# tolerances are 3-4 times that, so that a gradient 3 % off fails.
HALF_LOSS_RTOL = 5e-7
HALF_GRAD_TOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(16, 40), (4, 40, 3)])
def test_half_precision_against_float64(dtype, shape):
    x64, target = logits_and_target(shape, EVERY_THIRD)
    x = x64.detach().to(dtype).requires_grad_()
    x_ref = x.detach().double().requires_grad_()
    reference = F.cross_entropy(x_ref, target, label_smoothing=0.1)
    out = label_smoothed_cross_entropy(x, target, 0.1)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss.double(), reference, rtol=HALF_LOSS_RTOL, atol=0.0)
    grad = grad_of_sum(out.loss, x)
    assert grad.dtype == dtype
    assert_close_to_largest(grad.double(), grad_of_sum(reference, x_ref), HALF_GRAD_TOL[dtype])


def test_float16_large_vocabulary_does_not_overflow():
    """PyTorch sums the log-probabilities in float16: −Σ log q over 32000 classes exceeds 65504."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 32000, generator=gen) * 3).half()
    target = torch.randint(0, 32000, (4,), generator=gen)
    torch_half = F.cross_entropy(x, target, label_smoothing=0.1)
    reference = F.cross_entropy(x.double(), target, label_smoothing=0.1)
    out = label_smoothed_cross_entropy(x, target, 0.1)
    assert not torch.isfinite(torch_half)
    assert torch.isfinite(out.loss) and torch.isfinite(out.h_uq)
    torch.testing.assert_close(out.loss.double(), reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("brier", [True, False])
def test_stats_match_direct_computation(shape, grad, brier):
    x, target = logits_and_target(shape, EVERY_THIRD)
    x.requires_grad_(grad)
    _, stats = functional._compute(x, target, 0.1, None, -100, "mean", None, with_stats=True, brier=brier)
    dim = 1 if x.dim() > 1 else 0
    q = torch.softmax(x.detach(), dim).movedim(dim, -1).reshape(-1, x.shape[dim])
    y = target.reshape(-1)
    valid = y != -100
    torch.testing.assert_close(stats.confidence, q.max(1).values.float())
    assert torch.equal(stats.correct, q.argmax(1) == y)
    assert torch.equal(stats.valid, valid)
    torch.testing.assert_close(stats.weight_sum, valid.sum().float())
    if brier:
        onehot = F.one_hot(y.clamp(min=0), x.shape[dim]).double()
        torch.testing.assert_close(stats.brier, ((q - onehot) ** 2).sum(1).float())
    else:  # only the Brier values may be left out, and they are on both paths
        assert stats.brier.numel() == 0
    assert not stats.confidence.requires_grad


def test_tensor_epsilon_matches_float():
    x, target = logits_and_target((6, C), EVERY_THIRD)
    out = label_smoothed_cross_entropy(x, target, torch.tensor(0.25, dtype=torch.float64))
    torch.testing.assert_close(out.loss, F.cross_entropy(x, target, label_smoothing=0.25))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"label_smoothing": -0.1}, r"`label_smoothing` to be in \[0, 1\], but got -0.1"),
        ({"label_smoothing": 1.5}, r"`label_smoothing` to be in \[0, 1\], but got 1.5"),
        ({"label_smoothing": math.nan}, r"`label_smoothing` to be in \[0, 1\], but got nan"),
        ({"label_smoothing": torch.tensor(2.0)}, r"`label_smoothing` to be in \[0, 1\], but got 2.0"),
        ({"label_smoothing": torch.tensor([0.1, 0.2])}, r"`label_smoothing` .* but got torch.float32 of shape \(2,\)"),
        ({"label_smoothing": "0.1"}, r"`label_smoothing` to be a float in \[0, 1\], but got '0.1'"),
        ({"reduction": "avg"}, r"`reduction` to be one of \('none', 'mean', 'sum'\), but got 'avg'"),
        ({"weight": torch.ones(4)}, r"`weight` .* shape \(5,\), but got torch.float32 of shape \(4,\)"),
        ({"prior": torch.ones(4) / 4}, r"`prior` .* shape \(5,\) or \(5, 5\), but got .* shape \(4,\)"),
        ({"prior": torch.tensor([0.5, 0.6, -0.1, 0.0, 0.0])}, r"`prior` to hold distributions.*min -0.1"),
        ({"prior": torch.full((5,), 0.3)}, r"`prior` to hold distributions.*row sums \[1.5"),
        ({"prior": torch.full((5, 5), 0.1)}, r"`prior` to hold distributions.*row sums \[0.5"),
        ({"target": torch.tensor([0, 5, 1])}, r"`target` to hold class indices in \[0, 5\).*but got 5"),
        ({"target": torch.tensor([0, -3, 1])}, r"`target` to hold class indices in \[0, 5\).*but got -3"),
        ({"target": torch.tensor([0, 1])}, r"`target` \(class-index\) to have shape \(3,\) .* but got \(2,\)"),
        ({"target": torch.rand(3, 4)}, r"`target` \(probability\) to have shape \(3, 5\) .* but got \(3, 4\)"),
        ({"target": torch.rand(3, 5), "ignore_index": 1}, r"`ignore_index` to be negative .* but got 1"),
        ({"input": torch.ones(3, 5, dtype=torch.long)}, r"`input` to be a floating point tensor .* torch.int64"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    call = {"input": torch.randn(3, C), "target": torch.tensor([0, 1, 2]), **kwargs}
    with pytest.raises(ValueError, match=match):
        label_smoothed_cross_entropy(**call)


def test_ignore_index_inside_class_range_is_accepted():
    x, target = logits_and_target((6, C), False)
    out = label_smoothed_cross_entropy(x, target, 0.1, ignore_index=2)
    torch.testing.assert_close(out.loss, F.cross_entropy(x, target, ignore_index=2, label_smoothing=0.1))


def test_module_wraps_the_functional():
    x, target = logits_and_target((6, C, 2), EVERY_THIRD)
    weight = torch.rand(C, dtype=torch.float64) + 0.1
    criterion = LabelSmoothedCrossEntropy(0.1, weight=weight, reduction="sum")
    assert isinstance(criterion(x, target), LabelSmoothedCE)
    criterion.label_smoothing = 0.4  # what the callback does between steps
    expected = F.cross_entropy(x, target, weight=weight, reduction="sum", label_smoothing=0.4)
    torch.testing.assert_close(criterion(x, target).loss, expected)
    assert set(criterion.state_dict()) == {"weight"}
    assert criterion.to(torch.float32).weight.dtype == torch.float32
    assert "label_smoothing=0.4" in repr(criterion)


def test_module_pickles_and_validates():
    prior = _prior("vector").float()
    criterion = pickle.loads(pickle.dumps(LabelSmoothedCrossEntropy(0.2, prior=prior, ignore_index=3)))
    assert criterion.label_smoothing == 0.2 and criterion.ignore_index == 3
    torch.testing.assert_close(criterion.prior, prior)
    with pytest.raises(ValueError, match=r"`label_smoothing` to be in \[0, 1\], but got 2"):
        LabelSmoothedCrossEntropy(2)
    with pytest.raises(ValueError, match=r"`reduction` .* but got 'max'"):
        LabelSmoothedCrossEntropy(reduction="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`prior` to hold distributions"):
        LabelSmoothedCrossEntropy(prior=torch.ones(3))


@pytest.mark.parametrize("module", [functional, losses])
def test_docstring_examples(module):
    assert doctest.testmod(module, raise_on_error=False).failed == 0
