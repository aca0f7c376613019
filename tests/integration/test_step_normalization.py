"""``loss_normalization="step"``: the gradient of each optimizer step equals, in float64, the gradient of the mean loss
over all counted tokens of all micro-batches of the step on all processes (PyTorch's ``F.cross_entropy`` on the
concatenated batch, one process), with accumulation, uneven padding, class weights, ignore_index, the fused linear
loss, z-loss and gradient clipping; the logged values stay the global means."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import quiet_trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ls_lightning import LabelSmoothingMixin

C, D, T = 7, 5, 6  # classes, width, tokens per sequence
EPS = 0.1
SAMPLES = 12  # 2 processes × 3 micro-batches × 2 sequences
WEIGHT = torch.linspace(0.5, 2.0, C, dtype=torch.float64)


def _data(seed: int = 0) -> TensorDataset:
    """Sequences whose counted tokens differ from micro-batch to micro-batch: padding (-100) of 0 to T - 1 tokens."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(SAMPLES, T, D, generator=gen, dtype=torch.float64)
    y = torch.randint(0, C, (SAMPLES, T), generator=gen)
    lengths = torch.tensor([6, 1, 3, 6, 2, 5, 1, 4, 6, 2, 3, 1])  # rank 0 gets the even samples, rank 1 the odd ones
    y[torch.arange(T) >= lengths.unsqueeze(1)] = -100
    return TensorDataset(x, y)


class TokenModel(LabelSmoothingMixin, L.LightningModule):
    """A language-model-shaped module: (N, T, D) inputs, (N, T) targets with padding, a linear output layer."""

    def __init__(self, fused: bool, z_loss: float, weight: Tensor | None, normalization: str = "step") -> None:
        super().__init__(label_smoothing=EPS, class_weight=weight, loss_normalization=normalization)
        torch.manual_seed(0)
        self.body = nn.Linear(D, D)
        self.head = nn.Linear(D, C)
        self.fused, self.z_loss = fused, z_loss
        self.double()  # float64 in the main process too, where ddp_spawn hands the trained weights back

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        hidden = torch.tanh(self.body(x))
        if self.fused:
            head = dict(linear_bias=self.head.bias, z_loss=self.z_loss)
            return self.label_smoothed_linear_loss(hidden, self.head.weight, y, **head)
        return self.label_smoothed_loss(self.head(hidden).movedim(-1, 1), y, z_loss=self.z_loss)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1.0)  # new weights = old − gradient: the gradient, read back


def _reference_step(model: TokenModel, clip: float | None) -> dict[str, Tensor]:
    """One SGD step (lr 1) on the mean loss over the concatenated batch, written with PyTorch's own cross-entropy."""
    x, y = _data().tensors
    reference = TokenModel(model.fused, model.z_loss, model.ls_class_weight, "batch")
    logits = reference.head(torch.tanh(reference.body(x))).reshape(-1, C)
    weight = model.ls_class_weight
    loss = F.cross_entropy(logits, y.reshape(-1), weight=weight, ignore_index=-100, label_smoothing=EPS)
    valid = y.reshape(-1) != -100
    if model.z_loss:
        loss = loss + model.z_loss * torch.logsumexp(logits[valid], 1).square().mean()
    reference.zero_grad()
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(reference.parameters(), clip)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter -= parameter.grad
    return {name: value.detach().clone() for name, value in reference.state_dict().items()}, loss.item()


def _fit(model: TokenModel, devices: int, clip: float | None, tmp_path: Any) -> L.Trainer:
    trainer = quiet_trainer(
        tmp_path,
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        precision="64-true",
        max_steps=1,
        accumulate_grad_batches=SAMPLES // (2 * devices),  # 3 micro-batches of 2 sequences on each of 2 processes
        gradient_clip_val=clip,
        limit_val_batches=0,
    )
    trainer.fit(model, DataLoader(_data(), batch_size=2))
    return trainer


def _check(model: TokenModel, reference: dict[str, Tensor]) -> None:
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, reference[name], rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize(
    ("fused", "z_loss", "weight", "clip"),
    [
        (False, 0.0, WEIGHT, None),
        (False, 1e-3, None, 0.1),
        (True, 0.0, WEIGHT, 0.1),
        (True, 1e-3, None, None),
    ],
    ids=["logits-weights", "logits-zloss-clip", "linear-weights-clip", "linear-zloss"],
)
def test_accumulated_micro_batches_give_the_gradient_of_the_step_mean(fused, z_loss, weight, clip, tmp_path) -> None:
    model = TokenModel(fused, z_loss, weight)
    reference, _ = _reference_step(model, clip)
    _fit(model, 1, clip, tmp_path)  # one process: 6 micro-batches of 2 sequences
    _check(model, reference)


def test_the_default_batch_mean_weighs_micro_batches_equally(tmp_path) -> None:
    """What the option fixes: with each micro-batch's own mean, a batch of 2 tokens weighs as much as one of 12."""
    model = TokenModel(False, 0.0, None, "batch")
    reference, _ = _reference_step(model, None)
    _fit(model, 1, None, tmp_path)
    with pytest.raises(AssertionError):
        _check(model, reference)


@pytest.mark.slow
@pytest.mark.parametrize(("fused", "z_loss", "weight", "clip"), [(False, 0.0, WEIGHT, 0.1), (True, 1e-3, None, None)])
def test_two_processes_give_the_gradient_of_the_step_mean(fused, z_loss, weight, clip, tmp_path) -> None:
    model = TokenModel(fused, z_loss, weight)
    reference, loss = _reference_step(model, clip)
    trainer = _fit(model, 2, clip, tmp_path)
    _check(model, reference)  # the weights rank 0 ended with, as ddp_spawn hands them back
    logged = trainer.callback_metrics["train/loss_epoch"].item()
    assert logged == pytest.approx(loss, rel=1e-6)  # the global mean over the step's tokens (a float32 metric state)


def test_refusals_name_the_cause() -> None:
    with pytest.raises(ValueError, match=r"`loss_normalization` to be one of .*'token'"):
        TokenModel(False, 0.0, None, "token")
    model = TokenModel(False, 1e-3, WEIGHT)
    with pytest.raises(ValueError, match=r"z_loss=0.0` or no class weights with loss_normalization='step'"):
        model.label_smoothed_loss(torch.randn(2, C), torch.tensor([0, 1]), stage="train", z_loss=1e-3)
