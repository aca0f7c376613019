"""A module shaped like lightning-hydra-template's ``MNISTLitModule`` with its ``SimpleDenseNet``, written here from the
template's structure (the template's own code is not part of this repository): a dense net of three Linear-BatchNorm-
ReLU blocks and a linear output layer on flattened images, in a LightningModule that takes the net and an optimizer
factory and logs its own ``{stage}/loss``, ``{stage}/acc`` (MeanMetric, Accuracy) and ``val/acc_best`` (MaxMetric)
from a shared ``model_step``."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import Accuracy


class DenseNet(nn.Module):
    """Flatten, then ``[Linear, BatchNorm1d, ReLU]`` × 3 and a Linear output layer (``model.9``)."""

    def __init__(self, input_size: int = 784, lin1: int = 256, lin2: int = 256, lin3: int = 256, output: int = 10):
        super().__init__()
        sizes = [input_size, lin1, lin2, lin3]
        blocks: list[nn.Module] = []
        for width_in, width_out in itertools.pairwise(sizes):
            blocks += [nn.Linear(width_in, width_out), nn.BatchNorm1d(width_out), nn.ReLU()]
        self.model = nn.Sequential(*blocks, nn.Linear(lin3, output))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.reshape(x.shape[0], -1))


class TemplateLitModule(L.LightningModule):
    """The template's classification module: ``net``, ``CrossEntropyLoss``, its own metrics and logged keys."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        num_classes: int = 10,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net"])
        self.net = net
        # the template's criterion; a user who smooths with PyTorch sets its label_smoothing (the tests' reference)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.train_acc, self.val_acc, self.test_acc = (
            Accuracy(task="multiclass", num_classes=num_classes) for _ in "abc"
        )
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def on_train_start(self) -> None:
        self.val_loss.reset()
        self.val_acc.reset()
        self.val_acc_best.reset()

    def model_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        x, y = batch
        logits = self.forward(x)
        return self.criterion(logits, y), logits.argmax(dim=1), y

    def _log_step(self, stage: str, batch: tuple[Tensor, Tensor]) -> Tensor:
        loss, preds, targets = self.model_step(batch)
        mean, acc = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        mean(loss)
        acc(preds, targets)
        self.log(f"{stage}/loss", mean, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._log_step("train", batch)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._log_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._log_step("test", batch)

    def configure_optimizers(self) -> dict[str, Any]:
        return {"optimizer": self.hparams.optimizer(params=self.trainer.model.parameters())}
