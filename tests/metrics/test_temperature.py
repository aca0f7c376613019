"""Temperature scaling, and its callback, against a grid search of F.cross_entropy, a closed form and torchmetrics."""

from __future__ import annotations

import math
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
from ls_lightning.metrics import fit_temperature


def _generated(n: int, classes: int, sharpen: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(z), logits reported as sharpen·z: calibrated at T = sharpen."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=g, dtype=torch.float64) * 2
    target = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    return (sharpen * z).float(), target


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


@pytest.mark.parametrize(("sharpen", "seed"), [(2.5, 0), (1.6, 1), (0.5, 2)])
def test_matches_grid_search(sharpen: float, seed: int) -> None:
    logits, target = _generated(4000, 5, sharpen, seed)
    fitted = fit_temperature(logits, target)
    best, step = _grid_search(logits, target)
    assert best / step <= fitted <= best * step
    assert (fitted > 1) == (sharpen > 1)  # over-confident logits need T > 1, under-confident T < 1
    nll = F.cross_entropy(logits.double() / fitted, target)
    assert nll <= F.cross_entropy(logits.double() / best, target) + 1e-12


def test_closed_form_optimum() -> None:
    # Logits (a, 0) everywhere, class 0 right in a fraction q: the optimum has sigmoid(a / T) = q.
    a, q, n = 3.0, 0.7, 1000
    logits = torch.tensor([[a, 0.0]]).repeat(n, 1)
    target = (torch.arange(n) >= int(q * n)).long()
    assert fit_temperature(logits, target) == pytest.approx(a / math.log(q / (1 - q)), rel=1e-9)


def test_ignore_index_and_spatial_dims() -> None:
    logits, target = _generated(600, 4, 2.0, 3)
    ignored = target.clone()
    ignored[::5] = -1
    keep = ignored != -1
    expected = fit_temperature(logits[keep], target[keep])
    spatial = logits.reshape(20, 30, 4).movedim(-1, 1)  # (N, C, d)
    assert fit_temperature(spatial, ignored.reshape(20, 30), ignore_index=-1) == pytest.approx(expected, rel=1e-9)


def test_deterministic_and_precision_independent() -> None:
    logits, target = _generated(1000, 6, 1.8, 4)
    first = fit_temperature(logits, target)
    assert fit_temperature(logits, target) == first
    assert fit_temperature(logits.double(), target) == pytest.approx(first, rel=1e-9)


def test_optimum_outside_bounds_warns() -> None:
    separable = torch.tensor([[5.0, 0.0], [0.0, 5.0]]).repeat(10, 1)
    with pytest.warns(UserWarning, match="still decreases at T = 0.01"):
        assert fit_temperature(separable, torch.tensor([0, 1]).repeat(10)) == 0.01
    uninformative = torch.zeros(10, 3)
    with pytest.warns(UserWarning, match="does not decrease below T = 100.0"):
        assert fit_temperature(uninformative, torch.arange(10) % 3) == 100.0


@pytest.mark.parametrize(
    ("logits", "target", "kwargs", "match"),
    [
        (torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), {}, "`logits`"),
        (torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), {}, "`target`"),
        (torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]), {}, r"class indices in \[0, 3\)"),
        (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), {"bounds": (2.0, 1.0)}, "`bounds`"),
        (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), {"max_iter": 0}, "`max_iter`"),
        (torch.zeros(2, 3), torch.full((2,), -100), {"ignore_index": -100}, "not `ignore_index`"),
    ],
)
def test_validation(logits: torch.Tensor, target: torch.Tensor, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_temperature(logits, target, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# The TemperatureScaling callback
# ----------------------------------------------------------------------------------------------------------------

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
