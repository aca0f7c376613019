"""The label-smoothed binary cross-entropy on logits (one logit per label: binary and multi-label tasks).

Built on PyTorch's own ``F.binary_cross_entropy_with_logits``: the loss is that call on the smoothed target, so it
equals PyTorch in value and gradient by construction. The two terms are the same call on the target and on ½. A
fused kernel would save two of the three elementwise passes of the forward, but the backward (one pass, only the
loss's) dominates and the inputs of binary and multi-label heads are small (N × L): plain PyTorch is kept.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ls_lightning.losses.checks import assert_on_device, check_label_smoothing, check_reduction
from ls_lightning.losses.functional import LabelSmoothedCE, Reduction

__all__ = [
    "BinaryLossStats",
    "binary_label_smoothed_cross_entropy",
    "binary_label_smoothed_cross_entropy_with_stats",
]


class BinaryLossStats(NamedTuple):
    """Per-position statistics of :func:`binary_label_smoothed_cross_entropy_with_stats` (detached).

    ``M`` is the number of label positions (``input.numel()``): every logit is one binary prediction.
    """

    probability: Tensor  # (M,) float32: sigmoid(input), the predicted probability of the positive label
    target: Tensor  # (M,) float32: the target (0/1, or a soft target in [0, 1])
    correct: Tensor  # (M,) bool: (probability > 0.5) == (target > 0.5), the rule of torchmetrics' BinaryAccuracy
    valid: Tensor  # (M,) bool: all True (the binary loss has no ignore_index), kept for the mixin's masks
    brier: Tensor  # (M,) float32: (probability − target)²
    weight_sum: Tensor  # 0-d float32: the denominator of reduction="mean", the number of positions


def binary_label_smoothed_cross_entropy(
    input: Tensor,
    target: Tensor,
    label_smoothing: float | Tensor = 0.0,
    *,
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    reduction: Reduction = "mean",
) -> LabelSmoothedCE:
    r"""Label-smoothed binary cross-entropy on logits and its two terms.

    .. math::
        L = \mathrm{BCE}\bigl(x,\ (1 - \varepsilon)\,t + \tfrac{\varepsilon}{2}\bigr)
          = (1 - \varepsilon)\,\mathrm{BCE}(x, t) + \varepsilon\,\mathrm{BCE}\bigl(x, \tfrac12\bigr)

    ``loss`` is ``F.binary_cross_entropy_with_logits(input, target·(1−ε) + ε/2, weight, pos_weight=pos_weight,
    reduction=reduction)``; ``h_pq`` is the same call on ``target`` (the cross-entropy to the label) and ``h_uq``
    on ½ (to the uniform prior over {0, 1}). The BCE is linear in the target, so ``loss == (1−ε)·h_pq + ε·h_uq``
    (up to rounding) for every weight, ``pos_weight`` and reduction. Every logit is an independent binary
    prediction: a binary head has shape (N,) or (N, 1), a multi-label head (N, L) with multi-hot targets.

    Args:
        input: Logits, any shape.
        target: Targets of ``input``'s shape in [0, 1]: 0/1 labels (any real or bool dtype) or soft targets.
        label_smoothing: ε in [0, 1]; a float or a 0-d tensor.
        weight: Per-element weights broadcastable to ``input`` (as PyTorch's ``weight``).
        pos_weight: Weight of the positive term, broadcastable to ``input`` (e.g. (L,) per label).
        reduction: ``"none"``, ``"mean"`` (over all elements) or ``"sum"``.

    Returns:
        LabelSmoothedCE ``(loss, h_pq, h_uq)``, each reduced like PyTorch's result; float32 for half input.

    Raises:
        ValueError: If ε is outside [0, 1], ``target``'s shape differs from ``input``'s, a target value is outside
            [0, 1] (checked on CPU tensors; on an accelerator by an asynchronous device assert), ``weight`` or
            ``pos_weight`` does not broadcast to ``input``, or ``reduction`` is unknown.

    Shape:
        - input: (*), e.g. (N), (N, 1) or (N, L).
        - target: (*), the input's shape.
        - output: () for ``mean``/``sum``, else (*).

    Example:
        >>> import torch
        >>> logits, target = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.0])
        >>> out = binary_label_smoothed_cross_entropy(logits, target, 0.1)
        >>> torch.allclose(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(logits, 0.9 * target + 0.05))
        True
        >>> torch.allclose(out.loss, 0.9 * out.h_pq + 0.1 * out.h_uq)
        True
    """
    result, _ = _compute(input, target, label_smoothing, weight, pos_weight, reduction, with_stats=False)
    return result


def binary_label_smoothed_cross_entropy_with_stats(
    input: Tensor,
    target: Tensor,
    label_smoothing: float | Tensor = 0.0,
    *,
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    reduction: Reduction = "mean",
    brier: bool = True,
) -> tuple[LabelSmoothedCE, BinaryLossStats]:
    """:func:`binary_label_smoothed_cross_entropy` plus per-position :class:`BinaryLossStats`.

    Makes no host synchronisation for accelerator tensors, so it can run every step. ``brier=False`` leaves
    ``BinaryLossStats.brier`` empty.

    Example:
        >>> import torch
        >>> _, stats = binary_label_smoothed_cross_entropy_with_stats(torch.tensor([[3.0, -1.0]]),
        ...                                                           torch.tensor([[1.0, 1.0]]))
        >>> stats.correct.tolist(), stats.target.tolist(), stats.weight_sum.item()
        ([True, False], [1.0, 1.0], 2.0)
    """
    return _compute(input, target, label_smoothing, weight, pos_weight, reduction, True, brier)


def _compute(
    input: Tensor,
    target: Tensor,
    eps: float | Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: str,
    with_stats: bool,
    brier: bool = True,
) -> tuple[LabelSmoothedCE, BinaryLossStats]:
    """Validate; three PyTorch BCE calls (loss, h_pq, h_uq) in float32 at least; the statistics without autograd."""
    _check_arguments(input, target, eps, weight, pos_weight, reduction)
    x = input if input.dtype in (torch.float32, torch.float64) else input.float()
    t = target.to(x.dtype)
    kwargs = {"weight": weight, "pos_weight": pos_weight, "reduction": reduction}
    h_pq = F.binary_cross_entropy_with_logits(x, t, **kwargs)  # type: ignore[arg-type]
    h_uq = F.binary_cross_entropy_with_logits(x, torch.full_like(t, 0.5), **kwargs)  # type: ignore[arg-type]
    if isinstance(eps, (int, float)) and eps == 0:
        loss = h_pq  # the smoothed target is the target: save a pass
    else:
        e = eps.to(x.dtype) if isinstance(eps, Tensor) else eps
        loss = F.binary_cross_entropy_with_logits(x, t * (1 - e) + e / 2, **kwargs)  # type: ignore[arg-type]
    return LabelSmoothedCE(loss, h_pq, h_uq), _stats(x, t, with_stats, brier)


def _stats(x: Tensor, t: Tensor, with_stats: bool, brier: bool) -> BinaryLossStats:
    """Probability, target, correctness at 0.5 and Brier value of each position, flattened and detached."""
    count = torch.full((), float(x.numel()), dtype=torch.float32, device=x.device)
    if not with_stats:
        empty = x.new_empty(0, dtype=torch.float32)
        flag = x.new_empty(0, dtype=torch.bool)
        return BinaryLossStats(empty, empty, flag, flag, empty, count)
    with torch.no_grad():
        # sigmoid in the logits' dtype, then float32: what torchmetrics bins when handed sigmoid(logits)
        p = torch.sigmoid(x.detach()).reshape(-1).float()
        target = t.detach().reshape(-1).float()
        correct = (p > 0.5) == (target > 0.5)
        valid = torch.ones_like(correct)
        values = (p - target).square() if brier else p.new_empty(0)
    return BinaryLossStats(p, target, correct, valid, values, count)


def _check_arguments(
    input: Tensor,
    target: Tensor,
    eps: float | Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: str,
) -> None:
    """Raise ValueError naming the argument, the expected form and the value received."""
    check_reduction(reduction)
    check_label_smoothing(eps)
    if not isinstance(input, Tensor) or not input.is_floating_point():
        raise ValueError(
            f"Expected argument `input` to be a floating point tensor of logits, "
            f"but got {getattr(input, 'dtype', type(input))}"
        )
    if not isinstance(target, Tensor) or target.is_complex():
        raise ValueError(
            f"Expected argument `target` to be a real or bool tensor of values in [0, 1], "
            f"but got {getattr(target, 'dtype', type(target))}"
        )
    if target.shape != input.shape:
        raise ValueError(
            f"Expected argument `target` to have the shape of `input` {tuple(input.shape)}, "
            f"but got {tuple(target.shape)}"
        )
    for name, value in (("weight", weight), ("pos_weight", pos_weight)):
        if value is not None:
            _check_broadcast(name, value, input)
    _check_target_range(target)


def _check_broadcast(name: str, value: Tensor, input: Tensor) -> None:
    try:
        ok = isinstance(value, Tensor) and torch.broadcast_shapes(value.shape, input.shape) == input.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"Expected argument `{name}` to be a tensor broadcastable to the input's shape {tuple(input.shape)}, "
            f"but got {getattr(value, 'shape', type(value))}"
        )


def _check_target_range(target: Tensor) -> None:
    """Values in [0, 1]: read on the CPU; on accelerators an asynchronous device assert (no sync)."""
    if torch.compiler.is_compiling() or target.numel() == 0 or target.dtype == torch.bool:
        return
    if target.device.type != "cpu":
        ok = ((target >= 0) & (target <= 1)).all()
        assert_on_device(ok, "Expected argument `target` to hold values in [0, 1]")
        return
    low, high = torch.aminmax(target)
    if not (low.item() >= 0 and high.item() <= 1):  # `not`: a NaN fails too
        bad = target[~((target >= 0) & (target <= 1))].flatten()[0].item()
        raise ValueError(f"Expected argument `target` to hold values in [0, 1], but got {bad}")
