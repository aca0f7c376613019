"""Calibration and loss metrics as torchmetrics ``Metric`` classes with O(n_bins) state and their functional forms,
the post-hoc temperature fit, online label smoothing's prior estimate, and the sampler that keeps evaluation exact
over several processes. Needs torchmetrics.

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
from ls_lightning.metrics.online_prior import OnlinePrior
from ls_lightning.metrics.sampler import UnpaddedDistributedSampler
from ls_lightning.metrics.temperature import fit_temperature

__all__ = [
    "AdaptiveCalibrationError",
    "BinStats",
    "BinnedCalibrationError",
    "BrierScore",
    "Norm",
    "OnlinePrior",
    "Overconfidence",
    "Perplexity",
    "UnpaddedDistributedSampler",
    "WeightedMean",
    "binned_calibration_arg_validation",
    "binned_calibration_error",
    "brier_score",
    "fit_temperature",
]
