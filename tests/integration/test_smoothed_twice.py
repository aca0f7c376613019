"""Soft targets that are smoothed already (timm's ``Mixup(label_smoothing=0.1)``, its default) meet ε > 0: one warning
per fit names both; plain mixup targets, ε = 0 and class-index targets warn nothing."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import Net, quiet_trainer
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

C, N = 5, 16


def mixup_targets(labels: Tensor, smoothing: float, lam: float) -> Tensor:
    """The targets of mixup with label smoothing as timm's ``Mixup`` documents them: each one-hot row smoothed to
    ``smoothing / C`` off and ``1 − smoothing + smoothing / C`` on, mixed with the batch reversed by ``lam``."""
    off = smoothing / C
    rows = torch.full((labels.numel(), C), off).scatter_(1, labels.unsqueeze(1), 1 - smoothing + off)
    return lam * rows + (1 - lam) * rows.flip(0)


def _fit_warnings(epsilon: float, target: Tensor, tmp_path) -> list[str]:
    data = TensorDataset(torch.randn(N, 3), target)
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Net(3, C, label_smoothing=epsilon), DataLoader(data, batch_size=8))
    return [str(w.message) for w in caught if "smoothed twice" in str(w.message)]


def test_smoothed_mixup_targets_warn_once_per_fit_naming_both(tmp_path) -> None:
    targets = mixup_targets(torch.arange(N) % C, smoothing=0.1, lam=0.7)
    messages = _fit_warnings(0.1, targets, tmp_path)
    assert len(messages) == 1, messages  # 4 training batches, 2 epochs: one warning
    assert "`label_smoothing=0.1`" in messages[0] and "Mixup(label_smoothing=0.1)" in messages[0]
    assert len(_fit_warnings(0.1, targets, tmp_path)) == 1  # a second fit is warned again


@pytest.mark.parametrize(
    ("epsilon", "smoothing"),
    [(0.1, 0.0), (0.0, 0.1)],
    ids=["plain-mixup-targets", "no-smoothing-of-our-own"],
)
def test_no_warning_when_smoothing_happens_once(epsilon: float, smoothing: float, tmp_path) -> None:
    assert _fit_warnings(epsilon, mixup_targets(torch.arange(N) % C, smoothing, lam=0.7), tmp_path) == []
