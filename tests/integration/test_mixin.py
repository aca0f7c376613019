"""LabelSmoothingMixin: the loss equals PyTorch's, and every logged epoch value equals a whole-data reference."""

from __future__ import annotations

import math
import pickle

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import IGNORE, Net, adaptive_ece_reference, classification_data, quiet_trainer
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassCalibrationError

from ls_lightning import LabelSmoothing, LabelSmoothingMixin
from ls_lightning.integration import DEFAULT_LOG_METRICS

C = 5  # the classes of helpers.Net


def _reference(model: Net, data: TensorDataset, eps: float) -> dict[str, float]:
    """Whole-data values from PyTorch and torchmetrics: what the epoch aggregates must equal."""
    x, y = data.tensors
    with torch.no_grad():
        z = model(x)
    z_flat = z.movedim(1, -1).reshape(-1, C) if z.ndim == 3 else z
    y_flat = y.reshape(-1)
    keep = y_flat != IGNORE
    uniform = torch.full((int(keep.sum()), C), 1.0 / C)
    q, labels = z_flat[keep].softmax(-1), y_flat[keep]
    ref = {
        "loss": F.cross_entropy(z, y, label_smoothing=eps, ignore_index=IGNORE).item(),
        "h_pq": F.cross_entropy(z, y, ignore_index=IGNORE).item(),
        "h_uq": F.cross_entropy(z_flat[keep], uniform).item(),
        "acc": (q.argmax(-1) == labels).float().mean().item(),
        "brier": ((q - F.one_hot(labels, C)) ** 2).sum(-1).mean().item(),
        "overconfidence": (q.max(-1).values.mean() - (q.argmax(-1) == labels).float().mean()).item(),
    }
    for key, norm in (("ece", "l1"), ("mce", "max"), ("rmsce", "l2")):
        ref[key] = MulticlassCalibrationError(num_classes=C, n_bins=15, norm=norm)(q, labels).item()
    return ref


def _exact_adaptive_ece(model: Net, data: TensorDataset, n_bins: int = 15) -> float:
    """Equal-mass ECE (Nixon et al. 2019) of the model's top-label confidences: sorted, cut into n_bins groups of
    (nearly) equal size."""
    x, y = data.tensors
    with torch.no_grad():
        z = model(x)
    z_flat = z.movedim(1, -1).reshape(-1, C) if z.ndim == 3 else z
    keep = y.reshape(-1) != IGNORE
    conf, pred = z_flat[keep].softmax(-1).max(-1)
    return adaptive_ece_reference(conf, pred == y.reshape(-1)[keep], n_bins)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_loss_equals_pytorch_outside_a_trainer(eps: float) -> None:
    model = Net()
    model.label_smoothing = eps
    x, y = classification_data(17).tensors
    logits = model(x)
    ours = model.label_smoothed_loss(logits, y)
    ref = F.cross_entropy(logits, y, label_smoothing=eps)
    torch.testing.assert_close(ours, ref)
    (g_ours,) = torch.autograd.grad(ours, model.layer.weight, retain_graph=True)
    (g_ref,) = torch.autograd.grad(ref, model.layer.weight)
    torch.testing.assert_close(g_ours, g_ref)


