"""The relatives of label smoothing (confidence penalty, focal loss / FLSD-53, MbLS, binary focal loss) against their
formulas written out in plain PyTorch (float64), against the definitions the authors' code follows (FLSD-53 summed
over positions, MbLS's three terms, torchvision's binary focal loss), and under torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import grad_of_sum as _grad
from helpers import logits_and_target as _data
from torch._dynamo.testing import CompileCounter, CompileCounterWithBackend

from ls_lightning.losses import relatives
from ls_lightning.losses.ops import fused as _fused
from ls_lightning.losses.ops import relatives as _ops
from ls_lightning.losses.relatives import (
    binary_focal_cross_entropy,
    binary_focal_cross_entropy_with_stats,
    confidence_penalty_cross_entropy,
    confidence_penalty_cross_entropy_with_stats,
    focal_cross_entropy,
    focal_cross_entropy_with_stats,
    margin_smoothed_cross_entropy,
    margin_smoothed_cross_entropy_with_stats,
)

C = 7
MARGIN = 2.0  # the logits of loss_data are N(0, 4): a margin of 2 leaves both active and inactive gaps


# --------------------------------------------------------------------- the papers' definitions, written out here
# The authors' code (torrvision/focal_calibration's FocalLossAdaptive, by-liu/MbLS's LogitMarginL1, torchvision's
# sigmoid_focal_loss) was run against ours outside this repository, with the results these tests assert; their code
# is not part of it. These references restate the definitions those implementations follow.


def flsd53_sum(x, target):
    """FLSD-53 (Mukhoti et al. 2020), summed over positions as focal_calibration's code does: γ = 5 where the label's
    probability (detached) is below 0.2, else 3; each position −(1 − q_y)^γ log q_y."""
    logq_y = torch.log_softmax(x, 1).gather(1, target.unsqueeze(1)).squeeze(1)
    q_y = logq_y.exp()
    gamma = torch.where(q_y.detach() < 0.2, 5.0, 3.0)
    return (-((1 - q_y) ** gamma) * logq_y).sum()


def margin_l1_terms(x, target, margin, weight_of_margin=0.1):
    """MbLS (Liu et al. 2022): CE + λ·mean over positions and classes of max(0, max_j z_j − z_k − m); (loss, CE,
    margin term) of the positions given (N, C, d... flattened to positions)."""
    if x.dim() > 2:
        x, target = x.movedim(1, -1).reshape(-1, x.shape[1]), target.reshape(-1)
    ce = F.cross_entropy(x, target)
    gaps = x.max(dim=1, keepdim=True).values - x
    penalty = F.relu(gaps - margin).mean()
    return ce + weight_of_margin * penalty, ce, penalty


def sigmoid_focal_loss(x, target, alpha=0.25, gamma=2.0, reduction="none"):
    """The binary focal loss (Lin et al. 2017) as torchvision documents ``ops.sigmoid_focal_loss``: the BCE to the
    target times (1 − p_t)^γ, p_t = p·t + (1 − p)(1 − t); with α ≥ 0 also α_t = α·t + (1 − α)(1 − t)."""
    p = torch.sigmoid(x)
    loss = (
        F.binary_cross_entropy_with_logits(x, target, reduction="none")
        * (1 - (p * target + (1 - p) * (1 - target))) ** gamma
    )
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


# ------------------------------------------------------------------------------------------ formulas, plain PyTorch


def _rows_reference(x, target, kind, param, weight=None, ignore_index=-100, margin=MARGIN):
    """Per-position (w_y, ℓ, regulariser row) written out: the regulariser is H(q) (penalty), the focal row
    (focal, with γ = param) or the class mean of max(0, max z − z − m) (margin)."""
    valid = target != ignore_index
    y = torch.where(valid, target, 0)
    logq = F.log_softmax(x, 1)
    w = torch.ones(x.shape[1], dtype=x.dtype) if weight is None else weight
    wy = w[y] * valid
    logq_y = logq.gather(1, y.unsqueeze(1)).squeeze(1)
    if kind == "penalty":
        extra = -(logq.exp() * logq).sum(1)
    elif kind == "focal":
        q_y = logq_y.exp()
        gamma = torch.where(q_y.detach() < 0.2, 5.0, 3.0) if param == "flsd53" else param
        extra = -((1 - q_y) ** gamma) * logq_y
    else:
        extra = F.relu((x.amax(1, keepdim=True) - x) - margin).mean(1)
    return wy, -logq_y, extra


def _reduce(rows, wy, reduction):
    if reduction == "none":
        return wy * rows
    total = (wy * rows).sum()
    return total if reduction == "sum" else total / wy.sum()


def _reference(x, target, kind, param, reduction="mean", **kw):
    """(loss, h_pq, term) of the formula; h_pq is PyTorch's own F.cross_entropy."""
    wy, _, extra = _rows_reference(x, target, kind, param, **kw)
    weight, ignore_index = kw.get("weight"), kw.get("ignore_index", -100)
    h_pq = F.cross_entropy(x, target, weight=weight, ignore_index=ignore_index, reduction=reduction)
    term = _reduce(extra, wy, reduction)
    if kind == "penalty":
        return h_pq - param * term, h_pq, term
    if kind == "focal":
        return term, h_pq, None
    return h_pq + param * term, h_pq, term


