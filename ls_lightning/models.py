"""The built-in models, at their documented path; they live in :mod:`ls_lightning.cli.models`."""

from ls_lightning.cli.models import CNN, MLP, Classifier, Transformer

__all__ = ["CNN", "MLP", "Classifier", "Transformer"]
