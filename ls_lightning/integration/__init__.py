"""The Lightning integration: the mixin, the callbacks, ε schedules, priors and samplers. Needs lightning."""

from ls_lightning.integration.callbacks import LabelSmoothing, ReliabilityDiagram, TemperatureScaling
from ls_lightning.integration.mixin import LabelSmoothingMixin
from ls_lightning.integration.samplers import UnpaddedDistributedSampler

__all__ = [
    "LabelSmoothing",
    "LabelSmoothingMixin",
    "ReliabilityDiagram",
    "TemperatureScaling",
    "UnpaddedDistributedSampler",
]
