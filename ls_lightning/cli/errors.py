"""The command line's errors: each is reported as one paragraph and exit status 2, not a traceback."""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigValueError", "MissingDependencyError"]


class MissingDependencyError(ModuleNotFoundError):
    """An optional dependency is not installed; the message says which extra to install."""


class ConfigValueError(ValueError):
    """A composed config holds a value outside its allowed range; ``errors`` lists one message per key."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("invalid configuration: " + "; ".join(errors))


class CheckpointError(ValueError):
    """``ckpt_path`` names a file that is no checkpoint, a damaged one, or one that is not safe to load.

    The message names the path and the cause: ``ckpt_path=<path>: <cause>``.
    """
