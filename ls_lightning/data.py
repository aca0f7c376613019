"""Built-in data modules of the command line (bundled digits, generated Gaussian classes) and an unpadded sampler."""

from __future__ import annotations

from collections.abc import Iterator

import lightning.pytorch as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from ls_lightning.config import MissingDependencyError

__all__ = [
    "DigitsDataModule",
    "MissingDependencyError",
    "SyntheticDataModule",
    "TensorDataModule",
    "UnpaddedDistributedSampler",
]


class UnpaddedDistributedSampler(DistributedSampler):
    """Give rank r the indices r, r + W, r + 2W, ... of the dataset, so that each sample is evaluated exactly once.

    torch's ``DistributedSampler`` pads every rank to the same length by repeating samples (even with
    ``drop_last=False``), which counts them twice in validation metrics. Lightning keeps a sampler that is already a
    ``DistributedSampler``, so a loader built with this one reaches the ranks unchanged. Ranks may get one sample
    less than others: metrics must synchronise per epoch (as torchmetrics states do), not per batch. With fewer
    samples than processes some ranks get none, and Lightning refuses a loader of length 0 on one rank; the built-in
    data modules then give such a rank one empty batch, which counts nothing but keeps the ranks in step.

    Args:
        dataset: the dataset to split.
        num_replicas: the number of processes W; the world size of the default process group when ``None``.
        rank: this process's rank r; the default process group's rank when ``None``.

    Example:
        >>> list(UnpaddedDistributedSampler(range(7), num_replicas=3, rank=1))
        [1, 4]
    """

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))  # type: ignore[arg-type]


class _UnpaddedBatches(UnpaddedDistributedSampler):
    """This rank's share of :class:`UnpaddedDistributedSampler` as lists of indices, at least one (maybe empty).

    For ``DataLoader(dataset, sampler=..., batch_size=None)`` over a dataset that takes a list of indices (as
    ``TensorDataset`` does): a rank without samples still runs one evaluation step, on an empty batch, so that every
    rank reaches the epoch-end synchronisation of the metrics.
    """

    def __init__(
        self, dataset: Dataset, batch_size: int, num_replicas: int | None = None, rank: int | None = None
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:  # type: ignore[override]
        indices = list(super().__iter__())
        return iter([indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)] or [[]])

    def __len__(self) -> int:
        return max(1, -(-super().__len__() // self.batch_size))


def _is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class TensorDataModule(L.LightningDataModule):
    """Base of the built-in data modules: (features, labels) tensors split into train, val and test.

    Subclasses implement ``_load() -> dict[split, (x, y)]``; inputs are float32 (N, num_features), labels int64 (N,).
    Validation and test loaders use :class:`UnpaddedDistributedSampler` under multi-process training.

    Args:
        batch_size: samples per batch, >= 1.
        num_workers: dataloader worker processes, >= 0.
    """

    num_features: int
    num_classes: int

    def __init__(self, batch_size: int = 64, num_workers: int = 0) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Expected argument `batch_size` to be a positive int, but got {batch_size!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"Expected argument `num_workers` to be a non-negative int, but got {num_workers!r}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.splits: dict[str, TensorDataset] = {}

    def _load(self) -> dict[str, tuple[Tensor, Tensor]]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:  # loading is cheap and deterministic: every stage sees the same splits
            self.splits = {name: TensorDataset(x, y) for name, (x, y) in self._load().items()}

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.splits[split]
        workers, persistent = self.num_workers, self.num_workers > 0
        if shuffle or not _is_distributed():
            # training keeps Lightning's padded DistributedSampler: every rank must take the same number of steps
            return DataLoader(
                dataset, self.batch_size, shuffle=shuffle, num_workers=workers, persistent_workers=persistent
            )
        # evaluation must not pad: each sample once, in batches the sampler forms (batch_size=None)
        batches = _UnpaddedBatches(dataset, self.batch_size)
        return DataLoader(dataset, None, sampler=batches, num_workers=workers, persistent_workers=persistent)


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"Expected argument `{name}` to be a float in (0, 1), but got {value!r}")


class DigitsDataModule(TensorDataModule):
    """scikit-learn's bundled digits (1797 8×8 images, 10 classes): a fixed, stratified train/val/test split.

    Pixels (0 to 16) are divided by 16, giving flat (64,) inputs in [0, 1]. Nothing is downloaded: the data ship
    with scikit-learn (the ``data`` extra).

    Args:
        batch_size: samples per batch.
        num_workers: dataloader worker processes.
        val_fraction: share of all samples in the validation split, in (0, 1).
        test_fraction: share of all samples in the test split, in (0, 1).
        split_seed: seed of the split, independent of the training seed.

    Raises:
        MissingDependencyError: if scikit-learn is not installed.
        ValueError: if the fractions are not in (0, 1) or leave no training samples.
    """

    num_features = 64
    num_classes = 10

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        split_seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        _check_fraction("val_fraction", val_fraction)
        _check_fraction("test_fraction", test_fraction)
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(
                "Expected `val_fraction + test_fraction` to be below 1, but got"
                f" {val_fraction} + {test_fraction} = {val_fraction + test_fraction}"
            )
        _import_sklearn()  # fail at construction, before any training starts
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed

    def _load(self) -> dict[str, tuple[Tensor, Tensor]]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        x, y = load_digits(return_X_y=True)
        n_test = round(self.test_fraction * len(y))
        n_val = round(self.val_fraction * len(y))
        x_rest, x_test, y_rest, y_test = train_test_split(
            x, y, test_size=n_test, stratify=y, random_state=self.split_seed
        )
        x_train, x_val, y_train, y_val = train_test_split(
            x_rest, y_rest, test_size=n_val, stratify=y_rest, random_state=self.split_seed
        )
        pairs = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}
        return {name: (torch.tensor(a / 16.0, dtype=torch.float32), torch.tensor(b)) for name, (a, b) in pairs.items()}


def _import_sklearn() -> None:
    try:
        import sklearn.datasets  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            'The digits data set needs scikit-learn: install it with `pip install "ls-lightning[data]"`,'
            " or train on generated data with `data=synthetic`."
        ) from None


