"""Priors u of label smoothing, at their documented path; they live in :mod:`ls_lightning.integration.priors`."""

from ls_lightning.integration.priors import OnlinePrior, batch_labels, class_frequency, fixed_prior, prior_matrix

__all__ = ["OnlinePrior", "batch_labels", "class_frequency", "fixed_prior", "prior_matrix"]
