"""The built-in data modules: splits, generated data, the evaluation loaders' unpadded batches, and a training loader
that a resumed fit continues exactly."""

from __future__ import annotations

import doctest
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from helpers import Net, quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from ls_lightning.cli.data import DigitsDataModule, SyntheticDataModule, _UnpaddedBatches
from ls_lightning.cli.errors import MissingDependencyError
from ls_lightning.metrics import UnpaddedDistributedSampler


def _rows(x: torch.Tensor) -> np.ndarray:
    a = x.numpy()
    return a[np.lexsort(a.T[::-1])]


def test_digits_split_is_a_stratified_partition_of_the_bundled_set() -> None:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    dm = DigitsDataModule(val_fraction=0.2, test_fraction=0.25)
    dm.setup("fit")
    splits = {k: d.tensors for k, d in dm.splits.items()}
    assert [len(splits[k][1]) for k in ("train", "val", "test")] == [989, 359, 449]  # round(0.2·1797), round(0.25·1797)
    # together the splits are exactly the data set (as a multiset of (pixels, label) rows), scaled by 1/16
    got = torch.cat([torch.cat([sx, sy[:, None].float()], 1) for sx, sy in splits.values()])
    ref = torch.cat([torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)[:, None].float()], 1)
    np.testing.assert_array_equal(_rows(got), _rows(ref))
    assert got[:, :64].min() >= 0.0 and got[:, :64].max() <= 1.0
    counts = torch.bincount(torch.tensor(y), minlength=10).float()
    for sx, sy in splits.values():  # stratified: each class within one sample of its share
        expected = counts * len(sy) / len(y)
        assert (torch.bincount(sy, minlength=10).float() - expected).abs().max() <= 1.0
        assert sx.dtype == torch.float32 and sy.dtype == torch.int64


def test_digits_split_is_fixed_by_split_seed_only() -> None:
    def labels(**kwargs: int) -> torch.Tensor:
        dm = DigitsDataModule(**kwargs)
        dm.setup()
        return dm.splits["val"].tensors[1]

    torch.manual_seed(1)
    first = labels()
    torch.manual_seed(2)
    assert torch.equal(first, labels())
    assert not torch.equal(first, labels(split_seed=1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": 0.0}, "`val_fraction` to be a float in (0, 1)"),
        ({"test_fraction": 1.2}, "`test_fraction` to be a float in (0, 1)"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "`val_fraction + test_fraction` to be below 1"),
        ({"batch_size": 0}, "`batch_size` to be a positive int"),
    ],
)
def test_digits_refuses_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        DigitsDataModule(**kwargs)


