"""Binary and multi-label tasks through the mixin and the callbacks: fits whose logged values equal recomputations
from the model's outputs (PyTorch's BCE, torchmetrics' BinaryCalibrationError and BinaryAccuracy), and epoch states
of two processes that sum to the whole data's."""

from __future__ import annotations

import csv
import json

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import Net, adaptive_ece_reference, classification_data, quiet_trainer
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import BinaryAccuracy, BinaryCalibrationError

from ls_lightning import BinaryLabelSmoothedCrossEntropy, LabelSmoothing
from ls_lightning.integration import ReliabilityDiagram, TemperatureScaling
from ls_lightning.metrics import fit_temperature
from ls_lightning.smoothing import Linear

NORMS = [("ece", "l1"), ("mce", "max"), ("rmsce", "l2")]
LABELS = {"binary": 1, "multilabel": 3}


def _labelled(task: str, n: int, seed: int) -> TensorDataset:
    """Features and labels that depend on them: 0/1 (N,) int labels for binary, (N, 3) float multi-hot otherwise."""
    return classification_data(n, 6, LABELS[task], seed=seed, signal=1.0, noise=0.8, task=task)


def _reference(model: Net, data: TensorDataset, eps: float) -> dict[str, float]:
    """Whole-data values from PyTorch and torchmetrics, all label positions pooled."""
    x, y = data.tensors
    with torch.no_grad():
        z = model(x).reshape(-1)
    t = y.reshape(-1).float()
    p = torch.sigmoid(z)
    acc = BinaryAccuracy()(p, t.long()).item()
    ref = {
        "loss": F.binary_cross_entropy_with_logits(z, t * (1 - eps) + eps / 2).item(),
        "h_pq": F.binary_cross_entropy_with_logits(z, t).item(),
        "h_uq": F.binary_cross_entropy_with_logits(z, torch.full_like(t, 0.5)).item(),
        "acc": acc,
        "brier": (p - t).square().mean().item(),
        "overconfidence": torch.maximum(p, 1 - p).mean().item() - acc,
    }
    for key, norm in NORMS:
        ref[key] = BinaryCalibrationError(n_bins=15, norm=norm)(p, t.long()).item()
    # equal-mass groups over σ(z) of the positions pooled, each averaging its labels: the binary form of the metric,
    # whose 10000 fine bins (its default resolution) merge by the middle of their mass
    ref["ece_adaptive"] = adaptive_ece_reference(p, t, 15, resolution=10_000)
    return ref


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_fit_logs_recomputed_values_and_scheduled_epsilon(tmp_path, task):
    torch.manual_seed(0)
    model = Net(num_classes=LABELS[task], task=task, lr=0.5)
    train, val = _labelled(task, 48, seed=0), _labelled(task, 37, seed=1)
    logger = CSVLogger(tmp_path, name="run", version=0)
    trainer = quiet_trainer(
        tmp_path, logger=logger, max_epochs=2, log_every_n_steps=1, callbacks=[LabelSmoothing(Linear(0.3, 0.0))]
    )
    trainer.fit(model, DataLoader(train, batch_size=16), DataLoader(val, batch_size=8))  # val: uneven last batch
    logger.save()

    total = trainer.global_step  # 6 steps: ε follows Linear(0.3, 0.0) at t = step / 6
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as file:
        logged = [float(row["train/epsilon"]) for row in csv.DictReader(file) if row.get("train/epsilon")]
    assert logged == pytest.approx([0.3 * (1 - step / total) for step in range(total)], abs=1e-7)

    # the last validation ran with the final weights and the last ε set
    expected = _reference(model, val, eps=model.label_smoothing)
    adaptive = expected.pop("ece_adaptive")
    for name, value in expected.items():
        assert trainer.callback_metrics[f"val/{name}"].item() == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert 0 <= trainer.callback_metrics["val/ece_adaptive"].item() <= 1
    # measured |logged - reference|: 2.8e-9 (binary), 3.8e-9 (multi-label), below the float32 rounding of the result
    assert trainer.callback_metrics["val/ece_adaptive"].item() == pytest.approx(adaptive, abs=3e-8)


