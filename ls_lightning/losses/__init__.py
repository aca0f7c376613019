"""The losses: the label-smoothed cross-entropy (multi-class, binary, fused with the output layer), its train-time
relatives (confidence penalty, focal loss and FLSD-53, margin-based label smoothing), their argument checks, and the
priors u they smooth towards (``prior=``).

Needs torch only. :mod:`ls_lightning.losses.ops` holds the kernels (autograd Functions, the custom op and the code
``torch.compile`` traces); the functions and modules exported here validate, dispatch and document, and are what
other layers and users call.
"""

from ls_lightning.losses.binary import (
    BinaryLossStats,
    binary_label_smoothed_cross_entropy,
    binary_label_smoothed_cross_entropy_with_stats,
)
from ls_lightning.losses.checks import check_label_smoothing, check_prior, check_softcap, check_z_loss
from ls_lightning.losses.functional import (
    LabelSmoothedCE,
    LossStats,
    Reduction,
    label_smoothed_cross_entropy,
    label_smoothed_cross_entropy_with_stats,
)
from ls_lightning.losses.linear import (
    linear_label_smoothed_cross_entropy,
    linear_label_smoothed_cross_entropy_with_stats,
)
from ls_lightning.losses.module import BinaryLabelSmoothedCrossEntropy, LabelSmoothedCrossEntropy
from ls_lightning.losses.objectives import (
    OBJECTIVES,
    SCHEDULED_NAMES,
    Objective,
    binary_objective_with_stats,
    check_objective,
    objective_with_stats,
)
from ls_lightning.losses.priors import LABEL_KEYS, batch_labels, class_frequency, fixed_prior, prior_matrix
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

__all__ = [
    "LABEL_KEYS",
    "OBJECTIVES",
    "SCHEDULED_NAMES",
    "BinaryLabelSmoothedCrossEntropy",
    "BinaryLossStats",
    "ConfidencePenaltyCE",
    "FocalCE",
    "LabelSmoothedCE",
    "LabelSmoothedCrossEntropy",
    "LossStats",
    "MarginSmoothedCE",
    "Objective",
    "Reduction",
    "batch_labels",
    "binary_focal_cross_entropy",
    "binary_focal_cross_entropy_with_stats",
    "binary_label_smoothed_cross_entropy",
    "binary_label_smoothed_cross_entropy_with_stats",
    "binary_objective_with_stats",
    "check_label_smoothing",
    "check_objective",
    "check_prior",
    "check_softcap",
    "check_z_loss",
    "class_frequency",
    "confidence_penalty_cross_entropy",
    "confidence_penalty_cross_entropy_with_stats",
    "fixed_prior",
    "focal_cross_entropy",
    "focal_cross_entropy_with_stats",
    "label_smoothed_cross_entropy",
    "label_smoothed_cross_entropy_with_stats",
    "linear_label_smoothed_cross_entropy",
    "linear_label_smoothed_cross_entropy_with_stats",
    "margin_smoothed_cross_entropy",
    "margin_smoothed_cross_entropy_with_stats",
    "objective_with_stats",
    "prior_matrix",
]
