"""The binary label-smoothed loss and its module against PyTorch's ``F.binary_cross_entropy_with_logits``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import binary_logits_and_target, grad_of_sum

import ls_lightning
from ls_lightning.losses import (
    BinaryLabelSmoothedCrossEntropy,
    binary_label_smoothed_cross_entropy,
    binary_label_smoothed_cross_entropy_with_stats,
)

SHAPES = [(7,), (6, 1), (5, 4), (3, 4, 2)]
EPSILONS = [0.0, 0.3, 1.0]
REDUCTIONS = ["none", "sum", "mean"]


def _weights(shape, kind):
    """Per-element weight of the input's shape, or a per-label one broadcast along the last dimension."""
    gen = torch.Generator().manual_seed(1)
    size = shape if kind == "full" else shape[-1:]
    return torch.rand(size, generator=gen, dtype=torch.float64) * 2 + 0.1


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight", [None, "full", "last"])
@pytest.mark.parametrize("pos_weight", [None, "last"])
@pytest.mark.parametrize("soft", [False, True])
def test_matches_torch_bce_on_smoothed_target(shape, eps, reduction, weight, pos_weight, soft):
    x, target = binary_logits_and_target(shape, soft)
    kwargs = {
        "weight": None if weight is None else _weights(shape, weight),
        "pos_weight": None if pos_weight is None else _weights(shape, pos_weight) + 0.5,
        "reduction": reduction,
    }
    out = binary_label_smoothed_cross_entropy(x, target, eps, **kwargs)
    expected = F.binary_cross_entropy_with_logits(x, target * (1 - eps) + eps / 2, **kwargs)
    torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        grad_of_sum(out.loss, x, retain_graph=True), grad_of_sum(expected, x, retain_graph=True), rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(out.h_pq, F.binary_cross_entropy_with_logits(x, target, **kwargs))
    torch.testing.assert_close(out.h_uq, F.binary_cross_entropy_with_logits(x, torch.full_like(target, 0.5), **kwargs))
    torch.testing.assert_close(out.loss, (1 - eps) * out.h_pq + eps * out.h_uq, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        grad_of_sum(out.h_pq, x, retain_graph=True),
        grad_of_sum(F.binary_cross_entropy_with_logits(x, target, **kwargs), x, retain_graph=True),
    )


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.float32])
def test_integer_bool_and_float32_targets(dtype):
    x, target = binary_logits_and_target((8, 3))
    out = binary_label_smoothed_cross_entropy(x.float(), target.to(dtype), 0.2)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(x.float(), target.float() * 0.8 + 0.1))


def test_tensor_epsilon_and_half_input():
    x, target = binary_logits_and_target((6, 2))
    out = binary_label_smoothed_cross_entropy(x, target, torch.tensor(0.3, dtype=torch.float64))
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(x, target * 0.7 + 0.15))
    half = binary_label_smoothed_cross_entropy(x.detach().half(), target.half(), 0.3)
    assert half.loss.dtype == torch.float32
    torch.testing.assert_close(
        half.loss, F.binary_cross_entropy_with_logits(x.detach().half().float(), target.float() * 0.7 + 0.15)
    )


def test_stats_are_probability_target_and_threshold_correctness():
    x = torch.tensor([[2.0, -1.0], [0.0, 0.3]])
    target = torch.tensor([[1.0, 1.0], [0.0, 0.2]])
    _, stats = binary_label_smoothed_cross_entropy_with_stats(x, target, 0.1)
    p = torch.sigmoid(x).reshape(-1)
    torch.testing.assert_close(stats.probability, p)
    torch.testing.assert_close(stats.target, target.reshape(-1))
    assert stats.correct.tolist() == [True, False, True, False]  # p = 0.5 counts as predicting 0, as torchmetrics
    assert stats.valid.all() and stats.weight_sum.item() == 4.0
    torch.testing.assert_close(stats.brier, (p - target.reshape(-1)).square())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target": torch.tensor([0.0, 1.5, 1.0])}, "`target` to hold values in \\[0, 1\\], but got 1.5"),
        ({"target": torch.tensor([0, -1, 1])}, "`target` to hold values in \\[0, 1\\], but got -1"),
        ({"target": torch.tensor([0.0, float("nan"), 1.0])}, "`target` to hold values in \\[0, 1\\], but got nan"),
        ({"target": torch.zeros(3, 1)}, "`target` to have the shape of `input` \\(3,\\), but got \\(3, 1\\)"),
        ({"label_smoothing": 1.5}, "`label_smoothing` to be in \\[0, 1\\], but got 1.5"),
        ({"reduction": "avg"}, "`reduction` to be one of .*'avg'"),
        ({"weight": torch.ones(2)}, "`weight` to be a tensor broadcastable .*\\(3,\\).*2"),
        ({"pos_weight": torch.ones(4)}, "`pos_weight` to be a tensor broadcastable"),
        ({"input": torch.tensor([1, 2, 3])}, "`input` to be a floating point tensor"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    arguments = {"input": torch.zeros(3), "target": torch.tensor([0.0, 1.0, 1.0]), **kwargs}
    with pytest.raises(ValueError, match=match):
        binary_label_smoothed_cross_entropy(**arguments)


def test_module_wraps_the_functional_and_is_schedulable():
    x, target = binary_logits_and_target((5, 3))
    pos_weight = torch.rand(3, dtype=torch.float64) + 0.5
    criterion = BinaryLabelSmoothedCrossEntropy(0.1, pos_weight=pos_weight, reduction="sum")
    criterion.label_smoothing = 0.4
    expected = F.binary_cross_entropy_with_logits(x, target * 0.6 + 0.2, pos_weight=pos_weight, reduction="sum")
    torch.testing.assert_close(criterion(x, target).loss, expected)
    assert "pos_weight" in dict(criterion.named_buffers()) and "label_smoothing=0.4" in repr(criterion)
    with pytest.raises(ValueError, match="label_smoothing"):
        criterion.label_smoothing = -0.1
    with pytest.raises(ValueError, match="reduction"):
        BinaryLabelSmoothedCrossEntropy(reduction="avg")  # type: ignore[arg-type]


def test_public_names():
    assert ls_lightning.binary_label_smoothed_cross_entropy is binary_label_smoothed_cross_entropy
    assert ls_lightning.BinaryLabelSmoothedCrossEntropy is BinaryLabelSmoothedCrossEntropy
    assert {"binary_label_smoothed_cross_entropy", "BinaryLabelSmoothedCrossEntropy"} <= set(ls_lightning.__all__)
