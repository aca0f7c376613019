"""The losses: the label-smoothed cross-entropy (multi-class and binary), its fused lm-head form, its train-time
relatives (confidence penalty, focal loss, MbLS), their kernels.

:mod:`ls_lightning.losses.ops` holds the kernels (autograd Functions and the code ``torch.compile`` traces); the
functions and the modules here are what other layers and users call. Needs torch only.
"""

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
from ls_lightning.losses.module import BinaryLabelSmoothedCrossEntropy, LabelSmoothedCrossEntropy
from ls_lightning.losses.relatives import (
    ConfidencePenaltyCE,
    FocalCE,
    MarginSmoothedCE,
    binary_focal_cross_entropy,
    binary_focal_cross_entropy_with_stats,
    confidence_penalty_cross_entropy,
    confidence_penalty_cross_entropy_with_stats,
    focal_cross_entropy,
    focal_cross_entropy_with_stats,
    margin_smoothed_cross_entropy,
    margin_smoothed_cross_entropy_with_stats,
)
from ls_lightning.losses.temperature import fit_temperature

__all__ = [
    "BinaryLabelSmoothedCrossEntropy",
    "BinaryLossStats",
    "ConfidencePenaltyCE",
    "FocalCE",
    "LabelSmoothedCE",
    "LabelSmoothedCrossEntropy",
    "LossStats",
    "MarginSmoothedCE",
    "Reduction",
    "binary_focal_cross_entropy",
    "binary_focal_cross_entropy_with_stats",
    "binary_label_smoothed_cross_entropy",
    "binary_label_smoothed_cross_entropy_with_stats",
    "check_label_smoothing",
    "check_prior",
    "check_softcap",
    "check_z_loss",
    "confidence_penalty_cross_entropy",
    "confidence_penalty_cross_entropy_with_stats",
    "fit_temperature",
    "focal_cross_entropy",
    "focal_cross_entropy_with_stats",
    "label_smoothed_cross_entropy",
    "label_smoothed_cross_entropy_with_stats",
    "linear_label_smoothed_cross_entropy",
    "linear_label_smoothed_cross_entropy_with_stats",
    "margin_smoothed_cross_entropy",
    "margin_smoothed_cross_entropy_with_stats",
]
