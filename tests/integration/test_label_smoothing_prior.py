"""The prior callback (``LabelSmoothing(prior=...)``, ``LabelSmoothingPrior``) and soft targets through the mixin: class
frequencies, a fixed prior and online label smoothing in fits, on one process and on two, each checked against a
reference computed directly from the same data. (The priors' functions: tests/losses/test_priors.py; the
``OnlinePrior`` metric: tests/metrics/test_online_prior.py.)"""

from __future__ import annotations

import json
import pickle

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import Net, online_prior_reference, quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ls_lightning import LabelSmoothing
from ls_lightning.losses import prior_matrix
from ls_lightning.metrics import OnlinePrior
from ls_lightning.smoothing import Linear

C, FEATURES, N, BATCH = 4, 6, 48, 8
ONE_EPOCH = {"max_epochs": 1, "num_sanity_val_steps": 0}  # the fits' length

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers.*",
    "ignore:.*number of training batches.*log_every_n_steps.*",
    "ignore:Be aware that when using `ckpt_path`",
)


def _data(n: int = N, seed: int = 0, imbalanced: bool = False) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.multinomial(torch.tensor([0.55, 0.25, 0.15, 0.05]), n, replacement=True, generator=g)
    y = y if imbalanced else torch.randint(0, C, (n,), generator=g)
    x = torch.randn(n, FEATURES, generator=g) + F.one_hot(y, FEATURES).float() * 2  # learnable, not trivially
    return TensorDataset(x, y)


class Recording(Net):
    """Records the prior in use at each epoch's start (a clone, or None for uniform) and the labels it trains on;
    stops after epoch ``stop_after_epoch``."""

    def __init__(self, lr: float = 0.0, stop_after_epoch: int | None = None) -> None:
        super().__init__(FEATURES, C, lr=lr)
        self.stop_after_epoch = stop_after_epoch
        self.priors: list[Tensor | None] = []
        self.labels_seen: list[Tensor] = []

    def on_train_epoch_start(self) -> None:
        prior = self.label_smoothing_prior
        self.priors.append(None if prior is None else prior.detach().cpu().clone())

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        self.labels_seen.append(batch[1])
        return super().training_step(batch, batch_idx)

    def on_train_epoch_end(self) -> None:
        if self.stop_after_epoch == self.current_epoch:
            self.trainer.should_stop = True


def _loader(data: Dataset, shuffle: bool = False) -> DataLoader:
    return DataLoader(data, batch_size=BATCH, shuffle=shuffle)


# ------------------------------------------------------------------------------------------------- class_frequency


def test_callback_class_frequency_counts_the_training_labels(tmp_path) -> None:
    data = _data(imbalanced=True)
    model = Recording()
    state = torch.random.get_rng_state()
    quiet_trainer(tmp_path, callbacks=[LabelSmoothing(0.1, prior="class_frequency")], **ONE_EPOCH).fit(
        model, _loader(data, shuffle=True)
    )
    expected = torch.bincount(data.tensors[1], minlength=C).float() / N
    torch.testing.assert_close(model.priors[0], expected)
    torch.testing.assert_close(model.label_smoothing_prior, expected)
    # the counting pass runs under isolate_rng: the shuffled order is the one a run without it draws
    torch.random.set_rng_state(state)
    plain = Recording()
    torch.random.set_rng_state(state)
    quiet_trainer(tmp_path, callbacks=[LabelSmoothing(0.1)], **ONE_EPOCH).fit(plain, _loader(data, shuffle=True))
    assert all(torch.equal(a, b) for a, b in zip(model.labels_seen, plain.labels_seen, strict=True))


# ------------------------------------------------------------------------------------------------------ fixed prior


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ([0.5, 0.6], r"argument `prior` to hold distributions"),
        ([1.2, -0.2], r"argument `prior` to hold distributions.*min -0.2"),
        (["a", "b"], r"argument `prior` to be a sequence of floats"),
        ("online-ish", r"argument `prior` to be one of \('uniform', 'class_frequency', 'online'\)"),
        ([[0.5, 0.5], [0.9, 0.2]], r"argument `prior` to hold distributions"),
    ],
)
def test_fixed_prior_that_is_not_a_distribution_is_refused(values, match) -> None:
    with pytest.raises(ValueError, match=match):
        LabelSmoothing(0.1, prior=values)


