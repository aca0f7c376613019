"""The Lightning integration: the mixin, the callbacks, and :func:`log_figure`. Needs lightning.

Only code that uses Lightning lives here: the schedules it applies are in :mod:`ls_lightning.smoothing`, the losses and
priors in :mod:`ls_lightning.losses`, the metrics it logs in :mod:`ls_lightning.metrics`.
"""

from ls_lightning.integration.callbacks.label_smoothing import LabelSmoothing
from ls_lightning.integration.callbacks.label_smoothing_prior import LabelSmoothingPrior
from ls_lightning.integration.callbacks.penultimate import (
    PROJECTION_FILE,
    PROJECTION_IMAGE,
    RATIO_KEY,
    PenultimateProjection,
)
from ls_lightning.integration.callbacks.reliability_diagram import RELIABILITY_JSON, ReliabilityDiagram
from ls_lightning.integration.callbacks.temperature_scaling import TemperatureScaling
from ls_lightning.integration.figures import log_figure
from ls_lightning.integration.mixin import (
    DEFAULT_LOG_METRICS,
    METRIC_GROUPS,
    LabelSmoothingMixin,
    LossBatch,
    MetricGroup,
    MixinSettings,
    Stage,
    Task,
)
from ls_lightning.integration.normalization import LossNormalization

__all__ = [
    "DEFAULT_LOG_METRICS",
    "METRIC_GROUPS",
    "PROJECTION_FILE",
    "PROJECTION_IMAGE",
    "RATIO_KEY",
    "RELIABILITY_JSON",
    "LabelSmoothing",
    "LabelSmoothingMixin",
    "LabelSmoothingPrior",
    "LossBatch",
    "LossNormalization",
    "MetricGroup",
    "MixinSettings",
    "PenultimateProjection",
    "ReliabilityDiagram",
    "Stage",
    "Task",
    "TemperatureScaling",
    "log_figure",
]
