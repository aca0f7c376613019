"""The ``ReliabilityDiagram`` callback: files written and readable, the state equal to a whole-data reference."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import Net, classification_data, quiet_trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassCalibrationError

from ls_lightning.integration import ReliabilityDiagram
from ls_lightning.integration.callbacks import reliability_diagram as diagrams_module
from ls_lightning.metrics import BinStats

C = 4
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers.*", "ignore:.*log_every_n_steps.*", "ignore:.*LeafSpec.*"
)


class Plain(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(5, C)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val/loss", nn.functional.cross_entropy(self.layer(batch[0]), batch[1]))


def _data(n: int = 45, seed: int = 0) -> TensorDataset:
    """Labels that follow the features: the argmax of 2·x[:, :C] + noise."""
    return classification_data(n, 5, C, seed=seed, signal=2.0)


def _reference_bins(model: Net, data: TensorDataset, n_bins: int = 15) -> BinStats:
    """Per-bin sums by hand: torchmetrics' binning (right-open bins, 1.0 in a slot of its own)."""
    with torch.no_grad():
        conf, pred = model(data.tensors[0]).softmax(-1).max(-1)
    edges = torch.linspace(0, 1, n_bins + 1)
    index = torch.bucketize(conf, edges, right=True) - 1
    hit = (pred == data.tensors[1]).double()
    sums = [
        torch.zeros(n_bins + 1, dtype=torch.float64).index_add_(0, index, v)
        for v in (torch.ones_like(hit), conf.double(), hit)
    ]
    return BinStats(*sums)


def test_fit_writes_each_epoch_and_the_final_validation(tmp_path: Path) -> None:
    matplotlib_image = pytest.importorskip("matplotlib.image")
    torch.manual_seed(0)
    model, train, val = Net(5, C, lr=0.5), DataLoader(_data(64, 1), batch_size=16), DataLoader(_data(), batch_size=8)
    quiet_trainer(
        tmp_path, callbacks=[ReliabilityDiagram(dirpath=tmp_path / "run", dpi=50)], max_epochs=2, num_sanity_val_steps=2
    ).fit(model, train, val)
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "reliability").iterdir()) == ["val_epoch0.png", "val_epoch1.png"]
    assert (run / "reliability_diagram.png").read_bytes() == (run / "reliability" / "val_epoch1.png").read_bytes()
    image = matplotlib_image.imread(run / "reliability_diagram.png")
    assert image.ndim == 3 and image.std() > 0.05
    record = json.loads((run / "reliability.json").read_text())
    assert (record["stage"], record["epoch"], record["global_step"], record["n_bins"]) == ("val", 1, 8, 15)
    stats, expected = BinStats.from_dict(record), _reference_bins(model, val.dataset)
    for ours, ref in zip(stats, expected, strict=True):
        torch.testing.assert_close(ours, ref)
    x, y = val.dataset.tensors
    with torch.no_grad():
        ece = MulticlassCalibrationError(num_classes=C, n_bins=15)(model(x).softmax(-1), y)
    assert stats.calibration_error().item() == pytest.approx(ece.item(), abs=1e-6)


def test_validate_writes_into_the_log_dir_by_default(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    callback = ReliabilityDiagram()
    quiet_trainer(tmp_path, callbacks=[callback]).validate(Net(5, C), DataLoader(_data(), batch_size=8), verbose=False)
    assert callback.dirpath == str(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"reliability", "reliability_diagram.png", "reliability.json"}


def test_tensorboard_receives_the_figure(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    trainer = quiet_trainer(
        tmp_path, callbacks=[ReliabilityDiagram(dirpath=tmp_path / "run", dpi=40)], max_epochs=2, logger=logger
    )
    trainer.fit(Net(5, C, lr=0.5), DataLoader(_data(32, 1), batch_size=16), DataLoader(_data(), batch_size=8))
    logger.experiment.flush()
    events = event_accumulator.EventAccumulator(str(tmp_path / "tb" / "version_0")).Reload()
    images = events.Images("val/reliability_diagram")
    assert [image.step for image in images] == [2, 4] and images[0].width > 100


def test_without_matplotlib_only_the_json_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diagrams_module, "_has_matplotlib", lambda: False)
    with pytest.warns(UserWarning, match=r"need matplotlib .*ls-lightning\[plot\]"):
        quiet_trainer(tmp_path, callbacks=[ReliabilityDiagram()]).validate(
            Net(5, C), DataLoader(_data(), batch_size=8), verbose=False
        )
    assert [p.name for p in tmp_path.iterdir()] == ["reliability.json"]


def test_a_module_without_the_mixin_is_skipped_with_a_warning(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="Plain does not have: no reliability diagram"):
        quiet_trainer(tmp_path, callbacks=[ReliabilityDiagram()]).validate(
            Plain(), DataLoader(_data(), batch_size=8), verbose=False
        )
    assert list(tmp_path.iterdir()) == []


def test_disabled_writes_nothing_and_the_callback_pickles(tmp_path: Path) -> None:
    callback = ReliabilityDiagram(enabled=False)
    quiet_trainer(tmp_path, callbacks=[callback]).validate(Net(5, C), DataLoader(_data(), batch_size=8), verbose=False)
    assert list(tmp_path.iterdir()) == []
    clone = pickle.loads(pickle.dumps(ReliabilityDiagram(tmp_path, dpi=80)))
    assert (clone.dirpath, clone.dpi, clone.enabled) == (str(tmp_path), 80, True)


def test_json_round_trip_and_bad_input() -> None:
    stats = BinStats(*(torch.rand(16, dtype=torch.float64) for _ in range(3)))
    data = json.loads(json.dumps(stats.to_dict()))
    assert data["edges"] == pytest.approx(torch.linspace(0, 1, 16).tolist()) and data["n_bins"] == 15
    for ours, ref in zip(BinStats.from_dict(data), stats, strict=True):
        torch.testing.assert_close(ours, ref)
    with pytest.raises(ValueError, match="counts, conf_sums and correct_sums"):
        BinStats.from_dict({"counts": [1, 2]})
    with pytest.raises(ValueError, match="one length"):
        BinStats.from_dict({"counts": [1, 2], "conf_sums": [1], "correct_sums": [1, 2]})
    with pytest.raises(ValueError, match="`dpi`"):
        ReliabilityDiagram(dpi=0)
