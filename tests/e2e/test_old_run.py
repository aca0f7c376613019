"""A run directory written by ls_lightning 0.1.0 (tests/data/run_v0_1_0): its saved config, which names the old module
paths, still evaluates with ``ls-eval`` (the same numbers as 0.1.0 gave, with a FutureWarning naming each new path),
and its checkpoint still resumes with ``ls-train``."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

OLD_RUN = Path(__file__).resolve().parents[1] / "data" / "run_v0_1_0"


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "PYTHONWARNINGS")}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _logged(path: Path) -> dict[str, float]:
    with open(path) as file:
        return {key: float(value) for row in csv.DictReader(file) for key, value in row.items() if value and "/" in key}


@pytest.mark.slow
def test_the_saved_config_of_an_old_run_evaluates_to_the_old_numbers(tmp_path: Path) -> None:
    result = _run(
        [
            sys.executable,
            "-m",
            "ls_lightning.cli.eval",
            f"--config-path={OLD_RUN / '.hydra'}",
            "--config-name=config",
            f"ckpt_path={OLD_RUN / 'checkpoints' / 'last.ckpt'}",
            f"hydra.run.dir={tmp_path / 'eval'}",
            "callbacks.progress_bar=null",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for old, new in [
        ("ls_lightning.data.DigitsDataModule", "ls_lightning.cli.data.DigitsDataModule"),
        ("ls_lightning.callback.LabelSmoothing", "ls_lightning.integration.LabelSmoothing"),
        ("ls_lightning.schedules.Constant", "ls_lightning.smoothing.Constant"),
    ]:
        assert f"FutureWarning: `{old}` has moved to `{new}`" in result.stderr, result.stderr[-3000:]
    ours, theirs = _logged(tmp_path / "eval" / "metrics.csv"), _logged(OLD_RUN / "eval_metrics.csv")
    added = {f"{stage}/{key}" for stage in ("val", "test") for key in ("entropy", "ece_classwise")}  # since 0.2
    assert set(ours) == set(theirs) | added
    for key, value in theirs.items():  # float32 states summed in the same order: the same numbers
        assert ours[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


@pytest.mark.slow
def test_an_old_checkpoint_resumes(tmp_path: Path) -> None:
    checkpoint = tmp_path / "old.ckpt"
    shutil.copyfile(OLD_RUN / "checkpoints" / "last.ckpt", checkpoint)
    overrides = (OLD_RUN / ".hydra" / "overrides.yaml").read_text().split("\n- ")
    overrides = [line.strip().removeprefix("- ") for line in overrides if line.strip()]
    result = _run(
        [
            sys.executable,
            "-m",
            "ls_lightning.cli.train",
            *[o for o in overrides if not o.startswith("trainer.max_epochs")],
            "trainer.max_epochs=3",
            f"ckpt_path={checkpoint}",
            f"hydra.run.dir={tmp_path / 'resumed'}",
            "callbacks.progress_bar=null",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "has no state for" not in result.stderr  # the LabelSmoothing state (and its online sums) was found
    with open(tmp_path / "resumed" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    assert {row["epoch"] for row in rows if row.get("train/loss_epoch")} == {"2"}  # epochs 0 and 1 were restored
    assert all(float(row["train/epsilon"]) == pytest.approx(0.1) for row in rows if row.get("train/epsilon"))