@pytest.mark.parametrize(
    ("seq", "ignore_frac", "log_probs", "stage"),
    [(None, 0.0, False, "validate"), (None, 0.2, True, "test"), (4, 0.3, False, "validate"), (3, 0.0, True, "test")],
)
def test_epoch_values_equal_whole_data_reference(tmp_path, seq, ignore_frac, log_probs, stage) -> None:
    torch.manual_seed(0)
    model = Net(log_probs=log_probs)
    model.label_smoothing = 0.2
    data = classification_data(53, seq=seq, ignore=ignore_frac)
    loader = DataLoader(data, batch_size=8)  # uneven: 6 batches of 8 and one of 5
    prefix = "val" if stage == "validate" else "test"
    trainer = quiet_trainer(tmp_path)
    (logged,) = getattr(trainer, stage)(model, loader, verbose=False)
    expected = _reference(model, data, eps=0.2)
    for name, value in expected.items():
        assert logged[f"{prefix}/{name}"] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_loss_terms_add_each_batch_weighted_and_reset_drops_them() -> None:
    from ls_lightning.integration.mixin import _new_metrics, _update_metrics
    from ls_lightning.losses import label_smoothed_cross_entropy_with_stats

    torch.manual_seed(0)
    batches = [(torch.randn(n, C), torch.randint(0, C, (n,))) for n in (6, 3, 7)]
    metrics = _new_metrics("val", n_bins=15, num_classes=C, ignore_index=-100)
    names = list(metrics.keys())
    for logits, target in batches:
        loss, stats = label_smoothed_cross_entropy_with_stats(logits, target, 0.2)
        parts = lambda mask, logits=logits, target=target: iter(((logits, target, mask),))  # noqa: E731
        _update_metrics(metrics, names, loss, stats, parts, step=False)
    unused = ("brier", "z_loss", "margin_penalty")  # not terms of label smoothing's result or of these calls
    assert all(metrics[name].update_count == 3 for name in names if name not in unused)
    assert metrics["z_loss"].update_count == 0  # no z-loss in these calls

    logits, target = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    expected = [F.cross_entropy(logits, target, label_smoothing=0.2), F.cross_entropy(logits, target)]
    computed = torch.stack([metrics["loss"].compute(), metrics["h_pq"].compute()]).float()
    torch.testing.assert_close(computed, torch.stack(expected))
    reference = MulticlassCalibrationError(num_classes=C, n_bins=15)(logits.softmax(-1), target)
    torch.testing.assert_close(metrics["ece"].compute().float(), reference)

    metrics["loss"].reset()  # what Lightning does at the epoch's end
    assert metrics["loss"].update_count == 0 and metrics["loss"].weight_sum.item() == 0


