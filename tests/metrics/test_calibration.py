"""Tests of the O(bins) calibration metrics against torchmetrics, scikit-learn and hand-computed values."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from helpers import adaptive_ece_reference, quiet_trainer
from sklearn.metrics import brier_score_loss
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

from ls_lightning.metrics import calibration as metrics_module
from ls_lightning.metrics.calibration import (
    AdaptiveCalibrationError,
    BinnedCalibrationError,
    BinStats,
    BrierScore,
    Overconfidence,
    WeightedMean,
    _bin_index,
    binned_calibration_error,
    brier_score,
)

NORMS = ("l1", "l2", "max")


def _logits(n: int, c: int, seed: int, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * scale, torch.randint(0, c, (n,), generator=g)


def _reference(preds: torch.Tensor, target: torch.Tensor, n_bins: int, norm: str, ignore_index=None) -> torch.Tensor:
    metric = MulticlassCalibrationError(preds.shape[1], n_bins, norm, ignore_index=ignore_index)
    return metric(preds, target).float()


def _ours(preds: torch.Tensor, target: torch.Tensor, n_bins: int, norm: str, **kwargs) -> torch.Tensor:
    metric = BinnedCalibrationError(n_bins, norm, **kwargs)
    metric.update(preds, target)
    return metric.compute()


def _top_label(preds: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    confidence, prediction = preds.softmax(-1).max(-1)
    return confidence, prediction == target


# --------------------------------------------------------------------------------------------------------------
# BinnedCalibrationError against torchmetrics
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n_bins", [1, 2, 7, 15, 40])
@pytest.mark.parametrize("as_probs", [False, True])
def test_equals_torchmetrics_random(norm: str, n_bins: int, as_probs: bool) -> None:
    logits, target = _logits(700, 6, seed=n_bins)
    preds = logits.softmax(-1) if as_probs else logits
    torch.testing.assert_close(_ours(preds, target, n_bins, norm), _reference(preds, target, n_bins, norm))
    torch.testing.assert_close(
        binned_calibration_error(preds, target, n_bins, norm), _ours(preds, target, n_bins, norm)
    )


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n_bins", [3, 10, 15])
def test_bin_edges_and_exact_one(norm: str, n_bins: int) -> None:
    # Confidences exactly on the float32 edges, one ulp either side, and exactly 1.0 (torchmetrics' own slot).
    edges = torch.linspace(0, 1, n_bins + 1)
    conf = torch.cat([edges, torch.nextafter(edges, torch.tensor(2.0)), torch.nextafter(edges, torch.tensor(-1.0))])
    conf = torch.cat([conf.clamp(0.5, 1.0), torch.ones(9)])  # top-1 of two classes is at least 0.5
    preds = torch.stack([conf, 1 - conf], dim=1)
    target = torch.arange(conf.numel()) % 2  # correct on even positions
    torch.testing.assert_close(_ours(preds, target, n_bins, norm), _reference(preds, target, n_bins, norm))


@pytest.mark.parametrize("method", ["floor", "bucketize"])
@pytest.mark.parametrize("n_bins", [*range(1, 64), 100, 1000, 4096, 10_000, 12_345])
def test_bin_index_equals_torchmetrics_bucketize(n_bins: int, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # torchmetrics' rule: ``torch.bucketize(c, linspace(0, 1, n + 1), right=True) - 1`` on float32 values; both of
    # our methods (bucketize itself for small batches, floor-and-fix for large ones) must give it.
    monkeypatch.setattr(metrics_module, "_BUCKETIZE_MAX", 0 if method == "floor" else 1 << 30)
    edges = torch.linspace(0, 1, n_bins + 1)
    around = [edges, torch.nextafter(edges, torch.tensor(2.0)), torch.nextafter(edges, torch.tensor(-1.0))]
    confidence = torch.cat([*around, torch.rand(2000, generator=torch.Generator().manual_seed(n_bins))])
    confidence = torch.cat([confidence, torch.tensor([-0.5, 1.5])])
    expected = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, n_bins)
    assert torch.equal(_bin_index(confidence, n_bins), expected)
    assert torch.equal(_bin_index(confidence.double(), n_bins), expected)


def test_exact_one_has_its_own_slot() -> None:
    metric = BinnedCalibrationError(n_bins=4)
    metric.update(torch.tensor([1.0, 1.0, 0.99, 0.75, 0.5, 0.0]), torch.tensor([True, False, True, True, True, False]))
    stats = metric.bin_stats()
    torch.testing.assert_close(stats.counts, torch.tensor([1.0, 0.0, 1.0, 2.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(stats.correct_sums, torch.tensor([0.0, 0.0, 1.0, 2.0, 1.0], dtype=torch.float64))
    assert all(
        torch.equal(a, b) for a, b in zip(metric.bin_stats(sync=True), stats, strict=True)
    )  # no-op single-process


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("ignore_index", [-100, 0, 3])
def test_ignore_index(norm: str, ignore_index: int) -> None:
    logits, target = _logits(400, 5, seed=1)
    target[::3] = ignore_index
    expected = _reference(logits, target, 15, norm, ignore_index=ignore_index)
    torch.testing.assert_close(_ours(logits, target, 15, norm, ignore_index=ignore_index), expected)
    # The same positions left out by a weight mask in the multiclass form.
    masked = binned_calibration_error(logits, target.clamp(min=0), 15, norm, weight=target != ignore_index)
    torch.testing.assert_close(masked, expected)


@pytest.mark.parametrize("norm", NORMS)
def test_spatial_dims_flattened(norm: str) -> None:
    g = torch.Generator().manual_seed(2)
    logits, target = torch.randn(3, 4, 5, 6, generator=g) * 4, torch.randint(0, 4, (3, 5, 6), generator=g)
    target[0, 0] = -100
    expected = _reference(logits, target, 10, norm, ignore_index=-100)
    torch.testing.assert_close(_ours(logits, target, 10, norm, ignore_index=-100), expected)


@pytest.mark.parametrize("norm", NORMS)
def test_forward_returns_batch_value(norm: str) -> None:
    metric, reference = BinnedCalibrationError(15, norm), MulticlassCalibrationError(4, 15, norm)
    for seed in range(3):
        logits, target = _logits(100, 4, seed=seed)
        torch.testing.assert_close(metric(logits, target), reference(logits, target).float())
    torch.testing.assert_close(metric.compute(), reference.compute().float())


def test_hand_computed() -> None:
    # Two bins: [0, 0.5) holds 0.2 (wrong) and 0.4 (right); [0.5, 1) holds 0.6, 0.8 (right) and 0.9 (wrong).
    conf = torch.tensor([0.2, 0.4, 0.6, 0.8, 0.9])
    correct = torch.tensor([False, True, True, True, False])
    gap_low, gap_high = abs(0.5 - 0.3), abs(2 / 3 - 2.3 / 3)
    ece = 2 / 5 * gap_low + 3 / 5 * gap_high
    rmsce = (2 / 5 * gap_low**2 + 3 / 5 * gap_high**2) ** 0.5
    for norm, expected in (("l1", ece), ("l2", rmsce), ("max", max(gap_low, gap_high))):
        torch.testing.assert_close(binned_calibration_error(conf, correct, 2, norm), torch.tensor(expected))
    metric = BinnedCalibrationError(n_bins=2)
    metric.update(conf, correct)
    torch.testing.assert_close(metric.accuracy, torch.tensor(3 / 5))
    torch.testing.assert_close(metric.overconfidence, torch.tensor(2.9 / 5 - 3 / 5))


# --------------------------------------------------------------------------------------------------------------
# Top-label form, weights, accumulation, state
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_top_label_with_mask_equals_multiclass_on_filtered(norm: str, mask_dtype: torch.dtype) -> None:
    logits, target = _logits(600, 7, seed=3)
    mask = torch.rand(600, generator=torch.Generator().manual_seed(4)) < 0.7
    confidence, correct = _top_label(logits, target)
    confidence[~mask] = float("nan")  # garbage at masked positions must not leak
    metric = BinnedCalibrationError(15, norm)
    metric.update(confidence, correct, weight=mask.to(mask_dtype))
    torch.testing.assert_close(metric.compute(), _reference(logits[mask], target[mask], 15, norm))


def test_top_label_update_never_reads_the_device() -> None:
    # On the meta device any .item(), bool() or boolean-mask indexing raises: the update must not need them.
    metric = BinnedCalibrationError().to("meta")
    confidence = torch.rand(32, device="meta")
    metric.update(confidence, torch.ones(32, dtype=torch.bool, device="meta"), weight=confidence > 0)
    mean = WeightedMean().to("meta")
    mean.update(confidence, confidence > 0)
    brier = BrierScore().to("meta")
    brier.update(confidence, weight=confidence > 0)
    assert metric.count.device.type == mean.value_sum.device.type == brier.value_sum.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_top_label_update_does_not_sync_on_cuda() -> None:
    g = torch.Generator().manual_seed(13)
    confidence, correct, mask = (
        0.5 + torch.rand(1000, generator=g) / 2,
        torch.rand(1000, generator=g) < 0.8,
        torch.rand(1000, generator=g) < 0.9,
    )
    metric, mean = BinnedCalibrationError().cuda(), WeightedMean().cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        metric.update(confidence.cuda(), correct.cuda(), weight=mask.cuda())
        mean.update(confidence.cuda(), mask.cuda())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # Two-class probabilities whose top-1 is ``confidence``, right exactly where ``correct``.
    preds, target = torch.stack([confidence, 1 - confidence], 1), (~correct).long()
    torch.testing.assert_close(metric.compute().cpu(), _reference(preds[mask], target[mask], 15, "l1"))
    torch.testing.assert_close(mean.compute().cpu(), confidence[mask].double().mean().float())


def test_multiple_updates_equal_one_update() -> None:
    logits, target = _logits(900, 5, seed=5)
    whole = BinnedCalibrationError(15, "l2")
    whole.update(logits, target)
    parts = BinnedCalibrationError(15, "l2")
    for chunk_logits, chunk_target in zip(logits.split(128), target.split(128), strict=True):
        parts.update(chunk_logits, chunk_target)
    for a, b in zip(parts.bin_stats(), whole.bin_stats(), strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(parts.compute(), whole.compute())


def test_state_size_is_independent_of_n() -> None:
    sizes = []
    for n in (10, 10_000):
        metric = BinnedCalibrationError(n_bins=15)
        metric.update(*_logits(n, 3, seed=n))
        sizes.append({name: getattr(metric, name).numel() for name in metric._defaults})
    assert sizes[0] == sizes[1] == {"count": 16, "conf_sum": 16, "correct_sum": 16}
    assert all(metric._reductions[name] is not None for name in metric._defaults)


def test_merged_states_equal_one_metric_over_both_halves() -> None:
    # What the DDP sum-reduction does to two ranks' states.
    logits, target = _logits(1000, 4, seed=6)
    first, second, whole = (BinnedCalibrationError(15, "max") for _ in range(3))
    first.update(logits[:600], target[:600])
    second.update(logits[600:], target[600:])
    whole.update(logits, target)
    summed = BinnedCalibrationError(15, "max")
    summed.update(torch.empty(0), torch.empty(0, dtype=torch.bool))
    for name in ("count", "conf_sum", "correct_sum"):
        setattr(summed, name, getattr(first, name) + getattr(second, name))
    torch.testing.assert_close(summed.compute(), whole.compute())
    first.merge_state(second)
    torch.testing.assert_close(first.compute(), _reference(logits, target, 15, "max"))


def test_pickle_round_trip() -> None:
    metric = BinnedCalibrationError(12, "l2", ignore_index=-1)
    metric.update(*_logits(200, 3, seed=7))
    clone = pickle.loads(pickle.dumps(metric))
    torch.testing.assert_close(clone.compute(), metric.compute())
    assert (clone.n_bins, clone.norm, clone.ignore_index) == (12, "l2", -1)


def test_empty_metric_is_zero() -> None:
    metric = BinnedCalibrationError()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert metric.compute().item() == 0.0
    metric.update(torch.tensor([0.9]), torch.tensor([True]), weight=torch.tensor([0.0]))
    assert metric.compute().item() == 0.0


def test_collection_shares_one_state() -> None:
    logits, target = _logits(300, 5, seed=8)
    collection = MetricCollection(
        {"ece": BinnedCalibrationError(), "mce": BinnedCalibrationError(norm="max"), "oc": Overconfidence()},
        compute_groups=True,
    )
    collection.update(*_top_label(logits, target))
    collection.update(*_top_label(logits, target))
    assert len(collection.compute_groups) == 1
    values = collection.compute()
    torch.testing.assert_close(values["ece"], _reference(torch.cat([logits] * 2), torch.cat([target] * 2), 15, "l1"))
    confidence, correct = _top_label(logits, target)
    torch.testing.assert_close(values["oc"], (confidence.double().mean() - correct.double().mean()).float())


def test_bin_stats_views() -> None:
    stats = BinStats(*(torch.tensor(v, dtype=torch.float64) for v in ([2.0, 0.0, 1.0], [0.5, 0.0, 0.9], [1.0, 0, 1])))
    assert stats.n_bins == 2
    torch.testing.assert_close(stats.edges, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(stats.confidence, torch.tensor([0.25, 0.0, 0.9], dtype=torch.float64))
    torch.testing.assert_close(stats.accuracy, torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(stats.overall_accuracy(), torch.tensor(2 / 3))
    torch.testing.assert_close(stats.calibration_error("l1"), torch.tensor(2 / 3 * 0.25 + 1 / 3 * 0.1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_bins": 0}, "Expected argument `n_bins` to be an integer larger than 0, but got 0"),
        ({"n_bins": 2.5}, "`n_bins`"),
        ({"norm": "l3"}, r"Expected argument `norm` to be one of \('l1', 'l2', 'max'\), but got l3"),
        ({"ignore_index": "x"}, "`ignore_index`"),
    ],
)
def test_argument_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BinnedCalibrationError(**kwargs)


def test_tensor_validation() -> None:
    metric = BinnedCalibrationError()
    with pytest.raises(ValueError, match="shapes"):
        metric.update(torch.rand(4, 3), torch.zeros(5, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="`target` to be a bool tensor"):
        metric.update(torch.rand(4), torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        metric.update(torch.rand(4, 3), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(TypeError, match="`preds` to be a floating tensor"):
        metric.update(torch.ones(4, 3, dtype=torch.long), torch.tensor([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="`weight`"):
        metric.update(torch.rand(4), torch.ones(4, dtype=torch.bool), weight=torch.ones(3))
    with pytest.raises(ValueError, match="`weight` to have the shape of `target`"):
        metric.update(torch.rand(4, 3), torch.tensor([0, 1, 2, 1]), weight=torch.ones(1))


# --------------------------------------------------------------------------------------------------------------
# AdaptiveCalibrationError against an exact equal-mass split
# --------------------------------------------------------------------------------------------------------------


def test_adaptive_exact_when_fine_bins_do_not_split_mass() -> None:
    n_bins, per_group, resolution = 8, 50, 1000
    g = torch.Generator().manual_seed(9)
    # Group g's samples lie in fine bins [60g + 1, 60g + 50) of width 1e-3, so no fine bin holds two groups' samples.
    low = (60 * torch.arange(n_bins).repeat_interleave(per_group) + 1) / resolution
    confidence = (low + torch.rand(n_bins * per_group, generator=g) * 0.049).float()
    correct = torch.rand(n_bins * per_group, generator=g) < confidence
    metric = AdaptiveCalibrationError(n_bins=n_bins, resolution=resolution)
    shuffle = torch.randperm(confidence.numel(), generator=g)  # the state must not depend on the order
    metric.update(confidence[shuffle], correct[shuffle])
    assert metric.approximation_bound().item() == 0.0
    torch.testing.assert_close(
        metric.compute(), torch.tensor(adaptive_ece_reference(confidence, correct, n_bins), dtype=torch.float32)
    )


@pytest.mark.parametrize("labels", ["random", "from-the-softmax"])
@pytest.mark.parametrize("resolution", [100, 1000, 10_000])
def test_adaptive_equals_its_definition_and_lies_within_its_bound_on_random_data(resolution: int, labels: str) -> None:
    """The fine histogram merged into equal-mass groups as the metric's docstring defines it, written out in NumPy
    (helpers.adaptive_ece_reference); and within the documented bound of the exact equal-mass split (at resolution 100
    the bound is 0.43 on a value of 0.56: it cannot tell a wrong grouping from a right one).

    Random labels make every group over-confident, so that any grouping gives mean confidence minus accuracy; labels
    drawn from the softmax (calibrated up to noise) give gaps of both signs, whose sum depends on the grouping."""
    logits, target = _logits(3000, 10, seed=resolution)
    if labels == "from-the-softmax":
        target = torch.multinomial(logits.softmax(-1), 1, generator=torch.Generator().manual_seed(resolution))[:, 0]
    confidence, correct = _top_label(logits, target)
    metric = AdaptiveCalibrationError(n_bins=15, resolution=resolution)
    metric.update(confidence, correct)
    # measured |metric - reference|: at most 1.8e-8 (random labels; the float32 rounding of the result), 8.9e-10
    # (labels from the softmax), where grouping each fine bin by the start of its mass instead is 3e-4 to 3e-3 off
    expected = adaptive_ece_reference(confidence, correct, 15, resolution=resolution)
    assert metric.compute().item() == pytest.approx(expected, abs=1e-7)
    error = abs(metric.compute().item() - adaptive_ece_reference(confidence, correct, 15))
    assert error <= metric.approximation_bound().item() + 1e-6


def test_adaptive_hand_computed_and_validation() -> None:
    metric = AdaptiveCalibrationError(n_bins=2, resolution=100)
    metric.update(torch.tensor([0.3, 0.4, 0.8, 0.9]), torch.tensor([False, True, True, True]))
    torch.testing.assert_close(metric.compute(), torch.tensor(0.5 * abs(0.35 - 0.5) + 0.5 * abs(0.85 - 1.0)))
    with pytest.raises(ValueError, match="`resolution` to be an integer of at least `n_bins`=15, but got 10"):
        AdaptiveCalibrationError(resolution=10)


# --------------------------------------------------------------------------------------------------------------
# BrierScore and WeightedMean
# --------------------------------------------------------------------------------------------------------------


def _sklearn_brier(probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    weight = None if mask is None else mask.double().numpy()
    labels = np.arange(probs.shape[1])
    probs = probs.double() / probs.double().sum(-1, keepdim=True)  # float32 softmax misses sklearn's sum-to-one check
    value = brier_score_loss(
        target.numpy(), probs.double().numpy(), labels=labels, sample_weight=weight, scale_by_half=False
    )
    return torch.tensor(value, dtype=torch.float32)


def test_brier_hand_computed() -> None:
    # (0.8-1)^2 + 0.2^2 = 0.08 and (0.4-1)^2 + 0.6^2 = 0.72
    torch.testing.assert_close(
        brier_score(torch.tensor([[0.8, 0.2], [0.4, 0.6]]), torch.tensor([0, 0])), torch.tensor(0.4)
    )


@pytest.mark.parametrize("as_probs", [False, True])
def test_brier_equals_sklearn(as_probs: bool) -> None:
    logits, target = _logits(500, 6, seed=10)
    probs = logits.softmax(-1)
    metric = BrierScore(ignore_index=-100)
    for chunk, chunk_target in zip((probs if as_probs else logits).split(100), target.split(100), strict=True):
        metric.update(chunk, chunk_target)
    torch.testing.assert_close(metric.compute(), _sklearn_brier(probs, target))


def test_brier_per_position_form_with_mask_equals_ignore_index() -> None:
    logits, target = _logits(300, 4, seed=11)
    probs = logits.softmax(-1)
    ignored = target.clone()
    ignored[::4] = -100
    mask = ignored != -100
    per_position = ((probs - torch.nn.functional.one_hot(target, 4)) ** 2).sum(-1)
    per_position[~mask] = float("nan")
    by_values, by_targets = BrierScore(), BrierScore(ignore_index=-100)
    by_values.update(per_position, weight=mask)
    by_targets.update(logits, ignored)
    expected = _sklearn_brier(probs, target, mask)
    torch.testing.assert_close(by_values.compute(), expected)
    torch.testing.assert_close(by_targets.compute(), expected)


def test_weighted_mean_is_count_weighted() -> None:
    values = torch.randn(1000, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    sizes = [1, 10, 100, 389, 500]
    per_rank = [WeightedMean(), WeightedMean()]
    for i, chunk in enumerate(values.split(sizes)):
        per_rank[i % 2].update(chunk.mean(), len(chunk))  # batch mean weighted by its count
    per_rank[0].merge_state(per_rank[1])
    torch.testing.assert_close(per_rank[0].compute(), values.mean().float())


def test_weighted_mean_masks_and_empty() -> None:
    metric = WeightedMean()
    metric.update(torch.tensor([1.0, float("nan"), 3.0]), torch.tensor([True, False, True]))
    metric.update(5.0)
    torch.testing.assert_close(metric.compute(), torch.tensor(3.0))
    empty = WeightedMean()
    empty.update(torch.tensor([float("inf")]), torch.tensor([0.0]))
    assert empty.compute().item() == 0.0


# --------------------------------------------------------------------------------------------------------------
# Logged through Lightning
# --------------------------------------------------------------------------------------------------------------


def test_logged_epoch_values_through_lightning() -> None:
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    logits, target = _logits(230, 4, seed=14)  # 230 = batches of 64, 64, 64, 38: unequal batch sizes

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 4)  # unused: the "model output" is the stored logits
            self.ece, self.acc, self.brier = BinnedCalibrationError(), WeightedMean(), BrierScore()

        def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
            z, y = batch
            confidence, correct = _top_label(z, y)
            self.ece.update(confidence, correct)
            self.acc.update(correct.float().mean(), len(y))  # batch mean weighted by its count
            self.brier.update(z, y)
            self.log_dict({"val/ece": self.ece, "val/acc": self.acc, "val/brier": self.brier}, on_epoch=True)

    trainer = quiet_trainer()
    trainer.validate(Module(), DataLoader(TensorDataset(logits, target), batch_size=64), verbose=False)
    logged = trainer.callback_metrics
    torch.testing.assert_close(logged["val/ece"], _reference(logits, target, 15, "l1"))
    torch.testing.assert_close(logged["val/acc"], (logits.argmax(1) == target).float().mean())
    torch.testing.assert_close(logged["val/brier"], _sklearn_brier(logits.softmax(-1), target))


def test_weighted_mean_forward_returns_the_batch_mean_and_accumulates() -> None:
    metric = WeightedMean()
    first = metric(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 3.0]))  # batch: (1 + 9) / 4
    second = metric(torch.tensor(5.0), torch.tensor(2.0))
    assert first.item() == pytest.approx(2.5)
    assert second.item() == pytest.approx(5.0)
    assert metric.compute().item() == pytest.approx((1 + 9 + 10) / 6)


# --------------------------------------------------------------------------------------------------------------
# Binary form against torchmetrics' BinaryCalibrationError
# --------------------------------------------------------------------------------------------------------------


def _edge_probabilities(n: int, seed: int = 0) -> Tensor:
    """Random probabilities plus every float32 bin edge of 15 bins, their neighbours, 0 and exactly 1."""
    g = torch.Generator().manual_seed(seed)
    edges = torch.linspace(0, 1, 16)
    near = torch.cat([edges, torch.nextafter(edges, torch.ones(16)), torch.nextafter(edges, torch.zeros(16))])
    return torch.cat([torch.rand(n, generator=g), near.clamp(0, 1), torch.tensor([1.0, 1.0, 0.0])])


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("target_dtype", [torch.float32, torch.bool])
def test_binned_state_in_binary_form_equals_torchmetrics(norm, target_dtype):
    p = _edge_probabilities(300)
    y = (torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) < p).long()
    ours = BinnedCalibrationError(n_bins=15, norm=norm)
    for part_p, part_y in zip(p.split(37), y.split(37), strict=True):  # several updates: sums, no samples stored
        ours.update(part_p, part_y.to(target_dtype))
    expected = BinaryCalibrationError(n_bins=15, norm=norm)(p, y)
    torch.testing.assert_close(ours.compute(), expected, rtol=1e-6, atol=1e-7)
