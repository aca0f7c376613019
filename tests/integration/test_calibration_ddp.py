"""Calibration measures, diagrams and temperature scaling under DDP (2 CPU processes) equal a single process."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from helpers import IGNORE, Net, classification_data, quiet_trainer
from torch import Tensor
from torch.utils.data import DataLoader

from ls_lightning.integration import ReliabilityDiagram, TemperatureScaling
from ls_lightning.metrics import UnpaddedDistributedSampler

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*", "error:.*returning that bound"),
]
C = 6
KEYS = ("acc", "ece", "mce", "rmsce", "ece_adaptive", "brier", "overconfidence", "loss", "temperature", "ece_ts")


class ValidatedNet(Net):
    """Builds its validation loader in the worker process, where the unpadded sampler can learn its rank."""

    def val_dataloader(self) -> DataLoader:
        data = classification_data(51, 8, C, seed=1, signal=1.0)
        data.tensors[1][::7] = IGNORE  # ignored positions
        # 51 samples in batches of 5: rank 0 gets 26 (6 batches), rank 1 gets 25 (5 batches)
        sampler = UnpaddedDistributedSampler(data) if torch.distributed.is_initialized() else None
        return DataLoader(data, batch_size=5, sampler=sampler)


class RecordingTemperatureScaling(TemperatureScaling):
    """Writes each process's fitted values: every rank must log the same numbers."""

    def __init__(self, record_dir: str) -> None:
        super().__init__()
        self.record_dir = record_dir

    def _fit(self, n_bins: int) -> tuple[float, float] | None:
        result = super()._fit(n_bins)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        Path(self.record_dir, f"rank{rank}.json").write_text(json.dumps(result))
        return result


def _validate(tmp_path: Path, devices: int, state: dict[str, Tensor]) -> dict[str, float]:
    model = ValidatedNet(8, C)
    model.load_state_dict(state)
    callbacks = [ReliabilityDiagram(dirpath=tmp_path, dpi=40), RecordingTemperatureScaling(str(tmp_path))]
    assert [type(c) for c in pickle.loads(pickle.dumps(callbacks))] == [type(c) for c in callbacks]  # as ddp_spawn
    trainer = quiet_trainer(
        tmp_path,
        devices=devices,
        # forked, not spawned: the two ranks need not import Lightning again (ddp_spawn: test_ddp.py)
        strategy="ddp_fork" if devices > 1 else "auto",
        callbacks=callbacks,
    )
    (logged,) = trainer.validate(model, verbose=False)
    return {k: float(v) for k, v in logged.items()}


def test_two_processes_equal_one(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = ValidatedNet(8, C).state_dict()
    state["layer.weight"][:, :C] += torch.eye(C)  # informative logits: the labels follow x[:, :C]
    state = {key: 3 * value for key, value in state.items()}  # sharpened ×3: an over-confident model
    single = _validate(tmp_path / "single", 1, state)
    ddp = _validate(tmp_path / "ddp", 2, state)
    for key in KEYS:
        assert ddp[f"val/{key}"] == pytest.approx(single[f"val/{key}"], rel=1e-5, abs=1e-6), key
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] == pytest.approx([single["val/temperature"], single["val/ece_ts"]], rel=1e-5)
    assert 1.5 < single["val/temperature"] < 100  # the sharpened model is over-confident, the fit is interior
    curves = [json.loads((tmp_path / run / "reliability.json").read_text()) for run in ("single", "ddp")]
    for key in ("counts", "conf_sums", "correct_sums"):
        assert curves[1][key] == pytest.approx(curves[0][key], rel=1e-6), key
    assert sum(curves[1]["counts"]) == 51 - 8  # every sample once, ignored positions left out