def test_training_logs_every_key_and_epsilon(tmp_path) -> None:
    torch.manual_seed(0)
    model = Net()
    logger = CSVLogger(tmp_path, name="run", version=0)
    loader = DataLoader(classification_data(40), batch_size=8)
    trainer = quiet_trainer(
        tmp_path,
        logger=logger,
        max_epochs=2,
        log_every_n_steps=1,
        callbacks=[LabelSmoothing(0.3)],
    )
    trainer.fit(model, loader, DataLoader(classification_data(21, seed=1), batch_size=8))
    logger.save()
    header = (tmp_path / "run" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    for stage in ("train", "val"):
        for name in ("loss", "h_pq", "h_uq", "acc", "ece"):
            assert any(col.startswith(f"{stage}/{name}") for col in header), (stage, name, header)
    assert {"train/loss_step", "train/loss_epoch", "train/epsilon"} <= set(header)
    assert not any(col.startswith("val/epsilon") for col in header)
    assert model.label_smoothing == 0.3


def test_step_values_reach_the_loggers_on_their_steps(tmp_path) -> None:
    """Step values (h_pq, h_uq, ε) are handed to Lightning only on the steps its loggers write: the logger must see
    at each of them the values of that very batch, and the progress bar must see the loss of every step."""
    import csv

    from ls_lightning.smoothing import Linear

    class ProgressBarSpy(L.Callback):
        def __init__(self) -> None:
            self.seen: list[float | None] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.seen.append(trainer.progress_bar_metrics.get("train/loss_step"))  # the previous step's value

    torch.manual_seed(0)
    model, spy = Net(lr=0.0), ProgressBarSpy()
    data = classification_data(40, ignore=0.2)
    x, y = data.tensors
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 40, 8)]
    logger = CSVLogger(tmp_path, name="run", version=0)
    callback = LabelSmoothing(Linear(0.3, 0.0), total_steps=10)
    trainer = quiet_trainer(tmp_path, logger=logger, max_epochs=2, log_every_n_steps=3, callbacks=[callback, spy])
    trainer.fit(model, DataLoader(data, batch_size=8))
    logger.save()

    def reference(step: int, eps: float) -> dict[str, float]:
        bx, by = batches[step % 5]
        with torch.no_grad():
            z = model(bx)
        keep = by != IGNORE
        return {
            "loss": F.cross_entropy(z, by, label_smoothing=eps, ignore_index=IGNORE).item(),
            "h_pq": F.cross_entropy(z, by, ignore_index=IGNORE).item(),
            "h_uq": -z[keep].log_softmax(-1).mean().item(),
        }

    with open(tmp_path / "run" / "version_0" / "metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row.get("train/h_pq_step")]
    assert [int(row["step"]) for row in rows] == [2, 5, 8]  # log_every_n_steps=3 over 10 steps
    for row in rows:
        step = int(row["step"])
        eps = 0.3 * (1 - step / 10)
        assert float(row["train/epsilon"]) == pytest.approx(eps, abs=1e-7)
        for name, value in reference(step, eps).items():
            assert float(row[f"train/{name}_step"]) == pytest.approx(value, rel=1e-5), (step, name)
    expected_bar = [reference(step, 0.3 * (1 - step / 10))["loss"] for step in range(9)]
    assert spy.seen[0] is None and spy.seen[1:] == pytest.approx(expected_bar, rel=1e-5)


def test_callback_metrics_hold_each_steps_values(tmp_path) -> None:
    """After every training step, as after a per-step ``self.log``: ε of that step and the step's loss terms, also
    between the loggers' steps (Lightning's default log_every_n_steps=50 over 8 steps)."""
    from ls_lightning.smoothing import Linear

    class Spy(L.Callback):
        def __init__(self) -> None:
            self.expected: list[dict[str, float]] = []
            self.seen: list[dict[str, float]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            x, y = batch
            with torch.no_grad():
                z = pl_module(x)
            eps = 0.3 * (1 - trainer.global_step / 8)
            self.expected.append(
                {
                    "train/epsilon": eps,
                    "train/loss_step": F.cross_entropy(z, y, label_smoothing=eps).item(),
                    "train/h_pq_step": F.cross_entropy(z, y).item(),
                    "train/h_uq_step": -z.log_softmax(-1).mean().item(),
                }
            )

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.seen.append({key: float(trainer.callback_metrics[key]) for key in self.expected[-1]})

    torch.manual_seed(0)
    spy = Spy()
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[LabelSmoothing(Linear(0.3, 0.0), total_steps=8), spy])
    trainer.fit(Net(), DataLoader(classification_data(32), batch_size=8))
    assert len(spy.seen) == 8
    for seen, expected in zip(spy.seen, spy.expected, strict=True):
        assert seen == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_log_options_are_validated() -> None:
    class Configured(LabelSmoothingMixin, L.LightningModule):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)

    model = Configured(log_metrics=["terms", "perplexity"], log_prefix="ls_")
    assert model.ls_log_metrics == ("terms", "perplexity") and model.ls_log_prefix == "ls_"
    with pytest.raises(ValueError, match=r"`log_metrics`.*'ece'"):
        Configured(log_metrics=["loss", "ece"])
    with pytest.raises(TypeError, match=r"`log_metrics`.*'loss'"):
        Configured(log_metrics="loss")
    with pytest.raises(TypeError, match=r"`log_prefix`.*3"):
        Configured(log_prefix=3)
    with pytest.raises(ValueError, match=r"`log_metrics`.*'acc '"):
        LabelSmoothing(0.1, log_metrics=["acc "])


def test_perplexity_is_the_exponential_of_the_epoch_h_pq(tmp_path) -> None:
    torch.manual_seed(0)
    model = Net()
    model.ls_log_metrics = ("terms", "perplexity")
    data = classification_data(7)
    (logged,) = quiet_trainer(tmp_path).validate(model, DataLoader(data, batch_size=8), verbose=False)
    x, y = data.tensors
    with torch.no_grad():
        reference = F.cross_entropy(model(x), y).exp().item()
    assert logged["val/perplexity"] == pytest.approx(reference, rel=1e-5)
    assert "val/ece" not in logged and "val/loss" not in logged


