"""What the tests share: the tiny mixin module ``Net``, the quiet CPU trainer, the data generators, the runs several
tests read (made once per test session), and the references that tests of more than one layer compare against.

The folders of ``tests/`` mirror the package's layers (``smoothing``, ``losses``, ``metrics``, ``integration``,
``cli``) plus ``e2e`` for runs that start processes; this module sits at the top and is imported by its name
(``from helpers import Net``): pytest puts ``tests/`` on ``sys.path`` (``pythonpath`` in ``pyproject.toml``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from filelock import FileLock
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from ls_lightning import LabelSmoothingMixin

IGNORE = -100

# -------------------------------------------------------------------------------------------------------- trainers


def quiet_trainer(
    tmp_path: Path | str | None = None, *, callbacks: Sequence[L.Callback] = (), **overrides: Any
) -> L.Trainer:
    """``L.Trainer`` on the CPU writing nothing (into ``tmp_path`` if anything): no logger, progress bar or model
    summary, and checkpoints only when a ``ModelCheckpoint`` is among ``callbacks``; ``overrides`` win."""
    options: dict[str, Any] = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )
    if tmp_path is not None:
        options["default_root_dir"] = tmp_path
    return L.Trainer(**{**options, **overrides})


def run_once(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """The folder ``make(folder)`` filled, once per test session: under pytest-xdist the workers share it (the
    first makes it, the others wait for it), as xdist's documentation shows for session fixtures."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' temporary folders sit side by side in the session's
    folder = root / f"shared-{name}"
    with FileLock(f"{folder}.lock"):
        done = folder / ".done"
        if not done.exists():
            folder.mkdir(exist_ok=True)
            make(folder)
            done.touch()
    return folder


# ---------------------------------------------------------------------------------------------------------- module


