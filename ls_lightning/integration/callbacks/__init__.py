"""Lightning callbacks, one per file: the ε schedule, reliability diagrams, temperature scaling."""

from ls_lightning.integration.callbacks.label_smoothing import LabelSmoothing
from ls_lightning.integration.callbacks.reliability_diagram import ReliabilityDiagram
from ls_lightning.integration.callbacks.temperature_scaling import TemperatureScaling

__all__ = ["LabelSmoothing", "ReliabilityDiagram", "TemperatureScaling"]
