"""The built-in data modules, at their documented path; they live in :mod:`ls_lightning.cli.data`."""

from ls_lightning.cli.data import (
    BreastCancerDataModule,
    DigitsDataModule,
    MissingDependencyError,
    SequencesPerEpochSampler,
    SyntheticDataModule,
    TensorDataModule,
    TextDataModule,
)
from ls_lightning.integration.samplers import UnpaddedDistributedSampler

__all__ = [
    "BreastCancerDataModule",
    "DigitsDataModule",
    "MissingDependencyError",
    "SequencesPerEpochSampler",
    "SyntheticDataModule",
    "TensorDataModule",
    "TextDataModule",
    "UnpaddedDistributedSampler",
]
