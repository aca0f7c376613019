"""Training-epoch time of the default digits model: mixin + callback against the same module with plain F.cross_entropy.

Both modules are the command line's default MLP on scikit-learn's digits with the same trainer settings; the plain
one computes ``F.cross_entropy(..., label_smoothing=0.1)`` and logs its loss on step and epoch, the usual minimum.
Ours logs loss, H(p,q), H(u,q) (step and epoch), accuracy, ECE and ε. Runs are interleaved and the median of
each is compared, in one process.

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

from ls_lightning import LabelSmoothing
from ls_lightning.data import DigitsDataModule
from ls_lightning.models import MLP


class PlainMLP(MLP):
    """The same network and optimizer; the loss is PyTorch's, and only the loss is logged."""

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y, label_smoothing=0.1)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
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
    ours, plain = [], []
    _fit_seconds(MLP, True, data, 1)  # warm-up of both paths
    _fit_seconds(PlainMLP, False, data, 1)
    for _ in range(args.repeats):
        ours.append(_fit_seconds(MLP, True, data, args.epochs))
        plain.append(_fit_seconds(PlainMLP, False, data, args.epochs))
    mo, mp = statistics.median(ours), statistics.median(plain)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, digits train split, batch 64")
    print(f"{'module':<44} {'ms / epoch':>10}")
    print(f"{'plain F.cross_entropy, loss logged':<44} {mp * 1e3:>10.1f}")
    print(f"{'LabelSmoothingMixin + LabelSmoothing callback':<44} {mo * 1e3:>10.1f}")
    print(f"ratio ours / plain: {mo / mp:.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
