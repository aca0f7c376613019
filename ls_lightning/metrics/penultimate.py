"""The penultimate layer's geometry (Müller, Kornblith and Hinton, 2019): how tight the class clusters are against
how far apart, from O(classes × features) sum-reduced state, and the projection onto the plane of three templates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from ls_lightning.metrics.calibration import _STATE_DTYPE

__all__ = [
    "WithinBetweenRatio",
    "project_to_template_plane",
    "template_classes_arg_validation",
    "template_plane_basis",
    "within_between_ratio",
]


def _within_between_arg_validation(num_classes: int, num_features: int, ignore_index: int | None) -> None:
    for name, value in (("num_classes", num_classes), ("num_features", num_features)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"Expected argument `{name}` to be an integer larger than 0, but got {value!r}")
    if ignore_index is not None and (not isinstance(ignore_index, int) or isinstance(ignore_index, bool)):
        raise ValueError(f"Expected argument `ignore_index` to either be `None` or an integer, but got {ignore_index}")


def _within_between_tensor_validation(
    features: Tensor, target: Tensor, num_classes: int, num_features: int, ignore_index: int | None, check_range: bool
) -> None:
    if not features.is_floating_point():
        raise TypeError(f"Expected argument `features` to be a floating tensor, but got {features.dtype}")
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(f"Expected argument `target` to be an integer tensor of class indices, but got {target.dtype}")
    if features.ndim != target.ndim + 1 or features.shape[:-1] != target.shape or features.shape[-1] != num_features:
        raise ValueError(
            f"Expected `features` (..., {num_features}) with `target` (...) of the same leading shape, but got shapes "
            f"{tuple(features.shape)} and {tuple(target.shape)}"
        )
    valid = target if ignore_index is None else target[target != ignore_index]
    if check_range and valid.numel() and (valid.min() < 0 or valid.max() >= num_classes):
        raise ValueError(
            f"Expected argument `target` to hold class indices in [0, {num_classes}) or `ignore_index`="
            f"{ignore_index}, but got values in [{int(valid.min())}, {int(valid.max())}]"
        )


def _within_between_update(
    features: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Per class: the count, the sum of the feature vectors and the sum of their squared norms.

    .. math::
        n_k = \sum_i [y_i = k], \quad s_k = \sum_{i: y_i = k} h_i, \quad t_k = \sum_{i: y_i = k} \|h_i\|^2

    Ignored positions enter with weight 0 (no indexing, no host sync); their features are zeroed first so that a
    NaN there cannot leak into the sums.

    Shape:
        - features: :math:`(..., D)`; target: :math:`(...)`.
        - Output: float64 tensors of shape :math:`(K)`, :math:`(K, D)`, :math:`(K)`.
    """
    h = features.reshape(-1, features.shape[-1]).to(_STATE_DTYPE)
    y = target.reshape(-1)
    if ignore_index is not None:
        valid = y != ignore_index
        h = torch.where(valid.unsqueeze(1), h, 0.0)
        y = torch.where(valid, y, 0)
        weight = valid.to(_STATE_DTYPE)
    else:
        weight = torch.ones(y.shape, dtype=_STATE_DTYPE, device=y.device)
    count = h.new_zeros(num_classes).index_add_(0, y, weight)
    feature_sum = h.new_zeros(num_classes, h.shape[1]).index_add_(0, y, h)
    sq_norm_sum = h.new_zeros(num_classes).index_add_(0, y, h.square().sum(dim=1))
    return count, feature_sum, sq_norm_sum


def _within_between_compute(count: Tensor, feature_sum: Tensor, sq_norm_sum: Tensor) -> Tensor:
    r"""The ratio of the mean within-class squared distance to the mean squared distance between class means.

    .. math::
        W = \frac{1}{N} \sum_k \left(t_k - \frac{\|s_k\|^2}{n_k}\right), \quad
        B = \frac{2}{K'(K'-1)} \left(K' \sum_k \|\mu_k\|^2 - \Big\|\sum_k \mu_k\Big\|^2\right), \quad R = W / B

    over the K' classes with :math:`n_k > 0` (:math:`\mu_k = s_k / n_k`); NaN when K' < 2 or B = 0. No host sync.
    """
    present = count > 0
    safe = torch.where(present, count, 1.0)
    # t_k - |s_k|^2 / n_k loses digits when a cluster is tight and far from the origin: float64 keeps about
    # 16 - log10(|mu|^2 / spread) of them, plenty for activations.
    within = (sq_norm_sum.sum() - (feature_sum.square().sum(dim=1) / safe).sum()).clamp(min=0) / count.sum()
    mean = feature_sum / safe.unsqueeze(1)  # zero rows for absent classes: they add nothing to either sum below
    k = present.sum().to(_STATE_DTYPE)
    pair_sum = k * mean.square().sum() - mean.sum(dim=0).square().sum()  # sum over pairs j < k of |mu_j - mu_k|^2
    between = 2 * pair_sum.clamp(min=0) / (k * (k - 1)).clamp(min=1)
    ratio = torch.where((k >= 2) & (between > 0), within / torch.where(between > 0, between, 1.0), torch.nan)
    return ratio.to(torch.get_default_dtype())