def test_prior_none_keeps_the_module_prior_and_uniform_clears_it(tmp_path) -> None:
    u = torch.tensor([0.4, 0.3, 0.2, 0.1])
    model = Recording()
    model.label_smoothing_prior = u  # e.g. given to the mixin's constructor
    quiet_trainer(tmp_path, callbacks=[LabelSmoothing(0.1)], **ONE_EPOCH).fit(model, _loader(_data()))
    torch.testing.assert_close(model.priors[0], u)
    quiet_trainer(tmp_path, callbacks=[LabelSmoothing(0.1, prior="uniform")], **ONE_EPOCH).fit(model, _loader(_data()))
    assert model.priors[1] is None and model.label_smoothing_prior is None
    with pytest.raises(ValueError, match=r"argument `num_classes` to be a positive int or None, but got 0"):
        LabelSmoothing(0.1, num_classes=0)


def test_fixed_prior_is_set_and_used_in_the_loss(tmp_path) -> None:
    u = [0.4, 0.3, 0.2, 0.1]
    model = Recording()
    data = _data()
    trainer = quiet_trainer(tmp_path, callbacks=[LabelSmoothing(0.3, prior=u)], **ONE_EPOCH)
    trainer.fit(model, _loader(data))
    torch.testing.assert_close(model.priors[0], torch.tensor(u))
    x, y = data.tensors
    with torch.no_grad():
        logits = model(x)
    target = 0.7 * F.one_hot(y, C).float() + 0.3 * torch.tensor(u)
    h_uq = F.cross_entropy(logits, torch.tensor(u).expand(N, C))
    assert trainer.callback_metrics["train/loss_epoch"].item() == pytest.approx(F.cross_entropy(logits, target).item())
    assert trainer.callback_metrics["train/h_uq_epoch"].item() == pytest.approx(h_uq.item(), rel=1e-5)


def test_fixed_prior_of_the_wrong_length_names_the_argument(tmp_path) -> None:
    trainer = quiet_trainer(tmp_path, callbacks=[LabelSmoothing(0.1, prior=[0.5, 0.5])], **ONE_EPOCH)
    with pytest.raises(ValueError, match=r"`prior` of `LabelSmoothing(Prior)?` to have num_classes=4 .*\(2,\)"):
        trainer.fit(Recording(), _loader(_data()))


