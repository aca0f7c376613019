"""The command-line application: Hydra configs, data modules, models, and ``ls-train``, ``ls-eval``, ``ls-report``.

Needs the ``cli`` extra (``pip install 'ls-lightning[cli]'``). Importing this package imports nothing of Hydra; the
modules that need it (``config``, ``run``, ``train``, ``eval``, ``search``) do. The console scripts enter through
the functions here, which say what to install when the extra is missing.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from ls_lightning.cli.errors import MissingDependencyError

__all__ = ["CLI_INSTALL", "eval_main", "report_main", "require_cli_extra", "train_main"]

CLI_INSTALL = "pip install 'ls-lightning[cli]'"
_CLI_MODULES = ("hydra", "omegaconf")


def require_cli_extra() -> None:
    """Raise :class:`MissingDependencyError` naming the ``pip install`` command when the ``cli`` extra is missing."""
    missing = []
    for name in _CLI_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingDependencyError(f"the command line needs {', '.join(missing)}: {CLI_INSTALL}")


def _run(prog: str, module: str) -> Any:
    try:
        require_cli_extra()
    except MissingDependencyError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
    return importlib.import_module(module).main()


def train_main() -> None:
    """Console script ``ls-train``."""
    _run("ls-train", "ls_lightning.cli.train")


def eval_main() -> None:
    """Console script ``ls-eval``."""
    _run("ls-eval", "ls_lightning.cli.eval")


def report_main() -> None:
    """Console script ``ls-report``; exits with its status."""
    sys.exit(_run("ls-report", "ls_lightning.cli.report"))