def within_between_ratio(
    features: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None, *, validate_args: bool = True
) -> Tensor:
    r"""How tight the class clusters of ``features`` are against how far apart their means lie.

    .. math::
        R = \frac{\dfrac{1}{N} \sum_{i=1}^{N} \left\| h_i - \mu_{y_i} \right\|^2}
        {\dfrac{2}{K'(K'-1)} \sum_{j < k} \left\| \mu_j - \mu_k \right\|^2},
        \qquad \mu_k = \frac{1}{n_k} \sum_{i: y_i = k} h_i

    The numerator is the mean squared distance of a sample to its class mean (over samples, so large classes weigh
    more); the denominator the mean squared distance between the means of two distinct classes, over the K' classes
    that have samples. Small R: tight clusters far apart, the picture of Müller et al. (2019) with label smoothing.

    Args:
        features: Feature vectors, e.g. the penultimate layer's activations (the last linear layer's input).
        target: Class indices.
        num_classes: K; class indices lie in [0, K).
        ignore_index: Target value whose positions are left out.
        validate_args: Check the class indices' range (syncs).

    Returns:
        A scalar tensor; NaN when fewer than two classes have samples (or all class means coincide).

    Raises:
        ValueError: On bad ``num_classes`` or ``ignore_index``, mismatched shapes, or class indices out of range.
        TypeError: On tensors of the wrong dtype.

    Shape:
        - features: :math:`(..., D)`, class-last as a linear layer takes them; target: :math:`(...)`.

    Example:
        >>> features = torch.tensor([[0.0, 1.0], [0.0, -1.0], [4.0, 1.0], [4.0, -1.0]])
        >>> within_between_ratio(features, torch.tensor([0, 0, 1, 1]), num_classes=2)
        tensor(0.0625)
    """
    num_features = features.shape[-1] if features.ndim else 0
    _within_between_arg_validation(num_classes, max(num_features, 1), ignore_index)
    _within_between_tensor_validation(features, target, num_classes, num_features, ignore_index, validate_args)
    return _within_between_compute(*_within_between_update(features, target, num_classes, ignore_index))


