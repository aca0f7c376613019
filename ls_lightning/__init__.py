"""Label smoothing for PyTorch Lightning: exact fused loss, ε schedules, calibration metrics and Hydra configs.

Names are resolved lazily so that ``from ls_lightning import label_smoothed_cross_entropy`` does not pay for
importing Lightning and Hydra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "label_smoothed_cross_entropy": "ls_lightning.functional",
    "LabelSmoothedCE": "ls_lightning.functional",
    "linear_label_smoothed_cross_entropy": "ls_lightning.functional",
    "LabelSmoothedCrossEntropy": "ls_lightning.losses",
    "LabelSmoothingMixin": "ls_lightning.mixin",
    "LabelSmoothing": "ls_lightning.callback",
    "BinnedCalibrationError": "ls_lightning.metrics",
}

__all__ = [
    "BinnedCalibrationError",
    "LabelSmoothedCE",
    "LabelSmoothedCrossEntropy",
    "LabelSmoothing",
    "LabelSmoothingMixin",
    "__version__",
    "label_smoothed_cross_entropy",
    "linear_label_smoothed_cross_entropy",
]

if TYPE_CHECKING:
    from ls_lightning.callback import LabelSmoothing
    from ls_lightning.functional import (
        LabelSmoothedCE,
        label_smoothed_cross_entropy,
        linear_label_smoothed_cross_entropy,
    )
    from ls_lightning.losses import LabelSmoothedCrossEntropy
    from ls_lightning.metrics import BinnedCalibrationError
    from ls_lightning.mixin import LabelSmoothingMixin


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ls_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
