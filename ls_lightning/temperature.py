"""Temperature scaling, at its documented path; it lives in :mod:`ls_lightning.losses.temperature`."""

from ls_lightning.losses.temperature import fit_temperature

__all__ = ["fit_temperature"]
