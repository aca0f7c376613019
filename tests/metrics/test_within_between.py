"""The within/between-class ratio against a direct float64 computation on every sample, under DDP (two forked gloo
processes) against one process; the template-plane basis against Gram–Schmidt written out by hand."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import Tensor

from ls_lightning.metrics import (
    WithinBetweenRatio,
    project_to_template_plane,
    template_plane_basis,
    within_between_ratio,
)


def _direct(features: Tensor, target: Tensor) -> float:
    """Mean squared distance to the own class mean over samples, over the mean squared distance between two class
    means over pairs of distinct present classes: float64, from the samples themselves."""
    h, y = features.double(), target
    means = {int(k): h[y == k].mean(0) for k in y.unique()}
    within = sum(((h[y == k] - mu) ** 2).sum() for k, mu in means.items()) / len(y)
    pairs = list(itertools.combinations(means.values(), 2))
    between = sum(((a - b) ** 2).sum() for a, b in pairs) / len(pairs)
    return float(within / between)


def _clusters(n: int, k: int, d: int, seed: int, spread: float = 1.0, offset: float = 0.0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, (n,), generator=g)
    centres = torch.randn(k, d, generator=g) * 3 + offset
    return centres[target] + spread * torch.randn(n, d, generator=g), target


@pytest.mark.parametrize(("n", "k", "d"), [(300, 10, 16), (50, 3, 2), (200, 7, 64)])
@pytest.mark.parametrize("spread", [0.05, 1.0, 10.0])
def test_equals_direct_computation(n: int, k: int, d: int, spread: float) -> None:
    features, target = _clusters(n, k, d, seed=n + k, spread=spread)
    expected = _direct(features, target)
    assert within_between_ratio(features, target, k).item() == pytest.approx(expected, rel=1e-5)
    metric = WithinBetweenRatio(k, d)
    for chunk in torch.arange(n).split(37):  # the states add up over updates
        metric.update(features[chunk], target[chunk])
    assert metric.compute().item() == pytest.approx(expected, rel=1e-5)


def test_tight_clusters_far_from_the_origin() -> None:
    # The sums of squares subtract |s_k|^2 / n_k from t_k: float64 keeps the digits when |mu| >> spread.
    features, target = _clusters(400, 5, 32, seed=1, spread=1e-3, offset=100.0)
    assert within_between_ratio(features, target, 5).item() == pytest.approx(_direct(features, target), rel=1e-4)


def test_absent_classes_ignore_index_and_sequences() -> None:
    features, target = _clusters(6 * 11, 8, 5, seed=2)
    target[target == 3] = 6  # class 3 absent: it is left out of the pairs
    target[::7] = -100
    kept = target != -100
    expected = _direct(features[kept], target[kept])
    got = within_between_ratio(features.view(6, 11, 5), target.view(6, 11), 8, ignore_index=-100)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    features[0] = torch.nan  # an ignored position's NaN does not leak into the sums
    assert within_between_ratio(features, target, 8, ignore_index=-100).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_undefined_with_fewer_than_two_classes() -> None:
    assert WithinBetweenRatio(3, 2).compute().isnan()
    assert within_between_ratio(torch.randn(5, 2), torch.zeros(5, dtype=torch.long), 3).isnan()
    assert within_between_ratio(torch.ones(4, 2), torch.tensor([0, 1, 0, 1]), 3).isnan()  # means coincide


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 0, "num_features": 2}, "`num_classes`"),
        ({"num_classes": 3, "num_features": 0}, "`num_features`"),
        ({"num_classes": 3, "num_features": 2, "ignore_index": "x"}, "`ignore_index`"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        WithinBetweenRatio(**kwargs)


@pytest.mark.parametrize(
    ("features", "target", "error", "match"),
    [
        (torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), ValueError, "shapes"),
        (torch.randn(4, 2), torch.tensor([0, 1, 3, 0]), ValueError, "class indices in \\[0, 3\\)"),
        (torch.randn(4, 2), torch.zeros(4), TypeError, "`target`"),
        (torch.ones(4, 2, dtype=torch.long), torch.zeros(4, dtype=torch.long), TypeError, "`features`"),
    ],
)
def test_bad_tensors(features: Tensor, target: Tensor, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        WithinBetweenRatio(3, 2).update(features, target)


# --- the plane of three templates ----------------------------------------------------------------------------------


def _gram_schmidt(weight: Tensor, a: int, b: int, c: int) -> Tensor:
    w = weight.double()
    u, v = w[a] - w[c], w[b] - w[c]
    e1 = u / u.norm()
    e2 = v - (v @ e1) * e1
    return torch.stack([e1, e2 / e2.norm()], dim=1)


@pytest.mark.parametrize("classes", [(0, 1, 2), (7, 2, 4)])
def test_basis_and_projection_equal_gram_schmidt(classes: tuple[int, int, int]) -> None:
    weight, features = torch.randn(9, 12), torch.randn(30, 12)
    expected = _gram_schmidt(weight, *classes)
    torch.testing.assert_close(template_plane_basis(weight, classes), expected)
    torch.testing.assert_close(project_to_template_plane(features, weight, classes), features.double() @ expected)
    # The templates' differences lie in the plane: their coordinates keep their lengths.
    a, _, c = classes
    diff = (weight[a] - weight[c]).unsqueeze(0)
    assert project_to_template_plane(diff, weight, classes).norm().item() == pytest.approx(diff.norm().item())


@pytest.mark.parametrize("classes", [(0, 1), (0, 1, 1), (0, 1, 9), (0, -1, 2), (0, 1, 2.0), "abc"])
def test_bad_classes(classes: object) -> None:
    with pytest.raises(ValueError, match="`classes`"):
        template_plane_basis(torch.randn(9, 4), classes)  # type: ignore[arg-type]


# --- DDP: two forked gloo processes, each with its share, against one process -------------------------------------


def _rank(rank: int, store: str, result: str, features: Tensor, target: Tensor) -> None:
    torch.set_num_threads(1)  # a forked child must not enter the OpenMP pool its parent started (GNU OpenMP hangs)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        metric = WithinBetweenRatio(6, features.shape[1], ignore_index=-100)
        share = slice(0, 41) if rank == 0 else slice(41, None)
        metric.update(features[share], target[share])
        value = metric.compute()  # syncs the sum states
        if rank == 0:
            torch.save(value, result)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_processes_equal_one(tmp_path: Path) -> None:
    features, target = _clusters(97, 6, 8, seed=4)
    target[::5] = -100
    result = tmp_path / "rank0.pt"
    mp.start_processes(
        _rank, args=(str(tmp_path / "store"), str(result), features, target), nprocs=2, start_method="fork"
    )
    kept = target != -100
    assert torch.load(result).item() == pytest.approx(_direct(features[kept], target[kept]), rel=1e-6)