def _ours(kind, x, target, param, stats=False, **kw):
    """(loss, h_pq, term or None) of our function for ``kind``, and its stats when asked for."""
    if kind == "focal":
        fn = focal_cross_entropy_with_stats if stats else focal_cross_entropy
        out = fn(x, target, param, **kw)
    elif kind == "penalty":
        fn = confidence_penalty_cross_entropy_with_stats if stats else confidence_penalty_cross_entropy
        out = fn(x, target, param, **kw)
    else:
        fn = margin_smoothed_cross_entropy_with_stats if stats else margin_smoothed_cross_entropy
        out = fn(x, target, param, margin=kw.pop("margin", MARGIN), **kw)
    result, stats_ = out if stats else (out, None)
    terms = (*result, None) if kind == "focal" else tuple(result)
    return (terms, stats_) if stats else terms


KINDS = {"penalty": 0.3, "focal": 2.0, "flsd53": "flsd53", "margin": 0.4}


def _kind(name):
    return ("focal", KINDS[name]) if name in ("focal", "flsd53") else (name, KINDS[name])


@pytest.fixture(params=["kernel", "traced", "small"])
def path(request, monkeypatch):
    """``kernel``: the chunked eager kernel, in chunks of 3 rows so that every step crosses chunk borders;
    ``traced``: the formulas torch.compile traces, run eagerly; ``small``: the log_softmax path of small inputs."""
    if request.param == "kernel":
        monkeypatch.setattr(relatives, "SMALL_ELEMENTS", 0)
        monkeypatch.setattr(_ops, "MIN_CHUNK_ELEMENTS", 1)
        monkeypatch.setattr(_fused, "CACHE_CHUNK_ELEMENTS", 3 * C)
    elif request.param == "traced":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    return request.param


def _assert_terms(got, expected):
    for a, b in zip(got, expected, strict=True):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("name", KINDS)
@pytest.mark.parametrize("shape", [(10, C), (4, C, 3)])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_formula(path, name, shape, reduction, weighted):
    """Values and the gradient of every output at once (random grad_outputs: the backward of a non-unit
    grad_output, and the recomputing backward of h_pq and the term)."""
    kind, param = _kind(name)
    x, target = _data(shape)
    weight = torch.rand(C, dtype=torch.float64) + 0.1 if weighted else None
    expected = _reference(x, target, kind, param, reduction, weight=weight)
    got = _ours(kind, x, target, param, weight=weight, reduction=reduction)
    _assert_terms(got, expected)
    coefs = [torch.rand_like(e) for e in expected if e is not None]
    outputs = [g for g in got if g is not None]
    for n in (1, len(outputs)):  # the loss alone (the buffer made in forward), then every output
        got = _ours(kind, x, target, param, weight=weight, reduction=reduction)
        outputs = [g for g in got if g is not None][:n]
        (grad,) = torch.autograd.grad(outputs, x, grad_outputs=coefs[:n])
        (reference,) = torch.autograd.grad([e for e in expected if e is not None][:n], x, coefs[:n], retain_graph=True)
        torch.testing.assert_close(grad, reference)


