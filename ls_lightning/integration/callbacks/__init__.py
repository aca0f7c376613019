"""Lightning callbacks, one per file: the ε schedule, reliability diagrams, temperature scaling, the penultimate
layer's projection."""

from ls_lightning.integration.callbacks.label_smoothing import LabelSmoothing
from ls_lightning.integration.callbacks.penultimate import PenultimateProjection
from ls_lightning.integration.callbacks.reliability_diagram import ReliabilityDiagram
from ls_lightning.integration.callbacks.temperature_scaling import TemperatureScaling

__all__ = ["LabelSmoothing", "PenultimateProjection", "ReliabilityDiagram", "TemperatureScaling"]
