"""Calibration and loss metrics as torchmetrics ``Metric`` classes with O(n_bins) state, and their functional forms.

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

__all__ = [
    "AdaptiveCalibrationError",
    "BinStats",
    "BinnedCalibrationError",
    "BrierScore",
    "Norm",
    "Overconfidence",
    "Perplexity",
    "WeightedMean",
    "binned_calibration_arg_validation",
    "binned_calibration_error",
    "brier_score",
]
