"""Add label smoothing to a LightningModule you already have: one base class, one loss call, one callback.

``PlainClassifier`` is an ordinary LightningModule. ``SmoothedClassifier`` is the same module after the change a
user makes (marked ``# +`` / ``# ~``): the mixin as first base class, ``self.label_smoothed_loss`` in place of
``F.cross_entropy``, and the ``LabelSmoothing`` callback on the trainer. Both train in seconds on generated data.

    python examples/mix_into_existing.py
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ls_lightning import LabelSmoothing, LabelSmoothingMixin  # +
from ls_lightning.smoothing import Cosine  # +


class PlainClassifier(L.LightningModule):
    """An existing module: cross-entropy, loss and accuracy logged by hand."""

    def __init__(self, num_features: int = 20, num_classes: int = 5, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(num_features, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val/loss", F.cross_entropy(logits, y))
        self.log("val/acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class SmoothedClassifier(LabelSmoothingMixin, PlainClassifier):  # ~ the mixin comes first
    """The same module with label smoothing: the loss also logs H(p,q), H(u,q), accuracy and ECE."""

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return self.label_smoothed_loss(self(x), y)  # ~

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.label_smoothed_loss(self(x), y)  # ~


def make_data(n: int, num_features: int = 20, num_classes: int = 5, seed: int = 0) -> TensorDataset:
    """Gaussian classes with 10% flipped labels: a problem on which an unsmoothed model grows over-confident."""
    centers = torch.randn(num_classes, num_features, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, num_features, generator=g) * 1.5
    flip = torch.rand(n, generator=g) < 0.1
    y = torch.where(flip, torch.randint(0, num_classes, (n,), generator=g), y)
    return TensorDataset(x, y)


def fit(model: L.LightningModule, callbacks: list[L.Callback], epochs: int = 10) -> dict[str, float]:
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    train = DataLoader(make_data(2000), batch_size=64, shuffle=True)
    trainer.fit(model, train, DataLoader(make_data(1000, seed=1), batch_size=256))
    return {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


if __name__ == "__main__":
    torch.manual_seed(0)
    print("plain:   ", fit(PlainClassifier(), []))
    torch.manual_seed(0)
    print("smoothed:", fit(SmoothedClassifier(), [LabelSmoothing(Cosine(start=0.2, end=0.05))]))  # +
