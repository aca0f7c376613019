"""``ls-report``, at its documented path; it lives in :mod:`ls_lightning.cli.report`."""

from ls_lightning.cli.report import main, rank_settings, rank_table, report

__all__ = ["main", "rank_settings", "rank_table", "report"]