def test_non_uniform_prior_needs_the_mixin(tmp_path) -> None:
    class Plain(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer, self.criterion = nn.Linear(FEATURES, C), nn.CrossEntropyLoss()

        def training_step(self, batch, batch_idx):
            return self.criterion(self.layer(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    for prior in ("online", "class_frequency", [0.25] * 4):
        with pytest.raises(ValueError, match=r"needs a module derived from `ls_lightning.LabelSmoothingMixin`.*Plain"):
            quiet_trainer(tmp_path, callbacks=[LabelSmoothing(0.1, prior=prior)], **ONE_EPOCH).fit(
                Plain(), _loader(_data())
            )
    quiet_trainer(tmp_path, callbacks=[LabelSmoothing(0.1, prior="uniform")], **ONE_EPOCH).fit(
        Plain(), _loader(_data())
    )  # CE is uniform


def test_unknown_number_of_classes_is_reported(tmp_path) -> None:
    class Anonymous(Recording):
        def __init__(self) -> None:
            super().__init__()
            del self.hparams["num_classes"]

    with pytest.raises(ValueError, match=r"needs the number of classes.*LabelSmoothing\(\.\.\., num_classes=\.\.\.\)"):
        quiet_trainer(tmp_path, callbacks=[LabelSmoothing(0.1, prior="online")], **ONE_EPOCH).fit(
            Anonymous(), _loader(_data())
        )
    model = Anonymous()
    quiet_trainer(tmp_path, callbacks=[LabelSmoothing(0.1, prior="online", num_classes=C)], **ONE_EPOCH).fit(
        model, _loader(_data())
    )
    assert model.label_smoothing_prior.shape == (C, C)


# ------------------------------------------------------------------------------------------- online label smoothing


def test_online_matrix_after_an_epoch_equals_the_reference(tmp_path) -> None:
    """lr = 0: the epoch's predictions are the model's predictions on the whole training set."""
    torch.manual_seed(0)
    model, data = Recording(), _data()
    callback = LabelSmoothing(0.2, prior="online")
    trainer = quiet_trainer(tmp_path, callbacks=[callback], num_sanity_val_steps=0, max_epochs=2)
    trainer.fit(model, _loader(data, shuffle=True))
    x, y = data.tensors
    with torch.no_grad():
        logits = model(x)
    first = online_prior_reference(logits, y, prior_matrix(None, C))
    assert model.priors[0] is None  # epoch 0 is uniform
    torch.testing.assert_close(model.priors[1], first)
    torch.testing.assert_close(model.label_smoothing_prior, online_prior_reference(logits, y, first))
    # H(u, q) of epoch 1 is logged against the matrix in use, u = row y of it
    expected = F.cross_entropy(logits, first[y])
    assert trainer.callback_metrics["train/h_uq_epoch"].item() == pytest.approx(expected.item(), rel=1e-5)
    loss = F.cross_entropy(logits, 0.8 * F.one_hot(y, C).float() + 0.2 * first[y])
    assert trainer.callback_metrics["train/loss_epoch"].item() == pytest.approx(loss.item(), rel=1e-5)
    assert not hasattr(model, "ls_prior_estimator")  # detached after the fit; the callback keeps the sums
    estimator = callback.prior_callback.estimator
    assert estimator is not None and estimator.counts.sum() == 0


def test_online_state_round_trip_and_repr() -> None:
    callback = LabelSmoothing(Linear(0.2, 0.0), prior="online", num_classes=C)
    assert repr(callback) == (
        "LabelSmoothing(schedule=Linear(start=0.2, end=0.0), interval='step', total_steps=None, prior='online',"
        " num_classes=4)"
    )
    estimator = callback.prior_callback.estimator = OnlinePrior(C)
    estimator.update(torch.eye(C) * 5, torch.arange(C))
    state = callback.state_dict()
    assert state["prior"] == "online"
    torch.testing.assert_close(state["online_counts"], torch.ones(C, dtype=torch.float64))
    restored = LabelSmoothing(Linear(0.2, 0.0), prior="online", num_classes=C)
    restored.load_state_dict(state)
    inner = restored.prior_callback
    inner.estimator = OnlinePrior(C)
    inner._load_online_sums(inner.estimator)
    torch.testing.assert_close(inner.estimator.sums, estimator.sums)
    with pytest.warns(UserWarning, match=r"'prior': \('online', \[0.5, 0.5\]\)"):
        LabelSmoothing(Linear(0.2, 0.0), prior=[0.5, 0.5]).load_state_dict(state)
    assert repr(LabelSmoothing(0.1, prior=[0.25, 0.75])).endswith("prior=[0.25, 0.75])")


@pytest.mark.parametrize("with_validation", [False, True])
def test_online_matrix_survives_checkpoint_and_resume(tmp_path, with_validation) -> None:
    """Stop after epoch 1 and resume: epoch 2 uses the matrix of the uninterrupted run.

    Without validation the checkpoint is written after the epoch's end (the new matrix is in the module). With it and
    ``save_on_train_epoch_end=False`` it is written at validation end, before the epoch's end: the module holds the
    old matrix and the callback the epoch's sums, from which the resumed run finishes the epoch.
    """
    data, val = _data(), _data(16, seed=3)
    val_loader = _loader(val) if with_validation else None

    def run(model: Net, root, **kwargs) -> ModelCheckpoint:
        checkpoint = ModelCheckpoint(dirpath=root / "ckpt", save_last=True, save_on_train_epoch_end=not with_validation)
        callbacks = [LabelSmoothing(Linear(0.3, 0.1), prior="online"), checkpoint]
        trainer = quiet_trainer(
            root, callbacks=callbacks, num_sanity_val_steps=0, max_epochs=3, enable_checkpointing=True
        )
        trainer.fit(model, _loader(data), val_loader, **kwargs)
        return checkpoint

    torch.manual_seed(0)
    straight = Recording(lr=0.5)
    run(straight, tmp_path / "a")
    torch.manual_seed(0)
    first = Recording(lr=0.5, stop_after_epoch=1)
    checkpoint = run(first, tmp_path / "b")
    resumed = Recording(lr=0.5)
    run(resumed, tmp_path / "c", ckpt_path=checkpoint.last_model_path)
    assert straight.priors[0] is None and len(straight.priors) == 3
    assert len(first.priors) == 2 and len(resumed.priors) == 1
    torch.testing.assert_close(first.priors[1], straight.priors[1])
    torch.testing.assert_close(resumed.priors[0], straight.priors[2])
    torch.testing.assert_close(resumed.label_smoothing_prior, straight.label_smoothing_prior)
    torch.testing.assert_close(resumed.layer.weight, straight.layer.weight)


# ---------------------------------------------------------------------------------------------------- soft targets


@pytest.mark.parametrize("prior_kind", ["uniform", "vector", "matrix"])
def test_soft_targets_equal_the_soft_target_reference(prior_kind) -> None:
    g = torch.Generator().manual_seed(2)
    model = Recording()
    model.label_smoothing = 0.25
    u = {
        "uniform": None,
        "vector": torch.tensor([0.4, 0.3, 0.2, 0.1]),
        "matrix": torch.softmax(torch.randn(C, C, generator=g), -1),
    }[prior_kind]
    model.label_smoothing_prior = u
    logits = torch.randn(9, C, generator=g, requires_grad=True)
    p = torch.softmax(torch.randn(9, C, generator=g) * 2, -1)  # a mixup/cutmix target
    smooth = prior_matrix(u, C)
    smoothed_target = 0.75 * p + 0.25 * (p @ smooth)  # the prior of a mixed label is the mixture of its rows
    loss = model.label_smoothed_loss(logits, p)
    torch.testing.assert_close(loss, F.cross_entropy(logits, smoothed_target))
    (g_ours,) = torch.autograd.grad(loss, logits)
    (g_ref,) = torch.autograd.grad(F.cross_entropy(logits, smoothed_target), logits)
    torch.testing.assert_close(g_ours, g_ref)


def test_soft_target_terms_are_logged_against_the_given_target(tmp_path) -> None:
    """h_pq is the cross-entropy to the given probabilities; h_uq to the prior; acc uses the target's argmax."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, FEATURES, generator=g)
    p = torch.softmax(torch.randn(40, C, generator=g) * 3, -1)
    u = torch.tensor([0.1, 0.2, 0.3, 0.4])
    model = Recording()
    trainer = quiet_trainer(tmp_path, callbacks=[LabelSmoothing(0.2, prior=u.tolist())], **ONE_EPOCH)
    trainer.fit(model, _loader(TensorDataset(x, p)))
    with torch.no_grad():
        logits = model(x)
    expected = {
        "h_pq": F.cross_entropy(logits, p),
        "h_uq": F.cross_entropy(logits, u.expand(40, C)),
        "loss": F.cross_entropy(logits, 0.8 * p + 0.2 * u),
        "acc": (logits.argmax(-1) == p.argmax(-1)).float().mean(),
    }
    for name, value in expected.items():
        logged = trainer.callback_metrics[f"train/{name}_epoch" if name != "acc" else "train/acc"]
        assert logged.item() == pytest.approx(value.item(), rel=1e-5), name


# ------------------------------------------------------------------------------------------------ multi-process


class _Recording(Recording):
    def __init__(self, record_dir: str) -> None:
        super().__init__()
        self.record_dir = record_dir

    def on_train_end(self) -> None:
        prior = self.label_smoothing_prior
        with open(f"{self.record_dir}/rank{self.global_rank}.json", "w") as file:
            json.dump(None if prior is None else prior.tolist(), file)


def _ddp_prior(tmp_path, prior: str, data: Dataset, **kwargs) -> list[Tensor]:
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    torch.manual_seed(0)
    model = _Recording(str(tmp_path))
    callback = LabelSmoothing(0.1, prior=prior)
    assert repr(pickle.loads(pickle.dumps(callback))) == repr(callback)  # as ddp_spawn would send it
    # forked, not spawned: the two ranks need not import Lightning again (ddp_spawn: test_ddp.py)
    trainer = quiet_trainer(tmp_path, callbacks=[callback], **ONE_EPOCH, strategy="ddp_fork", devices=2, **kwargs)
    trainer.fit(model, _loader(data, shuffle=True))
    return [torch.tensor(json.loads((tmp_path / f"rank{rank}.json").read_text())) for rank in (0, 1)]


@pytest.mark.slow
def test_ddp_online_matrix_equals_single_process(tmp_path) -> None:
    """Two gloo processes, each half of the data (48: no padding), lr = 0: the same matrix as one process."""
    data = _data()
    ranks = _ddp_prior(tmp_path, "online", data)
    torch.manual_seed(0)
    single = Recording()
    quiet_trainer(tmp_path, callbacks=[LabelSmoothing(0.1, prior="online")], **ONE_EPOCH).fit(
        single, _loader(data, shuffle=True)
    )
    x, y = data.tensors
    with torch.no_grad():
        reference = online_prior_reference(single(x), y, prior_matrix(None, C))
    torch.testing.assert_close(ranks[0], ranks[1])
    torch.testing.assert_close(ranks[0], single.label_smoothing_prior)
    torch.testing.assert_close(ranks[0], reference)


class _NoTensors(Dataset):
    """A map-style dataset that is not a TensorDataset: the callback must iterate the loader."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        return self.data[index]


@pytest.mark.slow
def test_ddp_class_frequency_equals_the_full_count(tmp_path) -> None:
    data = _data(imbalanced=True)
    ranks = _ddp_prior(tmp_path, "class_frequency", _NoTensors(data))
    expected = torch.bincount(data.tensors[1], minlength=C).float() / N
    torch.testing.assert_close(ranks[0], expected)
    torch.testing.assert_close(ranks[1], expected)
