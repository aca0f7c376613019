"""Dropping the plugin into a module shaped like lightning-hydra-template's ``MNISTLitModule``.

That module logs its own ``{stage}/loss`` and ``{stage}/acc`` (MeanMetric, Accuracy) from a shared ``model_step``, and
``val/acc_best`` (MaxMetric). The references are the same module left as it is, with PyTorch's
``nn.CrossEntropyLoss(label_smoothing=ε)``: the two-line change (mixin first among the bases, ``label_smoothed_loss``
instead of the criterion) must leave the module's own keys at the values that module logs, and add ours.
Classes are at module level so that ``ddp_spawn`` can pickle them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import quiet_trainer, run_once
from lightning.pytorch.callbacks import Callback
from template_module import TemplateLitModule
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ls_lightning import LabelSmoothing, LabelSmoothingMixin
from ls_lightning.smoothing import Cosine

C, FEATURES, EPS = 5, 6, 0.1
OWN_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/loss", "test/acc")


def _sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05)


class LitModule(TemplateLitModule):
    """The template's module (tests/template_module.py), as a user has it, with a linear net instead of its MLP."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        torch.manual_seed(0)
        super().__init__(nn.Linear(FEATURES, C), _sgd, num_classes=C, label_smoothing=label_smoothing)


class SmoothedLitModule(LabelSmoothingMixin, LitModule):  # change 1: the mixin first among the bases
    def model_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        x, y = batch
        logits = self.forward(x)
        loss = self.label_smoothed_loss(logits, y)  # change 2: instead of self.criterion(logits, y)
        return loss, logits.argmax(1), y


def _loaders() -> dict[str, DataLoader]:
    generator = torch.Generator().manual_seed(1)
    loaders = {}
    for name, size in (("train", 40), ("val", 23), ("test", 19)):  # uneven batches: MeanMetric ≠ count-weighted
        x, y = torch.randn(size, FEATURES, generator=generator), torch.randint(0, C, (size,), generator=generator)
        loaders[name] = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)
    return loaders