class WithinBetweenRatio(Metric):
    r"""Within-class to between-class squared distance of feature vectors, with O(K · D) sum-reduced state.

    .. math::
        R = \frac{\dfrac{1}{N} \sum_{i} \left\| h_i - \mu_{y_i} \right\|^2}
        {\dfrac{2}{K'(K'-1)} \sum_{j < k} \left\| \mu_j - \mu_k \right\|^2}

    See :func:`within_between_ratio`. The states are, per class, the count, the sum of the feature vectors (D,) and
    the sum of their squared norms, in float64 and reduced by ``sum`` across processes: the value over several
    processes equals that of one process holding every sample, and no sample is left out.

    Args:
        num_classes: K.
        num_features: D, the length of each feature vector.
        ignore_index: Target value whose positions are left out.
        validate_args: Check class indices at each update (syncs); shapes and dtypes are always checked.
        kwargs: Passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: On a bad ``num_classes``, ``num_features`` or ``ignore_index``.

    Example:
        >>> metric = WithinBetweenRatio(num_classes=2, num_features=2)
        >>> metric.update(torch.tensor([[0.0, 1.0], [0.0, -1.0]]), torch.tensor([0, 0]))
        >>> metric.update(torch.tensor([[4.0, 1.0], [4.0, -1.0]]), torch.tensor([1, 1]))
        >>> metric.compute()
        tensor(0.0625)
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    count: Tensor
    feature_sum: Tensor
    sq_norm_sum: Tensor

    def __init__(
        self,
        num_classes: int,
        num_features: int,
        ignore_index: int | None = None,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        _within_between_arg_validation(num_classes, num_features, ignore_index)
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.num_features = num_features
        self.ignore_index = ignore_index
        self.validate_args = validate_args
        self.add_state("count", torch.zeros(num_classes, dtype=_STATE_DTYPE), dist_reduce_fx="sum")
        self.add_state("feature_sum", torch.zeros(num_classes, num_features, dtype=_STATE_DTYPE), dist_reduce_fx="sum")
        self.add_state("sq_norm_sum", torch.zeros(num_classes, dtype=_STATE_DTYPE), dist_reduce_fx="sum")

    def update(self, features: Tensor, target: Tensor) -> None:
        """Add ``(..., D)`` feature vectors with their ``(...)`` class indices."""
        _within_between_tensor_validation(
            features, target, self.num_classes, self.num_features, self.ignore_index, self.validate_args
        )
        count, feature_sum, sq_norm_sum = _within_between_update(features, target, self.num_classes, self.ignore_index)
        self.count.add_(count)
        self.feature_sum.add_(feature_sum)
        self.sq_norm_sum.add_(sq_norm_sum)

    def compute(self) -> Tensor:
        return _within_between_compute(self.count, self.feature_sum, self.sq_norm_sum)


def template_classes_arg_validation(classes: Sequence[int], num_classes: int | None = None) -> tuple[int, int, int]:
    """The three distinct class indices of ``classes`` (in [0, num_classes) when given).

    Raises:
        ValueError: Naming ``classes`` and its value otherwise.

    Example:
        >>> template_classes_arg_validation([3, 0, 7], num_classes=10)
        (3, 0, 7)
    """
    try:
        values = tuple(classes)
    except TypeError:
        values = ()
    ok = len(values) == 3 and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in values)
    if not ok or len(set(values)) != 3:
        raise ValueError(f"Expected argument `classes` to be three distinct class indices >= 0, but got {classes!r}")
    if num_classes is not None and max(values) >= num_classes:
        raise ValueError(
            f"Expected argument `classes` to hold class indices in [0, {num_classes}), but got {classes!r}"
        )
    return values[0], values[1], values[2]


def template_plane_basis(weight: Tensor, classes: Sequence[int]) -> Tensor:
    r"""Orthonormal basis of the plane through the templates of three classes (Müller et al., 2019, Figure 1).

    The templates are the rows :math:`w_a, w_b, w_c` of the last linear layer's weight. The basis is the Q of the QR
    decomposition of :math:`[w_a - w_c,\ w_b - w_c]`, with the signs that make R's diagonal positive (Gram–Schmidt):
    the first axis points from :math:`w_c` to :math:`w_a`, the second towards :math:`w_b`'s side of it.

    .. math::
        e_1 = \frac{w_a - w_c}{\|w_a - w_c\|}, \quad
        e_2 = \frac{v - (v \cdot e_1)\, e_1}{\|v - (v \cdot e_1)\, e_1\|}, \quad v = w_b - w_c

    Args:
        weight: The (K, D) weight of the linear layer that maps features to logits.
        classes: The three classes (a, b, c).

    Returns:
        A float64 (D, 2) tensor with orthonormal columns, on the device of ``weight``.

    Raises:
        ValueError: When ``weight`` is not 2-D or ``classes`` are not three distinct indices in [0, K).

    Example:
        >>> weight = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        >>> basis = template_plane_basis(weight, (0, 1, 2))
        >>> basis.T
        tensor([[1., 0., 0.],
                [0., 1., 0.]], dtype=torch.float64)
    """
    if weight.ndim != 2:
        raise ValueError(f"Expected argument `weight` to be a (K, D) tensor, but got shape {tuple(weight.shape)}")
    a, b, c = template_classes_arg_validation(classes, weight.shape[0])
    w = weight.detach().to(torch.float64)
    q, r = torch.linalg.qr(torch.stack([w[a] - w[c], w[b] - w[c]], dim=1))
    sign = torch.sign(torch.diagonal(r))
    return q * torch.where(sign == 0, 1.0, sign) + 0.0  # + 0.0: no negative zeros in the printed basis


def project_to_template_plane(features: Tensor, weight: Tensor, classes: Sequence[int]) -> Tensor:
    r"""Coordinates of ``features`` in the plane through three class templates: :math:`Q^\top h`.

    :math:`Q` is :func:`template_plane_basis`. Moving :math:`h` along any direction orthogonal to the plane leaves
    its coordinates unchanged; the bias of the linear layer plays no part.

    Args:
        features: Feature vectors (the last linear layer's input).
        weight: The (K, D) weight of that layer.
        classes: The three classes (a, b, c) whose templates span the plane.

    Returns:
        A float64 tensor of shape (..., 2).

    Shape:
        - features: :math:`(..., D)`; output :math:`(..., 2)`.

    Example:
        >>> weight = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
        >>> project_to_template_plane(torch.tensor([[2.0, 3.0, 5.0]]), weight, (0, 1, 2))
        tensor([[2., 3.]], dtype=torch.float64)
    """
    basis = template_plane_basis(weight, classes)
    if features.shape[-1] != basis.shape[0]:
        raise ValueError(
            f"Expected argument `features` to end in the layer's input size {basis.shape[0]}, but got shape "
            f"{tuple(features.shape)}"
        )
    return features.detach().to(device=basis.device, dtype=torch.float64) @ basis
