"""The built-in data modules: splits, generated data, and the evaluation loaders' unpadded batches."""

from __future__ import annotations

import doctest
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset
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