@pytest.mark.parametrize("name", KINDS)
def test_loss_backward_and_no_grad(path, name):
    """``loss.backward()`` (grad_output 1, the usual call) and the forward without autograd."""
    kind, param = _kind(name)
    x, target = _data((10, C, 2))
    expected = _reference(x, target, kind, param)[0]
    got = _ours(kind, x, target, param)[0]
    got.backward()
    torch.testing.assert_close(x.grad, _grad(expected, x))
    with torch.no_grad():
        torch.testing.assert_close(_ours(kind, x, target, param)[0], expected.detach())


@pytest.mark.parametrize("name", KINDS)
@pytest.mark.parametrize("weighted", [False, True])
def test_all_ignored_mean_is_zero_with_zero_gradient(path, name, weighted):
    kind, param = _kind(name)
    x, target = _data((4, C))
    weight = torch.rand(C, dtype=torch.float64) + 0.1 if weighted else None
    got = _ours(kind, x, torch.full_like(target, -100), param, weight=weight)
    assert all(value.item() == 0.0 for value in got if value is not None)
    assert torch.equal(_grad(got[0], x), torch.zeros_like(x))


@pytest.mark.parametrize("name", KINDS)
def test_unbatched_input(path, name):
    kind, param = _kind(name)
    x, target = _data((3, C), ignored=False)
    for reduction in ("none", "mean"):
        row, label = x[1].detach().requires_grad_(), target[1]
        got = _ours(kind, row, label, param, reduction=reduction)
        expected = _reference(row.unsqueeze(0), label.unsqueeze(0), kind, param, reduction)
        expected = [None if e is None else e.squeeze(0) for e in expected]
        _assert_terms(got, expected)
        torch.testing.assert_close(_grad(got[0], row), _grad(expected[0], row))


def test_focal_gradient_where_the_label_probability_rounds_to_one(path):
    """q_y == 1 in float64 (label logit 60 above the rest): autograd's derivative of (1 − q_y)^γ is NaN there for
    γ < 1; ours is the limit, 0 (and q − δ_y for γ = 0, the cross-entropy's)."""
    x = torch.zeros(2, C, dtype=torch.float64)
    x[0, 2] = 60.0
    x.requires_grad_()
    target = torch.tensor([2, 4])
    for gamma in (0.0, 0.5, 2.0):
        out = focal_cross_entropy(x, target, gamma, reduction="sum")
        grad = _grad(out.loss, x)
        assert torch.isfinite(grad).all()
        assert torch.equal(grad[0], torch.zeros(C, dtype=torch.float64)) or gamma == 0.0
        expected = _reference(x[1:], target[1:], "focal", gamma, "sum")[0]
        torch.testing.assert_close(grad[1:], _grad(expected, x)[1:])


