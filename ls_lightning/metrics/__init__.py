"""Calibration and loss metrics as torchmetrics ``Metric`` classes with sum-reduced O(n_bins) (class-wise:
O(classes × n_bins)) state and their functional forms, the penultimate layer's geometry, the post-hoc temperature fit,
online label smoothing's prior estimate, and the sampler that keeps evaluation exact over several processes. Needs
torchmetrics.

:mod:`ls_lightning.metrics.plotting` draws reliability diagrams from them (needs matplotlib).
"""

from ls_lightning.metrics.calibration import (
    AdaptiveCalibrationError,
    BinnedCalibrationError,
    BinStats,
    BrierScore,
    Norm,
    Overconfidence,
    Perplexity,
    WeightedMean,
    binned_calibration_arg_validation,
    binned_calibration_error,
    brier_score,
)
from ls_lightning.metrics.classwise import ClasswiseCalibrationError, ClasswiseReduction, classwise_calibration_error
from ls_lightning.metrics.online_prior import OnlinePrior
from ls_lightning.metrics.penultimate import (
    WithinBetweenRatio,
    project_to_template_plane,
    template_classes_arg_validation,
    template_plane_basis,
    within_between_ratio,
)
from ls_lightning.metrics.sampler import UnpaddedDistributedSampler
from ls_lightning.metrics.temperature import fit_temperature

__all__ = [
    "AdaptiveCalibrationError",
    "BinStats",
    "BinnedCalibrationError",
    "BrierScore",
    "ClasswiseCalibrationError",
    "ClasswiseReduction",
    "Norm",
    "OnlinePrior",
    "Overconfidence",
    "Perplexity",
    "UnpaddedDistributedSampler",
    "WeightedMean",
    "WithinBetweenRatio",
    "binned_calibration_arg_validation",
    "binned_calibration_error",
    "brier_score",
    "classwise_calibration_error",
    "fit_temperature",
    "project_to_template_plane",
    "template_classes_arg_validation",
    "template_plane_basis",
    "within_between_ratio",
]
