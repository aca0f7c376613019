"""Calibration and epoch-mean metrics whose state does not grow with the number of samples.

Every metric here keeps sums (``dist_reduce_fx="sum"``) so that memory and DDP traffic are O(bins), and every
update can run without a device-host sync in the "top-label" form the mixin uses each training step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, cast, get_args

import torch
from torch import Tensor, nn
from torchmetrics import Metric

Norm = Literal["l1", "l2", "max"]
_ALLOWED_NORMS: tuple[str, ...] = get_args(Norm)
# Sums are kept in float64: a float32 count stops growing at 2**24 samples, and confidence sums lose digits long
# before that. gloo and NCCL all-reduce float64; Apple MPS has no float64, so these states stay off MPS.
_STATE_DTYPE = torch.float64
# Up to this many confidences, ``torch.bucketize`` bins them faster than the floor-and-fix method of `_bin_index`
# (2-core CPU, 15 bins: 3.5 µs against 19 µs at 64 values, 10 µs against 36 µs at 4096; slower from ~32768 on).
_BUCKETIZE_MAX = 1 << 14


# ----------------------------------------------------------------------------------------------------------------
# Argument and tensor validation
# ----------------------------------------------------------------------------------------------------------------


def binned_calibration_arg_validation(n_bins: int, norm: str = "l1", ignore_index: int | None = None) -> None:
    if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"Expected argument `n_bins` to be an integer larger than 0, but got {n_bins}")
    if norm not in _ALLOWED_NORMS:
        raise ValueError(f"Expected argument `norm` to be one of {_ALLOWED_NORMS}, but got {norm}.")
    if ignore_index is not None and (not isinstance(ignore_index, int) or isinstance(ignore_index, bool)):
        raise ValueError(f"Expected argument `ignore_index` to either be `None` or an integer, but got {ignore_index}")


def _top_label_tensor_validation(confidence: Tensor, correct: Tensor, weight: Tensor | None) -> None:
    # Metadata checks only: value checks would sync with the device every training step.
    if not confidence.is_floating_point():
        raise TypeError(f"Expected argument `preds` to be a floating tensor of confidences, but got {confidence.dtype}")
    if correct.dtype != torch.bool and not correct.is_floating_point():
        raise TypeError(
            f"Expected argument `target` to be a bool tensor (top-1 prediction correct) or a floating one (binary: the "
            f"label in [0, 1] of the positive class) when it has the shape of `preds`, but got dtype {correct.dtype}"
        )
    if weight is not None and weight.shape != confidence.shape:
        raise ValueError(
            f"Expected argument `weight` to have the shape of `preds` {tuple(confidence.shape)}, "
            f"but got {tuple(weight.shape)}"
        )


def _multiclass_tensor_validation(preds: Tensor, target: Tensor, ignore_index: int | None) -> None:
    if not preds.is_floating_point():
        raise TypeError(
            f"Expected argument `preds` to be a floating tensor of probabilities/logits, but got {preds.dtype}"
        )
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(f"Expected argument `target` to be an integer tensor of class indices, but got {target.dtype}")
    if preds.shape[0] != target.shape[0] or preds.shape[2:] != target.shape[1:]:
        raise ValueError(
            f"Expected argument `target` to have shape (N, d...) matching `preds` (N, C, d...) = {tuple(preds.shape)}, "
            f"but got {tuple(target.shape)}"
        )
    num_classes = preds.shape[1]
    valid = target if ignore_index is None else target[target != ignore_index]
    # This check syncs; it is skipped with ``validate_args=False`` and never runs in the top-label form.
    if valid.numel() and (valid.min() < 0 or valid.max() >= num_classes):
        raise ValueError(
            f"Expected argument `target` to hold class indices in [0, {num_classes}) or `ignore_index`="
            f"{ignore_index}, but got values in [{int(valid.min())}, {int(valid.max())}]"
        )


# ----------------------------------------------------------------------------------------------------------------
# Input forms
# ----------------------------------------------------------------------------------------------------------------


def _normalize_probabilities(preds: Tensor) -> Tensor:
    """Softmax over dim 1 when ``preds`` are not all in [0, 1], the rule torchmetrics applies to multiclass input."""
    if preds.numel() == 0:  # a process without samples (uneven DDP shares): nothing to normalise
        return preds
    if preds.device.type == "cpu":
        # On CPU a Python branch is free and saves the softmax when ``preds`` already are probabilities; one
        # aminmax pass is about 7× faster than torchmetrics' two comparisons and ``all`` (1M × 10, 2 threads).
        low, high = torch.aminmax(preds)
        return preds if bool(low >= 0) and bool(high <= 1) else preds.softmax(dim=1)
    return torch.where(((preds < 0) | (preds > 1)).any(), preds.softmax(dim=1), preds)


def _flatten_multiclass(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Flatten (N, C, d...) / (N, d...) to (M, C) / (M,) as torchmetrics does."""
    return torch.movedim(preds, 1, -1).reshape(-1, preds.shape[1]), target.reshape(-1)