def test_focal_label_probability_underflow_falls_back(path):
    """On the CPU the focal kernel takes ℓ = −log q_y from the softmax; where q_y underflows (a label logit far below
    the top one, float32) its chunk must fall back to lse − z_y and stay exact."""
    x, target = _data((9, C), ignored=False, dtype=torch.float32)
    x = x.detach()
    x[4, target[4]] = -100.0
    x[4, (target[4] + 1) % C] = 100.0
    x.requires_grad_()
    x64 = x.detach().double().requires_grad_()
    out = focal_cross_entropy(x, target, 0.5)
    expected = _reference(x64, target, "focal", 0.5)
    torch.testing.assert_close(out.loss.double(), expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.h_pq.double(), expected[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_grad(out.loss, x).double(), _grad(expected[0], x64), rtol=1e-5, atol=1e-7)


def test_half_precision_kernel():
    """bfloat16 logits through the chunked kernel: a float32 loss equal to the float32 formula on the same values,
    the gradient in bfloat16."""
    x, target = _data((600, C), dtype=torch.bfloat16)
    x32 = x.detach().float().requires_grad_()
    for kind, param in (("penalty", 0.3), ("focal", 2.0), ("margin", 0.4)):
        got = _ours(kind, x, target, param)
        expected = _reference(x32, target, kind, param)
        assert got[0].dtype == torch.float32
        torch.testing.assert_close(got[0], expected[0])
        grad = _grad(got[0], x)
        assert grad.dtype == torch.bfloat16
        torch.testing.assert_close(grad.float(), _grad(expected[0], x32).bfloat16().float())


# --------------------------------------------------------------------------------------------- probability targets


@pytest.mark.parametrize("kind", ["penalty", "margin"])
@pytest.mark.parametrize("shape", [(10, C), (4, C, 3)])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
def test_probability_targets(kind, shape, reduction, weighted):
    """PyTorch's soft-target cross-entropy plus the regulariser weighted by Σ_k w_k p_k; mean over positions."""
    x, _ = _data(shape)
    p = torch.softmax(torch.randn(shape, dtype=torch.float64), 1)
    weight = torch.rand(C, dtype=torch.float64) + 0.1 if weighted else None
    param = KINDS[kind]
    h_pq = F.cross_entropy(x, p, weight=weight, reduction=reduction)
    w = torch.ones(C, dtype=torch.float64) if weight is None else weight
    row_weight = (p * w.view(1, -1, *[1] * (len(shape) - 2))).sum(1)
    logq = F.log_softmax(x, 1)
    penalty = -(logq.exp() * logq).sum(1)
    extra = penalty if kind == "penalty" else F.relu((x.amax(1, keepdim=True) - x) - MARGIN).mean(1)
    term = row_weight * extra if reduction == "none" else (row_weight * extra).sum()
    term = term / extra.numel() if reduction == "mean" else term
    loss = h_pq - param * term if kind == "penalty" else h_pq + param * term
    got = _ours(kind, x, p, param, weight=weight, reduction=reduction)
    _assert_terms(got, (loss, h_pq, term))
    torch.testing.assert_close(_grad(got[0], x), _grad(loss, x))


@pytest.mark.parametrize("kind", ["penalty", "margin"])
@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_one_hot_probabilities_equal_class_indices(kind, reduction):
    """The weighting of the two target kinds agrees: a one-hot p counts with Σ_k w_k p_k = w_y."""
    x, target = _data((10, C), ignored=False)
    weight = torch.rand(C, dtype=torch.float64) + 0.1
    one_hot = F.one_hot(target, C).double()
    kw = {"weight": weight, "reduction": reduction}
    _assert_terms(_ours(kind, x, one_hot, KINDS[kind], **kw), _ours(kind, x, target, KINDS[kind], **kw))


def test_focal_refuses_probability_targets():
    x, _ = _data((4, C))
    with pytest.raises(ValueError, match="`target` to hold class indices for the focal loss"):
        focal_cross_entropy(x, torch.softmax(x.detach(), 1))


# ----------------------------------------------------------------------------------- the definitions of the papers


@pytest.mark.parametrize("shape", [(40, C), (6, C, 5)])
def test_flsd53_equals_the_rule_of_mukhoti_et_al(path, shape):
    """FLSD-53: γ = 5 below q_y = 0.2, else 3, q_y detached; summed over positions (reduction="sum"), as the
    authors' FocalLossAdaptive(gamma=3) gives it."""
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 1.5).requires_grad_()
    target = torch.randint(0, C, (shape[0], *shape[2:]), generator=gen)
    theirs = flsd53_sum(x, target)
    ours = focal_cross_entropy(x, target, "flsd53", reduction="sum").loss
    q_y = torch.softmax(x, 1).gather(1, target.unsqueeze(1))
    assert (q_y < 0.2).any() and (q_y >= 0.5).any() and ((q_y >= 0.2) & (q_y < 0.5)).any()  # all three ranges
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(_grad(ours, x), _grad(theirs, x))