class Record(Callback):
    """Writes the callback metrics after fit+validate and after test to ``path`` (rank 0), as floats."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _dump(self, trainer: L.Trainer, name: str) -> None:
        if trainer.global_rank != 0:
            return
        seen = json.loads(self.path.read_text()) if self.path.exists() else {}
        seen[name] = {key: float(value) for key, value in trainer.callback_metrics.items()}
        self.path.write_text(json.dumps(seen))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._dump(trainer, "fit")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._dump(trainer, "test")


def _run(
    module: L.LightningModule, tmp_path: Path, name: str, test_strategy: str | None = None, **trainer_args: Any
) -> dict[str, dict[str, float]]:
    """fit, then test (with a Trainer of its own when ``test_strategy`` is given); the callback metrics of each."""
    path = tmp_path / f"{name}.json"
    callbacks = [Record(path), *trainer_args.pop("callbacks", [])]
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=callbacks, deterministic=True, **trainer_args)
    loaders = _loaders()
    trainer.fit(module, loaders["train"], loaders["val"])
    if test_strategy is not None:
        trainer_args["strategy"] = test_strategy
        trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=callbacks, deterministic=True, **trainer_args)
    trainer.test(module, loaders["test"], verbose=False)
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float]]:
    root = run_once(
        tmp_path_factory, "test_existing_project", lambda out: _run(LitModule(label_smoothing=EPS), out, "plain")
    )
    return json.loads((root / "plain.json").read_text())


def _check_own_keys(ours: dict[str, dict[str, float]], plain: dict[str, dict[str, float]]) -> None:
    for phase in ("fit", "test"):
        for key in OWN_KEYS:
            if key in plain[phase]:
                assert ours[phase][key] == pytest.approx(plain[phase][key], rel=1e-5, abs=1e-6), (phase, key)
    assert {key for phase in plain.values() for key in phase} >= set(OWN_KEYS)


def test_two_line_change_keeps_the_modules_keys_and_adds_ours(tmp_path: Path, plain_run: dict) -> None:
    module = SmoothedLitModule()
    ours = _run(module, tmp_path, "ours", callbacks=[LabelSmoothing(EPS)])
    _check_own_keys(ours, plain_run)
    # ours are there too, with the values of the whole split (count-weighted), against PyTorch's loss on it
    for key in ("train/h_pq", "train/h_uq", "train/ece", "train/epsilon", "val/h_pq", "val/h_uq", "val/ece", "val/mce"):
        assert key in ours["fit"], key
    for key in ("test/h_pq", "test/ece", "test/brier", "test/overconfidence", "test/ece_adaptive"):
        assert key in ours["test"], key
    x, y = _loaders()["test"].dataset.tensors
    with torch.no_grad():
        logits = module(x)
    assert ours["test"]["test/h_pq"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    uniform = -logits.log_softmax(1).mean(1).mean().item()
    assert ours["test"]["test/h_uq"] == pytest.approx(uniform, rel=1e-5)


def test_a_prefix_logs_ours_beside_the_modules_own(tmp_path: Path, plain_run: dict) -> None:
    ours = _run(SmoothedLitModule(), tmp_path, "prefixed", callbacks=[LabelSmoothing(EPS, log_prefix="ls/")])
    _check_own_keys(ours, plain_run)
    assert "train/ls/epsilon" in ours["fit"] and "train/epsilon" not in ours["fit"]
    # test/ls/loss is ours (count-weighted over the split); test/loss stays the module's mean of batch means
    assert ours["test"]["test/ls/loss"] != pytest.approx(ours["test"]["test/loss"], rel=1e-7)
    assert "test/ls/acc" in ours["test"] and "val/ls/ece" in ours["fit"]


def test_log_metrics_chooses_the_groups(tmp_path: Path) -> None:
    ours = _run(SmoothedLitModule(), tmp_path, "groups", callbacks=[LabelSmoothing(EPS, log_metrics=["terms"])])
    fit = ours["fit"]
    assert "val/h_pq" in fit and "train/h_uq" in fit
    assert not {"val/ece", "train/ece", "val/brier", "val/perplexity"} & set(fit)


def test_callback_only_schedules_the_modules_criterion(tmp_path: Path) -> None:
    seen: list[tuple[int, float]] = []

    class Spy(Callback):
        def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
            seen.append((trainer.global_step - 1, module.criterion.label_smoothing))

    schedule = Cosine(0.2, 0.0)
    ours = _run(LitModule(), tmp_path, "callback_only", callbacks=[LabelSmoothing(schedule), Spy()])
    total = 2 * 5  # 2 epochs of 5 batches
    assert [eps for _, eps in seen] == pytest.approx([schedule(step / total) for step, _ in seen])
    assert ours["fit"]["train/epsilon"] == pytest.approx(schedule(9 / total))
    assert set(OWN_KEYS) <= set(ours["fit"]) | set(ours["test"])


@pytest.mark.slow
def test_two_line_change_under_ddp_spawn(tmp_path: Path) -> None:
    """fit on spawned ranks (the module and the callbacks pickled), then test on two forked ranks: a ``trainer.test``
    under ``ddp_spawn`` would spawn two more processes, each importing Lightning again."""
    ddp = dict(strategy="ddp_spawn", devices=2, use_distributed_sampler=True, test_strategy="ddp_fork")
    plain = _run(LitModule(label_smoothing=EPS), tmp_path, "plain_ddp", **ddp)
    ours = _run(SmoothedLitModule(), tmp_path, "ours_ddp", callbacks=[LabelSmoothing(EPS)], **ddp)
    _check_own_keys(ours, plain)
    assert {"train/h_pq", "val/h_pq", "val/ece", "train/epsilon"} <= set(ours["fit"])
    assert {"test/h_pq", "test/ece"} <= set(ours["test"])


def test_the_callbacks_entry_to_copy_into_a_hydra_project(tmp_path: Path) -> None:
    """``examples/existing_project/label_smoothing.yaml`` instantiated the way lightning-hydra-template's
    ``instantiate_callbacks`` does (every entry with a ``_target_``), on the template's module: callback-only route."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = OmegaConf.load(Path(__file__).parents[2] / "examples" / "existing_project" / "label_smoothing.yaml")
    callbacks = [instantiate(entry) for entry in config.values() if "_target_" in entry]
    assert len(callbacks) == 1 and isinstance(callbacks[0], LabelSmoothing)
    assert callbacks[0].schedule == Cosine(0.1, 0.0)
    ours = _run(LitModule(), tmp_path, "yaml", callbacks=callbacks)
    assert ours["fit"]["train/epsilon"] == pytest.approx(Cosine(0.1, 0.0)(9 / 10))
