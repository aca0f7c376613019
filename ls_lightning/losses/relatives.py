r"""The train-time relatives of label smoothing as losses: the confidence penalty, the focal loss (with FLSD-53) and
margin-based label smoothing (MbLS) for multi-class logits, and the focal loss for binary and multi-label logits.

Each has the contract of :func:`~ls_lightning.losses.label_smoothed_cross_entropy`: the shapes, ``weight``,
``ignore_index`` and reductions of ``F.cross_entropy``; a NamedTuple result whose fields are the logged terms, with
``h_pq`` always the plain cross-entropy to the label (so that runs of every variant rank on one scale); a
``..._with_stats`` form that also returns the per-position :class:`~ls_lightning.losses.LossStats`; ``mean`` over
positions that are all ignored is 0 with zero gradient. Label smoothing penalises KL(u‖q), the confidence penalty
KL(q‖u) (its entropy term), the focal loss down-weights the positions already fitted, and MbLS penalises logit
gaps larger than a margin.

Class weights: position i with label y counts with weight w_y in every term, the regulariser's included, so that
``mean`` has one denominator, Σ w_y over the counted positions (as ``F.cross_entropy``). For probability targets p
the cross-entropy term is PyTorch's soft-target one, ``−Σ_k w_k p_k log q_k``, the regulariser's weight is
``Σ_k w_k p_k`` (w_y for a one-hot p) and ``mean`` divides by the number of positions, as PyTorch does.

Class indices go through the chunked one-pass kernels of :mod:`.ops.relatives` (closed-form gradients, no
logits-sized temporary besides the gradient), and under ``torch.compile`` through its traced formulas (one fused
reduction forward, one pointwise pass backward), where β and λ stay data: a 0-d tensor never recompiles when its value
changes. Small inputs and probability targets take a short ``log_softmax`` path that autograd differentiates.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from ls_lightning.losses import binary as _binary
from ls_lightning.losses.checks import (
    check_alpha,
    check_gamma,
    check_loss_arguments,
    check_non_negative,
    check_regularizer_weight,
)
from ls_lightning.losses.functional import LossStats, Reduction, _class_view, _composite_stats
from ls_lightning.losses.ops import fused as _fused
from ls_lightning.losses.ops import relatives as _ops
from ls_lightning.losses.ops.relatives import Spec

__all__ = [
    "ConfidencePenaltyCE",
    "FocalCE",
    "MarginSmoothedCE",
    "binary_focal_cross_entropy",
    "binary_focal_cross_entropy_with_stats",
    "confidence_penalty_cross_entropy",
    "confidence_penalty_cross_entropy_with_stats",
    "focal_cross_entropy",
    "focal_cross_entropy_with_stats",
    "margin_smoothed_cross_entropy",
    "margin_smoothed_cross_entropy_with_stats",
]

# Inputs of at most this many logits in at most this many rows take a short log_softmax path (as the label-smoothed
# loss does): there each PyTorch op costs microseconds of dispatch whatever its size, and the chunked kernels have more.
SMALL_ELEMENTS = 1 << 16
SMALL_ROWS = 512


class ConfidencePenaltyCE(NamedTuple):
    """Result of :func:`confidence_penalty_cross_entropy`: ``loss == h_pq − β·entropy``."""

    loss: Tensor
    h_pq: Tensor  # cross-entropy to the label
    entropy: Tensor  # predictive entropy H(q), summed over classes, weighted and reduced like h_pq


class FocalCE(NamedTuple):
    """Result of :func:`focal_cross_entropy` and :func:`binary_focal_cross_entropy`."""

    loss: Tensor
    h_pq: Tensor  # cross-entropy to the label (binary: BCE to the target)


class MarginSmoothedCE(NamedTuple):
    """Result of :func:`margin_smoothed_cross_entropy`: ``loss == h_pq + λ·margin_penalty``."""

    loss: Tensor
    h_pq: Tensor  # cross-entropy to the label
    margin_penalty: Tensor  # mean over classes of max(0, max_j z_j − z_k − m), weighted and reduced like h_pq


# ------------------------------------------------------------------------------------------- confidence penalty


def confidence_penalty_cross_entropy(
    input: Tensor,
    target: Tensor,
    beta: float | Tensor = 0.1,
    *,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> ConfidencePenaltyCE:
    r"""Cross-entropy minus β times the predictive entropy: the confidence penalty of Pereyra et al. (2017).

    .. math::
        L = H(p, q) - \beta\,H(q), \qquad H(q) = -\textstyle\sum_k q_k \log q_k, \quad q = \mathrm{softmax}(z)

    ``H(q)`` is each position's entropy summed over its classes, as in Pereyra et al., "Regularizing neural networks
    by penalizing confident output distributions" (ICLR 2017 workshop). Label smoothing adds KL(u‖q) to the
    cross-entropy, this loss −H(q) = KL(q‖u) − log C. MbLS's re-implementation (by-liu/MbLS,
    ``calibrate/losses/penalty_entropy.py``) takes the mean over positions *and classes* of clamped probabilities
    instead: its ``alpha`` is our β·C.

    Args:
        input: Logits.
        target: Class indices, or class probabilities of ``input``'s shape.
        beta: β ≥ 0; a float or a 0-d tensor (a tensor on an accelerator, or under ``torch.compile``, is not
            range-checked: that would need a host synchronisation or a value guard).
        weight: Class weights, shape (C,): position i counts with w_y in both terms (see the module's notes).
        ignore_index: Target value whose positions contribute nothing (class-index targets only).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
        ConfidencePenaltyCE ``(loss, h_pq, entropy)``, each reduced like ``F.cross_entropy``'s result (float32 for
        half-precision input); ``h_pq`` equals ``F.cross_entropy(input, target, weight=weight, ...)``.

    Raises:
        ValueError: If β is negative or not finite, a class index is outside [0, C) and not ``ignore_index``,
            shapes do not match, ``weight`` is not (C,), or ``reduction`` is unknown.

    Shape:
        - input: (C), (N, C) or (N, C, d1, …).
        - target: () / (N) / (N, d1, …) class indices, or the input's shape for probabilities.
        - output: () for ``mean``/``sum``, else the target's shape without the class dimension.

    Example:
        >>> import torch
        >>> logits, target = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]]), torch.tensor([0, 2])
        >>> out = confidence_penalty_cross_entropy(logits, target, beta=0.5)
        >>> q = torch.softmax(logits, 1)
        >>> torch.allclose(out.entropy, -(q * q.log()).sum(1).mean())
        True
        >>> torch.allclose(out.loss, torch.nn.functional.cross_entropy(logits, target) - 0.5 * out.entropy)
        True
    """
    terms, _ = _compute(input, target, Spec("penalty", weight=beta), weight, ignore_index, reduction, False)
    return ConfidencePenaltyCE(*terms)


def confidence_penalty_cross_entropy_with_stats(
    input: Tensor,
    target: Tensor,
    beta: float | Tensor = 0.1,
    *,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    brier: bool = True,
) -> tuple[ConfidencePenaltyCE, LossStats]:
    """:func:`confidence_penalty_cross_entropy` plus per-position :class:`~ls_lightning.losses.LossStats` from the
    same pass (``entropy`` filled; ``brier=False`` leaves ``brier`` empty; ``z_loss`` empty).

    Example:
        >>> import torch
        >>> _, stats = confidence_penalty_cross_entropy_with_stats(torch.zeros(2, 4), torch.tensor([0, -100]))
        >>> stats.entropy.tolist() == [torch.log(torch.tensor(4.0)).item()] * 2, stats.valid.tolist()
        (True, [True, False])
    """
    terms, stats = _compute(input, target, Spec("penalty", weight=beta), weight, ignore_index, reduction, True, brier)
    return ConfidencePenaltyCE(*terms), stats


# ------------------------------------------------------------------------------------------------------ focal


def focal_cross_entropy(
    input: Tensor,
    target: Tensor,
    gamma: float | Literal["flsd53"] = 2.0,
    *,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> FocalCE:
    r"""The focal loss of Lin et al. (2017) on softmax logits, with the sample-dependent γ of FLSD-53.

    .. math::
        L = -(1 - q_y)^\gamma \log q_y, \qquad q = \mathrm{softmax}(z)

    ``gamma="flsd53"`` is the focal loss with sample-dependent γ of Mukhoti et al. (2020), "Calibrating deep neural
    networks using focal loss": γ = 5 where q_y < 0.2, else γ = 3, with q_y a constant when choosing γ. That is
    ``FocalLossAdaptive(gamma=3)`` of torrvision/focal_calibration (``Losses/focal_loss_adaptive_gamma.py``), which
    sums over positions (``size_average=False``): here ``reduction`` decides, ``"sum"`` gives their value. The
    gradient is the closed form ``φ(ℓ)·(q − δ_y)`` with ℓ = −log q_y and φ = dL/dℓ, computed so that it stays
    finite where q_y rounds to 1 (autograd's derivative of ``(1 − q_y)^γ`` there is NaN for γ < 1).

    Args:
        input: Logits.
        target: Class indices. Probability targets are refused: the focal loss is defined through q_y.
        gamma: γ ≥ 0 (0: the cross-entropy), or ``"flsd53"``.
        weight: Class weights, shape (C,): position i counts with w_y, and ``mean`` divides by Σ w_y.
        ignore_index: Target value whose positions contribute nothing.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
        FocalCE ``(loss, h_pq)``, each reduced like ``F.cross_entropy``'s result (float32 for half-precision input);
        ``h_pq`` equals ``F.cross_entropy(input, target, weight=weight, ...)``.

    Raises:
        ValueError: If γ is negative, not finite and not ``"flsd53"``, ``target`` holds probabilities, a class index
            is outside [0, C) and not ``ignore_index``, shapes do not match, ``weight`` is not (C,), or
            ``reduction`` is unknown.

    Shape:
        - input: (C), (N, C) or (N, C, d1, …).
        - target: () / (N) / (N, d1, …).
        - output: () for ``mean``/``sum``, else the target's shape.

    Example:
        >>> import torch
        >>> logits, target = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]]), torch.tensor([0, 2])
        >>> out = focal_cross_entropy(logits, target, gamma=2.0, reduction="none")
        >>> q_y = torch.softmax(logits, 1)[[0, 1], target]
        >>> torch.allclose(out.loss, -(1 - q_y) ** 2 * q_y.log())
        True
        >>> torch.allclose(out.h_pq, -q_y.log())
        True
    """
    terms, _ = _compute(input, target, Spec("focal", gamma=gamma), weight, ignore_index, reduction, False)
    return FocalCE(*terms[:2])


def focal_cross_entropy_with_stats(
    input: Tensor,
    target: Tensor,
    gamma: float | Literal["flsd53"] = 2.0,
    *,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    brier: bool = True,
) -> tuple[FocalCE, LossStats]:
    """:func:`focal_cross_entropy` plus per-position :class:`~ls_lightning.losses.LossStats` from the same pass
    (``entropy`` filled; ``brier=False`` leaves ``brier`` empty; ``z_loss`` empty).

    Example:
        >>> import torch
        >>> _, stats = focal_cross_entropy_with_stats(torch.tensor([[3.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
        >>> stats.correct.tolist(), stats.weight_sum.item()
        ([True, False], 2.0)
    """
    terms, stats = _compute(input, target, Spec("focal", gamma=gamma), weight, ignore_index, reduction, True, brier)
    return FocalCE(*terms[:2]), stats


# ------------------------------------------------------------------------------------------------------ MbLS


def margin_smoothed_cross_entropy(
    input: Tensor,
    target: Tensor,
    margin_weight: float | Tensor = 0.1,
    *,
    margin: float = 10.0,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> MarginSmoothedCE:
    r"""Margin-based label smoothing (MbLS) of Liu et al. (2022): the cross-entropy plus λ times a hinge on the
    logit gaps larger than a margin m.

    .. math::
        L = H(p, q) + \lambda\,\frac{1}{C}\sum_k \max\bigl(0,\ \max_j z_j - z_k - m\bigr)

    As ``LogitMarginL1(margin=m, alpha=λ)`` of by-liu/MbLS (``calibrate/losses/logit_margin_l1.py``), whose
    ``mean()`` runs over the N·C entries: ours weights each position's class mean by w_y and reduces it like the
    cross-entropy, which for the default ``mean`` without weights is the same. Differences on purpose: their code
    drops ignored positions only when ``ignore_index >= 0``, so with the default −100 their margin term still
    counts positions whose target is −100 (and their cross-entropy skips them); ours never counts ignored
    positions; where several logits tie for the maximum, the maximum's share of the gradient is split among them
    (as PyTorch's ``amax`` does; their ``max(dim=1)`` gives it to one of them).

    Args:
        input: Logits.
        target: Class indices, or class probabilities of ``input``'s shape.
        margin_weight: λ ≥ 0 (MbLS: 0.1); a float or a 0-d tensor (not range-checked on an accelerator or under
            ``torch.compile``).
        margin: m ≥ 0 (MbLS: 10).
        weight: Class weights, shape (C,): position i counts with w_y in both terms (see the module's notes).
        ignore_index: Target value whose positions contribute nothing (class-index targets only).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
        MarginSmoothedCE ``(loss, h_pq, margin_penalty)``, each reduced like ``F.cross_entropy``'s result (float32
        for half-precision input); ``h_pq`` equals ``F.cross_entropy(input, target, weight=weight, ...)``.

    Raises:
        ValueError: If λ or m is negative or not finite, a class index is outside [0, C) and not ``ignore_index``,
            shapes do not match, ``weight`` is not (C,), or ``reduction`` is unknown.

    Shape:
        - input: (C), (N, C) or (N, C, d1, …).
        - target: () / (N) / (N, d1, …) class indices, or the input's shape for probabilities.
        - output: () for ``mean``/``sum``, else the target's shape without the class dimension.

    Example:
        >>> import torch
        >>> logits, target = torch.tensor([[12.0, 0.5, -1.0], [0.1, 0.2, 0.3]]), torch.tensor([0, 2])
        >>> out = margin_smoothed_cross_entropy(logits, target, 0.1, margin=10.0)
        >>> out.margin_penalty  # (12 − 0.5 − 10) + (12 + 1 − 10) over 2·3 entries
        tensor(0.7500)
        >>> torch.allclose(out.loss, torch.nn.functional.cross_entropy(logits, target) + 0.1 * 0.75)
        True
    """
    spec = Spec("margin", weight=margin_weight, margin=margin)
    terms, _ = _compute(input, target, spec, weight, ignore_index, reduction, False)
    return MarginSmoothedCE(*terms)


def margin_smoothed_cross_entropy_with_stats(
    input: Tensor,
    target: Tensor,
    margin_weight: float | Tensor = 0.1,
    *,
    margin: float = 10.0,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    brier: bool = True,
) -> tuple[MarginSmoothedCE, LossStats]:
    """:func:`margin_smoothed_cross_entropy` plus per-position :class:`~ls_lightning.losses.LossStats` from the
    same pass (``entropy`` filled; ``brier=False`` leaves ``brier`` empty; ``z_loss`` empty).

    Example:
        >>> import torch
        >>> _, stats = margin_smoothed_cross_entropy_with_stats(torch.tensor([[3.0, 0.0]]), torch.tensor([1]))
        >>> stats.correct.tolist(), round(stats.confidence.item(), 4)
        ([False], 0.9526)
    """
    spec = Spec("margin", weight=margin_weight, margin=margin)
    terms, stats = _compute(input, target, spec, weight, ignore_index, reduction, True, brier)
    return MarginSmoothedCE(*terms), stats


# ------------------------------------------------------------------------------------------------ dispatch


def _compute(
    input: Tensor,
    target: Tensor,
    spec: Spec,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    with_stats: bool,
    brier: bool = True,
) -> tuple[tuple[Tensor, ...], LossStats]:
    """Validate, add a batch dimension to (C) input, dispatch, and drop that dimension again."""
    check_loss_arguments(input, target, 0.0, weight, ignore_index, reduction, None)
    _check_spec(spec, target)
    unbatched = input.dim() == 1
    x, t = (input.unsqueeze(0), target.unsqueeze(0)) if unbatched else (input, target)
    args = (spec, weight, ignore_index, reduction, with_stats, brier)
    if t.is_floating_point():
        outputs = _soft(x, t, spec, weight, reduction, with_stats, brier)
    elif torch.compiler.is_compiling():
        outputs = _ops.traced_relative_loss_and_stats(x, t.long(), *args)
    elif x.numel() <= SMALL_ELEMENTS and x.numel() <= SMALL_ROWS * x.shape[1]:
        outputs = _small(x, t.long(), *args)
    elif torch.is_grad_enabled() and x.requires_grad:
        outputs = _ops.RelativeCEFunction.apply(x, t.long(), *args)
    else:
        outputs = _ops.relative_loss_no_grad(x, t.long(), *args)
    loss, h_pq, term, *stats = outputs
    terms = tuple(value for value in (loss, h_pq, term) if value is not None)
    if unbatched and reduction == "none":
        terms = tuple(value.squeeze(0) for value in terms)
    return terms, LossStats(*cast("list[Tensor]", stats))


def _small(
    x: Tensor,
    target: Tensor,
    spec: Spec,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    with_stats: bool,
    brier: bool,
) -> tuple[Tensor | None, ...]:
    """Few-op path for small inputs (class indices), on ``log_softmax``; autograd differentiates it."""
    acc = _ops.accumulation_dtype(x.dtype)
    logp = torch.log_softmax(x, 1, dtype=acc)
    valid = target != ignore_index
    y = torch.where(valid, target, 0)
    wy = (valid.to(acc) if weight is None else weight.to(acc)[y] * valid).reshape(-1)
    nll = -logp.gather(1, y.unsqueeze(1)).squeeze(1)
    entropy = -(logp.exp() * logp).sum(1) if spec.kind == "penalty" or with_stats else None
    extra = entropy if spec.kind == "penalty" else None
    if spec.kind == "margin":
        extra = _margin_rows(x, acc, spec.margin)
    elif spec.kind == "focal" and (isinstance(spec.gamma, str) or spec.gamma >= 1):
        # autograd's derivative of (1 − q_y)^γ is finite for γ ≥ 1 (FLSD-53: 3 and 5), and a few ops cost less
        # here than an autograd Function; below 1 it is NaN where q_y rounds to 1, and FocalRowsFunction takes over
        extra = (-torch.expm1(-nll)).pow(_ops.focal_gamma(nll, spec.gamma)) * nll
    weight_sum = wy.sum()
    denominator = _fused.mean_denominator(weight_sum, reduction)
    loss, h_pq, term = _ops.reduce_relative_terms(spec, nll, extra, (wy, wy), denominator, reduction, target.shape)
    empty = x.new_empty(0, dtype=torch.float32)
    if not with_stats:
        flags = x.new_empty(0, dtype=torch.bool)
        return (loss, h_pq, term, empty, flags, flags, empty, weight_sum.float(), empty, empty)
    stats = _composite_stats(logp.detach(), target, valid, weight_sum, brier)[:5]  # entropy: this loss's own
    return (loss, h_pq, term, *stats, empty, cast(Tensor, entropy).detach().reshape(-1).float())


def _margin_rows(x: Tensor, acc: torch.dtype, margin: float) -> Tensor:
    """MbLS's penalty per position on the composite paths: mean over classes of max(0, max_j z_j − z_k − m)."""
    xf = x.to(acc)
    return F.relu((xf.amax(1, keepdim=True) - xf) - margin).mean(1)


def _soft(
    x: Tensor, p: Tensor, spec: Spec, weight: Tensor | None, reduction: str, with_stats: bool, brier: bool
) -> tuple[Tensor | None, ...]:
    """Probability targets, on ``log_softmax`` (autograd's gradient): PyTorch's soft-target cross-entropy plus the
    regulariser, weighted by Σ_k w_k p_k per position; ``mean`` divides by the number of positions."""
    acc = _ops.accumulation_dtype(x.dtype)
    logp = torch.log_softmax(x, 1, dtype=acc)
    pt = p.to(acc)
    weighted = pt if weight is None else pt * _class_view(weight, logp)
    nll = -(logp * weighted).sum(1)
    term_weight = None if weight is None else weighted.sum(1).reshape(-1)
    entropy = -(logp.exp() * logp).sum(1)
    extra = entropy if spec.kind == "penalty" else _margin_rows(x, acc, spec.margin)
    count = nll.new_full((), float(nll.numel()))
    denominator = _fused.mean_denominator(count, reduction)
    loss, h_pq, term = _ops.reduce_relative_terms(
        spec, nll, extra, (None, term_weight), denominator, reduction, nll.shape
    )
    valid = torch.ones(nll.shape, dtype=torch.bool, device=x.device)
    if not with_stats:
        empty = x.new_empty(0, dtype=torch.float32)
        flags = x.new_empty(0, dtype=torch.bool)
        return (loss, h_pq, term, empty, flags, flags, empty, count.float(), empty, empty)
    stats = _composite_stats(logp.detach(), pt.argmax(1), valid, count, brier)[:5]  # entropy: this loss's own
    empty = x.new_empty(0, dtype=torch.float32)
    return (loss, h_pq, term, *stats, empty, entropy.detach().reshape(-1).float())


# ------------------------------------------------------------------------------------------------ binary focal


def binary_focal_cross_entropy(
    input: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    *,
    reduction: Reduction = "mean",
) -> FocalCE:
    r"""The focal loss of Lin et al. (2017) on sigmoid logits: binary and multi-label heads (RetinaNet's loss).

    .. math::
        L = -\alpha_t\,(1 - p_t)^\gamma \log p_t, \qquad p_t = p\,t + (1 - p)(1 - t), \quad
        \alpha_t = \alpha\,t + (1 - \alpha)(1 - t), \quad p = \sigma(x)

    Equal to ``torchvision.ops.sigmoid_focal_loss(input, target, alpha, gamma, reduction)`` (whose default
    reduction is ``"none"``; ours is ``"mean"``, over all elements); ``alpha=None`` or −1 weighs nothing.
    ``1 − p_t`` is formed as ``p(1 − t) + σ(−x)·t``, exact where p rounds to 1.

    Args:
        input: Logits, any shape.
        target: Targets of ``input``'s shape in [0, 1]: 0/1 labels (any real or bool dtype) or soft targets.
        gamma: γ ≥ 0.
        alpha: Weight α in [0, 1] of the positive term (1 − α of the negative one), or None / −1 for none.
        reduction: ``"none"``, ``"mean"`` (over all elements) or ``"sum"``.

    Returns:
        FocalCE ``(loss, h_pq)``; ``h_pq`` is ``F.binary_cross_entropy_with_logits(input, target, reduction=...)``.

    Raises:
        ValueError: If γ is negative or not finite, α is not None, −1 or in [0, 1], ``target``'s shape differs from
            ``input``'s, a target value is outside [0, 1], or ``reduction`` is unknown.

    Shape:
        - input: (*), e.g. (N), (N, 1) or (N, L).
        - target: (*), the input's shape.
        - output: () for ``mean``/``sum``, else (*).

    Example:
        >>> import torch
        >>> logits, target = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.0])
        >>> out = binary_focal_cross_entropy(logits, target, gamma=2.0, alpha=None, reduction="none")
        >>> p_t = torch.tensor([torch.sigmoid(torch.tensor(2.0)), 1 - torch.sigmoid(torch.tensor(-1.0)),
        ...                     1 - torch.sigmoid(torch.tensor(0.5))])
        >>> torch.allclose(out.loss, -(1 - p_t) ** 2 * p_t.log())
        True
    """
    result, _ = _binary_focal(input, target, gamma, alpha, reduction, False)
    return result


def binary_focal_cross_entropy_with_stats(
    input: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    *,
    reduction: Reduction = "mean",
    brier: bool = True,
) -> tuple[FocalCE, _binary.BinaryLossStats]:
    """:func:`binary_focal_cross_entropy` plus per-position :class:`~ls_lightning.losses.BinaryLossStats`.

    Example:
        >>> import torch
        >>> _, stats = binary_focal_cross_entropy_with_stats(torch.tensor([[3.0, -1.0]]), torch.tensor([[1.0, 1.0]]))
        >>> stats.correct.tolist(), stats.weight_sum.item()
        ([True, False], 2.0)
    """
    return _binary_focal(input, target, gamma, alpha, reduction, True, brier)


def _binary_focal(
    input: Tensor,
    target: Tensor,
    gamma: float,
    alpha: float | None,
    reduction: str,
    with_stats: bool,
    brier: bool = True,
) -> tuple[FocalCE, _binary.BinaryLossStats]:
    """Validate; the focal rows from PyTorch's BCE on logits, in float32 at least; the statistics without autograd."""
    _binary._check_arguments(input, target, 0.0, None, None, reduction)
    check_gamma(gamma, allow_flsd=False)
    check_alpha(alpha)
    x = input if input.dtype in (torch.float32, torch.float64) else input.float()
    t = target.to(x.dtype)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    one_minus_pt = torch.sigmoid(x) * (1 - t) + torch.sigmoid(-x) * t
    rows = ce * one_minus_pt.pow(gamma)
    if alpha is not None and alpha >= 0:
        rows = (alpha * t + (1 - alpha) * (1 - t)) * rows
    loss = rows if reduction == "none" else (rows.sum() if reduction == "sum" else rows.mean())
    h_pq = ce if reduction == "none" else F.binary_cross_entropy_with_logits(x, t, reduction=reduction)
    return FocalCE(loss, h_pq), _binary._stats(x, t, with_stats, brier)


# ------------------------------------------------------------------------------------------------ argument checks


def _check_spec(spec: Spec, target: Tensor) -> None:
    """β / λ, γ and m of ``spec``; the focal loss refuses probability targets."""
    if spec.kind == "penalty":
        check_regularizer_weight("beta", spec.weight)
    elif spec.kind == "margin":
        check_regularizer_weight("margin_weight", spec.weight)
        check_non_negative("margin", spec.margin)
    else:
        check_gamma(spec.gamma, allow_flsd=True)
        if target.is_floating_point():
            raise ValueError(
                f"Expected argument `target` to hold class indices for the focal loss (it is defined through q_y), "
                f"but got probabilities of dtype {target.dtype}"
            )
