"""Calibration and loss metrics as torchmetrics ``Metric`` classes with sum-reduced O(n_bins) (class-wise:
O(classes × n_bins)) state, the penultimate layer's geometry, and their functional forms.

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
from ls_lightning.metrics.penultimate import (
    WithinBetweenRatio,
    project_to_template_plane,
    template_classes_arg_validation,
    template_plane_basis,
    within_between_ratio,
)

__all__ = [
    "AdaptiveCalibrationError",
    "BinStats",
    "BinnedCalibrationError",
    "BrierScore",
    "ClasswiseCalibrationError",
    "ClasswiseReduction",
    "Norm",
    "Overconfidence",
    "Perplexity",
    "WeightedMean",
    "WithinBetweenRatio",
    "binned_calibration_arg_validation",
    "binned_calibration_error",
    "brier_score",
    "classwise_calibration_error",
    "project_to_template_plane",
    "template_classes_arg_validation",
    "template_plane_basis",
    "within_between_ratio",
]
