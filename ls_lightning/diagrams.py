"""Calibration callbacks and :func:`log_figure`, at their documented path."""

from ls_lightning.integration.callbacks.reliability_diagram import (
    RELIABILITY_JSON,
    ReliabilityDiagram,
    bin_stats_from_dict,
    bin_stats_to_dict,
)
from ls_lightning.integration.callbacks.temperature_scaling import TemperatureScaling
from ls_lightning.integration.figures import log_figure

__all__ = [
    "RELIABILITY_JSON",
    "ReliabilityDiagram",
    "TemperatureScaling",
    "bin_stats_from_dict",
    "bin_stats_to_dict",
    "log_figure",
]
