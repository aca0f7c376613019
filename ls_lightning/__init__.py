"""Label smoothing for PyTorch Lightning: exact fused loss, ε schedules, calibration metrics and Hydra configs.

The package is layered, imports going down only: :mod:`ls_lightning.smoothing` (the ε schedules, plain Python) and
:mod:`ls_lightning.losses` (the losses and their priors, torch) → :mod:`ls_lightning.metrics` (torchmetrics) →
:mod:`ls_lightning.integration` (Lightning) → :mod:`ls_lightning.cli` (Hydra, the ``cli`` extra). Each public name
has one home, its layer package; the headline names below are also here. They are resolved on first use, so that
``from ls_lightning import label_smoothed_cross_entropy`` does not pay for importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ls_lightning import _graveyard

__version__ = "0.2.0"

_HEADLINE = {
    "binary_label_smoothed_cross_entropy": "ls_lightning.losses",
    "BinaryLabelSmoothedCrossEntropy": "ls_lightning.losses",
    "label_smoothed_cross_entropy": "ls_lightning.losses",
    "LabelSmoothedCE": "ls_lightning.losses",
    "linear_label_smoothed_cross_entropy": "ls_lightning.losses",
    "LabelSmoothedCrossEntropy": "ls_lightning.losses",
    "LabelSmoothingMixin": "ls_lightning.integration",
    "LabelSmoothing": "ls_lightning.integration",
    "BinnedCalibrationError": "ls_lightning.metrics",
}

__all__ = [
    "BinaryLabelSmoothedCrossEntropy",
    "BinnedCalibrationError",
    "LabelSmoothedCE",
    "LabelSmoothedCrossEntropy",
    "LabelSmoothing",
    "LabelSmoothingMixin",
    "__version__",
    "binary_label_smoothed_cross_entropy",
    "label_smoothed_cross_entropy",
    "linear_label_smoothed_cross_entropy",
]

if TYPE_CHECKING:
    from ls_lightning.integration import LabelSmoothing, LabelSmoothingMixin
    from ls_lightning.losses import (
        BinaryLabelSmoothedCrossEntropy,
        LabelSmoothedCE,
        LabelSmoothedCrossEntropy,
        binary_label_smoothed_cross_entropy,
        label_smoothed_cross_entropy,
        linear_label_smoothed_cross_entropy,
    )
    from ls_lightning.metrics import BinnedCalibrationError

_graveyard.install()


def __getattr__(name: str) -> Any:
    module = _HEADLINE.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    old = f"{__name__}.{name}"
    if old in _graveyard.MOVED:  # an old module path (``ls_lightning.schedules``): its alias, which warns per name
        return importlib.import_module(old)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