class SyntheticDataModule(TensorDataModule):
    r"""Generated Gaussian classes: balanced labels, x = μ_y + noise, optional label noise in the training split.

    .. math:: \mu_c \sim \mathcal{N}(0, s^2 I), \qquad x \mid y \sim \mathcal{N}(\mu_y, I)

    The data depend only on ``seed``, not on the training seed. With ``label_noise`` = η, each training label is
    replaced with probability η by one of the other classes, uniformly; validation and test labels stay clean, so
    they measure how well the clean labels are learnt.

    Args:
        batch_size: samples per batch.
        num_workers: dataloader worker processes.
        num_classes: C >= 2.
        num_features: input dimension, >= 1.
        num_train: training samples; ``num_val``, ``num_test`` likewise, each >= 1.
        num_val: validation samples.
        num_test: test samples.
        class_sep: s, the standard deviation of the class means relative to the unit noise, >= 0.
        label_noise: η in [0, 1].
        seed: seed of the generator.

    Raises:
        ValueError: if an argument is out of range.

    Example:
        >>> dm = SyntheticDataModule(num_classes=3, num_features=5, num_train=30, num_val=6, num_test=6)
        >>> dm.setup()
        >>> x, y = dm.splits["train"].tensors
        >>> tuple(x.shape), torch.bincount(y).tolist()
        ((30, 5), [10, 10, 10])
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        num_classes: int = 10,
        num_features: int = 20,
        num_train: int = 2000,
        num_val: int = 500,
        num_test: int = 500,
        class_sep: float = 1.0,
        label_noise: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        for name, value, low in [("num_classes", num_classes, 2), ("num_features", num_features, 1)]:
            _check_int(name, value, low)
        for name, value in [("num_train", num_train), ("num_val", num_val), ("num_test", num_test)]:
            _check_int(name, value, 1)
        if isinstance(class_sep, bool) or not isinstance(class_sep, (int, float)) or not class_sep >= 0:
            raise ValueError(f"Expected argument `class_sep` to be a non-negative float, but got {class_sep!r}")
        if isinstance(label_noise, bool) or not isinstance(label_noise, (int, float)) or not 0 <= label_noise <= 1:
            raise ValueError(f"Expected argument `label_noise` to be a float in [0, 1], but got {label_noise!r}")
        self.num_classes, self.num_features = num_classes, num_features
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.class_sep, self.label_noise, self.seed = float(class_sep), float(label_noise), seed

    def _load(self) -> dict[str, tuple[Tensor, Tensor]]:
        generator = torch.Generator().manual_seed(self.seed)
        means = self.class_sep * torch.randn(self.num_classes, self.num_features, generator=generator)
        splits = {}
        for name, size in self.sizes.items():
            y = torch.arange(size) % self.num_classes  # balanced classes
            y = y[torch.randperm(size, generator=generator)]
            x = means[y] + torch.randn(size, self.num_features, generator=generator)
            splits[name] = (x, y)
        x, y = splits["train"]
        splits["train"] = (x, _flip_labels(y, self.num_classes, self.label_noise, generator))
        return splits


def _check_int(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"Expected argument `{name}` to be an int >= {low}, but got {value!r}")


def _flip_labels(y: Tensor, num_classes: int, rate: float, generator: torch.Generator) -> Tensor:
    """Replace each label with probability ``rate`` by a uniformly drawn *other* class."""
    flip = torch.rand(y.shape, generator=generator) < rate
    # an offset in [1, C) added modulo C never gives back the same class
    offset = torch.randint(1, num_classes, y.shape, generator=generator)
    return torch.where(flip, (y + offset) % num_classes, y)
