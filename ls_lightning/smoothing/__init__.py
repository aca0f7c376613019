"""How much label smoothing over training: ε schedules, maps from training progress t ∈ [0, 1] to ε ∈ [0, 1].

Plain Python (no torch): small immutable objects that pickle, compare by value and have a ``repr`` that can be
pasted back, so that the command line checks a schedule's arguments before it imports anything heavy. The callback
that applies a schedule during a fit is :class:`ls_lightning.integration.LabelSmoothing`; the priors u that
smoothing moves towards are an argument of the losses (:mod:`ls_lightning.losses`).
"""

from ls_lightning.smoothing.schedules import Constant, Cosine, Exponential, Linear, Schedule, Step, TwoStage

__all__ = ["Constant", "Cosine", "Exponential", "Linear", "Schedule", "Step", "TwoStage"]
