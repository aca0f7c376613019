"""Priors of the loss: the counted class distribution, a fixed prior, and the labels of a batch, each against a
distribution counted by hand."""

from __future__ import annotations

import pytest
import torch
from helpers import IGNORE

from ls_lightning.losses import batch_labels, class_frequency, fixed_prior

C = 4


def test_class_frequency_equals_the_counted_distribution() -> None:
    labels = torch.tensor([[0, 1, 1, IGNORE], [3, 3, 3, 1]])
    expected = torch.tensor([1, 3, 0, 3]) / 7
    torch.testing.assert_close(class_frequency(labels, C), expected)
    tuples = [(torch.zeros(2), labels[0]), (torch.zeros(2), labels[1])]
    dicts = [{"x": torch.zeros(2), "label": labels[0]}, {"x": torch.zeros(2), "label": labels[1]}]
    torch.testing.assert_close(class_frequency(tuples, C), expected)
    torch.testing.assert_close(class_frequency(dicts, C), expected)
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    torch.testing.assert_close(class_frequency(p, C), torch.tensor([0.25, 0.25, 0.0, 0.5]))


@pytest.mark.parametrize(
    ("source", "error", "match"),
    [
        (torch.tensor([0, 4]), ValueError, r"labels in \[0, 4\).*but got 4"),
        (torch.tensor([IGNORE, IGNORE]), ValueError, r"at least one label"),
        ([torch.tensor([0, 1])], TypeError, r"\(input, target, \.\.\.\) tuple or a mapping"),
        (torch.tensor([True]), TypeError, r"tensor of class indices"),
    ],
)
def test_class_frequency_rejects_bad_labels(source, error, match) -> None:
    with pytest.raises(error, match=match):
        class_frequency(source, C)


def test_fixed_prior_is_the_given_distribution_in_float32() -> None:
    u = [0.4, 0.3, 0.2, 0.1]
    torch.testing.assert_close(fixed_prior(torch.tensor(u, dtype=torch.float64)), torch.tensor(u))


def test_batch_labels_forms() -> None:
    y = torch.tensor([1])
    assert batch_labels((None, y)) is y and batch_labels([None, y, None]) is y and batch_labels({"targets": y}) is y
