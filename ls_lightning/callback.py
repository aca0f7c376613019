"""The ε-schedule callback, at its documented path; it lives in :mod:`ls_lightning.integration.callbacks`."""

from ls_lightning.integration.callbacks.label_smoothing import LabelSmoothing

__all__ = ["LabelSmoothing"]
