"""z-loss and logit soft-capping through the mixin: the logged z term, loss, H(p,q) and accuracy equal a
recomputation from the capped logits ``c = s·tanh(z/s)`` (the losses themselves: tests/losses/test_zloss_softcap.py)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from trainers import quiet_trainer

from ls_lightning import LabelSmoothingMixin

C = 7
Z = 0.05


def _cap(x: Tensor, softcap: float | None) -> Tensor:
    return x if softcap is None else softcap * torch.tanh(x / softcap)


IGNORE = -100


class _Net(LabelSmoothingMixin, L.LightningModule):
    """Logits from a linear layer, the loss with a z-loss and a cap; ``linear`` takes the fused linear loss."""

    def __init__(self, z_loss: float = Z, softcap: float | None = 2.5, linear: bool = False) -> None:
        super().__init__()
        self.layer = nn.Linear(6, C)
        self.z, self.cap, self.linear = z_loss, softcap, linear

    def _loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        if self.linear:
            weight, bias = self.layer.weight, self.layer.bias
            return self.label_smoothed_linear_loss(x, weight, y, linear_bias=bias, z_loss=self.z, softcap=self.cap)
        return self.label_smoothed_loss(self.layer(x), y, z_loss=self.z, softcap=self.cap)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._loss(batch)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._loss(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _mixin_data(n: int = 45) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g) * 3
    y = torch.randint(0, C, (n,), generator=g)
    y[torch.rand(n, generator=g) < 0.2] = IGNORE
    return TensorDataset(x, y)


@pytest.mark.parametrize("linear", [False, True], ids=["logits", "linear"])
def test_mixin_logs_the_z_term_equal_to_a_recomputation(tmp_path, linear):
    torch.manual_seed(0)
    model = _Net(linear=linear)
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
    model = _Net()
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
    model = _Net(z_loss=0.0)
    trainer = quiet_trainer(tmp_path, devices=1, max_epochs=1, log_every_n_steps=1)
    trainer.fit(model, DataLoader(_mixin_data(16), batch_size=8), DataLoader(_mixin_data(16), batch_size=8))
    assert not any("z_loss" in key for key in trainer.callback_metrics)
    assert "train/loss" in trainer.callback_metrics and "val/loss" in trainer.callback_metrics
