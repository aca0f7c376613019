"""``ls-eval`` (also ``python -m ls_lightning.eval``); it lives in :mod:`ls_lightning.cli.eval`."""

from ls_lightning.cli.eval import evaluate, main

__all__ = ["evaluate", "main"]

if __name__ == "__main__":
    main()