def test_train_epoch_values_are_count_weighted(tmp_path) -> None:
    """With lr=0 the weights never change, so the epoch aggregate must equal the whole-data value."""

    torch.manual_seed(0)
    model = Net(lr=0.0)
    data = classification_data(45, ignore=0.25)
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[LabelSmoothing(0.1)], num_sanity_val_steps=0)
    trainer.fit(model, DataLoader(data, batch_size=8))
    expected = _reference(model, data, eps=0.1)
    for name in ("loss", "h_pq", "h_uq", "acc", "ece"):
        assert trainer.callback_metrics[f"train/{name}"].item() == pytest.approx(expected[name], rel=1e-5, abs=1e-6)
    assert "train/brier" not in trainer.callback_metrics  # eval-only: a training step stays cheap


def test_sanity_check_logs_nothing(tmp_path) -> None:
    """Sanity batches must not leak into the first validation epoch's aggregate."""

    torch.manual_seed(0)
    model = Net(lr=0.0)
    val = classification_data(30, seed=3)
    # Sanity batches come from the first 16 samples only; counted, they would shift every epoch value.
    trainer = quiet_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=2, limit_train_batches=1)
    trainer.fit(model, DataLoader(classification_data(8), batch_size=8), DataLoader(val, batch_size=8))
    expected = _reference(model, val, eps=0.1)
    for name, value in expected.items():
        assert trainer.callback_metrics[f"val/{name}"].item() == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_mixin_after_lightning_module_in_the_bases(tmp_path) -> None:
    class Late(L.LightningModule, LabelSmoothingMixin):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(6, C)

        def validation_step(self, batch, batch_idx):
            self.label_smoothed_loss(self.layer(batch[0]), batch[1])

    model = Late()
    data = classification_data(20)
    (logged,) = quiet_trainer(tmp_path).validate(model, DataLoader(data, batch_size=8), verbose=False)
    x, y = data.tensors
    with torch.no_grad():
        ref = F.cross_entropy(model.layer(x), y, label_smoothing=0.1).item()
    assert logged["val/loss"] == pytest.approx(ref, rel=1e-5)


def test_constructor_arguments_and_validation() -> None:
    class WithArgs(LabelSmoothingMixin, L.LightningModule):
        def __init__(self) -> None:
            super().__init__(label_smoothing=0.25, prior=torch.tensor([0.5, 0.25, 0.25]), n_bins=10)

    model = WithArgs()
    assert model.label_smoothing == 0.25
    assert model.ls_n_bins == 10
    assert "_ls_prior" in model.state_dict()
    logits, y = torch.randn(7, 3, dtype=torch.float64), torch.randint(0, 3, (7,))
    u = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    soft = 0.75 * F.one_hot(y, 3).double() + 0.25 * u
    model.label_smoothing_prior = u
    torch.testing.assert_close(model.label_smoothed_loss(logits, y), F.cross_entropy(logits, soft))
    with pytest.raises(ValueError, match=r"`label_smoothing`.*1\.5"):
        model.label_smoothing = 1.5
    with pytest.raises(TypeError, match="`label_smoothing`"):
        model.label_smoothing = "0.1"  # type: ignore[assignment]
    with pytest.raises(TypeError, match="`prior`"):
        model.label_smoothing_prior = [0.5, 0.5]  # type: ignore[assignment]


def test_module_pickles_before_and_after_use(tmp_path) -> None:
    model = Net()
    pickle.loads(pickle.dumps(model))
    quiet_trainer(tmp_path).validate(model, DataLoader(classification_data(10), batch_size=4), verbose=False)
    clone = pickle.loads(pickle.dumps(model))
    assert clone.label_smoothing == model.label_smoothing


