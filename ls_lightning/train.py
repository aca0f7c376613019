"""``ls-train`` (also ``python -m ls_lightning.train``); it lives in :mod:`ls_lightning.cli.train`."""

from ls_lightning.cli.train import main, train

__all__ = ["main", "train"]

if __name__ == "__main__":
    main()
