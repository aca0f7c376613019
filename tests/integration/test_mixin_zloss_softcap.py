"""z-loss and logit soft-capping through the mixin: the logged z term, loss, H(p,q) and accuracy equal a
recomputation from the capped logits ``c = s·tanh(z/s)`` (the losses themselves: tests/losses/test_zloss_softcap.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE, Net, classification_data, quiet_trainer
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

C = 7
Z = 0.05


def _cap(x: Tensor, softcap: float | None) -> Tensor:
    return x if softcap is None else softcap * torch.tanh(x / softcap)


def _mixin_data(n: int = 45) -> TensorDataset:
    return classification_data(n, 6, C, scale=3.0, ignore=0.2)


@pytest.mark.parametrize("linear", [False, True], ids=["logits", "linear"])
def test_mixin_logs_the_z_term_equal_to_a_recomputation(tmp_path, linear):
    torch.manual_seed(0)
    model = Net(6, C, z_loss=Z, softcap=2.5, linear=linear)
    model.label_smoothing = 0.2
    data = _mixin_data()
    (logged,) = quiet_trainer(tmp_path, devices=1).validate(model, DataLoader(data, batch_size=8), verbose=False)
    x, y = data.tensors
    with torch.no_grad():
        z = model.layer(x)
    c = _cap(z, 2.5)
    keep = y != IGNORE
    expected_z = (Z * torch.logsumexp(c, 1) ** 2)[keep].mean().item()
    assert logged["val/z_loss"] == pytest.approx(expected_z, rel=1e-5)
    expected_loss = F.cross_entropy(c, y, label_smoothing=0.2, ignore_index=IGNORE).item() + expected_z
    assert logged["val/loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert logged["val/h_pq"] == pytest.approx(F.cross_entropy(c, y, ignore_index=IGNORE).item(), rel=1e-5)
    accuracy = (c.argmax(1) == y)[keep].float().mean().item()
    assert logged["val/acc"] == pytest.approx(accuracy, rel=1e-6)


def test_mixin_logs_the_z_term_on_step_and_epoch_in_training(tmp_path):
    """One step on the whole data: step and epoch values both equal the z term of the weights before the step."""
    torch.manual_seed(0)
    model = Net(6, C, z_loss=Z, softcap=2.5)
    data = _mixin_data(16)
    x, y = data.tensors
    with torch.no_grad():
        c = _cap(model.layer(x), 2.5)
    expected = (Z * torch.logsumexp(c, 1) ** 2)[y != IGNORE].mean().item()
    trainer = quiet_trainer(tmp_path, devices=1, max_epochs=1, limit_val_batches=0, log_every_n_steps=1)
    trainer.fit(model, DataLoader(data, batch_size=16))
    metrics = trainer.callback_metrics
    for key in ("train/z_loss_step", "train/z_loss_epoch", "train/z_loss"):
        assert float(metrics[key]) == pytest.approx(expected, rel=1e-5), key


def test_mixin_without_z_loss_logs_no_z_key(tmp_path):
    model = Net(6, C, softcap=2.5)
    trainer = quiet_trainer(tmp_path, devices=1, max_epochs=1, log_every_n_steps=1)
    trainer.fit(model, DataLoader(_mixin_data(16), batch_size=8), DataLoader(_mixin_data(16), batch_size=8))
    assert not any("z_loss" in key for key in trainer.callback_metrics)
    assert "train/loss" in trainer.callback_metrics and "val/loss" in trainer.callback_metrics
