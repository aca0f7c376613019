"""ε schedules, at their documented path; they live in :mod:`ls_lightning.integration.schedules`."""

from ls_lightning.integration.schedules import Constant, Cosine, Exponential, Linear, Schedule, Step, TwoStage

__all__ = ["Constant", "Cosine", "Exponential", "Linear", "Schedule", "Step", "TwoStage"]
