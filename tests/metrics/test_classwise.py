"""Class-wise ECE (the mean over classes) against torchmetrics' binary calibration error of each class's one-vs-rest
problem, and against Kull et al.'s definition written out with (lower, upper] bins on continuous data; under DDP
(two forked gloo processes) against one process.

torch-uncertainty's ``ClasswiseCalibrationError`` (0.13.0), which is built on torchmetrics the same way, and
focal-calibration's ``ClasswiseECELoss`` were run against this metric outside the repository (their code is not part
of it; torch-uncertainty cannot be a test dependency: importing it needs torchvision, which pins its own torch).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import Tensor
from torchmetrics.classification import BinaryCalibrationError

from ls_lightning.metrics import ClasswiseCalibrationError, classwise_calibration_error

NORMS = ("l1", "l2", "max")

# ---------------------------------------------------------------------------------------------------------------
# References: torchmetrics' BinaryCalibrationError on each class's one-vs-rest problem (an implementation no one here
# wrote; torch-uncertainty's class-wise metric is built the same way on it), and the definition of Kull et al. written
# out with focal-calibration's (lower, upper] bins, mean over classes.
# ---------------------------------------------------------------------------------------------------------------


def _torchmetrics(probs: Tensor, target: Tensor, n_bins: int, norm: str = "l1", reduction: str = "mean") -> Tensor:
    """Each class k: torchmetrics' binary calibration error of (q_k, y == k); then the mean, sum or each."""
    per_class = torch.stack(
        [
            BinaryCalibrationError(n_bins=n_bins, norm=norm)(probs[:, k].contiguous(), (target == k).long())
            for k in range(probs.shape[1])
        ]
    )
    return {"mean": per_class.mean(), "sum": per_class.sum(), "none": per_class}[reduction]


def _definition(logits: Tensor, target: Tensor, n_bins: int) -> Tensor:
    """Kull et al.'s class-wise ECE in float64, bins (lower, upper]: mean over k of Σ_b |B_b|/N·|acc_b − conf_b|."""
    probs = logits.double().softmax(1)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    per_class = []
    for k in range(probs.shape[1]):
        q, hit = probs[:, k], (target == k).double()
        error = torch.zeros((), dtype=torch.float64)
        for low, high in itertools.pairwise(edges):
            inside = (q > low) & (q <= high)
            if inside.any():
                error += inside.double().mean() * (q[inside].mean() - hit[inside].mean()).abs()
        per_class.append(error)
    return torch.stack(per_class).mean()


