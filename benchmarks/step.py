"""Training-step time: mixin + callback against the same module with plain ``F.cross_entropy``, on two workloads.

- ``digits``: the command line's default MLP on scikit-learn's digits (a step of about 1 ms: Lightning's own costs
  dominate);
- ``lm``: a realistic step, a small decoder-only transformer language model built here (random tokens, 8192 classes by
  default, float32), where the model's own work dominates.

- ``normalization``: the cost of ``loss_normalization="step"`` on the ``lm`` model with padded sequences (each
  sequence's targets past a random length are ``ignore_index``) and 2 micro-batches per optimizer step, on 1 process
  and on 2 (``ddp_spawn``, gloo): the step's count all-reduced once and the gradients rescaled, against the default
  ``"batch"``; the time per optimizer step is measured inside the fit (rank 0), after 2 warm-up steps.

The first two compare ours with two plain modules that compute ``F.cross_entropy(..., label_smoothing=0.1)``: one
logs only its loss (step and epoch), the usual minimum; one logs the keys ours logs (loss, H(p,q), H(u,q) on step and
epoch, ε on step, accuracy and torchmetrics' ECE on epoch) the way Lightning's and torchmetrics' documentation show, a
``self.log`` per key and step. On ``lm`` a second row of ours uses the fused linear loss
(``label_smoothed_linear_loss``, which never builds the logits). Fits are interleaved and the median of each is
compared, in one process.

    python benchmarks/step.py [--workload digits lm normalization] [--repeats 7]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.multiprocessing import ProcessExitedException
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from ls_lightning import LabelSmoothing, LabelSmoothingMixin
from ls_lightning.cli.data import DigitsDataModule
from ls_lightning.cli.models import MLP

EPS = 0.1


def _log_documented_way(module: L.LightningModule, logits: Tensor, y: Tensor) -> Tensor:
    """PyTorch's loss, and every key the mixin logs, computed and logged as the documentation shows."""
    h_pq = F.cross_entropy(logits, y)
    h_uq = -logits.log_softmax(-1).mean(-1).mean()
    loss = (1 - EPS) * h_pq + EPS * h_uq
    module.acc(logits, y)
    module.ece(logits.softmax(-1), y)
    module.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
    module.log("train/h_pq", h_pq, on_step=True, on_epoch=True)
    module.log("train/h_uq", h_uq, on_step=True, on_epoch=True)
    module.log("train/epsilon", EPS, on_step=True, on_epoch=False)
    module.log("train/acc", module.acc, on_step=False, on_epoch=True)
    module.log("train/ece", module.ece, on_step=False, on_epoch=True)
    return loss


def _add_documented_metrics(module: L.LightningModule, num_classes: int) -> None:
    module.acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
    module.ece = MulticlassCalibrationError(num_classes=num_classes, n_bins=15)


# --- digits -------------------------------------------------------------------------------------------------------


class PlainMLP(MLP):
    """The same network and optimizer; the loss is PyTorch's, and only the loss is logged."""

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y, label_smoothing=EPS)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss


