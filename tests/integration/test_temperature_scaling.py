"""The ``TemperatureScaling`` callback: the logged temperature against a grid search of ``F.cross_entropy`` on the
final weights' validation logits, and the ECE after scaling against torchmetrics."""

from __future__ import annotations

import pickle

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassCalibrationError
from trainers import quiet_trainer

from ls_lightning import LabelSmoothingMixin
from ls_lightning.integration import TemperatureScaling


def _nll_on_grid(logits: torch.Tensor, target: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    scaled = logits.double().unsqueeze(0) / grid.reshape(-1, 1, 1)  # (G, N, C)
    nll = F.cross_entropy(scaled.reshape(-1, logits.shape[1]), target.repeat(len(grid)), reduction="none")
    return nll.reshape(len(grid), -1).mean(1)


def _grid_search(logits: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Temperature of least ``F.cross_entropy`` on a coarse then a fine log grid, and the fine grid's step factor."""
    coarse = torch.logspace(-1.5, 1.5, 301, dtype=torch.float64)
    best = float(coarse[_nll_on_grid(logits, target, coarse).argmin()])
    fine = best * torch.logspace(-0.01, 0.01, 401, dtype=torch.float64)
    return float(fine[_nll_on_grid(logits, target, fine).argmin()]), float(fine[1] / fine[0])


IGNORE = -100


pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers.*", "ignore:.*log_every_n_steps.*", "ignore:.*LeafSpec.*"
)


class Net(LabelSmoothingMixin, L.LightningModule):
    def __init__(self, soft: bool = False) -> None:
        super().__init__()
        self.layer = nn.Linear(6, 5)
        self.soft = soft

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.label_smoothed_loss(self.layer(batch[0]), batch[1])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        target = F.one_hot(batch[1].clamp(min=0), 5).float() if self.soft else batch[1]
        self.label_smoothed_loss(self.layer(batch[0]), target)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1.0)


def _dataset(n: int, seed: int) -> TensorDataset:
    """Over-confident-prone data: labels follow the features only loosely; a tenth of the targets ignored."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g) * 3
    y = (x[:, :5] + torch.randn(n, 5, generator=g) * 4).argmax(1)
    y[torch.rand(n, generator=g) < 0.1] = IGNORE
    return TensorDataset(x, y)


def _trainer(tmp_path, callbacks: list, **kwargs) -> L.Trainer:
    return quiet_trainer(tmp_path, callbacks=callbacks, **{"max_epochs": 2, **kwargs})


def test_callback_logs_the_grid_search_temperature_and_torchmetrics_ece(tmp_path) -> None:
    torch.manual_seed(0)
    model, val = Net(), _dataset(203, 1)
    trainer = _trainer(tmp_path, [TemperatureScaling()])
    trainer.fit(model, DataLoader(_dataset(256, 0), batch_size=32), DataLoader(val, batch_size=16))  # uneven last
    temperature, ece_ts = (float(trainer.callback_metrics[k]) for k in ("val/temperature", "val/ece_ts"))
    # the reference uses the final weights only: the first epoch's logits must not be kept
    x, y = val.tensors
    keep = y != IGNORE
    with torch.no_grad():
        logits = model.layer(x[keep])
    best, step = _grid_search(logits, y[keep])
    assert best / step <= temperature <= best * step and temperature > 1.2  # this model is over-confident
    reference = MulticlassCalibrationError(num_classes=5, n_bins=15)((logits / temperature).softmax(-1), y[keep])
    assert ece_ts == pytest.approx(reference.item(), abs=1e-6)
    assert ece_ts < float(trainer.callback_metrics["val/ece"])
    assert getattr(model, "ls_val_observers", ()) == ()  # detached at teardown


def test_soft_targets_and_modules_without_the_mixin_are_skipped(tmp_path) -> None:
    loader = DataLoader(_dataset(40, 2), batch_size=8)
    with pytest.warns(UserWarning, match="skips validation batches with probability targets"):
        (logged,) = _trainer(tmp_path, [TemperatureScaling()]).validate(Net(soft=True), loader, verbose=False)
    assert "val/temperature" not in logged and "val/acc" in logged
    plain = L.LightningModule()
    with pytest.warns(UserWarning, match="LightningModule does not have: no temperature"):
        TemperatureScaling().setup(_trainer(tmp_path, []), plain, "validate")
    disabled = TemperatureScaling(enabled=False)
    (logged,) = _trainer(tmp_path, [disabled]).validate(Net(), loader, verbose=False)
    assert "val/temperature" not in logged
    assert pickle.loads(pickle.dumps(TemperatureScaling(n_bins=7))).n_bins == 7
    with pytest.raises(ValueError, match="`n_bins`"):
        TemperatureScaling(n_bins=0)
