"""The quiet CPU trainer the Lightning tests build: no logger, checkpoints, progress bar or model summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L


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
