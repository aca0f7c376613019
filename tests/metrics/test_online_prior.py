"""``OnlinePrior``: the online label-smoothing matrix of an epoch against its definition, computed sample by sample."""

from __future__ import annotations

import pytest
import torch
from helpers import IGNORE, online_prior_reference

from ls_lightning.losses import prior_matrix
from ls_lightning.metrics import OnlinePrior

C = 4


@pytest.mark.parametrize("shape", [(30,), (10, 3)])
def test_online_prior_metric_equals_the_definition(shape) -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(*shape[:1], C, *shape[1:], generator=g) * 2
    target = torch.randint(0, C, shape, generator=g)
    target[torch.rand(shape, generator=g) < 0.2] = IGNORE
    target[target == 3] = 2  # class 3 has no sample: its row stays the previous one
    previous = torch.softmax(torch.randn(C, C, generator=g), -1)
    metric = OnlinePrior(C)
    metric.previous.copy_(previous)
    for part in range(0, shape[0], 4):  # several batches
        metric.update(logits[part : part + 4], target[part : part + 4])
    expected = online_prior_reference(logits, target.masked_fill(target == IGNORE, -1), previous)
    torch.testing.assert_close(metric.compute(), expected)
    torch.testing.assert_close(metric.compute()[3], previous[3])


def test_online_prior_mask_and_soft_targets() -> None:
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    soft = torch.tensor([[0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.6, 0.0, 0.4]])  # argmax classes 0, 1, 0
    metric = OnlinePrior(3)
    metric.update(logits, soft)  # the third is wrong (predicts 2, label 0): left out
    expected = prior_matrix(None, 3)
    expected[:2] = logits[:2].softmax(-1)
    torch.testing.assert_close(metric.compute(), expected)
    metric.reset()
    metric.update(logits, torch.tensor([0, 1, 2]), mask=torch.tensor([False, True, False]))
    expected = prior_matrix(None, 3)
    expected[1] = logits[1].softmax(-1)
    torch.testing.assert_close(metric.compute(), expected)
    with pytest.raises(ValueError, match=r"`logits` to have num_classes=3.*\(2, 4\)"):
        metric.update(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`num_classes` to be a positive int"):
        OnlinePrior(0)
