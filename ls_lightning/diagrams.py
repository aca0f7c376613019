"""Calibration callbacks, at their documented path; they live in :mod:`ls_lightning.integration.callbacks`."""

from ls_lightning.integration.callbacks.reliability_diagram import (
    RELIABILITY_JSON,
    ReliabilityDiagram,
    bin_stats_from_dict,
    bin_stats_to_dict,
)
from ls_lightning.integration.callbacks.temperature_scaling import TemperatureScaling

__all__ = ["RELIABILITY_JSON", "ReliabilityDiagram", "TemperatureScaling", "bin_stats_from_dict", "bin_stats_to_dict"]