class PlainLoggingMLP(MLP):
    """PyTorch's loss, and the same keys as the mixin logs, computed and logged by hand."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        _add_documented_metrics(self, 10)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return _log_documented_way(self, self(x), y)


def _digits_runs() -> tuple[dict[str, Callable[[], float]], str]:
    data = DigitsDataModule()
    data.prepare_data()
    data.setup("fit")

    def fit(model_cls: type[MLP], callback: bool) -> Callable[[], float]:
        def run() -> float:
            torch.manual_seed(0)
            model = model_cls(num_features=64, num_classes=10, hidden_sizes=[128], lr=5e-3)
            return _fit_seconds(model, data.train_dataloader(), callback, epochs=5)

        return run

    runs = {
        "plain F.cross_entropy, loss logged": fit(PlainMLP, False),
        "plain F.cross_entropy, same keys logged": fit(PlainLoggingMLP, False),
        "ours: mixin + callback": fit(MLP, True),
    }
    return runs, "digits MLP (64-128-10), batch 64, 17 steps per epoch"


# --- language model -----------------------------------------------------------------------------------------------


class TinyLM(L.LightningModule):
    """Decoder-only transformer: token and position embeddings, pre-norm causal blocks, a tied output layer."""

    def __init__(self, vocab: int, d_model: int, layers: int, block: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Parameter(torch.zeros(block, d_model))
        layer = nn.TransformerEncoderLayer(d_model, 4, 4 * d_model, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(block), persistent=False)

    def hidden(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens) + self.position[: tokens.shape[1]]
        return self.norm(self.blocks(h, mask=self.mask, is_causal=True))

    def logits(self, tokens: Tensor) -> Tensor:
        return F.linear(self.hidden(tokens), self.embed.weight)  # (B, T, V)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class PlainLM(TinyLM):
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self.logits(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), label_smoothing=EPS)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss


class PlainLoggingLM(TinyLM):
    def __init__(self, vocab: int, *args: int) -> None:
        super().__init__(vocab, *args)
        _add_documented_metrics(self, vocab)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self.logits(x)
        return _log_documented_way(self, logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


class OursLM(LabelSmoothingMixin, TinyLM):
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self.logits(x)
        return self.label_smoothed_loss(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


class OursFusedLM(LabelSmoothingMixin, TinyLM):
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return self.label_smoothed_linear_loss(self.hidden(x), self.embed.weight, y)


def _lm_runs(args: argparse.Namespace) -> tuple[dict[str, Callable[[], float]], str]:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, args.vocab, (args.steps * args.batch, args.block + 1), generator=generator)
    loader = DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=args.batch)

    def fit(model_cls: type[TinyLM], callback: bool) -> Callable[[], float]:
        def run() -> float:
            model = model_cls(args.vocab, args.d_model, args.layers, args.block)
            return _fit_seconds(model, loader, callback, epochs=1) / args.steps

        return run

    runs = {
        "plain F.cross_entropy, loss logged": fit(PlainLM, False),
        "plain F.cross_entropy, same keys logged": fit(PlainLoggingLM, False),
        "ours: mixin + callback": fit(OursLM, True),
        "ours: mixin (fused linear loss) + callback": fit(OursFusedLM, True),
    }
    shape = f"{args.batch}×{args.block} tokens, d_model {args.d_model}, {args.layers} layers, {args.vocab} classes"
    return runs, f"transformer LM ({shape}), {args.steps} steps per fit"


# --- loss_normalization="step" -------------------------------------------------------------------------------------


class NormalizedLM(LabelSmoothingMixin, TinyLM):
    def __init__(self, normalization: str, *args: int) -> None:
        super().__init__(*args, loss_normalization=normalization)  # type: ignore[call-arg]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self.logits(x)
        return self.label_smoothed_loss(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


class _StepClock(L.Callback):
    """Seconds per optimizer step from the end of warm-up steps to the end of the fit, written by global rank 0."""

    def __init__(self, path: str, warmup: int) -> None:
        self.path, self.warmup, self.start = path, warmup, 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.warmup and not self.start:
            self.start = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            seconds = (time.perf_counter() - self.start) / (trainer.global_step - self.warmup)
            Path(self.path).write_text(str(seconds))


def _normalization_runs(args: argparse.Namespace) -> tuple[dict[str, Callable[[], float]], str]:
    accumulate, warmup = 2, 2
    generator = torch.Generator().manual_seed(0)
    sequences = (args.steps + warmup) * accumulate * args.batch * 2  # enough for 2 processes
    tokens = torch.randint(0, args.vocab, (sequences, args.block + 1), generator=generator)
    lengths = torch.randint(args.block // 4, args.block + 1, (sequences, 1), generator=generator)
    targets = tokens[:, 1:].masked_fill(torch.arange(args.block) >= lengths, -100)  # padded: uneven counts
    dataset = TensorDataset(tokens[:, :-1], targets)

    def fit(normalization: str, devices: int) -> Callable[[], float]:
        def run() -> float:
            with tempfile.TemporaryDirectory() as folder:
                path = str(Path(folder) / "seconds")
                trainer = L.Trainer(
                    accelerator="cpu",
                    devices=devices,
                    strategy="ddp_spawn" if devices > 1 else "auto",
                    max_steps=args.steps + warmup,
                    accumulate_grad_batches=accumulate,
                    limit_val_batches=0,
                    logger=False,
                    enable_checkpointing=False,
                    enable_progress_bar=False,
                    enable_model_summary=False,
                    callbacks=[LabelSmoothing(EPS), _StepClock(path, warmup)],
                )
                model = NormalizedLM(normalization, args.vocab, args.d_model, args.layers, args.block)
                try:
                    trainer.fit(model, DataLoader(dataset, batch_size=args.batch))
                except ProcessExitedException:
                    # a spawned process that aborts as it exits, after the fit ("terminate called without an active
                    # exception", now and then with torch 2.13's gloo here): the time of the finished fit stands
                    if not Path(path).exists():
                        raise
                return float(Path(path).read_text())

        return run

    runs = {
        f"{devices} process{'es' if devices > 1 else ''}, loss_normalization={normalization!r}": fit(
            normalization, devices
        )
        for devices in (1, 2)
        for normalization in ("batch", "step")
    }
    shape = f"{args.batch}×{args.block} tokens per micro-batch, {args.vocab} classes, 2 micro-batches per step"
    return runs, f"transformer LM, padded ({shape}), {args.steps} timed steps per fit"


def _compare_normalization(runs: dict[str, Callable[[], float]], title: str, repeats: int) -> None:
    for run in runs.values():  # warm-up of every path
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n{title}: median of {repeats} interleaved fits")
    print(f"{'run':<48} {'ms / step':>12} {'step / batch':>13}")
    names = list(median)
    for index, name in enumerate(names):
        ratio = f"{median[name] / median[names[index - 1]]:>13.3f}" if index % 2 else ""
        print(f"{name:<48} {median[name] * 1e3:>12.2f} {ratio}")


# --- timing -------------------------------------------------------------------------------------------------------


def _fit_seconds(model: L.LightningModule, loader: DataLoader, callback: bool, epochs: int) -> float:
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[LabelSmoothing(EPS)] if callback else [],
    )
    start = time.perf_counter()
    trainer.fit(model, loader)
    return (time.perf_counter() - start) / epochs


def _compare(runs: dict[str, Callable[[], float]], title: str, repeats: int, unit: str) -> None:
    for run in runs.values():  # warm-up of every path
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n{title}: median of {repeats} interleaved fits")
    print(f"{'module':<48} {unit:>12} {'ours / it':>10} {'fused / it':>10}")
    ours = median["ours: mixin + callback"]
    fused = median.get("ours: mixin (fused linear loss) + callback")
    for name, value in median.items():
        fused_cell = f"{fused / value:>10.3f}" if fused is not None else ""
        print(f"{name:<48} {value * 1e3:>12.2f} {ours / value:>10.3f} {fused_cell}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", nargs="+", choices=("digits", "lm", "normalization"), default=["digits", "lm"])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved fits of each module")
    parser.add_argument("--vocab", type=int, default=8192, help="lm: classes (vocabulary size)")
    parser.add_argument("--d-model", type=int, default=256, help="lm: model width")
    parser.add_argument("--layers", type=int, default=2, help="lm: transformer blocks")
    parser.add_argument("--block", type=int, default=128, help="lm: tokens per sequence")
    parser.add_argument("--batch", type=int, default=8, help="lm: sequences per batch")
    parser.add_argument("--steps", type=int, default=6, help="lm: optimizer steps per timed fit")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 CPU")
    if "digits" in args.workload:
        _compare(*_digits_runs(), args.repeats, "ms / epoch")
    if "lm" in args.workload:
        _compare(*_lm_runs(args), args.repeats, "ms / step")
    if "normalization" in args.workload:
        _compare_normalization(*_normalization_runs(args), args.repeats)


if __name__ == "__main__":
    main()
