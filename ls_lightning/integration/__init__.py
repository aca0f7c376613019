"""The Lightning integration: the mixin, the callbacks, ε schedules, priors and samplers. Needs lightning.

Names are resolved lazily, as in :mod:`ls_lightning`: :mod:`ls_lightning.integration.schedules` is plain Python, so
that the command line can check a schedule's arguments (``ls_lightning.cli.config.validate_config``) and report a bad
value before it pays for importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "LabelSmoothing": "ls_lightning.integration.callbacks",
    "LabelSmoothingMixin": "ls_lightning.integration.mixin",
    "PenultimateProjection": "ls_lightning.integration.callbacks",
    "ReliabilityDiagram": "ls_lightning.integration.callbacks",
    "TemperatureScaling": "ls_lightning.integration.callbacks",
    "UnpaddedDistributedSampler": "ls_lightning.integration.samplers",
}

__all__ = [
    "LabelSmoothing",
    "LabelSmoothingMixin",
    "PenultimateProjection",
    "ReliabilityDiagram",
    "TemperatureScaling",
    "UnpaddedDistributedSampler",
]

if TYPE_CHECKING:
    from ls_lightning.integration.callbacks import (
        LabelSmoothing,
        PenultimateProjection,
        ReliabilityDiagram,
        TemperatureScaling,
    )
    from ls_lightning.integration.mixin import LabelSmoothingMixin
    from ls_lightning.integration.samplers import UnpaddedDistributedSampler


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ls_lightning.integration' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