def test_missing_scikit_learn_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn...` raise ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(MissingDependencyError) as info:
        DigitsDataModule()
    message = str(info.value)
    assert 'pip install "ls-lightning[data]"' in message and "data=synthetic" in message and "\n" not in message


def test_synthetic_shapes_balance_and_determinism() -> None:
    dm = SyntheticDataModule(num_classes=7, num_features=3, num_train=70, num_val=14, num_test=21, seed=5)
    dm.setup()
    sizes = {k: tuple(d.tensors[0].shape) for k, d in dm.splits.items()}
    assert sizes == {"train": (70, 3), "val": (14, 3), "test": (21, 3)}
    assert torch.bincount(dm.splits["train"].tensors[1]).tolist() == [10] * 7
    torch.manual_seed(123)  # the global seed does not change the data
    again = SyntheticDataModule(num_classes=7, num_features=3, num_train=70, num_val=14, num_test=21, seed=5)
    again.setup()
    for name in dm.splits:
        for a, b in zip(dm.splits[name].tensors, again.splits[name].tensors, strict=True):
            assert torch.equal(a, b)


def test_synthetic_class_means_separate_the_classes() -> None:
    # with well separated means the nearest class mean (estimated on train) classifies the test split almost perfectly
    dm = SyntheticDataModule(num_classes=4, num_features=10, num_train=400, num_test=400, class_sep=3.0)
    dm.setup()
    x, y = dm.splits["train"].tensors
    means = torch.stack([x[y == c].mean(0) for c in range(4)])
    xt, yt = dm.splits["test"].tensors
    assert (torch.cdist(xt, means).argmin(1) == yt).float().mean() > 0.95


def test_label_noise_flips_train_labels_only_to_other_classes() -> None:
    kwargs = {"num_classes": 5, "num_features": 4, "num_train": 4000, "num_val": 50, "num_test": 50}
    clean, noisy = SyntheticDataModule(**kwargs), SyntheticDataModule(**kwargs, label_noise=0.3)
    clean.setup()
    noisy.setup()
    for name in ("val", "test"):
        assert all(
            torch.equal(a, b) for a, b in zip(clean.splits[name].tensors, noisy.splits[name].tensors, strict=True)
        )
    assert torch.equal(clean.splits["train"].tensors[0], noisy.splits["train"].tensors[0])
    flipped = clean.splits["train"].tensors[1] != noisy.splits["train"].tensors[1]
    # Binomial(4000, 0.3): standard deviation 29 samples; 5 sigma
    assert abs(flipped.sum().item() - 1200) < 5 * 29


def test_eval_loaders_use_the_unpadded_sampler_under_a_process_group(tmp_path: Path) -> None:
    dm = SyntheticDataModule(num_classes=2, num_features=2, num_train=8, num_val=5, num_test=5)
    dm.setup()
    assert not isinstance(dm.val_dataloader().sampler, DistributedSampler)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        assert isinstance(dm.val_dataloader().sampler, UnpaddedDistributedSampler)
        assert isinstance(dm.test_dataloader().sampler, UnpaddedDistributedSampler)
        assert not isinstance(dm.train_dataloader().sampler, DistributedSampler)  # Lightning injects its own
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("n", [0, 1, 2, 7])
def test_unpadded_batches_cover_each_index_once_and_every_rank_gets_a_batch(world_size: int, n: int) -> None:
    dataset = TensorDataset(torch.arange(n))
    parts = [list(_UnpaddedBatches(dataset, 2, num_replicas=world_size, rank=r)) for r in range(world_size)]
    assert sorted(i for batches in parts for batch in batches for i in batch) == list(range(n))
    assert all(len(batches) >= 1 and all(len(b) <= 2 for b in batches) for batches in parts)
    lengths = [len(_UnpaddedBatches(dataset, 2, num_replicas=world_size, rank=r)) for r in range(world_size)]
    assert lengths == [len(batches) for batches in parts]
    for r, batches in enumerate(parts):
        assert [i for batch in batches for i in batch] == list(UnpaddedDistributedSampler(dataset, world_size, r))


def test_docstring_examples() -> None:
    from ls_lightning.cli import data

    assert doctest.testmod(data, raise_on_error=False).failed == 0


# ------------------------------------------------------------------------------------- resuming the training data


def test_the_training_loader_shuffles_as_a_shuffling_dataloader() -> None:
    """The built-in training loader gives, epoch after epoch, the batches of PyTorch's ``DataLoader(shuffle=True)``
    under the same seed: the order of every run made before it was resumable stays."""
    dm = DigitsDataModule(batch_size=64)
    dm.setup("fit")
    dataset = dm.splits["train"]
    torch.manual_seed(7)
    ours = [[b[1].tolist() for b in dm.train_dataloader()] for _ in range(3)]
    torch.manual_seed(7)
    reference = DataLoader(dataset, 64, shuffle=True)
    theirs = [[b[1].tolist() for b in reference] for _ in range(3)]
    assert ours == theirs
    assert ours[0] != ours[1]


class _Batches(L.Callback):
    """Records, per global step, the labels of the step's batch, and at the end of the fit writes them with the
    weights into ``{dirpath}/batches_rank{r}.pt`` (from every process of a multi-process fit)."""

    def __init__(self, dirpath: Path) -> None:
        self.dirpath = dirpath
        self.labels: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        self.labels[trainer.global_step] = batch[1].tolist()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = {"labels": self.labels, "weights": pl_module.state_dict()}
        torch.save(record, self.dirpath / f"batches_rank{trainer.global_rank}.pt")


def _fit(tmp_path: Path, *, ckpt_path: Path | None = None, devices: int = 1, **checkpoint: Any) -> list[dict]:
    """``max_epochs=4`` of the helpers' ``Net`` on digits (17 batches of 64 an epoch on one process), seed 0; a
    ``ModelCheckpoint`` with ``checkpoint``'s options writes into ``tmp_path``. Returns each process's record."""
    L.seed_everything(0, verbose=False)
    model = Net(num_features=64, num_classes=10, lr=0.5)
    callbacks = [_Batches(tmp_path), ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, **checkpoint)]
    if ckpt_path is not None:
        torch.manual_seed(12345)  # the resumed process's generator is elsewhere: the checkpoint must put it back
    options: dict[str, Any] = {"devices": devices, "strategy": "ddp_fork"} if devices > 1 else {}
    trainer = quiet_trainer(tmp_path, callbacks=callbacks, max_epochs=4, limit_val_batches=0, **options)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=64), ckpt_path=ckpt_path)
    return [torch.load(tmp_path / f"batches_rank{r}.pt", weights_only=True) for r in range(devices)]


def _assert_continues(resumed: dict, straight: dict, step: int) -> None:
    assert sorted(resumed["labels"]) == [s for s in sorted(straight["labels"]) if s >= step]
    assert resumed["labels"] == {s: straight["labels"][s] for s in resumed["labels"]}
    for key, value in straight["weights"].items():
        assert torch.equal(resumed["weights"][key], value), key


@pytest.mark.parametrize(
    ("checkpoint", "name"),
    [
        ({"every_n_train_steps": 21}, "epoch=1-step=21.ckpt"),  # within the second epoch (its batch 5 of 17)
        ({"every_n_epochs": 1, "save_on_train_epoch_end": True}, "epoch=1-step=34.ckpt"),  # at its end
    ],
    ids=["within-an-epoch", "at-an-epoch-end"],
)
def test_a_fit_resumed_from_a_checkpoint_trains_on_the_uninterrupted_fits_batches(
    tmp_path: Path, checkpoint: dict[str, Any], name: str
) -> None:
    """The reference is the uninterrupted fit: from the checkpoint's step on, the resumed fit (in a process whose
    generator is elsewhere) trains on the same batches and ends with the same weights, bit for bit."""
    (straight,) = _fit(tmp_path / "straight", **checkpoint)
    saved = tmp_path / "straight" / name
    assert saved.exists(), sorted(p.name for p in saved.parent.iterdir())
    (resumed,) = _fit(tmp_path / "resumed", ckpt_path=saved, **checkpoint)
    _assert_continues(resumed, straight, int(torch.load(saved, weights_only=True)["global_step"]))


@pytest.mark.slow
def test_a_two_process_fit_resumed_within_an_epoch_trains_on_the_uninterrupted_fits_batches(tmp_path: Path) -> None:
    """Under DDP (two forked gloo processes; 9 batches an epoch each, Lightning's ``DistributedSampler``), a fit
    resumed from a checkpoint within the second epoch continues each process's batches and weights, bit for bit."""
    straight = _fit(tmp_path / "straight", devices=2, every_n_train_steps=13)
    saved = tmp_path / "straight" / "epoch=1-step=13.ckpt"  # batch 4 of the second epoch
    resumed = _fit(tmp_path / "resumed", ckpt_path=saved, devices=2, every_n_train_steps=13)
    for ours, theirs in zip(resumed, straight, strict=True):
        _assert_continues(ours, theirs, 13)
