"""One switch between label smoothing and its train-time relatives, for callers that choose the loss by name.

The objectives are the losses of :mod:`ls_lightning.losses`: ``"label_smoothing"`` (ε),
``"confidence_penalty"`` (β), ``"focal"`` (γ), ``"flsd53"`` (γ by Mukhoti et al.'s rule) and ``"mbls"`` (λ, margin
m). Each has one scheduled weight (ε, β or λ; the focal losses none), which a schedule maps from training progress
like ε, and a result whose fields are its logged terms: ``h_pq`` always the cross-entropy to the label, so that runs
of every objective rank on one scale.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, cast, get_args

from torch import Tensor

from ls_lightning.losses.binary import BinaryLossStats, binary_label_smoothed_cross_entropy_with_stats
from ls_lightning.losses.functional import LossStats, Reduction, label_smoothed_cross_entropy_with_stats
from ls_lightning.losses.relatives import (
    binary_focal_cross_entropy_with_stats,
    confidence_penalty_cross_entropy_with_stats,
    focal_cross_entropy_with_stats,
    margin_smoothed_cross_entropy_with_stats,
)

__all__ = [
    "OBJECTIVES",
    "SCHEDULED_NAMES",
    "Objective",
    "binary_objective_with_stats",
    "check_objective",
    "objective_with_stats",
]

Objective = Literal["label_smoothing", "confidence_penalty", "focal", "flsd53", "mbls"]
OBJECTIVES: tuple[Objective, ...] = get_args(Objective)
# The name of each objective's scheduled weight, as logged (``train/epsilon``); None: the focal losses have none.
SCHEDULED_NAMES: dict[Objective, str | None] = {
    "label_smoothing": "epsilon",
    "confidence_penalty": "beta",
    "focal": None,
    "flsd53": None,
    "mbls": "margin_weight",
}


def check_objective(objective: object) -> Objective:
    """``objective``: one of :data:`OBJECTIVES`."""
    if objective not in OBJECTIVES:
        raise ValueError(f"Expected argument `objective` to be one of {OBJECTIVES}, but got {objective!r}")
    return cast(Objective, objective)


def objective_with_stats(
    objective: Objective,
    input: Tensor,
    target: Tensor,
    scheduled: float | Tensor,
    *,
    focal_gamma: float = 3.0,
    margin: float = 10.0,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    prior: Tensor | None = None,
    brier: bool = True,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> tuple[NamedTuple, LossStats]:
    """The multi-class loss ``objective`` and its per-position statistics from the same pass.

    Args:
        objective: which loss (see the module's docstring).
        input, target, weight, ignore_index, reduction, brier: as in
            :func:`~ls_lightning.losses.label_smoothed_cross_entropy_with_stats`.
        scheduled: ε, β or λ (ignored by the focal losses).
        focal_gamma: γ of ``"focal"``.
        margin: m of ``"mbls"``.
        prior, z_loss, softcap: label smoothing's; the relatives refuse them.

    Returns:
        The objective's result (``LabelSmoothedCE``, ``ConfidencePenaltyCE``, ``FocalCE`` or ``MarginSmoothedCE``)
        and its :class:`~ls_lightning.losses.LossStats`.

    Raises:
        ValueError: For a prior, z-loss or soft-capping with a relative, or what the loss itself refuses.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[12.0, 0.0, 1.0]])  # gaps to the maximum 0, 12, 11; beyond m = 10: 0, 2, 1
        >>> result, stats = objective_with_stats("mbls", logits, torch.tensor([0]), 0.1)
        >>> result._fields, round(float(result.margin_penalty), 4)
        (('loss', 'h_pq', 'margin_penalty'), 1.0)
    """
    common: dict[str, Any] = dict(weight=weight, ignore_index=ignore_index, reduction=reduction, brier=brier)
    if objective == "label_smoothing":
        return label_smoothed_cross_entropy_with_stats(
            input, target, scheduled, prior=prior, z_loss=z_loss, softcap=softcap, **common
        )
    if prior is not None or z_loss or softcap is not None:
        raise ValueError(
            f"Expected no `prior`, `z_loss` or `softcap` with objective={objective!r} (they are label smoothing's),"
            f" but got prior={'a tensor' if prior is not None else None}, z_loss={z_loss!r}, softcap={softcap!r}"
        )
    if objective == "confidence_penalty":
        return confidence_penalty_cross_entropy_with_stats(input, target, scheduled, **common)
    if objective == "mbls":
        return margin_smoothed_cross_entropy_with_stats(input, target, scheduled, margin=margin, **common)
    gamma: float | Literal["flsd53"] = "flsd53" if objective == "flsd53" else focal_gamma
    return focal_cross_entropy_with_stats(input, target, gamma, **common)


def binary_objective_with_stats(
    objective: Objective,
    input: Tensor,
    target: Tensor,
    scheduled: float | Tensor,
    *,
    focal_gamma: float = 3.0,
    reduction: Reduction = "mean",
    brier: bool = True,
) -> tuple[NamedTuple, BinaryLossStats]:
    """The binary (one logit per label) form of ``objective``: label smoothing towards ½, or the focal loss (no α
    weighting). The confidence penalty, FLSD-53 and MbLS are multi-class losses and are refused.

    Raises:
        ValueError: For an objective without a binary form, or what the loss itself refuses.
    """
    if objective == "label_smoothing":
        return binary_label_smoothed_cross_entropy_with_stats(
            input, target, scheduled, reduction=reduction, brier=brier
        )
    if objective == "focal":
        return binary_focal_cross_entropy_with_stats(input, target, focal_gamma, None, reduction=reduction, brier=brier)
    raise ValueError(
        f"Expected objective 'label_smoothing' or 'focal' for a binary or multi-label task, but got {objective!r}:"
        " it is defined on a softmax over classes"
    )