def test_soft_targets_pass_through(tmp_path) -> None:
    """Probability targets (mixup): the loss is PyTorch's soft-target loss with smoothing on top."""
    model = Net()
    model.label_smoothing = 0.2
    x, _ = classification_data(12).tensors
    p = torch.softmax(torch.randn(12, C), -1)
    logits = model(x)
    torch.testing.assert_close(model.label_smoothed_loss(logits, p), F.cross_entropy(logits, p, label_smoothing=0.2))


def test_prior_set_in_training_is_restored_into_a_fresh_module() -> None:
    trained = Net()
    trained.label_smoothing_prior = torch.softmax(torch.randn(C, C), -1)  # e.g. an online-label-smoothing matrix
    fresh = Net()
    assert fresh.label_smoothing_prior is None
    fresh.load_state_dict(trained.state_dict())  # strict: the prior must not be an unexpected key
    torch.testing.assert_close(fresh.label_smoothing_prior, trained.label_smoothing_prior)


def test_calibration_bins_match_the_logged_ece(tmp_path) -> None:
    class Bins(Net):
        def on_validation_epoch_end(self) -> None:
            self.bins = self.calibration_bins("val")

    model = Bins()
    data = classification_data(40)
    (logged,) = quiet_trainer(tmp_path).validate(model, DataLoader(data, batch_size=16), verbose=False)
    assert model.bins.counts.sum().item() == 40
    assert model.bins.calibration_error("l1").item() == pytest.approx(logged["val/ece"], abs=1e-6)
    assert Net().calibration_bins("val") is None


def test_adaptive_ece_equals_the_equal_mass_definition(tmp_path) -> None:
    """600 positions in 15 groups of 40: the fine histogram splits exactly where the sorted samples do."""
    torch.manual_seed(0)
    model = Net()
    data = classification_data(600, seed=5)
    (logged,) = quiet_trainer(tmp_path).validate(model, DataLoader(data, batch_size=64), verbose=False)
    assert logged["val/ece_adaptive"] == pytest.approx(_exact_adaptive_ece(model, data), abs=1e-5)


def test_padding_sampler_detection() -> None:
    from torch.utils.data import DistributedSampler

    from ls_lightning.integration.mixin import _pads_samples
    from ls_lightning.metrics import UnpaddedDistributedSampler

    data = list(range(7))
    padded = DistributedSampler(data, num_replicas=2, rank=1, shuffle=False)
    assert list(padded) == [1, 3, 5, 0]  # torch repeats sample 0 to even the ranks out: the case we warn about
    assert _pads_samples(padded)
    assert not _pads_samples(DistributedSampler(list(range(8)), num_replicas=2, rank=0))  # divisible: no padding
    assert not _pads_samples(DistributedSampler(data, num_replicas=2, rank=0, drop_last=True))
    assert not _pads_samples(UnpaddedDistributedSampler(data, num_replicas=2, rank=1))
    assert not _pads_samples(None)


def test_warns_once_for_a_padding_eval_sampler(tmp_path) -> None:
    from torch.utils.data import DistributedSampler

    data = classification_data(7)
    loader = DataLoader(data, batch_size=4, sampler=DistributedSampler(data, num_replicas=2, rank=0, shuffle=False))
    with pytest.warns(UserWarning, match="pads the data with repeated samples"):
        quiet_trainer(tmp_path, use_distributed_sampler=False).validate(Net(), loader, verbose=False)