def _valid_weight(target: Tensor, ignore_index: int | None, weight: Tensor | None) -> Tensor | None:
    """Fold ignored positions into a weight instead of indexing them away (indexing would sync)."""
    if ignore_index is None:
        return None if weight is None else weight.reshape(-1)
    valid = target != ignore_index
    return valid if weight is None else valid * weight.reshape(-1)


def _top_label(
    preds: Tensor, target: Tensor, ignore_index: int | None = None, weight: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Top-1 confidence, correctness and weight from multiclass probabilities or logits.

    Shape:
        - preds: :math:`(N, C)` or :math:`(N, C, d_1, ...)`.
        - target: :math:`(N)` or :math:`(N, d_1, ...)`; ``weight`` the same.
        - Output: three tensors of shape :math:`(M)`, :math:`M = N \\cdot d_1 \\cdots`; the weight is ``None`` when
          there is neither ``ignore_index`` nor ``weight``.
    """
    preds, flat_target = _flatten_multiclass(preds, target)
    confidence, prediction = _normalize_probabilities(preds).max(dim=1)
    return confidence, prediction.eq(flat_target), _valid_weight(flat_target, ignore_index, weight)


def _as_top_label(
    preds: Tensor, target: Tensor, ignore_index: int | None, weight: Tensor | None, validate_args: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Dispatch on the input form: multiclass ``(N, C, ...)``/``(N, ...)`` or top-label ``(M,)``/``(M,)``."""
    if preds.ndim == target.ndim + 1:
        if validate_args:
            _multiclass_tensor_validation(preds, target, ignore_index)
        if weight is not None and weight.shape != target.shape:
            raise ValueError(
                f"Expected argument `weight` to have the shape of `target` {tuple(target.shape)}, "
                f"but got {tuple(weight.shape)}"
            )
        return _top_label(preds, target, ignore_index, weight)
    if preds.shape == target.shape:
        _top_label_tensor_validation(preds, target, weight)
        return preds.reshape(-1), target.reshape(-1), None if weight is None else weight.reshape(-1)
    raise ValueError(
        "Expected `preds` (N, C, ...) with `target` (N, ...), or `preds` and `target` of equal shape (top-label "
        f"confidence and correctness), but got shapes {tuple(preds.shape)} and {tuple(target.shape)}"
    )


# ----------------------------------------------------------------------------------------------------------------
# Binned (uniform-width) calibration error
# ----------------------------------------------------------------------------------------------------------------


def _bin_index(confidence: Tensor, n_bins: int) -> Tensor:
    """Bin of each confidence, exactly as torchmetrics' ``_binning_bucketize`` assigns it.

    Bins are ``[e_k, e_{k+1})`` on float32 ``linspace(0, 1, n_bins + 1)`` edges ``e``; a confidence of exactly 1.0
    lands in an extra slot ``n_bins`` of its own (torchmetrics allocates ``n_bins + 1`` slots). Values below 0 go to
    slot 0 and above 1 to slot ``n_bins``, clamped rather than checked (a check would sync); a NaN lands in some
    slot, so mask it with a zero weight.
    """
    confidence = confidence.float()  # torchmetrics bins float32 confidences against float32 edges
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float32, device=confidence.device)
    if confidence.numel() <= _BUCKETIZE_MAX:  # one search op beats the dozen ops below on small batches
        return torch.bucketize(confidence, edges, right=True).sub_(1).clamp_(0, n_bins)
    upper = torch.cat([edges[1:], edges.new_full((1,), torch.inf)])
    # ``floor(c * n)`` is off by at most one next to an edge (rounding of the product and of ``linspace``); one
    # comparison each way with the real edges fixes it. Same bins as ``torch.bucketize(c, edges, right=True) - 1``
    # (tested on every edge and its float32 neighbours), at about half the CPU time (1M values, one thread).
    index = (confidence * n_bins).long().clamp_(0, n_bins)
    index.sub_((confidence < edges[index]).long()).clamp_(min=0)
    return index.add_((confidence >= upper[index]).long())


