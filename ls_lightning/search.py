"""Hyper-parameter search helpers, at their documented path; they live in :mod:`ls_lightning.cli.search`."""

from ls_lightning.cli.search import EPSILON_RANGE, PEAK_KEYS, check_sweeper_plugins, suggest_epsilon

__all__ = ["EPSILON_RANGE", "PEAK_KEYS", "check_sweeper_plugins", "suggest_epsilon"]
