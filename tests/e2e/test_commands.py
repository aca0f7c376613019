"""The ``ls-train`` / ``ls-eval`` commands run as a user runs them: in a subprocess, from a temporary directory; a
user's mistake stops them with one line and no traceback."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from helpers import assert_summary_is_the_logged_values, listed_options

BIN = Path(sys.executable).parent
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hydra_app" / "my_app.py"
QUIET = ["trainer.accelerator=cpu", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]
DESIGN_KEYS = {"train/epsilon"} | {
    f"{s}/{k}" for s in ("train", "val", "test") for k in ("loss", "h_pq", "h_uq", "acc", "ece")
}


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "PYTHONPATH")}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def header(path: Path) -> set[str]:
    with open(path, newline="") as file:
        return set(next(csv.reader(file)))


def logged_keys(path: Path) -> set[str]:
    """The DESIGN.md key of each column: Lightning suffixes keys logged on step and epoch with _step / _epoch."""
    return {key.removesuffix("_epoch").removesuffix("_step") for key in header(path)}


def only_dir(path: Path) -> Path:
    found = [p for p in path.rglob("metrics.csv")]
    assert len(found) == 1, found
    return found[0].parent


@pytest.mark.slow
def test_ls_train_then_ls_eval_write_only_into_their_run_directories(tmp_path: Path) -> None:
    """Each writes into its own run directory only, and a first run is quiet: no warning that a log folder will be
    deleted, each of Lightning's INFO lines once on screen and once in the job's log. (A sweep's directories:
    test_sweeps.py.)"""
    result = run([str(BIN / "ls-train"), "trainer.max_epochs=2", *QUIET], tmp_path)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "will be deleted" not in output
    # Lightning's INFO lines, without Hydra's time stamp: each printed once (and kept once in the job's log file)
    info = [re.sub(r"^\[[^]]*\]", "", line) for line in output.splitlines() if "INFO" in line]
    assert any("GPU available" in line for line in info) and any("Trainer.fit` stopped" in line for line in info)
    assert max(Counter(info).values()) == 1, info
    assert [p.name for p in tmp_path.iterdir()] == ["outputs"]
    run_dir = only_dir(tmp_path)
    assert run_dir.parent.parent == tmp_path / "outputs" / "train"  # outputs/train/<date>/<time>
    assert logged_keys(run_dir / "metrics.csv") >= DESIGN_KEYS
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    table = result.stdout[result.stdout.index("stage") :].splitlines()
    assert table[0].split() == ["stage", "acc", "ece", "h_pq", "loss"]
    assert table[1].split()[0] == "val" and table[2].split()[0] == "test" and "n/a" not in " ".join(table[1:3])
    assert table[3] == f"run directory: {run_dir}"
    # each printed cell is the run's own value of its column: the final validation's and the test's
    assert_summary_is_the_logged_values(result.stdout, run_dir / "metrics.csv")
    logged = [line for line in (run_dir / "train.log").read_text().splitlines() if "INFO" in line]
    assert len(logged) == len(info)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    result = run([str(BIN / "ls-eval"), f"ckpt_path={ckpt}", *QUIET], elsewhere)
    assert result.returncode == 0, result.stderr
    eval_dir = only_dir(elsewhere)
    assert eval_dir.parent.parent == elsewhere / "outputs" / "eval"
    assert {f"{s}/{k}" for s in ("val", "test") for k in ("acc", "ece", "h_pq", "h_uq", "loss")} <= header(
        eval_dir / "metrics.csv"
    )
    assert "run directory: " + str(eval_dir) in result.stdout
    assert_summary_is_the_logged_values(result.stdout, eval_dir / "metrics.csv")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["label_smoothing.schedule.epsilon=1.5"],
            "label_smoothing.schedule.epsilon=1.5 is out of range: expected a value in [0, 1]",
        ),
        (["trainer.max_epochs=-3"], "trainer.max_epochs=-3 is out of range"),
    ],
)
def test_out_of_range_value_exits_2_with_one_paragraph(args: list[str], message: str, tmp_path: Path) -> None:
    result = run([sys.executable, "-m", "ls_lightning.cli.train", *args], tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.startswith("ls-train: error:")
    assert "Traceback" not in result.stderr + result.stdout and result.stderr.strip().count("\n") == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["label_smoothing/schedule=warmup"], "Could not find 'label_smoothing/schedule/warmup'"),
        (["trainer.max_epochs=many"], "full_key: trainer.max_epochs"),
    ],
)
def test_composition_errors_exit_non_zero_without_traceback(args: list[str], message: str, tmp_path: Path) -> None:
    result = run([str(BIN / "ls-train"), *args], tmp_path)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr


def test_ls_eval_without_checkpoint_exits_2(tmp_path: Path) -> None:
    result = run([str(BIN / "ls-eval")], tmp_path)
    assert result.returncode == 2 and "ckpt_path is required" in result.stderr and "Traceback" not in result.stderr


def test_the_old_entry_point_still_runs_and_names_the_new_one(tmp_path: Path) -> None:
    """``python -m ls_lightning.eval`` (0.1's path, DESIGN.md's ``python -m ls_lightning.train``) runs ``ls-eval``
    after a FutureWarning that names ``ls_lightning.cli.eval``."""
    result = run([sys.executable, "-m", "ls_lightning.eval"], tmp_path)
    assert result.returncode == 2 and "ckpt_path is required" in result.stderr and "Traceback" not in result.stderr
    warning = "FutureWarning: `python -m ls_lightning.eval` has moved to `python -m ls_lightning.cli.eval`"
    assert warning in result.stderr


@pytest.mark.slow
def test_user_hydra_app_composes_our_groups(tmp_path: Path) -> None:
    result = run([sys.executable, str(EXAMPLE), "trainer.max_epochs=1", "trainer.enable_progress_bar=false"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "val/acc=" in result.stdout
    run_dir = only_dir(tmp_path)
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "_target_: ls_lightning.smoothing.Cosine" in config


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "group", "typo", "option", "extra"),
    [
        ("ls_lightning.cli.train", "experiment", "compare_schedulez", "compare_schedules", []),
        ("ls_lightning.cli.eval", "model", "mlpz", "mlp", ["ckpt_path=last.ckpt"]),
    ],
)
def test_the_command_reports_a_misspelled_option_without_a_traceback(
    command: str, group: str, typo: str, option: str, extra: list[str], tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "PYTHONPATH")}
    result = subprocess.run(
        [sys.executable, "-m", command, f"{group}={typo}", *extra],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert f"Could not find '{group}/{typo}'" in result.stderr
    assert option in listed_options(result.stderr, group)
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # stopped before the run directory was made
