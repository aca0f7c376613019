"""The evaluation sampler that keeps metrics exact over several processes: each sample seen by one process, once."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

__all__ = ["UnpaddedDistributedSampler"]


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