def test_each_evaluation_run_logs_its_own_data_only(tmp_path) -> None:
    """Epoch metrics are logged once per epoch and reset by Lightning: a second run must not mix in the first."""
    torch.manual_seed(0)
    model = Net()
    first, second = classification_data(40, seed=1), classification_data(23, seed=2, ignore=0.2)
    trainer = quiet_trainer(tmp_path)
    trainer.validate(model, DataLoader(first, batch_size=8), verbose=False)
    (logged,) = trainer.validate(model, DataLoader(second, batch_size=8), verbose=False)
    for name, value in _reference(model, second, eps=0.1).items():
        assert logged[f"val/{name}"] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_train_epoch_values_are_per_epoch(tmp_path) -> None:
    """Two epochs over different halves of the data (lr = 0): each epoch's values are its own half's."""

    class PerEpoch(L.Callback):
        def __init__(self) -> None:
            self.values: list[dict[str, float]] = []

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            metrics = trainer.callback_metrics
            self.values.append({k: metrics[f"train/{k}"].item() for k in ("loss", "h_pq", "acc", "ece")})

    halves = [classification_data(24, seed=3), classification_data(17, seed=4, ignore=0.3)]

    class Alternating(torch.utils.data.Dataset):
        epoch = 0

        def __len__(self) -> int:
            return len(halves[self.epoch])

        def __getitem__(self, i: int):
            return halves[self.epoch][i]

    class Switch(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            Alternating.epoch = trainer.current_epoch

    torch.manual_seed(0)
    model, recorder = Net(lr=0.0), PerEpoch()
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[Switch(), recorder], reload_dataloaders_every_n_epochs=1)
    trainer.fit(model, DataLoader(Alternating(), batch_size=8))
    for epoch, half in enumerate(halves):
        expected = _reference(model, half, eps=0.1)
        for name, value in recorder.values[epoch].items():
            assert value == pytest.approx(expected[name], rel=1e-5, abs=1e-6), (epoch, name)


@pytest.mark.parametrize(("seq", "stage"), [(None, "validate"), (4, "test")])
def test_linear_loss_logs_the_whole_data_reference(tmp_path, seq, stage) -> None:
    torch.manual_seed(0)
    model = Net(linear=True)
    model.label_smoothing = 0.2
    model.ls_log_metrics = (*DEFAULT_LOG_METRICS, "perplexity")
    data = classification_data(37, seq=seq, ignore=0.2)
    (logged,) = getattr(quiet_trainer(tmp_path), stage)(model, DataLoader(data, batch_size=8), verbose=False)
    prefix = "val" if stage == "validate" else "test"
    expected = _reference(model, data, eps=0.2)
    for name, value in expected.items():
        assert logged[f"{prefix}/{name}"] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert logged[f"{prefix}/perplexity"] == pytest.approx(math.exp(expected["h_pq"]), rel=1e-5)


def test_linear_loss_feeds_the_online_prior_and_temperature_scaling(tmp_path) -> None:
    """The callbacks that need logits get them, chunk by chunk, as from the logits themselves."""
    from ls_lightning.integration import TemperatureScaling

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g)
    y = (x @ torch.randn(6, C, generator=g)).argmax(1)  # learnable: the temperature has an optimum
    data = TensorDataset(x, y)
    results = []
    for linear in (False, True):
        torch.manual_seed(0)
        model = Net(linear=linear)
        callbacks = [LabelSmoothing(0.1, prior="online", num_classes=C), TemperatureScaling()]
        trainer = quiet_trainer(tmp_path, max_epochs=4, callbacks=callbacks, num_sanity_val_steps=0)
        trainer.fit(model, DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
        results.append((model.label_smoothing_prior.clone(), float(trainer.callback_metrics["val/temperature"])))
    (prior, temperature), (linear_prior, linear_temperature) = results
    torch.testing.assert_close(linear_prior, prior, rtol=1e-5, atol=1e-6)
    assert linear_temperature == pytest.approx(temperature, rel=1e-4)


def test_a_loss_computed_in_a_hook_is_logged_too(tmp_path) -> None:
    """Outside the module's steps (here in ``on_validation_batch_end``) the batch is logged at once: with one batch,
    no later step would log it."""

    class InHook(Net):
        def validation_step(self, batch, batch_idx):
            return self(batch[0])

        def on_validation_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0):
            self.label_smoothed_loss(outputs, batch[1])

    torch.manual_seed(0)
    model = InHook()
    data = classification_data(7)
    (logged,) = quiet_trainer(tmp_path).validate(model, DataLoader(data, batch_size=8), verbose=False)
    for name, value in _reference(model, data, eps=0.1).items():
        assert logged[f"val/{name}"] == pytest.approx(value, rel=1e-5, abs=1e-6), name
