"""The mixin, at its documented path; it lives in :mod:`ls_lightning.integration.mixin`."""

from ls_lightning.integration.mixin import DEFAULT_LOG_METRICS, METRIC_GROUPS, LabelSmoothingMixin, MetricGroup

__all__ = ["DEFAULT_LOG_METRICS", "METRIC_GROUPS", "LabelSmoothingMixin", "MetricGroup"]