@pytest.mark.parametrize("shape", [(20, C), (4, C, 3)])
@pytest.mark.parametrize("margin", [2.0, 10.0])
def test_mbls_equals_its_three_terms(path, shape, margin):
    """by-liu/MbLS's LogitMarginL1 returns (loss, loss_ce, loss_margin): the same three terms, on inputs without
    ignored positions (its margin term counts positions whose target is -100, see the next test)."""
    x, target = _data(shape, ignored=False)
    x = (x * 5).detach().requires_grad_()  # gaps above 10 too
    theirs = margin_l1_terms(x, target, margin)
    ours = margin_smoothed_cross_entropy(x, target, 0.1, margin=margin)
    assert theirs[2] > 0
    _assert_terms(ours, theirs)
    torch.testing.assert_close(_grad(ours.loss, x), _grad(theirs[0], x))


def test_mbls_ignored_positions_differ_from_the_authors_on_purpose():
    """With ignore_index = -100 LogitMarginL1's margin term still counts ignored positions; ours equals the terms of
    the positions that are not ignored."""
    x, target = _data((12, C))
    x = (x * 5).detach().requires_grad_()
    kept = target != -100
    ours = margin_smoothed_cross_entropy(x, target, 0.1)
    theirs_kept = margin_l1_terms(x[kept], target[kept], 10.0)
    _assert_terms(ours, theirs_kept)
    torch.testing.assert_close(_grad(ours.loss, x), _grad(theirs_kept[0], x))
    theirs_all = margin_l1_terms(x, target.clamp(min=0), 10.0)  # ignored rows counted in the margin term
    assert not torch.allclose(theirs_all[2], ours.margin_penalty)


def test_mbls_ties_for_the_maximum_share_its_gradient(path):
    """Two logits tie for a row's maximum: the maximum's part of the gradient is split between them, as autograd
    splits amax's (the formula with amax is the oracle)."""
    x = torch.tensor([[12.0, 12.0, 0.0, -3.0, 1.0, 5.0, 2.0], [0.5, 0.1, 15.0, 15.0, 15.0, 0.0, 1.0]])
    x = x.double().requires_grad_()
    target = torch.tensor([0, 4])
    ours = margin_smoothed_cross_entropy(x, target, 0.3)
    expected = F.cross_entropy(x, target) + 0.3 * F.relu((x.amax(1, keepdim=True) - x) - 10.0).mean()
    torch.testing.assert_close(ours.loss, expected)
    torch.testing.assert_close(_grad(ours.loss, x), _grad(expected, x))


def test_focal_equals_formula_at_gamma_zero_is_cross_entropy(path):
    x, target = _data((10, C))
    out = focal_cross_entropy(x, target, 0.0)
    expected = F.cross_entropy(x, target)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(_grad(out.loss, x), _grad(expected, x))


@pytest.mark.parametrize("shape", [(12,), (6, 3)])
@pytest.mark.parametrize("alpha", [0.25, -1, None, 0.9])
@pytest.mark.parametrize("gamma", [0.0, 2.0, 1.5])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_binary_focal_equals_torchvisions_definition(shape, alpha, gamma, reduction):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    target = torch.randint(0, 2, shape, generator=gen).double()
    target.view(-1)[:2] = torch.tensor([0.3, 0.8], dtype=torch.float64)  # soft targets too
    theirs = sigmoid_focal_loss(x, target, -1 if alpha is None else alpha, gamma, reduction)
    ours = binary_focal_cross_entropy(x, target, gamma, alpha, reduction=reduction)
    torch.testing.assert_close(ours.loss, theirs)
    torch.testing.assert_close(ours.h_pq, F.binary_cross_entropy_with_logits(x, target, reduction=reduction))
    torch.testing.assert_close(_grad(ours.loss, x), _grad(theirs, x))


def test_binary_focal_stats_and_bool_targets():
    x = torch.tensor([[3.0, -1.0], [0.2, -4.0]])
    target = torch.tensor([[True, True], [False, False]])
    out, stats = binary_focal_cross_entropy_with_stats(x, target, 2.0, 0.25)
    torch.testing.assert_close(out.loss, sigmoid_focal_loss(x, target.float(), reduction="mean"))
    torch.testing.assert_close(stats.probability, torch.sigmoid(x).reshape(-1))
    assert stats.correct.tolist() == [True, False, False, True]
    torch.testing.assert_close(stats.brier, (torch.sigmoid(x) - target.float()).reshape(-1) ** 2)