def _binned_calibration_update(
    confidence: Tensor, correct: Tensor, n_bins: int, weight: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Per-bin sums of weight, weighted confidence and weighted correctness.

    .. math::
        n_b = \sum_{i \in b} w_i, \quad s_b = \sum_{i \in b} w_i c_i, \quad a_b = \sum_{i \in b} w_i [\hat y_i = y_i]

    No host sync and no data-dependent branch: masked positions enter with weight 0 (their confidence is zeroed
    first, so a NaN there cannot leak into the sums).

    Shape:
        - confidence, correct, weight: :math:`(M)`.
        - Output: three float64 tensors of shape :math:`(n\_bins + 1)`.
    """
    index = _bin_index(confidence, n_bins)
    w = None
    if weight is None:
        conf, hit = confidence.to(_STATE_DTYPE), correct.to(_STATE_DTYPE)
    elif weight.dtype == torch.bool:  # a mask (the mixin's valid positions): two ops fewer than a weight
        w = weight.to(_STATE_DTYPE)
        conf = torch.where(weight, confidence, 0.0).to(_STATE_DTYPE)
        # bool: top-label correctness; floating: binary labels, soft ones included
        hit = (correct & weight if correct.dtype == torch.bool else torch.where(weight, correct, 0.0)).to(_STATE_DTYPE)
    else:
        w = weight.to(_STATE_DTYPE)
        conf = torch.where(w != 0, confidence.to(_STATE_DTYPE), 0.0) * w
        hit = correct.to(_STATE_DTYPE) * w
    slots = n_bins + 1
    if index.device.type == "cpu":
        # bincount's own loop beats float64 scatters on CPU; on CUDA it would read the maximum index back to the host
        count = torch.bincount(index, minlength=slots).to(_STATE_DTYPE) if w is None else index.bincount(w, slots)
        return count, index.bincount(conf, slots), index.bincount(hit, slots)
    # scatter_add_ measured ~9x faster than index_add_ for float64 (1M values, torch 2.13)
    zeros = conf.new_zeros(slots)
    count = zeros.scatter_add(0, index, torch.ones_like(conf) if w is None else w)
    return count, zeros.scatter_add(0, index, conf), zeros.scatter_add(0, index, hit)


def _safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with 0 where ``den == 0`` (no sync, no NaN)."""
    return torch.where(den != 0, num / torch.where(den != 0, den, 1.0), 0.0)


def _binned_calibration_compute(count: Tensor, conf_sum: Tensor, correct_sum: Tensor, norm: Norm = "l1") -> Tensor:
    r"""Calibration error from per-bin sums, as torchmetrics' ``_ce_compute`` computes it from samples.

    .. math::
        \text{ECE} = \sum_b \frac{n_b}{N} |\bar a_b - \bar c_b|, \quad
        \text{RMSCE} = \sqrt{\sum_b \frac{n_b}{N} (\bar a_b - \bar c_b)^2}, \quad
        \text{MCE} = \max_b |\bar a_b - \bar c_b|

    With no samples the result is 0 (not NaN), the convention the loss uses so that logging never poisons a run.
    """
    gap = _safe_divide(correct_sum, count) - _safe_divide(conf_sum, count)
    prop = _safe_divide(count, count.sum())
    if norm == "l1":
        value = (gap.abs() * prop).sum()
    elif norm == "l2":
        value = (gap.square() * prop).sum().clamp(min=0).sqrt()
    else:
        value = gap.abs().max()
    return value.to(torch.get_default_dtype())


def binned_calibration_error(
    preds: Tensor,
    target: Tensor,
    n_bins: int = 15,
    norm: Norm = "l1",
    ignore_index: int | None = None,
    *,
    weight: Tensor | None = None,
    validate_args: bool = True,
) -> Tensor:
    r"""Top-label calibration error with ``n_bins`` uniform bins; equals torchmetrics' multiclass calibration error.

    .. math::
        \text{ECE} = \sum_b \frac{n_b}{N} \left| \text{acc}_b - \text{conf}_b \right|

    ``norm="l2"`` gives the RMSCE :math:`\sqrt{\sum_b \frac{n_b}{N}(\text{acc}_b - \text{conf}_b)^2}` and
    ``norm="max"`` the MCE :math:`\max_b |\text{acc}_b - \text{conf}_b|`. Bins are ``[k/n, (k+1)/n)``; a confidence
    of exactly 1.0 is kept in a last slot of its own, as torchmetrics does.

    Args:
        preds: Probabilities or logits (softmax is applied when values fall outside [0, 1]), or top-1 confidences.
        target: Class indices, or (top-label form, same shape as ``preds``) bool correctness of the top-1 prediction;
            or (binary form) a floating label in [0, 1] with ``preds`` the probability of the positive class, which
            equals torchmetrics' ``binary_calibration_error`` on hard labels.
        n_bins: Number of uniform bins in [0, 1].
        norm: ``"l1"`` (ECE), ``"l2"`` (RMSCE) or ``"max"`` (MCE).
        ignore_index: Target value whose positions are left out (multiclass form).
        weight: Optional 0/1 (or bool) mask with the shape of ``target``; 0 leaves a position out without indexing.
        validate_args: Check the class indices' range (syncs in the multiclass form).

    Returns:
        Scalar tensor; 0 when no position counts.

    Raises:
        ValueError: On a bad ``n_bins``, ``norm`` or ``ignore_index``, or shapes that match neither form.
        TypeError: On tensors of the wrong dtype.

    Shape:
        - preds: :math:`(N, C, d_1, ...)` with target :math:`(N, d_1, ...)`; or preds and target :math:`(M)`.

    Example:
        >>> preds = torch.tensor([[0.25, 0.20, 0.55], [0.55, 0.05, 0.40], [0.10, 0.30, 0.60], [0.90, 0.05, 0.05]])
        >>> target = torch.tensor([0, 1, 2, 0])
        >>> binned_calibration_error(preds, target, n_bins=3, norm="l1")
        tensor(0.2000)
        >>> binned_calibration_error(torch.tensor([0.9, 0.6]), torch.tensor([True, False]), n_bins=10)
        tensor(0.3500)
    """
    binned_calibration_arg_validation(n_bins, norm, ignore_index)
    confidence, correct, w = _as_top_label(preds, target, ignore_index, weight, validate_args)
    return _binned_calibration_compute(*_binned_calibration_update(confidence, correct, n_bins, w), norm=norm)


# ----------------------------------------------------------------------------------------------------------------
# Adaptive (equal-mass) calibration error
# ----------------------------------------------------------------------------------------------------------------


def _adaptive_groups(count: Tensor, n_bins: int) -> Tensor:
    """Equal-mass group of each fine bin: the group holding the middle of its mass (fine bins are indivisible)."""
    total = count.sum()
    middle = count.cumsum(0) - count / 2
    return torch.floor(n_bins * _safe_divide(middle, total)).clamp(0, n_bins - 1).long()


def _adaptive_calibration_compute(count: Tensor, conf_sum: Tensor, correct_sum: Tensor, n_bins: int) -> Tensor:
    r"""Equal-mass ECE from a fine histogram: fine bins merged into ``n_bins`` groups of about equal mass.

    .. math::
        \text{ACE} = \sum_{g=1}^{G} \frac{n_g}{N} \left| \text{acc}_g - \text{conf}_g \right|,
        \quad n_g \approx N / G
    """
    group = _adaptive_groups(count, n_bins)
    zeros = count.new_zeros(n_bins)
    return _binned_calibration_compute(
        zeros.scatter_add(0, group, count),
        zeros.scatter_add(0, group, conf_sum),
        zeros.scatter_add(0, group, correct_sum),
        norm="l1",
    )


def _adaptive_calibration_bound(count: Tensor, n_bins: int) -> Tensor:
    r"""Upper bound on ``|ACE(fine histogram) - ACE(exact equal-mass split)|``.

    Only samples of fine bins whose mass interval :math:`(S_{j-1}, S_j)` contains a cut :math:`gN/G` can sit in a
    different group than in the exact split; moving one sample changes two group terms by at most :math:`1/N`
    each, so the difference is at most :math:`2 \sum_{j \text{ straddling}} n_j / N`.
    """
    total = count.sum()
    end = count.cumsum(0)
    lo, hi = n_bins * _safe_divide(end - count, total), n_bins * _safe_divide(end, total)
    straddles = (torch.ceil(hi) - torch.floor(lo) - 1 > 0) & (count > 0)
    return (2 * _safe_divide((count * straddles).sum(), total)).to(torch.get_default_dtype())


# ----------------------------------------------------------------------------------------------------------------
# Brier score and weighted means
# ----------------------------------------------------------------------------------------------------------------


def _brier_per_position(preds: Tensor, target: Tensor) -> Tensor:
    r"""Multiclass Brier value of each position, :math:`\sum_c (q_c - [c = y])^2 = \sum_c q_c^2 - 2 q_y + 1`.

    Shape:
        - preds: :math:`(M, C)` probabilities; target: :math:`(M)` (any value where the weight will be 0).
        - Output: :math:`(M)`.
    """
    safe_target = target.clamp(0, preds.shape[1] - 1).unsqueeze(1)
    return preds.square().sum(dim=1) - 2 * preds.gather(1, safe_target).squeeze(1) + 1


def _weighted_mean_update(value: Tensor, weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Sums of ``value * weight`` and of ``weight``; positions of weight 0 never contribute, even NaN ones."""
    value = value.to(_STATE_DTYPE)
    if weight is None:
        return value.sum(), value.new_tensor(float(value.numel()))
    w = torch.broadcast_to(weight.to(_STATE_DTYPE), value.shape)
    return (torch.where(w != 0, value, 0.0) * w).sum(), w.sum()


def brier_score(
    preds: Tensor,
    target: Tensor,
    ignore_index: int | None = None,
    *,
    weight: Tensor | None = None,
    validate_args: bool = True,
) -> Tensor:
    r"""Multiclass Brier score (Brier, 1950): mean over positions of the squared distance to the one-hot label.

    .. math::
        \text{BS} = \frac{1}{N} \sum_{i=1}^{N} \sum_{c=1}^{C} (q_{ic} - [c = y_i])^2 \in [0, 2]

    Args:
        preds: Probabilities or logits (softmax applied when values fall outside [0, 1]).
        target: Class indices.
        ignore_index: Target value whose positions are left out (multiclass form).
        weight: Optional per-position weight (0/1 mask or counts) of the shape of ``target``.
        validate_args: Check the class indices' range (syncs).

    Returns:
        Scalar tensor; 0 when the total weight is 0.

    Shape:
        - preds: :math:`(N, C, d_1, ...)` with target :math:`(N, d_1, ...)`.

    Example:
        >>> brier_score(torch.tensor([[0.8, 0.2], [0.4, 0.6]]), torch.tensor([0, 0]))
        tensor(0.4000)
    """
    binned_calibration_arg_validation(1, "l1", ignore_index)
    value, w = _brier_update(preds, target, ignore_index, weight, validate_args)
    return _weighted_mean_compute(*_weighted_mean_update(value, w))


def _brier_update(
    preds: Tensor, target: Tensor, ignore_index: int | None, weight: Tensor | None, validate_args: bool
) -> tuple[Tensor, Tensor | None]:
    """Per-position Brier values and weights from either input form."""
    if preds.ndim != target.ndim + 1:
        raise ValueError(
            f"Expected `preds` (N, C, ...) with `target` (N, ...), but got shapes {tuple(preds.shape)} and "
            f"{tuple(target.shape)}; per-position values go to `BrierScore.update(values, weight=...)`"
        )
    if validate_args:
        _multiclass_tensor_validation(preds, target, ignore_index)
    probs, flat_target = _flatten_multiclass(preds, target)
    return _brier_per_position(_normalize_probabilities(probs), flat_target), _valid_weight(
        flat_target, ignore_index, weight
    )


def _weighted_mean_compute(value_sum: Tensor, weight_sum: Tensor) -> Tensor:
    return _safe_divide(value_sum, weight_sum).to(torch.get_default_dtype())


# ----------------------------------------------------------------------------------------------------------------
# Metric classes (thin: states and calls to the functions above)
# ----------------------------------------------------------------------------------------------------------------


class BinStats(NamedTuple):
    """Per-bin sums of a binned calibration state; slot ``n_bins`` holds confidences of exactly 1.0.

    Everything a reliability diagram or a report needs is derived from these three (float64) tensors.
    """

    counts: Tensor
    conf_sums: Tensor
    correct_sums: Tensor

    @property
    def n_bins(self) -> int:
        return self.counts.numel() - 1

    @property
    def edges(self) -> Tensor:
        """The ``n_bins + 1`` bin edges in [0, 1]."""
        return torch.linspace(0, 1, self.n_bins + 1, dtype=_STATE_DTYPE)

    @property
    def confidence(self) -> Tensor:
        """Mean confidence per slot (0 where empty)."""
        return _safe_divide(self.conf_sums, self.counts)

    @property
    def accuracy(self) -> Tensor:
        """Accuracy per slot (0 where empty)."""
        return _safe_divide(self.correct_sums, self.counts)

    @property
    def total(self) -> Tensor:
        return self.counts.sum()

    def calibration_error(self, norm: Norm = "l1") -> Tensor:
        """The value :class:`BinnedCalibrationError` computes from this state."""
        return _binned_calibration_compute(self.counts, self.conf_sums, self.correct_sums, norm)

    def overall_accuracy(self) -> Tensor:
        return _safe_divide(self.correct_sums.sum(), self.total).to(torch.get_default_dtype())

    def overconfidence(self) -> Tensor:
        r"""Signed mean confidence minus accuracy, :math:`\frac{1}{N}\sum_i (c_i - [\hat y_i = y_i])`."""
        return _safe_divide(self.conf_sums.sum() - self.correct_sums.sum(), self.total).to(torch.get_default_dtype())

    def cpu(self) -> BinStats:
        return BinStats(*(t.detach().cpu() for t in self))

    def to_dict(self) -> dict[str, Any]:
        """Plain lists of the sums (and the edges), for JSON: ``reliability.json`` and ``ls-report`` read them.

        Example:
            >>> stats = BinStats(torch.tensor([1.0, 0, 0]), torch.tensor([0.4, 0, 0]), torch.tensor([1.0, 0, 0]))
            >>> stats.to_dict()["edges"]
            [0.0, 0.5, 1.0]
            >>> BinStats.from_dict(stats.to_dict()).calibration_error()
            tensor(0.6000)
        """
        stats = self.cpu()
        return {
            "n_bins": stats.n_bins,
            "edges": stats.edges.tolist(),
            "counts": stats.counts.tolist(),
            "conf_sums": stats.conf_sums.tolist(),
            "correct_sums": stats.correct_sums.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BinStats:
        """The :class:`BinStats` written by :meth:`to_dict` (float64).

        Raises:
            ValueError: When a list is missing or the three lists differ in length.
        """
        try:
            parts = [torch.tensor(data[key], dtype=torch.float64) for key in ("counts", "conf_sums", "correct_sums")]
        except (KeyError, TypeError) as error:
            raise ValueError(f"Expected per-bin lists counts, conf_sums and correct_sums, but got {error!r}") from None
        if len({p.shape for p in parts}) != 1 or parts[0].ndim != 1 or parts[0].numel() < 2:
            shapes = [tuple(p.shape) for p in parts]
            raise ValueError(f"Expected three per-bin lists of one length >= 2, but got shapes {shapes}")
        return cls(*parts)


class _TopLabelBinnedMetric(Metric):
    """Shared state and update of the top-label metrics: per-slot sums over ``n_slots`` uniform bins (+ the 1.0 slot).

    Metrics of this family with the same ``n_slots`` hold identical states, so a ``MetricCollection`` merges them
    into one compute group and updates the state once per step.
    """

    is_differentiable = False
    full_state_update = False

    count: Tensor
    conf_sum: Tensor
    correct_sum: Tensor

    def __init__(self, n_slots: int, ignore_index: int | None, validate_args: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._n_slots = n_slots
        self.ignore_index = ignore_index
        self.validate_args = validate_args
        for name in ("count", "conf_sum", "correct_sum"):
            self.add_state(name, torch.zeros(n_slots + 1, dtype=_STATE_DTYPE), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, weight: Tensor | None = None) -> None:
        """Add a batch: ``(N, C, ...)`` probabilities/logits with ``(N, ...)`` class indices, or top-label ``(M,)``
        confidences with ``(M,)`` bool correctness, or binary ``(M,)`` positive-class probabilities with ``(M,)``
        floating labels in [0, 1] (these two without a host sync); ``weight`` is an optional 0/1 mask."""
        confidence, correct, w = _as_top_label(preds, target, self.ignore_index, weight, self.validate_args)
        count, conf_sum, correct_sum = _binned_calibration_update(confidence, correct, self._n_slots, w)
        self.count.add_(count)  # in place: no module attribute assignment per state on the training step
        self.conf_sum.add_(conf_sum)
        self.correct_sum.add_(correct_sum)

    def bin_stats(self, *, sync: bool = False) -> BinStats:
        """A copy of the per-bin sums; ``sync=True`` sums them over processes (a collective: call on every rank)."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=sync and self.sync_on_compute):
            return BinStats(self.count.clone(), self.conf_sum.clone(), self.correct_sum.clone())

    @property
    def accuracy(self) -> Tensor:
        """Top-1 accuracy of the local state, :math:`\\sum \\text{correct} / \\sum \\text{count}`."""
        return BinStats(self.count, self.conf_sum, self.correct_sum).overall_accuracy()

    @property
    def overconfidence(self) -> Tensor:
        """Signed mean confidence minus accuracy of the local state (positive: over-confident)."""
        return BinStats(self.count, self.conf_sum, self.correct_sum).overconfidence()


class BinnedCalibrationError(_TopLabelBinnedMetric):
    r"""Top-label calibration error with O(n_bins) state; equals ``torchmetrics`` ``MulticlassCalibrationError``.

    .. math::
        \text{ECE} = \sum_b \frac{n_b}{N} \left| \text{acc}_b - \text{conf}_b \right|

    The states are per-bin sums (count, confidence, correct) reduced by ``sum`` across processes, so memory and DDP
    traffic are independent of the number of samples. ``update`` takes either torchmetrics' multiclass input or the
    top-label form ``update(confidence, correct, weight=mask)`` that runs without a host sync.

    Binary form: ``update(probability, label)`` with the positive class's probability and a floating label (0/1,
    or soft in [0, 1]) bins the probability and averages the label per bin, which is torchmetrics'
    ``BinaryCalibrationError`` (whose "accuracy" is the label, not top-label correctness). The mixin feeds it so for
    ``task="binary"`` and ``"multilabel"``, every label position one sample.

    Args:
        n_bins: Number of uniform bins in [0, 1].
        norm: ``"l1"`` (ECE), ``"l2"`` (RMSCE) or ``"max"`` (MCE).
        ignore_index: Target value whose positions are left out (multiclass form).
        validate_args: Check class indices in the multiclass form (syncs); shapes and dtypes are always checked.
        kwargs: Passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: On a bad ``n_bins``, ``norm`` or ``ignore_index``.

    Example:
        >>> metric = BinnedCalibrationError(n_bins=3)
        >>> metric.update(torch.tensor([[0.25, 0.20, 0.55], [0.55, 0.05, 0.40]]), torch.tensor([0, 1]))
        >>> metric.update(torch.tensor([0.6, 0.9]), torch.tensor([True, True]))
        >>> metric.compute()
        tensor(0.2000)
    """

    higher_is_better = False

    def __init__(
        self,
        n_bins: int = 15,
        norm: Norm = "l1",
        ignore_index: int | None = None,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        binned_calibration_arg_validation(n_bins, norm, ignore_index)
        super().__init__(n_bins, ignore_index, validate_args, **kwargs)
        self.n_bins = n_bins
        self.norm = norm

    def compute(self) -> Tensor:
        return _binned_calibration_compute(self.count, self.conf_sum, self.correct_sum, self.norm)


class Overconfidence(_TopLabelBinnedMetric):
    r"""Signed mean confidence minus accuracy (positive: over-confident).

    .. math::
        \text{OC} = \frac{1}{N} \sum_i \left(c_i - [\hat y_i = y_i]\right)

    ``n_bins`` does not change the value; it sets the state's shape so that, in a ``MetricCollection``, this metric
    shares the state of a :class:`BinnedCalibrationError` with the same ``n_bins``.

    Example:
        >>> metric = Overconfidence()
        >>> metric.update(torch.tensor([0.9, 0.8]), torch.tensor([True, False]))
        >>> metric.compute()
        tensor(0.3500)
    """

    higher_is_better = None

    def __init__(
        self, n_bins: int = 15, ignore_index: int | None = None, validate_args: bool = True, **kwargs: Any
    ) -> None:
        binned_calibration_arg_validation(n_bins, "l1", ignore_index)
        super().__init__(n_bins, ignore_index, validate_args, **kwargs)
        self.n_bins = n_bins

    def compute(self) -> Tensor:
        return BinStats(self.count, self.conf_sum, self.correct_sum).overconfidence()


class AdaptiveCalibrationError(_TopLabelBinnedMetric):
    r"""Equal-mass (adaptive) calibration error (Nixon et al., 2019) from an O(resolution) histogram state.

    .. math::
        \text{ACE} = \sum_{g=1}^{G} \frac{n_g}{N} \left| \text{acc}_g - \text{conf}_g \right|, \quad n_g \approx N/G

    The state is a fine uniform histogram (``resolution`` bins of count, confidence and correct sums). At compute,
    fine bins are merged in confidence order into ``n_bins`` groups: each fine bin joins the group that holds the
    middle of its mass. When no fine bin straddles a cut :math:`gN/G` this is exactly the equal-mass split (sorted
    samples cut into groups of :math:`N/G`); otherwise :meth:`approximation_bound` bounds the difference by
    :math:`2 \sum_{j\ \text{straddling}} n_j / N`, which shrinks as ``resolution`` grows.

    Args:
        n_bins: Number of equal-mass groups.
        resolution: Number of fine uniform bins kept in the state (at least ``n_bins``).
        ignore_index: Target value whose positions are left out (multiclass form).
        validate_args: Check class indices in the multiclass form (syncs).
        kwargs: Passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: On a bad ``n_bins``, ``resolution`` or ``ignore_index``.

    Example:
        >>> metric = AdaptiveCalibrationError(n_bins=2, resolution=100)
        >>> metric.update(torch.tensor([0.3, 0.4, 0.8, 0.9]), torch.tensor([False, True, True, True]))
        >>> metric.compute()
        tensor(0.1500)
    """

    higher_is_better = False

    def __init__(
        self,
        n_bins: int = 15,
        resolution: int = 10_000,
        ignore_index: int | None = None,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        binned_calibration_arg_validation(n_bins, "l1", ignore_index)
        if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < n_bins:
            raise ValueError(
                f"Expected argument `resolution` to be an integer of at least `n_bins`={n_bins}, but got {resolution}"
            )
        super().__init__(resolution, ignore_index, validate_args, **kwargs)
        self.n_bins = n_bins
        self.resolution = resolution

    def compute(self) -> Tensor:
        return _adaptive_calibration_compute(self.count, self.conf_sum, self.correct_sum, self.n_bins)

    def approximation_bound(self) -> Tensor:
        """Upper bound on the distance of :meth:`compute` from the exact equal-mass ACE on the same samples."""
        return _adaptive_calibration_bound(self.count, self.n_bins)


class WeightedMean(Metric):
    r"""Weighted mean with sum-reduced states: exact epoch values across batches and DDP ranks.

    .. math::
        \bar v = \frac{\sum_i w_i v_i}{\sum_i w_i}

    ``update(value, weight)`` adds ``value * weight`` and ``weight`` without a host sync and without NaN checks
    (positions of weight 0 are skipped, even if their value is NaN); a batch mean logged with its count as the
    weight gives the count-weighted epoch mean. ``compute`` returns 0 when the total weight is 0.

    Example:
        >>> metric = WeightedMean()
        >>> metric.update(torch.tensor(2.0), torch.tensor(3.0))
        >>> metric.update(torch.tensor([4.0, float("nan")]), torch.tensor([1.0, 0.0]))
        >>> metric.compute()
        tensor(2.5000)
    """

    is_differentiable = False
    full_state_update = False

    value_sum: Tensor
    weight_sum: Tensor

    def __setattr__(self, name: str, value: Any) -> None:
        # A step value comes from torchmetrics' `forward`, which sets some 25 flags and counters on each call; through
        # nn.Module's __setattr__ (its checks for parameters, buffers and submodules) they cost more than the update
        # itself. An attribute already in the instance's dict is none of those (nn.Module keeps them in dicts of their
        # own), so a value that is not a tensor or a module is set directly: the same result, a third of the cost.
        if name in vars(self) and not isinstance(value, (Tensor, nn.Module)):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def to(self, *args: Any, **kwargs: Any) -> WeightedMean:
        # Lightning moves a logged metric to the logged value's device on every `self.log`, nearly always the device it
        # is on: then torchmetrics' walk over the states (and the tensor it allocates to find the device) is skipped.
        if len(args) == 1 and not kwargs and isinstance(args[0], torch.device) and args[0] == self.device:
            return self
        return cast(WeightedMean, super().to(*args, **kwargs))

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("value_sum", torch.zeros((), dtype=_STATE_DTYPE), dist_reduce_fx="sum")
        self.add_state("weight_sum", torch.zeros((), dtype=_STATE_DTYPE), dist_reduce_fx="sum")

    def update(self, value: Tensor | float, weight: Tensor | float | None = None) -> None:
        """Add ``value`` (any shape) with ``weight`` (broadcast to it; default 1 per element)."""
        value = torch.as_tensor(value, device=self.device)
        w = None if weight is None else torch.as_tensor(weight, device=self.device)
        value_sum, weight_sum = _weighted_mean_update(value, w)
        self.value_sum.add_(value_sum)  # in place: no module attribute assignment per state on the training step
        self.weight_sum.add_(weight_sum)

    def compute(self) -> Tensor:
        return _weighted_mean_compute(self.value_sum, self.weight_sum)


class Perplexity(WeightedMean):
    r"""Perplexity from per-batch mean cross-entropies (in nats): the exponential of their weighted mean.

    .. math::
        \text{PPL} = \exp\left(\frac{\sum_b n_b \bar H_b}{\sum_b n_b}\right)

    ``update(value, weight)`` takes a batch's mean cross-entropy H(p,q) and its count of positions, so the epoch
    value is the perplexity of all counted positions, exact across batches and processes (unlike torchmetrics'
    ``Perplexity``, it needs no logits: the loss has the cross-entropy already).

    Example:
            >>> metric = Perplexity()
            >>> metric.update(torch.tensor(1.0), torch.tensor(3.0))
            >>> metric.update(torch.tensor(3.0), torch.tensor(1.0))
            >>> metric.compute()
            tensor(4.4817)
    """

    higher_is_better = False

    def compute(self) -> Tensor:
        return super().compute().exp()


class BrierScore(WeightedMean):
    r"""Multiclass Brier score with O(1) state: a weighted mean of per-position Brier values.

    .. math::
        \text{BS} = \frac{1}{N} \sum_i \sum_c (q_{ic} - [c = y_i])^2

    ``update(preds, target)`` takes torchmetrics' multiclass input ((N, C, ...) probabilities or logits and
    (N, ...) class indices, ``ignore_index`` honoured); ``update(values, weight=mask)`` takes per-position Brier
    values already computed (the mixin has them from the loss pass) and adds them without a host sync.

    Example:
        >>> metric = BrierScore()
        >>> metric.update(torch.tensor([[0.8, 0.2], [0.4, 0.6]]), torch.tensor([0, 0]))
        >>> metric.compute()
        tensor(0.4000)
    """

    higher_is_better = False

    def __init__(self, ignore_index: int | None = None, validate_args: bool = True, **kwargs: Any) -> None:
        binned_calibration_arg_validation(1, "l1", ignore_index)
        super().__init__(**kwargs)
        self.ignore_index = ignore_index
        self.validate_args = validate_args

    def update(  # type: ignore[override]
        self, preds: Tensor, target: Tensor | None = None, weight: Tensor | None = None
    ) -> None:
        """Add ``(N, C, ...)`` probabilities/logits with ``(N, ...)`` class indices, or, with ``target=None``,
        per-position Brier values ``preds`` and an optional ``weight`` (0/1 mask or counts)."""
        if target is None:
            super().update(preds, weight)
            return
        value, w = _brier_update(preds, target, self.ignore_index, weight, self.validate_args)
        super().update(value, w)
