"""The quiet CPU trainer the Lightning tests build (no logger, checkpoints, progress bar or model summary), and runs
that several tests share, made once per test session."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from filelock import FileLock


def quiet_trainer(tmp_path: Path | str | None = None, **overrides: Any) -> L.Trainer:
    """``L.Trainer`` on the CPU writing nothing (into ``tmp_path`` if anything); ``overrides`` win."""
    options: dict[str, Any] = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    if tmp_path is not None:
        options["default_root_dir"] = tmp_path
    return L.Trainer(**{**options, **overrides})


def run_once(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """The folder ``make(folder)`` filled, once per test session: under pytest-xdist the workers share it (the
    first makes it, the others wait for it), as xdist's documentation shows for session fixtures."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' temporary folders sit side by side in the session's
    folder = root / f"shared-{name}"
    with FileLock(f"{folder}.lock"):
        done = folder / ".done"
        if not done.exists():
            folder.mkdir(exist_ok=True)
            make(folder)
            done.touch()
    return folder
