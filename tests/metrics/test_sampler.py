"""``UnpaddedDistributedSampler``: every index once over the ranks, no padding, and its docstring's example."""

from __future__ import annotations

import doctest

import pytest
from torch.utils.data.distributed import DistributedSampler

from ls_lightning.metrics import UnpaddedDistributedSampler


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [0, 1, 5, 7, 12])
def test_unpadded_sampler_partitions_the_indices(world_size: int, n: int) -> None:
    dataset = list(range(n))
    parts = [list(UnpaddedDistributedSampler(dataset, num_replicas=world_size, rank=r)) for r in range(world_size)]
    assert sorted(i for p in parts for i in p) == dataset
    assert [len(UnpaddedDistributedSampler(dataset, num_replicas=world_size, rank=r)) for r in range(world_size)] == [
        len(p) for p in parts
    ]
    padded = sum(
        len(DistributedSampler(dataset, num_replicas=world_size, rank=r, shuffle=False)) for r in range(world_size)
    )
    assert padded >= n  # torch's sampler repeats samples when n is not a multiple of the world size
    # Lightning keeps a loader whose sampler is already a DistributedSampler
    assert isinstance(UnpaddedDistributedSampler(dataset, num_replicas=world_size, rank=0), DistributedSampler)


def test_docstring_examples() -> None:
    from ls_lightning.metrics import sampler as samplers

    result = doctest.testmod(samplers, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0
