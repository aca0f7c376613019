"""A character-level language model with label smoothing: (N, C, T) logits, padding as ``ignore_index``.

The text ships with Python (the Zen of Python and the docstrings of a few standard-library modules), so nothing is
downloaded. Paragraphs of different lengths are padded in each batch; the padded targets are ``ignore_index`` and
count neither in the loss nor in the accuracy and calibration metrics. ε follows a cosine schedule and the prior can
be online label smoothing, which for a language model learns which characters the model confuses with which.

Run ``python sequence_model.py`` (about half a minute on a laptop CPU) or ``python sequence_model.py --help``.
"""

from __future__ import annotations

import argparse
import codecs
import importlib
import re
from collections.abc import Sequence

import lightning.pytorch as L
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

from ls_lightning import LabelSmoothing, LabelSmoothingMixin
from ls_lightning.smoothing import Cosine

IGNORE_INDEX = -100
_MODULES = ("this", "re", "json", "argparse", "collections", "functools", "itertools", "string", "textwrap", "typing")


def stdlib_text() -> str:
    """The Zen of Python (``this.s``, stored ROT13-encoded, so it survives ``python -OO``) and module docstrings."""
    zen = codecs.decode(importlib.import_module("this").s, "rot13")
    docs = [getattr(importlib.import_module(name), "__doc__", None) or "" for name in _MODULES[1:]]
    return "\n\n".join([zen, *docs])


def paragraphs(text: str, max_len: int) -> list[str]:
    """Blank-line separated paragraphs with whitespace collapsed, cut into pieces of at most ``max_len`` characters."""
    pieces = []
    for block in re.split(r"\n\s*\n", text):
        block = " ".join(block.split())
        pieces += [block[i : i + max_len] for i in range(0, len(block), max_len) if len(block[i : i + max_len]) > 1]
    return pieces


class CharData(L.LightningDataModule):
    """Paragraphs as index sequences; every 10th paragraph is held out for validation.

    A batch is ``(inputs, targets)``, both (N, T) with T the longest paragraph of the batch minus one: the targets are
    the inputs shifted by one character, padded with ``IGNORE_INDEX`` (the inputs with index 0, which the targets
    ignore).
    """

    def __init__(self, batch_size: int = 32, max_len: int = 96) -> None:
        super().__init__()
        text = stdlib_text()
        self.vocab = sorted(set(text))
        self.num_classes = len(self.vocab)
        index = {char: i for i, char in enumerate(self.vocab)}
        sequences = [torch.tensor([index[c] for c in p]) for p in paragraphs(text, max_len)]
        self.train_set = [s for i, s in enumerate(sequences) if i % 10]
        self.val_set = [s for i, s in enumerate(sequences) if not i % 10]
        self.batch_size = batch_size

    @staticmethod
    def collate(sequences: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        inputs = pad_sequence([s[:-1] for s in sequences], batch_first=True, padding_value=0)
        targets = pad_sequence([s[1:] for s in sequences], batch_first=True, padding_value=IGNORE_INDEX)
        return inputs, targets

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, self.batch_size, shuffle=True, collate_fn=self.collate)  # type: ignore[arg-type]

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, self.batch_size, collate_fn=self.collate)  # type: ignore[arg-type]


class CharLM(LabelSmoothingMixin, L.LightningModule):
    """Embedding, a one-layer GRU and a linear read-out: next-character logits of shape (N, C, T)."""

    def __init__(self, num_classes: int, embedding: int = 32, hidden: int = 128, lr: float = 3e-3) -> None:
        super().__init__(ignore_index=IGNORE_INDEX)
        self.save_hyperparameters()
        self.embed = nn.Embedding(num_classes, embedding)
        self.rnn = nn.GRU(embedding, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, inputs: Tensor) -> Tensor:
        states, _ = self.rnn(self.embed(inputs))
        return self.head(states).transpose(1, 2)  # (N, T, C) -> (N, C, T), the layout of F.cross_entropy

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, targets = batch
        return self.label_smoothed_loss(self(inputs), targets)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        self.label_smoothed_loss(self(inputs), targets)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Train and return the final validation metrics (``val/loss``, ``val/acc``, ``val/ece``, ...)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (-1: no limit)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epsilon", type=float, default=0.2, help="ε at the start; the cosine schedule ends at 0")
    parser.add_argument("--prior", choices=["uniform", "online"], default="online")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root-dir", default=".", help="where Lightning writes its logs")
    args = parser.parse_args(argv)

    L.seed_everything(args.seed, verbose=False)
    data = CharData(batch_size=args.batch_size)
    model = CharLM(num_classes=data.num_classes)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=args.max_epochs,
        max_steps=args.max_steps,
        callbacks=[LabelSmoothing(Cosine(args.epsilon, 0.0), prior=args.prior)],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        default_root_dir=args.root_dir,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=data)
    metrics = {key: value.item() for key, value in trainer.callback_metrics.items() if key.startswith("val/")}
    train = {key: trainer.callback_metrics[f"train/{key}"].item() for key in ("loss_epoch", "acc", "ece")}
    print(f"{len(data.vocab)} characters, {len(data.train_set)} training paragraphs, prior={args.prior}")
    print("train: " + ", ".join(f"{key} {value:.4f}" for key, value in train.items()))
    print(
        "val:   " + ", ".join(f"{key[4:]} {metrics[key]:.4f}" for key in ("val/loss", "val/h_pq", "val/acc", "val/ece"))
    )
    return metrics


if __name__ == "__main__":
    main()
