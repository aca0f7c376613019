"""The ``TemperatureScaling`` callback: the logged temperature against a grid search of ``F.cross_entropy`` on the
final weights' validation logits, and the ECE after scaling against torchmetrics."""

from __future__ import annotations

import pickle

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE, Net, classification_data, quiet_trainer, temperature_by_grid_search
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassCalibrationError

from ls_lightning.integration import TemperatureScaling

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers.*", "ignore:.*log_every_n_steps.*", "ignore:.*LeafSpec.*"
)


class SoftValidation(Net):
    """Validates with one-hot probability targets, which temperature scaling cannot use."""

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.label_smoothed_loss(self(batch[0]), F.one_hot(batch[1].clamp(min=0), 5).float())


def _dataset(n: int, seed: int) -> TensorDataset:
    """Over-confident-prone data: labels follow the features only loosely; a tenth of the targets ignored."""
    return classification_data(n, 6, 5, seed=seed, scale=3.0, signal=1.0, noise=4.0, ignore=0.1)


def test_callback_logs_the_grid_search_temperature_and_torchmetrics_ece(tmp_path) -> None:
    torch.manual_seed(0)
    model, val = Net(lr=1.0), _dataset(203, 1)
    trainer = quiet_trainer(tmp_path, callbacks=[TemperatureScaling()], max_epochs=2)
    trainer.fit(model, DataLoader(_dataset(256, 0), batch_size=32), DataLoader(val, batch_size=16))  # uneven last
    temperature, ece_ts = (float(trainer.callback_metrics[k]) for k in ("val/temperature", "val/ece_ts"))
    # the reference uses the final weights only: the first epoch's logits must not be kept
    x, y = val.tensors
    keep = y != IGNORE
    with torch.no_grad():
        logits = model.layer(x[keep])
    best, step = temperature_by_grid_search(logits, y[keep])
    assert best / step <= temperature <= best * step and temperature > 1.2  # this model is over-confident
    reference = MulticlassCalibrationError(num_classes=5, n_bins=15)((logits / temperature).softmax(-1), y[keep])
    assert ece_ts == pytest.approx(reference.item(), abs=1e-6)
    assert ece_ts < float(trainer.callback_metrics["val/ece"])
    assert getattr(model, "ls_val_observers", ()) == ()  # detached at teardown


def test_soft_targets_and_modules_without_the_mixin_are_skipped(tmp_path) -> None:
    loader = DataLoader(_dataset(40, 2), batch_size=8)
    with pytest.warns(UserWarning, match="skips validation batches with probability targets"):
        (logged,) = quiet_trainer(tmp_path, callbacks=[TemperatureScaling()]).validate(
            SoftValidation(lr=1.0), loader, verbose=False
        )
    assert "val/temperature" not in logged and "val/acc" in logged
    plain = L.LightningModule()
    with pytest.warns(UserWarning, match="LightningModule does not have: no temperature"):
        TemperatureScaling().setup(quiet_trainer(tmp_path), plain, "validate")
    disabled = TemperatureScaling(enabled=False)
    (logged,) = quiet_trainer(tmp_path, callbacks=[disabled]).validate(Net(lr=1.0), loader, verbose=False)
    assert "val/temperature" not in logged
    assert pickle.loads(pickle.dumps(TemperatureScaling(n_bins=7))).n_bins == 7
    with pytest.raises(ValueError, match="`n_bins`"):
        TemperatureScaling(n_bins=0)
