"""Built-in data modules of the command line (bundled digits and breast-cancer sets, generated Gaussian classes,
MNIST-1D, Python's own sources as tokens) and an unpadded sampler."""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Iterator, Mapping, Sized
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from ls_lightning.cli.config import (
    BreastCancerDataConfig,
    DataConfig,
    DigitsDataConfig,
    MNIST1DDataConfig,
    SyntheticDataConfig,
    TextDataConfig,
    defaults_of,
)
from ls_lightning.cli.errors import MissingDependencyError
from ls_lightning.metrics import UnpaddedDistributedSampler

__all__ = [
    "BreastCancerDataModule",
    "DigitsDataModule",
    "MNIST1DDataModule",
    "SequencesPerEpochSampler",
    "SyntheticDataModule",
    "TensorDataModule",
    "TextDataModule",
]

# The defaults of each data module are those of its structured config (ls_lightning.cli.config): one source, which the
# command line's YAML files do not repeat.
_BASE, _DIGITS, _BREAST_CANCER, _SYNTHETIC, _TEXT, _MNIST1D = map(
    defaults_of,
    (DataConfig, DigitsDataConfig, BreastCancerDataConfig, SyntheticDataConfig, TextDataConfig, MNIST1DDataConfig),
)


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


class _SeededRandomSampler(RandomSampler):
    """``RandomSampler`` (one pass, without replacement) that knows the seed of its pass.

    Each pass draws its seed from torch's global generator as ``RandomSampler`` draws it, and shuffles with a
    generator seeded with it, so that the order is that of ``DataLoader(shuffle=True)``; ``seed`` is the current
    pass's. ``next_seed``, set when a run resumes, takes the place of the draw for one pass. A subclass of
    ``RandomSampler``, so that Lightning replaces it with a shuffling ``DistributedSampler`` under DDP as before.
    """

    def __init__(self, data_source: Sized) -> None:
        super().__init__(data_source)
        self.seed: int | None = None
        self.next_seed: int | None = None

    def __iter__(self) -> Iterator[int]:
        seed = int(torch.empty((), dtype=torch.int64).random_().item()) if self.next_seed is None else self.next_seed
        self.seed, self.next_seed = seed, None
        generator = torch.Generator()
        generator.manual_seed(seed)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


def _skipped(iterator: Iterator[Any], batches: int, rng_state: Tensor) -> Iterator[Any]:
    """``iterator`` without its first ``batches`` batches, torch's generator set to ``rng_state`` before the next.

    Lazy: the skipping starts at the first ``next``, after Lightning has set the sampler's epoch (``set_epoch``)."""
    collections.deque(itertools.islice(iterator, batches), maxlen=0)
    torch.set_rng_state(rng_state)
    yield from iterator


