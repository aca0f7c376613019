"""``log_figure``: a matplotlib figure to each logger that takes images; bad arguments refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ls_lightning.integration import log_figure

pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # after the skip


@pytest.mark.parametrize(
    ("target", "name", "step", "error", "match"),
    [
        ("loggers", "x", 0, TypeError, "`target`"),
        ([object()], "x", 0, TypeError, "`target`"),
        ([], "", 0, ValueError, "`name`"),
        ([], "x", -1, ValueError, "`step`"),
        ([], "x", 1.5, ValueError, "`step`"),
        ([], "x", True, ValueError, "`step`"),
    ],
)
def test_log_figure_refuses_bad_arguments(target: Any, name: str, step: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        log_figure(target, name, Figure(), step=step)


def test_log_figure_skips_loggers_without_images(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    assert log_figure(CSVLogger(tmp_path), "x", Figure(), step=3) == []
    assert not list(tmp_path.rglob("*.png"))
