"""The functional losses, at their documented path; they live in :mod:`ls_lightning.losses`."""

from ls_lightning.losses.binary import (
    BinaryLossStats,
    binary_label_smoothed_cross_entropy,
    binary_label_smoothed_cross_entropy_with_stats,
)
from ls_lightning.losses.functional import (
    LabelSmoothedCE,
    LossStats,
    Reduction,
    check_label_smoothing,
    check_prior,
    check_softcap,
    check_z_loss,
    label_smoothed_cross_entropy,
    label_smoothed_cross_entropy_with_stats,
)
from ls_lightning.losses.linear import (
    linear_label_smoothed_cross_entropy,
    linear_label_smoothed_cross_entropy_with_stats,
)

__all__ = [
    "BinaryLossStats",
    "LabelSmoothedCE",
    "LossStats",
    "Reduction",
    "binary_label_smoothed_cross_entropy",
    "binary_label_smoothed_cross_entropy_with_stats",
    "check_label_smoothing",
    "check_prior",
    "check_softcap",
    "check_z_loss",
    "label_smoothed_cross_entropy",
    "label_smoothed_cross_entropy_with_stats",
    "linear_label_smoothed_cross_entropy",
    "linear_label_smoothed_cross_entropy_with_stats",
]
