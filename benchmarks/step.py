"""Training-epoch time of the default digits model: mixin + callback against the same module with plain F.cross_entropy.

All modules are the command line's default MLP on scikit-learn's digits with the same trainer settings. Three plain
references compute ``F.cross_entropy(..., label_smoothing=0.1)``: one logs only its loss (step and epoch), the
usual minimum; one logs what ours logs (loss, H(p,q), H(u,q) on step and epoch, accuracy and torchmetrics' ECE on
epoch, ε on step) the way Lightning's and torchmetrics' documentation show, with a ``self.log`` call per key and
step; and one hands Lightning the same keys in the fewest calls any module can (a step key on the steps the loggers
write, an epoch key once per epoch) with nothing computed for them: its excess over the loss-only module is
Lightning's own cost of the contract's keys, which no implementation of them avoids. Runs are interleaved and the
median of each is compared, in one process.

    python benchmarks/step.py [--epochs 5] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from ls_lightning import LabelSmoothing
from ls_lightning.data import DigitsDataModule
from ls_lightning.mixin import logger_writes_this_step
from ls_lightning.models import MLP


class PlainMLP(MLP):
    """The same network and optimizer; the loss is PyTorch's, and only the loss is logged."""

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y, label_smoothing=0.1)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss


class PlainLoggingMLP(MLP):
    """PyTorch's loss, and the same keys as the mixin logs, computed and logged by hand."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.ece = MulticlassCalibrationError(num_classes=10, n_bins=15)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        h_pq = F.cross_entropy(logits, y)
        h_uq = -logits.log_softmax(-1).mean(-1).mean()
        loss = 0.9 * h_pq + 0.1 * h_uq
        self.acc(logits, y)
        self.ece(logits.softmax(-1), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/h_pq", h_pq, on_step=True, on_epoch=True)
        self.log("train/h_uq", h_uq, on_step=True, on_epoch=True)
        self.log("train/epsilon", 0.1, on_step=True, on_epoch=False)
        self.log("train/acc", self.acc, on_step=False, on_epoch=True)
        self.log("train/ece", self.ece, on_step=False, on_epoch=True)
        return loss


class PlainKeysFloorMLP(MLP):
    """PyTorch's loss; the contract's keys handed to Lightning in the fewest calls, with placeholder values."""

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y, label_smoothing=0.1)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        value = loss.detach()
        if batch_idx == 0 or logger_writes_this_step(self.trainer):
            self.log("train/h_pq", value, on_step=True, on_epoch=True)
            self.log("train/h_uq", value, on_step=True, on_epoch=True)
        if logger_writes_this_step(self.trainer):
            self.log("train/epsilon", 0.1, on_step=True, on_epoch=False, batch_size=1)
        if batch_idx == 0:
            self.log("train/acc", value, on_step=False, on_epoch=True)
            self.log("train/ece", value, on_step=False, on_epoch=True)
        return loss


def _fit_seconds(model_cls: type[MLP], with_callback: bool, data: DigitsDataModule, epochs: int) -> float:
    torch.manual_seed(0)
    model = model_cls(num_features=64, num_classes=10, hidden_sizes=[128], lr=5e-3)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[LabelSmoothing(0.1)] if with_callback else [],
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    return (time.perf_counter() - start) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs per timed fit")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved fits of each module")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    data = DigitsDataModule()
    data.prepare_data()
    data.setup("fit")
    runs: dict[str, tuple[type[MLP], bool]] = {
        "plain F.cross_entropy, loss logged": (PlainMLP, False),
        "plain F.cross_entropy, same keys logged": (PlainLoggingMLP, False),
        "plain F.cross_entropy, same keys, fewest calls": (PlainKeysFloorMLP, False),
        "LabelSmoothingMixin + LabelSmoothing callback": (MLP, True),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for model_cls, with_callback in runs.values():  # warm-up of every path
        _fit_seconds(model_cls, with_callback, data, 1)
    for _ in range(args.repeats):
        for name, (model_cls, with_callback) in runs.items():
            times[name].append(_fit_seconds(model_cls, with_callback, data, args.epochs))
    median = {name: statistics.median(t) for name, t in times.items()}
    ours = median["LabelSmoothingMixin + LabelSmoothing callback"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, digits train split, batch 64")
    print(f"{'module':<48} {'ms / epoch':>10} {'ours / it':>10}")
    for name, value in median.items():
        print(f"{name:<48} {value * 1e3:>10.1f} {ours / value:>10.3f}")


if __name__ == "__main__":
    main()
