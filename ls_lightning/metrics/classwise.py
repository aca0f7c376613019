"""Class-wise calibration error (Kull et al., 2019) with O(classes × bins) sum-reduced state; its functional form."""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import Tensor
from torchmetrics import Metric

from ls_lightning.metrics.calibration import (
    _STATE_DTYPE,
    Norm,
    _bin_index,
    _flatten_multiclass,
    _multiclass_tensor_validation,
    _normalize_probabilities,
    _safe_divide,
    _valid_weight,
    binned_calibration_arg_validation,
)

__all__ = ["ClasswiseCalibrationError", "ClasswiseReduction", "classwise_calibration_error"]

ClasswiseReduction = Literal["mean", "sum", "none"]
_ALLOWED_REDUCTIONS: tuple[str, ...] = get_args(ClasswiseReduction)


def _classwise_arg_validation(n_bins: int, norm: str, ignore_index: int | None, reduction: str) -> None:
    binned_calibration_arg_validation(n_bins, norm, ignore_index)
    if reduction not in _ALLOWED_REDUCTIONS:
        raise ValueError(f"Expected argument `reduction` to be one of {_ALLOWED_REDUCTIONS}, but got {reduction!r}")


def _classwise_inputs(
    preds: Tensor, target: Tensor, ignore_index: int | None, weight: Tensor | None, validate_args: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(M, C)`` probabilities, ``(M,)`` targets and ``(M,)`` weights (``None``: every position counts once)."""
    if preds.ndim != target.ndim + 1:
        raise ValueError(
            f"Expected `preds` (N, C, ...) with `target` (N, ...), but got shapes {tuple(preds.shape)} and "
            f"{tuple(target.shape)}"
        )
    if validate_args:
        _multiclass_tensor_validation(preds, target, ignore_index)
    if weight is not None and weight.shape != target.shape:
        raise ValueError(
            f"Expected argument `weight` to have the shape of `target` {tuple(target.shape)}, but got "
            f"{tuple(weight.shape)}"
        )
    probs, flat_target = _flatten_multiclass(preds, target)
    return _normalize_probabilities(probs), flat_target, _valid_weight(flat_target, ignore_index, weight)


def _classwise_calibration_update(
    probs: Tensor, target: Tensor, n_bins: int, weight: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Per class and bin: the sums of weight, of weighted :math:`q_k` and of weighted :math:`[y = k]`.

    .. math::
        n_{kb} = \sum_{i: q_{ik} \in b} w_i, \quad s_{kb} = \sum_{i: q_{ik} \in b} w_i q_{ik}, \quad
        a_{kb} = \sum_{i: q_{ik} \in b} w_i [y_i = k]

    Positions of weight 0 never contribute (their probabilities are zeroed first, so a NaN cannot leak in), and
    their target may be any value (``ignore_index``). No host sync and no data-dependent branch.

    Shape:
        - probs: :math:`(M, C)` probabilities; target: :math:`(M)`; weight: :math:`(M)` or ``None``.
        - Output: three float64 tensors of shape :math:`(C, n\_bins + 1)`; slot ``n_bins`` holds :math:`q = 1`.
    """
    num_classes, slots = probs.shape[1], n_bins + 1
    device = probs.device
    # Slot of (class k, bin b) in one flat histogram: k · slots + b, so one scatter fills all classes.
    slot = _bin_index(probs.reshape(-1), n_bins).view_as(probs) + torch.arange(num_classes, device=device) * slots
    safe_target = target.clamp(0, num_classes - 1).unsqueeze(1)  # ignored positions (weight 0) may hold any value
    label_slot = slot.gather(1, safe_target).squeeze(1)  # [y = k] is 1 in one slot per position: (M,), not (M, C)
    if weight is None:
        w_row = torch.ones(probs.shape[0], dtype=_STATE_DTYPE, device=device)
        q = probs.to(_STATE_DTYPE)
    else:
        w_row = weight.to(_STATE_DTYPE)
        q = torch.where(w_row.unsqueeze(1) != 0, probs.to(_STATE_DTYPE), 0.0) * w_row.unsqueeze(1)
    zeros = torch.zeros(num_classes * slots, dtype=_STATE_DTYPE, device=device)
    flat = slot.reshape(-1)
    count = zeros.scatter_add(0, flat, w_row.unsqueeze(1).expand(probs.shape).reshape(-1))
    prob_sum = zeros.scatter_add(0, flat, q.reshape(-1))
    label_sum = zeros.scatter_add(0, label_slot, w_row)
    return count.view(num_classes, slots), prob_sum.view(num_classes, slots), label_sum.view(num_classes, slots)


def _classwise_calibration_compute(
    count: Tensor, prob_sum: Tensor, label_sum: Tensor, norm: Norm = "l1", reduction: ClasswiseReduction = "mean"
) -> Tensor:
    r"""Class-wise calibration error from per-class, per-bin sums.

    .. math::
        \text{ECE}_k = \sum_b \frac{n_{kb}}{N} \left| \bar a_{kb} - \bar s_{kb} \right|, \quad
        \text{cwECE} = \frac{1}{C} \sum_{k=1}^{C} \text{ECE}_k

    ``norm="l2"`` and ``"max"`` replace each class's term as in :func:`binned_calibration_error`. With no samples the
    result is 0 (not NaN).
    """
    gap = _safe_divide(label_sum, count) - _safe_divide(prob_sum, count)
    prop = _safe_divide(count, count.sum(dim=1, keepdim=True))
    if norm == "l1":
        per_class = (gap.abs() * prop).sum(dim=1)
    elif norm == "l2":
        per_class = (gap.square() * prop).sum(dim=1).clamp(min=0).sqrt()
    else:
        per_class = gap.abs().amax(dim=1)
    value = per_class.mean() if reduction == "mean" else per_class.sum() if reduction == "sum" else per_class
    return value.to(torch.get_default_dtype())


def classwise_calibration_error(
    preds: Tensor,
    target: Tensor,
    n_bins: int = 15,
    norm: Norm = "l1",
    ignore_index: int | None = None,
    *,
    reduction: ClasswiseReduction = "mean",
    weight: Tensor | None = None,
    validate_args: bool = True,
) -> Tensor:
    r"""Class-wise expected calibration error (Kull et al., 2019): the mean over classes of one-vs-rest ECEs.

    .. math::
        \text{cwECE} = \frac{1}{C} \sum_{k=1}^{C} \sum_{b=1}^{B} \frac{n_{kb}}{N}
        \left| \frac{1}{n_{kb}} \sum_{i: q_{ik} \in b} [y_i = k] - \frac{1}{n_{kb}} \sum_{i: q_{ik} \in b} q_{ik}
        \right|

    For each class k the predicted probabilities :math:`q_{ik}` of all N positions are binned; each bin compares its
    mean :math:`q_k` with the share of its positions labelled k, weighted by the bin's share of positions. The
    classes' errors are then **averaged** (``reduction="mean"``, Kull et al.'s definition and torch-uncertainty's
    default); ``"sum"`` adds them instead (as some libraries report it, C times the mean) and ``"none"`` returns the
    (C,) per-class errors. Class k's error is torchmetrics' ``binary_calibration_error(q[:, k], y == k)``.

    Bins follow torchmetrics (and :func:`binned_calibration_error`): ``[k/B, (k+1)/B)`` on float32 edges, with a
    probability of exactly 1.0 in a slot of its own. Focal-calibration's ``ClasswiseECELoss`` uses ``(lower, upper]``
    and leaves out probabilities of exactly 0; the two agree whenever no probability lies on an edge.

    Args:
        preds: Probabilities or logits (softmax over dim 1 is applied when values fall outside [0, 1]).
        target: Class indices.
        n_bins: Number of uniform bins B in [0, 1].
        norm: ``"l1"`` (ECE), ``"l2"`` (RMSCE) or ``"max"`` (MCE) per class, as in :func:`binned_calibration_error`.
        ignore_index: Target value whose positions are left out of every class.
        reduction: ``"mean"`` over classes, ``"sum"``, or ``"none"`` (one value per class).
        weight: Optional per-position weight (0/1 mask or counts) of the shape of ``target``.
        validate_args: Check the class indices' range (syncs).

    Returns:
        A scalar tensor, or a (C,) tensor for ``reduction="none"``; 0 where no position counts.

    Raises:
        ValueError: On a bad ``n_bins``, ``norm``, ``ignore_index`` or ``reduction``, mismatched shapes, or class
            indices out of range.
        TypeError: On tensors of the wrong dtype.

    Shape:
        - preds: :math:`(N, C)` or :math:`(N, C, d_1, ...)`; target :math:`(N)` or :math:`(N, d_1, ...)`.

    Example:
        >>> preds = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]])
        >>> target = torch.tensor([0, 1, 2, 1])
        >>> classwise_calibration_error(preds, target, n_bins=2)
        tensor(0.1667)
        >>> classwise_calibration_error(preds, target, n_bins=2, reduction="none")
        tensor([0.1750, 0.1500, 0.1750])
    """
    _classwise_arg_validation(n_bins, norm, ignore_index, reduction)
    probs, flat_target, w = _classwise_inputs(preds, target, ignore_index, weight, validate_args)
    return _classwise_calibration_compute(
        *_classwise_calibration_update(probs, flat_target, n_bins, w), norm=norm, reduction=reduction
    )


class ClasswiseCalibrationError(Metric):
    r"""Class-wise expected calibration error (Kull et al., 2019) with O(C · n_bins) state, exact under DDP.

    .. math::
        \text{cwECE} = \frac{1}{C} \sum_{k=1}^{C} \sum_{b} \frac{n_{kb}}{N} \left| \bar a_{kb} - \bar q_{kb} \right|

    The **mean** over classes of each class's one-vs-rest binned calibration error (``reduction="sum"`` adds them
    instead; ``"none"`` gives one value per class); see :func:`classwise_calibration_error`. The states are, per class
    and bin, the count, the sum of :math:`q_k` and the count of positions labelled k, reduced by ``sum`` across
    processes, so the value over several processes equals that of one process holding all their samples. Bins are
    torchmetrics' ``[k/n, (k+1)/n)`` (a probability of exactly 1.0 has a slot of its own), as in
    :class:`~ls_lightning.metrics.BinnedCalibrationError`.

    Args:
        num_classes: C, the size of the states (each update must have C columns).
        n_bins: Number of uniform bins in [0, 1].
        norm: ``"l1"`` (ECE), ``"l2"`` (RMSCE) or ``"max"`` (MCE) per class.
        ignore_index: Target value whose positions are left out.
        reduction: ``"mean"`` over classes, ``"sum"``, or ``"none"`` (a (C,) tensor).
        validate_args: Check class indices at each update (syncs); shapes and dtypes are always checked.
        kwargs: Passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: On a bad ``num_classes``, ``n_bins``, ``norm``, ``ignore_index`` or ``reduction``; at ``update``,
            on a ``preds`` whose number of classes is not ``num_classes``.

    Example:
        >>> metric = ClasswiseCalibrationError(num_classes=3, n_bins=2)
        >>> metric.update(torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1]]), torch.tensor([0, 1]))
        >>> metric.update(torch.tensor([[0.2, 0.2, 0.6], [0.5, 0.4, 0.1]]), torch.tensor([2, 1]))
        >>> metric.compute()
        tensor(0.1667)
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    count: Tensor
    prob_sum: Tensor
    label_sum: Tensor

    def __init__(
        self,
        num_classes: int,
        n_bins: int = 15,
        norm: Norm = "l1",
        ignore_index: int | None = None,
        reduction: ClasswiseReduction = "mean",
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"Expected argument `num_classes` to be an integer larger than 0, but got {num_classes}")
        _classwise_arg_validation(n_bins, norm, ignore_index, reduction)
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.n_bins = n_bins
        self.norm = norm
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.validate_args = validate_args
        for name in ("count", "prob_sum", "label_sum"):
            self.add_state(name, torch.zeros(num_classes, n_bins + 1, dtype=_STATE_DTYPE), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, weight: Tensor | None = None) -> None:
        """Add ``(N, C, ...)`` probabilities or logits with ``(N, ...)`` class indices; ``weight`` (the shape of
        ``target``) is an optional 0/1 mask or per-position weight."""
        if preds.ndim >= 2 and preds.shape[1] != self.num_classes:
            raise ValueError(
                f"Expected argument `preds` to have `num_classes`={self.num_classes} classes in dim 1, but got shape "
                f"{tuple(preds.shape)}"
            )
        probs, flat_target, w = _classwise_inputs(preds, target, self.ignore_index, weight, self.validate_args)
        count, prob_sum, label_sum = _classwise_calibration_update(probs, flat_target, self.n_bins, w)
        self.count.add_(count)
        self.prob_sum.add_(prob_sum)
        self.label_sum.add_(label_sum)

    def compute(self) -> Tensor:
        return _classwise_calibration_compute(self.count, self.prob_sum, self.label_sum, self.norm, self.reduction)