class _ResumableLoader(DataLoader):
    """The training loader of the built-in data modules: a run resumed from a checkpoint continues its data exactly.

    ``resume`` (the data module's checkpoint state, see :meth:`TensorDataModule.state_dict`) applies to the first pass:
    a checkpoint written within an epoch gives that pass the epoch's shuffle seed and skips the batches the epoch had
    trained on; then, or at once for a checkpoint written at an epoch's end, torch's global generator is set to its
    state at the checkpoint, so that the next epochs shuffle (and dropout draws) as in the uninterrupted run.

    It also declares the ``state_dict``/``load_state_dict`` protocol of Lightning's resumable loaders, empty: the state
    lives in the data module's, which Lightning saves and restores whether or not the epoch had ended (a loader's only
    within an epoch).
    """

    def __init__(self, *args: Any, resume: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume = resume

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        resume, self.resume = self.resume, None
        if resume is None:
            return super().__iter__()
        if not resume["batches"]:  # the checkpoint's epoch had ended: the next one shuffles as it would have
            torch.set_rng_state(resume["torch_rng_state"])
            return super().__iter__()
        if isinstance(self.sampler, _SeededRandomSampler):
            self.sampler.next_seed = resume["seed"]
        return _skipped(super().__iter__(), resume["batches"], resume["torch_rng_state"])

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


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
    # the model's task (LabelSmoothingMixin's `task`); a binary set has num_classes = 1, the one logit of its model.
    # Read from the structured config, where the config checks see it too (a binary task takes no prior).
    task: str = DataConfig.task

    def __init__(self, batch_size: int = _BASE["batch_size"], num_workers: int = _BASE["num_workers"]) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Expected argument `batch_size` to be a positive int, but got {batch_size!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"Expected argument `num_workers` to be a non-negative int, but got {num_workers!r}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.splits: dict[str, TensorDataset] = {}
        self._train_sampler: Sampler[int] | None = None
        self._resume: Mapping[str, Any] | None = None

    def _load(self) -> dict[str, tuple[Tensor, Tensor]]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:  # loading is cheap and deterministic: every stage sees the same splits
            self.splits = {name: TensorDataset(x, y) for name, (x, y) in self._load().items()}

    def state_dict(self) -> dict[str, Any]:
        """Where the training data stands, saved in checkpoints so that a resumed run continues it exactly.

        During a fit: the current epoch's shuffle seed (one process; under DDP the ``DistributedSampler``'s order is
        a function of the run's seed and the epoch), the number of batches the epoch has trained on (0 once it has
        ended) and the state of torch's global CPU generator. Empty outside a fit.
        """
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit" or self._train_sampler is None:
            return {}
        # the batches of this epoch whose training step has run: Lightning counts them before on_train_batch_end, where
        # a step checkpoint is written (tests/cli/test_data.py fails if that changes). Without the count, no state:
        # a resumed run then restarts the epoch's data, as Lightning does with any loader that cannot resume.
        done = getattr(trainer.fit_loop.epoch_loop.batch_progress.current, "processed", None)
        if not isinstance(done, int):
            return {}
        batches = 0 if done >= trainer.num_training_batches else done
        seed = self._train_sampler.seed if isinstance(self._train_sampler, _SeededRandomSampler) else None
        return {"train_data": {"seed": seed, "batches": batches, "torch_rng_state": torch.get_rng_state()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the training data from a checkpoint's :meth:`state_dict` in the next training loader."""
        self._resume = state_dict.get("train_data")

    def train_dataloader(self) -> DataLoader:
        return self._train_loader(_SeededRandomSampler(self.splits["train"]))

    def _train_loader(self, sampler: Sampler[int]) -> DataLoader:
        """A training loader over ``sampler`` that resumes where a checkpoint left it (:class:`_ResumableLoader`).

        Under DDP Lightning replaces a ``RandomSampler`` with its padded, shuffling ``DistributedSampler`` (every rank
        must take the same number of steps) and keeps a ``DistributedSampler`` such as ``SequencesPerEpochSampler``.
        """
        resume, self._resume, self._train_sampler = self._resume, None, sampler
        workers = self.num_workers
        return _ResumableLoader(
            self.splits["train"],
            self.batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            resume=resume,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def _loader(self, split: str) -> DataLoader:
        """An evaluation loader: in order; under multi-process runs each sample once, unpadded."""
        dataset = self.splits[split]
        workers, persistent = self.num_workers, self.num_workers > 0
        if not _is_distributed():
            return DataLoader(dataset, self.batch_size, num_workers=workers, persistent_workers=persistent)
        # evaluation must not pad: each sample once, in batches the sampler forms (batch_size=None)
        batches = _UnpaddedBatches(dataset, self.batch_size)
        return DataLoader(dataset, None, sampler=batches, num_workers=workers, persistent_workers=persistent)


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"Expected argument `{name}` to be a float in (0, 1), but got {value!r}")


class _BundledDataModule(TensorDataModule):
    """A data set bundled with scikit-learn, split into train/val/test by :func:`_stratified_split`."""

    dataset_name = "digits"  # in the message when scikit-learn is missing

    def __init__(
        self, batch_size: int, num_workers: int, val_fraction: float, test_fraction: float, split_seed: int
    ) -> None:
        super().__init__(batch_size, num_workers)
        _check_fractions(val_fraction, test_fraction)
        _import_sklearn(self.dataset_name)  # fail at construction, before any training starts
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed


class DigitsDataModule(_BundledDataModule):
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
        batch_size: int = _DIGITS["batch_size"],
        num_workers: int = _DIGITS["num_workers"],
        val_fraction: float = _DIGITS["val_fraction"],
        test_fraction: float = _DIGITS["test_fraction"],
        split_seed: int = _DIGITS["split_seed"],
    ) -> None:
        super().__init__(batch_size, num_workers, val_fraction, test_fraction, split_seed)

    def _load(self) -> dict[str, tuple[Tensor, Tensor]]:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        pairs = _stratified_split(x, y, self.val_fraction, self.test_fraction, self.split_seed)
        return {name: (torch.tensor(a / 16.0, dtype=torch.float32), torch.tensor(b)) for name, (a, b) in pairs.items()}


def _import_sklearn(name: str = "digits") -> None:
    try:
        import sklearn.datasets  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            f'The {name} data set needs scikit-learn: install it with `pip install "ls-lightning[data]"`,'
            " or train on generated data with `data=synthetic`."
        ) from None


class BreastCancerDataModule(_BundledDataModule):
    """scikit-learn's bundled breast-cancer set (569 samples, 30 features, binary labels): a fixed, stratified split.

    Labels are 1 for benign and 0 for malignant tumours (scikit-learn's coding). The module is a binary task
    (``task = "binary"``): the model has one output logit (``num_classes = 1``) and the mixin takes the
    label-smoothed binary cross-entropy. Features are standardised with the mean and standard deviation of the
    training split. Nothing is downloaded: the data ship with scikit-learn (the ``data`` extra).

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

    num_features = 30
    num_classes = 1
    task = BreastCancerDataConfig.task
    dataset_name = "breast-cancer"

    def __init__(
        self,
        batch_size: int = _BREAST_CANCER["batch_size"],
        num_workers: int = _BREAST_CANCER["num_workers"],
        val_fraction: float = _BREAST_CANCER["val_fraction"],
        test_fraction: float = _BREAST_CANCER["test_fraction"],
        split_seed: int = _BREAST_CANCER["split_seed"],
    ) -> None:
        super().__init__(batch_size, num_workers, val_fraction, test_fraction, split_seed)

    def _load(self) -> dict[str, tuple[Tensor, Tensor]]:
        from sklearn.datasets import load_breast_cancer

        x, y = load_breast_cancer(return_X_y=True)
        pairs = _stratified_split(x, y, self.val_fraction, self.test_fraction, self.split_seed)
        mean, std = pairs["train"][0].mean(0), pairs["train"][0].std(0)
        return {
            name: (torch.tensor((a - mean) / std, dtype=torch.float32), torch.tensor(b))
            for name, (a, b) in pairs.items()
        }


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            "Expected `val_fraction + test_fraction` to be below 1, but got"
            f" {val_fraction} + {test_fraction} = {val_fraction + test_fraction}"
        )


def _stratified_split(x: Any, y: Any, val_fraction: float, test_fraction: float, seed: int) -> dict[str, tuple]:
    """Train, val and test arrays: a split stratified by label, of fixed sizes and seed."""
    from sklearn.model_selection import train_test_split

    n_test, n_val = round(test_fraction * len(y)), round(val_fraction * len(y))
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=n_test, stratify=y, random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=n_val, stratify=y_rest, random_state=seed
    )
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


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
        batch_size: int = _SYNTHETIC["batch_size"],
        num_workers: int = _SYNTHETIC["num_workers"],
        num_classes: int = _SYNTHETIC["num_classes"],
        num_features: int = _SYNTHETIC["num_features"],
        num_train: int = _SYNTHETIC["num_train"],
        num_val: int = _SYNTHETIC["num_val"],
        num_test: int = _SYNTHETIC["num_test"],
        class_sep: float = _SYNTHETIC["class_sep"],
        label_noise: float = _SYNTHETIC["label_noise"],
        seed: int = _SYNTHETIC["seed"],
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


class SequencesPerEpochSampler(DistributedSampler):
    """Each epoch, the next ``samples_per_epoch`` indices of an endless series of shuffles, split across processes.

    An epoch is a fixed number of samples rather than a pass over the data set: epoch e takes the positions
    [e·K, (e+1)·K) of the concatenated permutations (pass p shuffled by ``seed + p``; in the data set's order for
    every pass with ``shuffle=False``), so consecutive epochs see new samples until the data set is used up, then a
    fresh shuffle. Rank r takes every W-th index from r; the epoch's
    K is rounded up to a multiple of W so that every process takes the same number of steps. A subclass of
    ``DistributedSampler``, so Lightning keeps it under DDP and calls its ``set_epoch``.

    Args:
        dataset: the dataset to sample.
        samples_per_epoch: K, the samples of one epoch over all processes, >= 1.
        seed: the seed of the shuffles; must be the same on every process.
        shuffle: ``False`` takes every pass in the data set's order.
        num_replicas: the number of processes W; the default process group's size when ``None`` (1 without one).
        rank: this process's rank r; the default process group's rank when ``None`` (0 without one).

    Example:
        >>> sampler = SequencesPerEpochSampler(range(5), samples_per_epoch=3, seed=0)
        >>> first = list(sampler)
        >>> sampler.set_epoch(1)
        >>> len(first), len(set(first) | set(sampler)) >= 5
        (3, True)
    """

    def __init__(
        self,
        dataset: Dataset,
        samples_per_epoch: int,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
    ) -> None:
        _check_int("samples_per_epoch", samples_per_epoch, 1)
        if num_replicas is None and not _is_distributed():
            num_replicas, rank = 1, 0 if rank is None else rank
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.num_samples = math.ceil(samples_per_epoch / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def __iter__(self) -> Iterator[int]:
        size = len(self.dataset)  # type: ignore[arg-type]
        start = self.epoch * self.total_size
        indices: list[int] = []
        for position in range(start // size, -(-(start + self.total_size) // size)):  # the passes this epoch touches
            if self.shuffle:
                order = torch.randperm(size, generator=torch.Generator().manual_seed(self.seed + position)).tolist()
            else:
                order = list(range(size))
            low, high = max(start - position * size, 0), min(start + self.total_size - position * size, size)
            indices += order[low:high]
        return iter(indices[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


class TextDataModule(TensorDataModule):
    """Python's own standard library sources as byte-level BPE tokens: next-token prediction in fixed-size blocks.

    The corpus ships with every Python: a fixed selection of the standard library's ``*.py`` files of at most
    ``max_corpus_bytes`` (see :func:`ls_lightning.cli.text.stdlib_documents`). A byte-level BPE tokenizer of
    ``vocab_size`` tokens is trained on it by HuggingFace ``tokenizers`` (the ``data`` extra) on first use and cached
    (``cache_dir``, else ``$LS_LIGHTNING_CACHE``, else ``~/.cache/ls_lightning``) under a hash of the corpus and the
    settings; later runs and the other processes of a run load it. Training it takes about a second and is
    announced once, with the cache's path.

    Each document is cut into blocks of ``block_size`` (input, target) positions, the target being the next token;
    a document's last block is padded (inputs with the ``<pad>`` token, targets with ``ignore_index``, which the loss
    and metrics skip). The blocks are split into train, val and test at random, fixed by ``split_seed``. An epoch is
    ``train_sequences_per_epoch`` training blocks (:class:`SequencesPerEpochSampler`: consecutive epochs see new
    blocks) or, when ``None``, the whole training split.

    ``num_classes`` is ``vocab_size`` and ``num_features`` is ``block_size`` (the model's context length); the
    tokenizer may learn fewer tokens from a small corpus, whose remaining classes are never targets.

    Args:
        batch_size: blocks per batch.
        num_workers: dataloader worker processes.
        vocab_size: tokens of the vocabulary, >= 258 (the 256 bytes, ``<|endoftext|>`` and ``<pad>``).
        block_size: positions per block, >= 1.
        max_corpus_bytes: the size cap of the corpus, >= 1.
        val_fraction: share of the blocks in the validation split, in (0, 1).
        test_fraction: share of the blocks in the test split, in (0, 1).
        train_sequences_per_epoch: training blocks per epoch over all processes, or ``None`` for the whole split.
        min_frequency: token pairs seen fewer times are not merged into a token, >= 1.
        split_seed: seed of the split, independent of the training seed.
        cache_dir: the tokenizer cache; ``None`` for ``$LS_LIGHTNING_CACHE`` or ``~/.cache/ls_lightning``.
        ignore_index: the target of padded positions; the mixin's ``ignore_index`` (default -100).

    Raises:
        MissingDependencyError: if ``tokenizers`` is not installed.
        ValueError: if an argument is out of range.

    Example:
        >>> import tempfile
        >>> cache = tempfile.mkdtemp()  # ~/.cache/ls_lightning when not given
        >>> dm = TextDataModule(vocab_size=300, block_size=16, max_corpus_bytes=20_000, cache_dir=cache)
        >>> dm.setup()
        >>> x, y = dm.splits["train"].tensors  # inputs and next-token targets
        >>> x.shape[1], dm.num_classes, bool((y == dm.ignore_index).any()), bool(torch.equal(y[0, :-1], x[0, 1:]))
        (16, 300, True, True)
    """

    def __init__(
        self,
        batch_size: int = _TEXT["batch_size"],
        num_workers: int = _TEXT["num_workers"],
        vocab_size: int = _TEXT["vocab_size"],
        block_size: int = _TEXT["block_size"],
        max_corpus_bytes: int = _TEXT["max_corpus_bytes"],
        val_fraction: float = _TEXT["val_fraction"],
        test_fraction: float = _TEXT["test_fraction"],
        train_sequences_per_epoch: int | None = _TEXT["train_sequences_per_epoch"],
        min_frequency: int = _TEXT["min_frequency"],
        split_seed: int = _TEXT["split_seed"],
        cache_dir: str | None = _TEXT["cache_dir"],
        ignore_index: int = -100,
    ) -> None:
        from ls_lightning.cli.text import MIN_VOCAB_SIZE, _tokenizer_class

        super().__init__(batch_size, num_workers)
        _check_int("vocab_size", vocab_size, MIN_VOCAB_SIZE)
        for name, value in [("block_size", block_size), ("max_corpus_bytes", max_corpus_bytes)]:
            _check_int(name, value, 1)
        _check_int("min_frequency", min_frequency, 1)
        if train_sequences_per_epoch is not None:
            _check_int("train_sequences_per_epoch", train_sequences_per_epoch, 1)
        _check_fraction("val_fraction", val_fraction)
        _check_fraction("test_fraction", test_fraction)
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(
                "Expected `val_fraction + test_fraction` to be below 1, but got"
                f" {val_fraction} + {test_fraction} = {val_fraction + test_fraction}"
            )
        _tokenizer_class()  # fail at construction, before any training starts
        self.num_classes, self.num_features = vocab_size, block_size
        self.vocab_size, self.block_size, self.max_corpus_bytes = vocab_size, block_size, max_corpus_bytes
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.train_sequences_per_epoch, self.min_frequency = train_sequences_per_epoch, min_frequency
        self.cache_dir, self.ignore_index = cache_dir, ignore_index
        self.tokenizer: Any = None  # a tokenizers.Tokenizer once set up

    @property
    def pad_id(self) -> int:
        """The token id of the padded inputs (``<pad>``)."""
        from ls_lightning.cli.text import PAD, SPECIAL_TOKENS

        return SPECIAL_TOKENS.index(PAD)

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node before the others set up: they then load the cached tokenizer
        self._load_tokenizer()

    def _load_tokenizer(self) -> Any:
        from ls_lightning.cli.text import load_or_train_tokenizer, stdlib_documents

        documents = stdlib_documents(self.max_corpus_bytes)
        cached = load_or_train_tokenizer(documents, self.vocab_size, self.min_frequency, self.cache_dir)
        if cached.trained:
            size = sum(len(d.text.encode("utf-8", errors="replace")) for d in documents) / 1e6
            rank_zero_info(
                f"Trained a byte-level BPE tokenizer of {cached.tokenizer.get_vocab_size()} tokens on {size:.2f} MB of"
                f" Python's standard library ({len(documents)} files) in {cached.seconds:.1f} s; cached in"
                f" {cached.path} (later runs load it)."
            )
        self.tokenizer = cached.tokenizer
        return documents

    def _load(self) -> dict[str, tuple[Tensor, Tensor]]:
        from ls_lightning.cli.text import document_blocks

        documents = self._load_tokenizer()
        encodings = self.tokenizer.encode_batch([d.text for d in documents], add_special_tokens=False)
        blocks = [document_blocks(e.ids, self.block_size, self.pad_id, self.ignore_index) for e in encodings]
        x, y = torch.cat([b[0] for b in blocks]), torch.cat([b[1] for b in blocks])
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.split_seed))
        n_test = max(1, round(self.test_fraction * len(x)))
        n_val = max(1, round(self.val_fraction * len(x)))
        if n_val + n_test >= len(x):
            raise ValueError(
                f"Expected the corpus to give more than {n_val + n_test} blocks of {self.block_size} tokens, but got"
                f" {len(x)}: raise `max_corpus_bytes` or lower `block_size`"
            )
        # sorted: each split keeps the corpus's order (evaluation reads neighbouring blocks of a document together)
        parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
        return {name: (x[idx.sort().values], y[idx.sort().values]) for name, idx in parts.items()}

    def unigram_perplexity(self, split: str = "val") -> float:
        """The perplexity on ``split`` of the unigram model of the training targets (add-one smoothed): the
        baseline a language model must beat.

        Raises:
            ValueError: if ``split`` is not one of ``"train"``, ``"val"``, ``"test"``, or the data are not set up.
        """
        if split not in self.splits:
            raise ValueError(f"Expected argument `split` to be 'train', 'val' or 'test' after setup, but got {split!r}")
        targets = self.splits["train"].tensors[1]
        counts = torch.bincount(targets[targets != self.ignore_index], minlength=self.num_classes).double() + 1.0
        log_p = counts.log() - counts.sum().log()
        y = self.splits[split].tensors[1]
        return math.exp(-log_p[y[y != self.ignore_index]].mean().item())

    def train_dataloader(self) -> DataLoader:
        if self.train_sequences_per_epoch is None:
            return super().train_dataloader()
        dataset = self.splits["train"]
        # the run's seed (seed_everything) picks the order: the same on every process, and whatever the model's size
        sampler = SequencesPerEpochSampler(dataset, self.train_sequences_per_epoch, seed=torch.initial_seed() % 2**62)
        return self._train_loader(sampler)


class MNIST1DDataModule(TensorDataModule):
    """MNIST-1D (Greydanus, 2020): 1-D signals of 40 points in 10 classes, generated by the authors' ``mnist1d``.

    ``mnist1d.data.make_dataset`` builds the set from ten digit-like templates (padding, scaling, translation,
    correlated and i.i.d. noise, shear) with the package's default arguments and seed: 4000 training and 1000 test
    sequences, standardised over the whole set, the same arrays as the authors' published file (to 1e-15). Nothing is
    downloaded. The arrays are generated on first use (about a second) and cached (``cache_dir``, else
    ``$LS_LIGHTNING_CACHE``, else ``~/.cache/ls_lightning``; see
    :func:`ls_lightning.cli.mnist1d.load_or_generate_mnist1d`), so that the other jobs of a sweep and the other
    processes of a run load them.

    The generated training split is split again, at random by ``split_seed``, into train and val (``val_fraction``);
    the generated test split is the test split. An epoch is ``train_sequences_per_epoch`` training samples
    (:class:`SequencesPerEpochSampler`) or, when ``None``, one pass over the training split: the default, 30000
    samples in batches of 100, makes the default 20 epochs the authors' 6000 steps of batch 100.

    Args:
        batch_size: samples per batch (the authors': 100).
        num_workers: dataloader worker processes.
        val_fraction: share of the generated training split held out for validation, in (0, 1).
        train_sequences_per_epoch: training samples per epoch over all processes, or ``None`` for one pass.
        shuffle: ``False`` takes every pass over the training split in one fixed order, as the authors' training
            loop does; ``True`` reshuffles each pass.
        num_samples: samples generated in all, a positive multiple of 10 (the package's default: 5000).
        train_split: share of the generated samples in its training split, in (0, 1) (default 0.8).
        shuffle_seq: permute the positions of every sequence with one fixed permutation (the paper's "shuffled"
            MNIST-1D, without spatial structure).
        seed: the seed of ``make_dataset`` (the package's default: 42); independent of the training seed.
        split_seed: seed of the train/val split.
        cache_dir: the cache folder; ``None`` for ``$LS_LIGHTNING_CACHE`` or ``~/.cache/ls_lightning``.

    Raises:
        MissingDependencyError: if ``mnist1d`` is not installed (the ``data`` extra).
        ValueError: if an argument is out of range or a split would be empty.

    Example:
        >>> import tempfile
        >>> dm = MNIST1DDataModule(cache_dir=tempfile.mkdtemp())  # ~/.cache/ls_lightning when not given
        >>> dm.setup()
        >>> {name: tuple(split.tensors[0].shape) for name, split in dm.splits.items()}
        {'train': (3600, 40), 'val': (400, 40), 'test': (1000, 40)}
    """

    num_features = 40  # the package's final_seq_length
    num_classes = 10

    def __init__(
        self,
        batch_size: int = _MNIST1D["batch_size"],
        num_workers: int = _MNIST1D["num_workers"],
        val_fraction: float = _MNIST1D["val_fraction"],
        train_sequences_per_epoch: int | None = _MNIST1D["train_sequences_per_epoch"],
        shuffle: bool = _MNIST1D["shuffle"],
        num_samples: int = _MNIST1D["num_samples"],
        train_split: float = _MNIST1D["train_split"],
        shuffle_seq: bool = _MNIST1D["shuffle_seq"],
        seed: int = _MNIST1D["seed"],
        split_seed: int = _MNIST1D["split_seed"],
        cache_dir: str | None = _MNIST1D["cache_dir"],
    ) -> None:
        from ls_lightning.cli.mnist1d import mnist1d_settings

        super().__init__(batch_size, num_workers)
        _check_fraction("val_fraction", val_fraction)
        _check_fraction("train_split", train_split)
        _check_int("num_samples", num_samples, 10)
        if num_samples % self.num_classes:
            raise ValueError(f"Expected argument `num_samples` to be a multiple of 10, but got {num_samples!r}")
        if train_sequences_per_epoch is not None:
            _check_int("train_sequences_per_epoch", train_sequences_per_epoch, 1)
        for name, flag in (("shuffle", shuffle), ("shuffle_seq", shuffle_seq)):
            if not isinstance(flag, bool):
                raise ValueError(f"Expected argument `{name}` to be a bool, but got {flag!r}")
        mnist1d_settings(num_samples, train_split, shuffle_seq, seed)  # fail at construction if mnist1d is missing
        self.val_fraction, self.train_sequences_per_epoch = val_fraction, train_sequences_per_epoch
        self.shuffle = shuffle
        self.num_samples, self.train_split, self.shuffle_seq = num_samples, train_split, shuffle_seq
        self.seed, self.split_seed, self.cache_dir = seed, split_seed, cache_dir

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node before the others set up: they then load the cached arrays
        self._arrays()

    def _arrays(self) -> dict[str, Any]:
        from ls_lightning.cli.mnist1d import load_or_generate_mnist1d

        cached = load_or_generate_mnist1d(
            self.num_samples, self.train_split, self.shuffle_seq, self.seed, cache_dir=self.cache_dir
        )
        if cached.generated:
            rank_zero_info(
                f"Generated MNIST-1D ({self.num_samples} sequences, seed {self.seed}) with the mnist1d package in"
                f" {cached.seconds:.1f} s; cached in {cached.path} (later runs load it)."
            )
        return cached.arrays

    def _load(self) -> dict[str, tuple[Tensor, Tensor]]:
        arrays = self._arrays()
        x, y = torch.tensor(arrays["x"], dtype=torch.float32), torch.tensor(arrays["y"], dtype=torch.int64)
        n_val = round(self.val_fraction * len(y))
        if not 0 < n_val < len(y) or len(arrays["y_test"]) == 0:
            raise ValueError(
                f"Expected non-empty train, val and test splits, but got {len(y) - n_val}, {n_val} and"
                f" {len(arrays['y_test'])}: raise `num_samples` or change `val_fraction` or `train_split`"
            )
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.split_seed))
        test = (torch.tensor(arrays["x_test"], dtype=torch.float32), torch.tensor(arrays["y_test"], dtype=torch.int64))
        return {
            "train": (x[order[n_val:]], y[order[n_val:]]),
            "val": (x[order[:n_val]], y[order[:n_val]]),
            "test": test,
        }

    def train_dataloader(self) -> DataLoader:
        if self.train_sequences_per_epoch is None and self.shuffle:
            return super().train_dataloader()
        dataset = self.splits["train"]
        # the run's seed (seed_everything) picks the order: the same on every process
        seed = torch.initial_seed() % 2**62
        per_epoch = len(dataset) if self.train_sequences_per_epoch is None else self.train_sequences_per_epoch
        sampler = SequencesPerEpochSampler(dataset, per_epoch, seed=seed, shuffle=self.shuffle)
        return self._train_loader(sampler)