def _data(n: int, c: int, seed: int, scale: float = 2.0) -> tuple[Tensor, Tensor]:
    """Continuous logits and labels that hold every class."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * scale
    target = (logits + torch.randn(n, c, generator=g) * scale).argmax(1)  # partly informative: a non-trivial ECE
    target[:c] = torch.arange(c)
    return logits, target


def _off_edges(probs: Tensor, n_bins: int) -> bool:
    edges = torch.linspace(0, 1, n_bins + 1)
    return not torch.isin(probs, edges).any()


@pytest.mark.parametrize("n_bins", [1, 5, 15])
@pytest.mark.parametrize(("n", "c"), [(500, 10), (257, 3)])
def test_equals_the_definition_on_continuous_data(n_bins: int, n: int, c: int) -> None:
    logits, target = _data(n, c, seed=n_bins + c)
    # Random continuous logits: no probability lies on a bin edge (nor is 0 or 1), where the conventions differ.
    assert _off_edges(logits.softmax(1), n_bins)
    expected = _definition(logits, target, n_bins).float()
    torch.testing.assert_close(classwise_calibration_error(logits, target, n_bins), expected, rtol=1e-5, atol=1e-6)
    metric = ClasswiseCalibrationError(c, n_bins)
    for chunk in range(0, n, 64):  # several updates: the states add up
        metric.update(logits[chunk : chunk + 64], target[chunk : chunk + 64])
    torch.testing.assert_close(metric.compute(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("n_bins", [2, 15])
def test_equals_torchmetrics_per_class(norm: str, reduction: str, n_bins: int) -> None:
    logits, target = _data(400, 7, seed=n_bins)
    probs = logits.softmax(1)
    expected = _torchmetrics(probs, target, n_bins, norm, reduction)
    got = classwise_calibration_error(probs, target, n_bins, norm, reduction=reduction)  # type: ignore[arg-type]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n_bins", [3, 10, 15])
def test_bin_edges_exact_zero_and_one_as_torchmetrics(norm: str, n_bins: int) -> None:
    # Probabilities on the float32 edges, one ulp either side, exactly 0 and exactly 1: torchmetrics' [lower, upper)
    # bins and its slot for 1.0.
    edges = torch.linspace(0, 1, n_bins + 1)
    p = torch.cat([edges, torch.nextafter(edges, torch.tensor(2.0)), torch.nextafter(edges, torch.tensor(-1.0))])
    p = torch.cat([p.clamp(0, 1), torch.zeros(5), torch.ones(5)])
    probs = torch.stack([p, 1 - p], dim=1)
    target = torch.arange(p.numel()) % 2
    torch.testing.assert_close(
        classwise_calibration_error(probs, target, n_bins, norm),
        _torchmetrics(probs, target, n_bins, norm),
        rtol=1e-5,
        atol=1e-6,
    )


def test_ignore_index_and_weights_leave_out_or_repeat_positions() -> None:
    logits, target = _data(300, 5, seed=3)
    probs = logits.softmax(1)
    ignored = target.clone()
    ignored[::4] = -100
    kept = ignored != -100
    expected = _torchmetrics(probs[kept], target[kept], 10)
    torch.testing.assert_close(classwise_calibration_error(probs, ignored, 10, ignore_index=-100), expected)
    torch.testing.assert_close(classwise_calibration_error(probs, target, 10, weight=kept.float()), expected)
    repeats = torch.arange(300) % 3  # integer weights: a position counted that many times
    expected = _torchmetrics(probs.repeat_interleave(repeats, 0), target.repeat_interleave(repeats), 10)
    torch.testing.assert_close(classwise_calibration_error(probs, target, 10, weight=repeats), expected)


def test_sequence_input_equals_flattened() -> None:
    logits, target = _data(6 * 9, 4, seed=5)
    target[::5] = -100
    seq_logits = logits.view(6, 9, 4).permute(0, 2, 1)  # (N, C, T) with (N, T) targets, as F.cross_entropy
    got = classwise_calibration_error(seq_logits, target.view(6, 9), 15, ignore_index=-100)
    torch.testing.assert_close(got, classwise_calibration_error(logits, target, 15, ignore_index=-100))
    kept = target != -100
    torch.testing.assert_close(got, _torchmetrics(logits.softmax(1)[kept], target[kept], 15), rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_no_position_counts_gives_zero() -> None:
    assert ClasswiseCalibrationError(3).compute() == 0
    metric = ClasswiseCalibrationError(3, ignore_index=-100)
    metric.update(torch.randn(4, 3), torch.full((4,), -100))
    assert metric.compute() == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 0}, "`num_classes`"),
        ({"num_classes": 3, "n_bins": 0}, "`n_bins`"),
        ({"num_classes": 3, "norm": "l3"}, "`norm`"),
        ({"num_classes": 3, "reduction": "avg"}, "`reduction`"),
        ({"num_classes": 3, "ignore_index": 1.5}, "`ignore_index`"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ClasswiseCalibrationError(**kwargs)


@pytest.mark.parametrize(
    ("preds", "target", "error", "match"),
    [
        (torch.rand(4, 4), torch.tensor([0, 1, 2, 0]), ValueError, "`num_classes`=3"),
        (torch.rand(4, 3), torch.tensor([0, 1, 3, 0]), ValueError, "class indices in \\[0, 3\\)"),
        (torch.rand(4, 3), torch.tensor([[0, 1, 2, 0]]), ValueError, "shape"),
        (torch.rand(4, 3), torch.rand(4), TypeError, "`target`"),
        (torch.randint(0, 2, (4, 3)), torch.tensor([0, 1, 2, 0]), TypeError, "`preds`"),
    ],
)
def test_bad_tensors(preds: Tensor, target: Tensor, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ClasswiseCalibrationError(3).update(preds, target)


# ---------------------------------------------------------------------------------------------------------------
# DDP: two forked gloo processes, each with its share, against one process holding everything
# ---------------------------------------------------------------------------------------------------------------


def _rank(rank: int, store: str, result: str, logits: Tensor, target: Tensor) -> None:
    # A forked child must not enter the OpenMP pool its parent started (GNU OpenMP hangs there): one thread
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        metric = ClasswiseCalibrationError(logits.shape[1], n_bins=10, ignore_index=-100)
        share = slice(0, 70) if rank == 0 else slice(70, None)  # unequal shares, several updates on rank 1
        for chunk in torch.arange(logits.shape[0])[share].split(40):
            metric.update(logits[chunk], target[chunk])
        value = metric.compute()  # syncs the sum states for the computation, then restores the local ones
        metric.sync()  # ... which the test reads synced
        if rank == 0:
            torch.save({"value": value, "count": metric.count.clone(), "label_sum": metric.label_sum.clone()}, result)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_processes_equal_one(tmp_path: Path) -> None:
    logits, target = _data(181, 6, seed=11)
    target[::9] = -100
    result = tmp_path / "rank0.pt"
    # forked, not spawned: the ranks need not import torch again
    mp.start_processes(
        _rank, args=(str(tmp_path / "store"), str(result), logits, target), nprocs=2, start_method="fork"
    )
    synced = torch.load(result)
    single = ClasswiseCalibrationError(6, n_bins=10, ignore_index=-100)
    single.update(logits, target)
    assert torch.equal(synced["count"], single.count)  # integer-valued float64 sums: exact
    assert torch.equal(synced["label_sum"], single.label_sum)
    torch.testing.assert_close(synced["value"], single.compute(), rtol=1e-6, atol=1e-7)
    assert single.count.sum() == 6 * (181 - 21)  # every counted position once per class
