"""A LightningModule compiled the way Lightning documents (``trainer.fit(torch.compile(model))``) with the mixin and the
callback: it trains, logs the reference values, and a changing ε compiles no more graphs than a constant one."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

from ls_lightning import LabelSmoothing
from ls_lightning.cli.models import MLP
from ls_lightning.smoothing import Constant, Cosine, Schedule

pytestmark = pytest.mark.slow  # each fit compiles a few graphs: about 10 s on 2 cores


def _fit(schedule: Schedule, tmp_path) -> tuple[L.LightningModule, L.Trainer, int, list[float]]:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    x, y = torch.randn(96, 8), torch.randint(0, 4, (96,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    model = MLP(num_features=8, num_classes=4, hidden_sizes=[16])
    seen: list[float] = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            seen.append(float(trainer.callback_metrics["train/epsilon"]))

    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[LabelSmoothing(schedule), Spy()], num_sanity_val_steps=0)
    trainer.fit(torch.compile(model), loader, loader)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    return model, trainer, graphs, seen


def test_compiled_module_trains_logs_and_does_not_recompile_for_epsilon(tmp_path) -> None:
    schedule = Cosine(0.3, 0.0)
    model, trainer, graphs, seen = _fit(schedule, tmp_path)
    assert model._compiler_ctx is not None  # Lightning compiled the steps
    assert seen == pytest.approx([schedule(step / 12) for step in range(12)])
    x, y = trainer.val_dataloaders.dataset.tensors
    with torch.no_grad():
        logits = model(x)
    assert float(trainer.callback_metrics["val/h_pq"]) == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    eps = model.label_smoothing
    expected = F.cross_entropy(logits, y, label_smoothing=eps).item()
    assert float(trainer.callback_metrics["val/loss"]) == pytest.approx(expected, rel=1e-5)

    _, _, constant_graphs, _ = _fit(Constant(0.3), tmp_path)
    assert graphs == constant_graphs  # 12 values of ε, no graph of their own