# ---------------------------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("name", ["penalty", "focal", "margin"])
@pytest.mark.parametrize("shape", [(10, C), (4, C, 3)])
@pytest.mark.parametrize("brier", [True, False])
def test_stats(path, name, shape, brier):
    """The statistics, and the terms of the ``_with_stats`` form (γ = 0.5: the focal rows of FocalRowsFunction)."""
    kind, param = _kind(name)
    param = 0.5 if kind == "focal" else param
    x, target = _data(shape)
    weight = torch.rand(C, dtype=torch.float64) + 0.1
    (terms, stats) = _ours(kind, x, target, param, stats=True, weight=weight, brier=brier)
    expected = _reference(x, target, kind, param, weight=weight)
    _assert_terms(terms, expected)
    torch.testing.assert_close(_grad(terms[0], x), _grad(expected[0], x))
    q = torch.softmax(x.detach(), 1).movedim(1, -1).reshape(-1, C)
    y = target.reshape(-1)
    valid = y != -100
    torch.testing.assert_close(stats.confidence, q.max(1).values.float())
    assert torch.equal(stats.correct, q.argmax(1) == y) and torch.equal(stats.valid, valid)
    torch.testing.assert_close(stats.weight_sum, weight[y[valid]].sum().float())
    torch.testing.assert_close(stats.entropy, -(q * q.log()).sum(1).float())
    assert stats.z_loss is not None and stats.z_loss.numel() == 0
    if brier:
        torch.testing.assert_close(stats.brier, ((q - F.one_hot(y.clamp(min=0), C)) ** 2).sum(1).float())
    else:
        assert stats.brier.numel() == 0


@pytest.mark.parametrize("kind", ["penalty", "margin"])
def test_stats_of_probability_targets(kind):
    x, _ = _data((6, C))
    p = torch.softmax(torch.randn(6, C, dtype=torch.float64), 1)
    _, stats = _ours(kind, x, p, KINDS[kind], stats=True)
    q = torch.softmax(x.detach(), 1)
    assert torch.equal(stats.correct, q.argmax(1) == p.argmax(1)) and stats.valid.all()
    torch.testing.assert_close(stats.entropy, -(q * q.log()).sum(1).float())
    assert stats.weight_sum.item() == 6


def test_stats_without_stats_are_empty():
    x, target = _data((10, C))
    out = relatives._compute(x, target, _ops.Spec("penalty", 0.1), None, -100, "mean", with_stats=False)[1]
    assert out.entropy is not None and out.entropy.numel() == 0
    assert out.weight_sum.item() == (target != -100).sum().item()


# ----------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x, t: confidence_penalty_cross_entropy(x, t, -0.1), "`beta` to be a finite float >= 0"),
        (lambda x, t: confidence_penalty_cross_entropy(x, t, float("nan")), "`beta` to be a finite float >= 0"),
        (lambda x, t: confidence_penalty_cross_entropy(x, t, torch.tensor(-1.0)), "`beta`"),
        (lambda x, t: confidence_penalty_cross_entropy(x, t, torch.ones(2)), "`beta` to be a float or a 0-d"),
        (lambda x, t: confidence_penalty_cross_entropy(x, t, reduction="avg"), "`reduction` to be one of"),
        (lambda x, t: margin_smoothed_cross_entropy(x, t, float("inf")), "`margin_weight`"),
        (lambda x, t: margin_smoothed_cross_entropy(x, t, margin=-1.0), "`margin` to be a finite float >= 0"),
        (lambda x, t: focal_cross_entropy(x, t, -1.0), "`gamma` to be a finite float >= 0"),
        (lambda x, t: focal_cross_entropy(x, t, "flsd"), '`gamma` to be a finite float >= 0 or "flsd53"'),
        (lambda x, t: focal_cross_entropy(x, t[:2]), "`target` \\(class-index\\) to have shape"),
        (lambda x, t: focal_cross_entropy(x, t, weight=torch.ones(3)), "`weight` to be a floating point tensor"),
        (lambda x, t: focal_cross_entropy(x, torch.full_like(t, C)), "class indices in \\[0, 7\\)"),
        (lambda x, t: binary_focal_cross_entropy(x, torch.ones_like(x), alpha=1.5), "`alpha` to be None, -1"),
        (lambda x, t: binary_focal_cross_entropy(x, torch.ones_like(x), gamma=-2.0), "`gamma`"),
        (lambda x, t: binary_focal_cross_entropy(x, 2 * torch.ones_like(x)), "`target` to hold values in \\[0, 1\\]"),
    ],
)
def test_bad_arguments_raise(call, match):
    x, target = _data((4, C))
    with pytest.raises(ValueError, match=match):
        call(x, target)


