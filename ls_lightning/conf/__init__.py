"""Hydra config groups of ls_lightning, importable as ``pkg://ls_lightning.conf``.

Importing the package registers the structured-config schemas that the YAML files extend, so a user's Hydra app
only needs ``hydra.searchpath: [pkg://ls_lightning.conf]`` (Hydra imports this package to read the files).
"""

from ls_lightning.cli.config import register_configs

__all__: list[str] = []

register_configs()