@pytest.mark.parametrize("shape", [(9,), (9, 1)])
def test_binary_loss_outside_a_trainer_equals_pytorch(shape):
    model = Net(num_classes=1, task="binary")
    model.label_smoothing = 0.2
    z = torch.randn(shape, requires_grad=True)
    y = torch.randint(0, 2, (9,))  # (N,) labels for (N, 1) logits too
    ours = model.label_smoothed_loss(z, y)
    expected = F.binary_cross_entropy_with_logits(z.reshape(-1), y.float() * 0.8 + 0.1)
    torch.testing.assert_close(ours, expected)


def test_task_is_validated_and_shapes_are_checked():
    with pytest.raises(ValueError, match=r"`task` to be one of .*'multiclas'"):
        Net(num_classes=1, task="multiclas")
    with pytest.raises(ValueError, match="`task` to be one of"):
        LabelSmoothing(task="bin")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`logits` to have shape \(N,\) or \(N, 1\) for task='binary'"):
        Net(num_classes=3, task="binary").label_smoothed_loss(torch.randn(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"`logits` to have shape \(N, L\) for task='multilabel'"):
        Net(num_classes=1, task="multilabel").label_smoothed_loss(torch.randn(4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"`target` to hold values in \[0, 1\], but got 2"):
        Net(num_classes=2, task="multilabel").label_smoothed_loss(torch.randn(4, 2), torch.full((4, 2), 2))
    with pytest.raises(ValueError, match=r"z_loss=0.001, softcap=None"):
        Net(num_classes=1, task="binary").label_smoothed_loss(torch.randn(4), torch.zeros(4), z_loss=1e-3)
    with pytest.raises(ValueError, match=r"z_loss=0.0, softcap=30.0"):
        Net(num_classes=2, task="multilabel").label_smoothed_loss(torch.randn(4, 2), torch.zeros(4, 2), softcap=30.0)
    model = Net(num_classes=1, task="binary")
    model.label_smoothing_prior = torch.tensor([0.5, 0.5])
    with pytest.raises(ValueError, match="no label-smoothing prior for task='binary'"):
        model.label_smoothed_loss(torch.randn(4), torch.zeros(4))


def test_callback_sets_the_task_and_refuses_a_prior(tmp_path):
    model = Net(num_classes=1, task="multiclass", lr=0.5)
    trainer = quiet_trainer(tmp_path, max_steps=1, callbacks=[LabelSmoothing(0.1, task="binary")])
    trainer.fit(model, DataLoader(_labelled("binary", 8, seed=0), batch_size=8))  # (N, 1) logits: a binary loss
    assert model.ls_task == "binary" and "task='binary'" in repr(LabelSmoothing(task="binary"))
    model.trainer = None  # detached: the module's own setting, which the callback never wrote
    assert model.ls_task == "multiclass"
    callback = LabelSmoothing(0.1, prior="online", num_classes=2, task="binary")
    trainer = quiet_trainer(tmp_path, max_steps=1, callbacks=[callback])
    with pytest.raises(ValueError, match=r"prior='online'.*task is 'binary'"):
        trainer.fit(model, DataLoader(_labelled("binary", 8, seed=0), batch_size=8))


class PlainBinary(L.LightningModule):
    """No mixin: the callback-only route schedules the BinaryLabelSmoothedCrossEntropy it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(6, 1)
        self.criterion = BinaryLabelSmoothedCrossEntropy()
        self.seen: list[float] = []

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        self.seen.append(self.criterion.label_smoothing)
        return self.criterion(self.layer(batch[0]).squeeze(1), batch[1]).loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_callback_only_route_schedules_the_binary_loss_module(tmp_path):
    model = PlainBinary()
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[LabelSmoothing(Linear(0.4, 0.0))])
    trainer.fit(model, DataLoader(_labelled("binary", 32, seed=0), batch_size=8))
    assert model.seen == pytest.approx([0.4, 0.3, 0.2, 0.1])


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_temperature_scaling_fits_the_binary_nll_and_diagram_bins_are_binary(tmp_path, task):
    torch.manual_seed(0)
    model = Net(num_classes=LABELS[task], task=task)
    val = _labelled(task, 40, seed=2)
    with torch.no_grad():  # the labels' own features, sharpened: an informative, over-confident model (T > 1)
        model.layer.weight.copy_(6 * torch.eye(LABELS[task], 6))
        model.layer.bias.zero_()
    callbacks = [TemperatureScaling(), ReliabilityDiagram(dirpath=tmp_path)]
    trainer = quiet_trainer(tmp_path, callbacks=callbacks)
    trainer.validate(model, DataLoader(val, batch_size=8), verbose=False)

    x, y = val.tensors
    with torch.no_grad():
        z = model(x).reshape(-1).double()
    t = y.reshape(-1).double()

    def nll(temperature: float) -> float:
        return F.binary_cross_entropy_with_logits(z / temperature, t).item()

    temperature = trainer.callback_metrics["val/temperature"].item()
    assert temperature > 1
    assert nll(temperature) <= min(nll(temperature * 0.99), nll(temperature * 1.01))  # the binary NLL's minimum
    assert temperature == pytest.approx(fit_temperature(torch.stack([torch.zeros_like(z), z], 1), t.long()), rel=1e-5)
    p = torch.sigmoid(z / temperature).float()
    expected = BinaryCalibrationError(n_bins=15)(p, t.long()).item()
    assert trainer.callback_metrics["val/ece_ts"].item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    record = json.loads((tmp_path / "reliability.json").read_text())  # the diagram's bins, from the ECE state
    assert record["task"] == task and sum(record["counts"]) == t.numel()  # every label position one sample
    assert sum(record["correct_sums"]) == pytest.approx(t.sum().item())  # share of positives, not accuracy


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_epoch_states_of_two_processes_sum_to_the_whole_data(task):
    """Under DDP each metric's states are gathered and reduced (torchmetrics' public ``sync``): two "processes"
    holding uneven halves of the data, synced with a gather that returns both ranks' states, hold the states of the
    whole data, whose values equal torchmetrics' and PyTorch's (the binary states are sum-reduced, like the
    multi-class ones)."""
    from ls_lightning.integration.mixin import _new_metrics, _update_metrics
    from ls_lightning.losses import binary_label_smoothed_cross_entropy_with_stats

    torch.manual_seed(0)
    z, t = torch.randn(45, LABELS[task]) * 2, (torch.rand(45, LABELS[task]) < 0.4).float()
    ranks = [_new_metrics("val", 15, None, -100) for _ in range(2)]
    whole = _new_metrics("val", 15, None, -100)
    names = list(whole.keys())
    for metrics, rows in [(ranks[0], slice(0, 30)), (ranks[1], slice(30, 45)), (whole, slice(0, 45))]:
        for part_z, part_t in zip(z[rows].split(8), t[rows].split(8), strict=True):  # uneven: 30 and 15 samples
            loss, stats = binary_label_smoothed_cross_entropy_with_stats(part_z, part_t)
            _update_metrics(metrics, names, loss, stats, lambda mask: iter(()), step=False)
    for name in names:
        other = ranks[1][name].metric_state
        by_id = {id(state): other[key] for key, state in ranks[0][name].metric_state.items()}

        def gather(tensor: Tensor, group: object = None, by_id: dict = by_id) -> list[Tensor]:
            return [tensor, by_id[id(tensor)]]  # rank 0's view of all_gather

        ranks[0][name].sync(dist_sync_fn=gather, should_sync=True, distributed_available=lambda: True)
        for key, state in ranks[0][name].metric_state.items():
            torch.testing.assert_close(state, whole[name].metric_state[key], msg=f"{name}.{key}")
    values = {name: whole[name].compute().item() for name in names}
    p, y = torch.sigmoid(z).reshape(-1), t.reshape(-1)
    assert values["loss"] == pytest.approx(F.binary_cross_entropy_with_logits(z, t).item(), rel=1e-6)
    assert values["acc"] == pytest.approx(BinaryAccuracy()(p, y.long()).item(), rel=1e-6)
    for key, norm in NORMS:
        expected = BinaryCalibrationError(n_bins=15, norm=norm)(p, y.long()).item()
        assert values[key] == pytest.approx(expected, rel=1e-5, abs=1e-7), key
    assert values["brier"] == pytest.approx((p - y).square().mean().item(), rel=1e-6)