# ------------------------------------------------------------------------------------------------- torch.compile


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", ["penalty", "flsd53", "margin"])
def test_compiled_matches_formula(fresh_dynamo, name):
    """fullgraph=True (a graph break would raise); aot_eager runs the traced forward and backward graphs."""
    kind, param = _kind(name)
    x, target = _data((6, C, 2))
    weight = torch.rand(C, dtype=torch.float64) + 0.1
    fn = {"penalty": confidence_penalty_cross_entropy, "focal": focal_cross_entropy}.get(
        kind, margin_smoothed_cross_entropy
    )
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    param_in = torch.tensor(param, dtype=torch.float64) if kind != "focal" else param
    kw = {"margin": MARGIN} if kind == "margin" else {}
    got = compiled(x, target, param_in, weight=weight, **kw)
    expected = _reference(x, target, kind, param, weight=weight)
    _assert_terms((*got, None) if kind == "focal" else got, expected)
    torch.testing.assert_close(_grad(got.loss, x), _grad(expected[0], x))


def test_inductor_with_stats_matches_eager_kernel(fresh_dynamo, monkeypatch):
    """The default backend (Inductor) on what the mixin calls: loss, gradient and stats against the eager kernel."""
    monkeypatch.setattr(relatives, "SMALL_ELEMENTS", 0)
    x, target = _data((6, C, 2), dtype=torch.float32)
    x_eager = x.detach().clone().requires_grad_()
    weight = torch.rand(C) + 0.1
    compiled = torch.compile(margin_smoothed_cross_entropy_with_stats, fullgraph=True)
    out, stats = compiled(x, target, torch.tensor(0.4), margin=MARGIN, weight=weight)
    ref, ref_stats = margin_smoothed_cross_entropy_with_stats(x_eager, target, 0.4, margin=MARGIN, weight=weight)
    _assert_terms(out, ref)
    torch.testing.assert_close(_grad(out.loss, x), _grad(ref.loss, x_eager))
    for got, expected in zip(stats, ref_stats, strict=True):
        torch.testing.assert_close(got, expected)


def test_tensor_weights_never_recompile(fresh_dynamo):
    x, target = _data((8, C))
    with torch._dynamo.config.patch(error_on_recompile=True):
        for fn, kind in (
            (confidence_penalty_cross_entropy_with_stats, "penalty"),
            (margin_smoothed_cross_entropy_with_stats, "margin"),
        ):
            counter = CompileCounter()
            compiled = torch.compile(fn, backend=counter, fullgraph=True)
            for value in (0.1, 0.5, 0.0, 2.0):
                (got, _) = compiled(x, target, torch.tensor(value, dtype=torch.float64))
                torch.testing.assert_close(got.loss, _reference(x, target, kind, value, margin=10.0)[0])
            assert counter.frame_count == 1


def test_float_weight_compiles_at_most_twice(fresh_dynamo):
    """A Python float β is Dynamo's to specialise, as ε is: a constant at the first compile, an input after the first
    change (automatic dynamic), and no later value recompiles; nothing inside guards on its value."""
    x, target = _data((8, C))
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(confidence_penalty_cross_entropy, backend=counter, fullgraph=True)
    for beta in (0.1, 0.2, 0.3, 0.0, 1.0, 0.05):
        torch.testing.assert_close(compiled(x, target, beta).loss, _reference(x, target, "penalty", beta)[0])
    assert counter.frame_count <= 2
