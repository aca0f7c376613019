"""Reliability diagrams, at their documented path; they live in :mod:`ls_lightning.metrics.plotting`."""

from ls_lightning.metrics.plotting import (
    plot_reliability_curves,
    plot_reliability_diagram,
    save_figure,
    save_reliability_diagram,
)

__all__ = ["plot_reliability_curves", "plot_reliability_diagram", "save_figure", "save_reliability_diagram"]