class Net(LabelSmoothingMixin, L.LightningModule):
    """A user module: one linear layer from ``num_features`` to ``num_classes`` logits (one per label for the binary
    and multi-label tasks), whose training, validation and test steps return the mixin's loss of the batch.

    What the tests vary: the sizes; ``lr`` of its SGD (0 keeps the weights, so that epoch values can be compared
    with the whole data's); ``log_probs`` (log-probabilities instead of logits); ``linear`` (the steps take the fused
    linear loss of the layer on the inputs, which never builds the logits); ``z_loss`` and ``softcap`` of the loss;
    and the mixin's own arguments (``task``, ``label_smoothing``, ``prior``, ``log_metrics``, ...) through ``mixin``.
    ``forward`` gives the logits class-second ((N, C) or (N, C, T) from (N, T, num_features) inputs), as the
    references take them. ``num_classes`` is a hyper-parameter, where the prior callback finds C.
    """

    def __init__(
        self,
        num_features: int = 6,
        num_classes: int = 5,
        *,
        lr: float = 0.1,
        log_probs: bool = False,
        linear: bool = False,
        z_loss: float = 0.0,
        softcap: float | None = None,
        **mixin: Any,
    ) -> None:
        super().__init__(**mixin)
        self.save_hyperparameters(ignore=["prior"])
        self.layer = nn.Linear(num_features, num_classes)
        self.lr, self.log_probs, self.linear, self.z_loss, self.softcap = lr, log_probs, linear, z_loss, softcap

    def forward(self, x: Tensor) -> Tensor:
        z = self.layer(x)
        if z.ndim == 3:  # (N, T, C) -> (N, C, T)
            z = z.transpose(1, 2)
        return F.log_softmax(z, dim=1) if self.log_probs else z

    def loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        options: dict[str, Any] = {"z_loss": self.z_loss, "softcap": self.softcap}
        if self.linear:
            weight, bias = self.layer.weight, self.layer.bias
            return self.label_smoothed_linear_loss(x, weight, y, linear_bias=bias, **options)
        return self.label_smoothed_loss(self(x), y, **options)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.loss(batch)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.loss(batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.loss(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class StateProbe(L.Callback):
    """Writes into ``dirpath`` what a fit holds as a training batch starts: the module's weights and the optimizer's
    state at the fit's first batch and every ``every`` steps (``state_step<n>.pt``), and at the end a digest of each
    step's batch (``batches.json``). Added to an ``ls-train`` job with ``+callbacks.probe._target_=helpers.StateProbe``
    (``tests/`` on its ``PYTHONPATH``): a resumed run's first state is the one it restored. It changes nothing in the
    fit (no random numbers, no state of the module or the trainer)."""

    def __init__(self, dirpath: str, every: int) -> None:
        self.dirpath, self.every = Path(dirpath), every
        self.started = False
        self.batches: dict[int, str] = {}

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        self.batches[step] = hashlib.sha1(b"".join(t.cpu().numpy().tobytes() for t in batch)).hexdigest()
        if self.started and step % self.every:
            return
        self.started = True
        state = {"state_dict": pl_module.state_dict(), "optimizer": trainer.optimizers[0].state_dict()}
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / f"state_step{step}.pt"
        torch.save(state, f"{path}.tmp")
        os.replace(f"{path}.tmp", path)  # whole or absent, also in a run killed while writing

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        (self.dirpath / "batches.json").write_text(json.dumps(self.batches))


# ------------------------------------------------------------------------------------------------------------ data


def classification_data(
    n: int,
    num_features: int = 6,
    num_classes: int = 5,
    *,
    seed: int = 0,
    seq: int | None = None,
    scale: float = 1.0,
    signal: float | None = None,
    noise: float = 1.0,
    ignore: float = 0.0,
    task: Literal["multiclass", "binary", "multilabel"] = "multiclass",
) -> TensorDataset:
    """``n`` samples (of ``seq`` positions each, if given) of ``scale`` × standard normal features, and labels.

    Labels are random class indices, or with ``signal`` they follow the features: the argmax (multi-class) or the
    sign (binary, multi-label: one label per class) of ``signal · x[..., :num_classes] + noise · N(0, 1)``. A share
    ``ignore`` of the positions gets the label ``IGNORE``. Binary labels are (N,) integers, multi-label ones (N, L)
    floats. The same arguments give the same tensors.
    """
    g = torch.Generator().manual_seed(seed)
    shape = (n,) if seq is None else (n, seq)
    x = torch.randn(*shape, num_features, generator=g) * scale
    if signal is None:
        y = torch.randint(0, num_classes, shape, generator=g)
    else:
        score = signal * x[..., :num_classes] + noise * torch.randn(*shape, num_classes, generator=g)
        y = score.argmax(-1) if task == "multiclass" else (score > 0).long()
    if ignore > 0:
        y[torch.rand(shape, generator=g) < ignore] = IGNORE
    if task == "binary":
        y = y[..., 0]
    elif task == "multilabel":
        y = y.float()
    return TensorDataset(x, y)


def logits_and_target(
    shape: tuple[int, ...], ignored: bool | slice = True, dtype: torch.dtype = torch.float64, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """2 × standard normal logits of ``shape`` ((C,), (N, C) or (N, C, d1, ...)) that need a gradient, and class
    indices; ``ignored`` marks the flattened positions it selects (``True``: every fourth, from the second)."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2).to(dtype)
    classes, target_shape = (shape[1], (shape[0], *shape[2:])) if len(shape) > 1 else (shape[0], ())
    target = torch.randint(0, classes, target_shape, generator=gen)
    if ignored is not False and target.dim() > 0:
        target.view(-1)[slice(1, None, 4) if ignored is True else ignored] = IGNORE
    return x.requires_grad_(), target


def binary_logits_and_target(shape: tuple[int, ...], soft: bool = False, seed: int = 0) -> tuple[Tensor, Tensor]:
    """3 × standard normal float64 logits of ``shape`` that need a gradient, and targets of the same shape: uniform
    in [0, 1] (``soft``) or 0/1."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    target = torch.rand(shape, generator=gen, dtype=torch.float64)
    return x, target if soft else (target > 0.5).double()


def linear_inputs(
    shape: tuple[int, ...],
    num_classes: int,
    dim: int,
    *,
    bias: bool = True,
    weight_scale: float = 1.0,
    dtype: torch.dtype = torch.float64,
    ignored: bool = True,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """The inputs of the fused linear loss, each needing a gradient: hidden states (*shape, dim), a (num_classes,
    dim) weight of ``weight_scale`` × standard normal, a bias (or ``None``), and class indices of ``shape`` with every
    fourth position from the second ignored (when ``ignored``)."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(*shape, dim, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    w = (torch.randn(num_classes, dim, generator=gen, dtype=torch.float64) * weight_scale).to(dtype).requires_grad_()
    b = torch.randn(num_classes, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() if bias else None
    target = torch.randint(0, num_classes, shape, generator=gen)
    if ignored:
        target.view(-1)[1::4] = IGNORE
    return h, w, b, target


def grad_of_sum(output: Tensor, x: Tensor, retain_graph: bool = False) -> Tensor:
    """The gradient of ``output.sum()`` with respect to ``x``."""
    (grad,) = torch.autograd.grad(output.sum(), x, retain_graph=retain_graph)
    return grad


def assert_close_to_largest(actual: Tensor, expected: Tensor, tol: float) -> None:
    """Every element of ``actual`` within ``tol`` times the largest ``|expected|`` of ``expected``: the tolerance of an
    error measured relative to the tensor's largest element (half-precision gradients: small elements have large
    relative errors, but a wrong gradient is wrong on the large ones too)."""
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=tol * expected.abs().max().item())


# ------------------------------------------------------------------------------------------------------ references


def adaptive_ece_reference(
    confidence: Tensor | np.ndarray, hit: Tensor | np.ndarray, n_bins: int = 15, resolution: int | None = None
) -> float:
    """Equal-mass calibration error (Nixon et al., 2019) in plain NumPy float64: Σ_g n_g/N |mean hit_g − mean conf_g|.

    ``resolution=None``: the samples sorted by confidence and cut into ``n_bins`` groups of nearly equal size
    (``np.array_split``). With a ``resolution``: the groups that ``AdaptiveCalibrationError`` defines (its docstring
    and ``_adaptive_groups``): the confidences fall into ``resolution`` uniform fine bins ``[k/R, (k+1)/R)`` of
    torchmetrics' float32 edges (1.0 in a slot of its own); in confidence order, each fine bin goes whole to the group
    ``floor(G · (mass before it + half its own) / N)``. ``hit`` is top-label correctness, or for the binary form the
    label that the positive-class probability ``confidence`` is binned with.
    """
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    hits = np.asarray(hit, dtype=np.float64).reshape(-1)
    n = conf.size
    if resolution is None:
        order = np.argsort(conf, kind="stable")
        groups = [g for g in np.array_split(order, n_bins) if g.size]
        return float(sum(g.size / n * abs(hits[g].mean() - conf[g].mean()) for g in groups))
    edges = torch.linspace(0, 1, resolution + 1).numpy()  # torchmetrics' float32 edges (np.linspace's differ by an ulp)
    fine = np.searchsorted(edges, np.asarray(confidence, dtype=np.float32).reshape(-1), side="right") - 1
    fine = np.clip(fine, 0, resolution)
    counts = np.bincount(fine, minlength=resolution + 1).astype(np.float64)
    middle = np.cumsum(counts) - counts / 2
    group_of_fine = np.clip(np.floor(n_bins * middle / n), 0, n_bins - 1).astype(np.int64)
    group = group_of_fine[fine]
    total = 0.0
    for g in range(n_bins):
        members = group == g
        if members.any():
            total += members.sum() / n * abs(hits[members].mean() - conf[members].mean())
    return total


def online_prior_reference(logits: Tensor, target: Tensor, previous: Tensor) -> Tensor:
    """Online label smoothing by its definition: row c is the mean softmax of the samples of class c that the model
    classifies correctly; a class without such a sample keeps its ``previous`` row."""
    logits, target = logits.movedim(1, -1).reshape(-1, logits.shape[1]), target.reshape(-1)
    q = logits.double().softmax(-1)
    matrix = previous.clone().double()
    for c in range(logits.shape[1]):
        chosen = (target == c) & (q.argmax(-1) == c)
        if chosen.any():
            matrix[c] = q[chosen].mean(0)
    return matrix.float()


def _nll_on_grid(logits: Tensor, target: Tensor, grid: Tensor) -> Tensor:
    scaled = logits.double().unsqueeze(0) / grid.reshape(-1, 1, 1)  # (G, N, C)
    nll = F.cross_entropy(scaled.reshape(-1, logits.shape[1]), target.repeat(len(grid)), reduction="none")
    return nll.reshape(len(grid), -1).mean(1)


def temperature_by_grid_search(logits: Tensor, target: Tensor) -> tuple[float, float]:
    """Temperature of least ``F.cross_entropy`` on a coarse then a fine log grid, and the fine grid's step factor."""
    coarse = torch.logspace(-1.5, 1.5, 301, dtype=torch.float64)
    best = float(coarse[_nll_on_grid(logits, target, coarse).argmin()])
    fine = best * torch.logspace(-0.01, 0.01, 401, dtype=torch.float64)
    return float(fine[_nll_on_grid(logits, target, fine).argmin()]), float(fine[1] / fine[0])


def listed_options(message: str, group: str) -> set[str]:
    """The options Hydra's message lists under ``Available options in '<group>':``, one per tab-indented line."""
    lines = message.split(f"Available options in '{group}':\n", 1)[1].splitlines()
    return {line.strip() for line in lines[: next((i for i, x in enumerate(lines) if not x.startswith("\t")), None)]}


def assert_summary_is_the_logged_values(output: str, metrics_csv: Path) -> list[str]:
    """Every cell of the val/test table that ``ls-train`` and ``ls-eval`` print last in ``output`` equals, to its 4
    printed decimals, the value of the same column in the run's ``metrics.csv``: the last row holding ``val/...``
    values (the final validation) and the last holding ``test/...``. Returns the table's column names."""
    lines = output[output.rindex("\nstage ") + 1 :].splitlines()
    names = lines[0].split()[1:]
    with open(metrics_csv, newline="") as file:
        rows = list(csv.DictReader(file))
    for line, stage in zip(lines[1:3], ("val", "test"), strict=True):
        cells = line.split()
        assert cells[0] == stage and len(cells) == len(names) + 1, line
        logged = [row for row in rows if row.get(f"{stage}/{names[0]}")][-1]
        for name, cell in zip(names, cells[1:], strict=True):
            assert cell == f"{float(logged[f'{stage}/{name}']):.4f}", (stage, name, cell, logged[f"{stage}/{name}"])
    return names
