"""Run directories as a user meets them, ``ls-train`` and ``ls-eval`` in subprocesses: runs started together each get
a complete directory of their own, a refused run leaves nothing behind, and a sweep prints its directory."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ls_lightning.cli.report import main as report_main

BIN = Path(sys.executable).parent
REAL_CKPT = Path(__file__).resolve().parents[1] / "data" / "run_v0_1_0" / "checkpoints" / "last.ckpt"
QUIET = ["trainer.accelerator=cpu", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]
# the cheapest run that still writes metrics.csv (val and test rows) and checkpoints/last.ckpt
TINY = [*QUIET, "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
TINY += ["trainer.limit_test_batches=1", "calibration.diagrams=false", "trainer.enable_model_summary=false"]


def _start(command: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "PYTHONPATH")}
    env["OMP_NUM_THREADS"] = "1"  # several at once on the suite's cores
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


@pytest.mark.slow
def test_runs_started_together_get_complete_directories_of_their_own(tmp_path: Path) -> None:
    """Four ``ls-train`` runs at once from one directory, all with one time-stamped ``hydra.run.dir``: the default
    ``outputs/train/<date>/<HH-MM-SS>`` shares a name only within a second, ``${now:%Y}`` always (so the runs
    collide however the machine schedules them). Each claims its own directory and writes all of its files there."""
    run_dir = "hydra.run.dir=runs/${now:%Y}"
    processes = [_start([str(BIN / "ls-train"), *TINY, f"seed={seed}", run_dir], tmp_path) for seed in range(4)]
    results = [_finish(p) for p in processes]
    assert all(code == 0 for code, _, _ in results), [err[-2000:] for _, _, err in results]
    printed = [out.splitlines()[-1].removeprefix("run directory: ") for _, out, _ in results]
    year = Path(printed[0]).name.split("_")[0]
    assert sorted(printed) == sorted(
        str(tmp_path / "runs" / name) for name in (year, *(f"{year}_{k}" for k in (1, 2, 3)))
    )
    for seed, directory in enumerate(map(Path, printed)):
        assert (directory / ".hydra" / "overrides.yaml").read_text().count(f"- seed={seed}\n") == 1
        assert f"seed: {seed}\n" in (directory / ".hydra" / "config.yaml").read_text()
        with open(directory / "metrics.csv", newline="") as file:
            rows = list(csv.DictReader(file))
        assert any(row.get("val/acc") for row in rows) and any(row.get("test/acc") for row in rows)
        assert (directory / "checkpoints" / "last.ckpt").is_file() and (directory / "train.log").is_file()


@pytest.mark.slow
def test_a_refused_run_leaves_nothing_behind(tmp_path: Path) -> None:
    """A value out of range (``ls-train``) and a truncated checkpoint (``ls-eval``): one line, exit status 2, and no
    run directory for ``ls-report`` to list as a failed job."""
    truncated = tmp_path / "truncated.ckpt"
    data = REAL_CKPT.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    runs = {"train": tmp_path / "train", "eval": tmp_path / "eval"}
    for folder in runs.values():
        folder.mkdir()
    processes = [
        _start([str(BIN / "ls-train"), "trainer.max_epochs=-5"], runs["train"]),
        _start([str(BIN / "ls-eval"), f"ckpt_path={truncated}"], runs["eval"]),
    ]
    (train_code, _, train_err), (eval_code, _, eval_err) = map(_finish, processes)
    assert (train_code, eval_code) == (2, 2)
    assert train_err == (
        "ls-train: error: invalid configuration: trainer.max_epochs=-5 is out of range: expected a value >= 1 or null\n"
    )
    assert eval_err == f"ls-eval: error: ckpt_path={truncated}: not a readable checkpoint (truncated?)\n"
    assert [list(folder.iterdir()) for folder in runs.values()] == [[], []]


@pytest.mark.slow
def test_a_sweep_prints_its_directory_and_ls_report_points_a_job_directory_at_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _finish(_start([str(BIN / "ls-train"), "-m", "seed=0,1", *TINY], tmp_path))
    assert code == 0, err[-3000:]
    assert out.splitlines()[-1].startswith("sweep directory: ")
    sweep = Path(out.splitlines()[-1].removeprefix("sweep directory: "))
    assert (sweep / "multirun.yaml").is_file() and {p.name for p in sweep.iterdir()} == {"0", "1", "multirun.yaml"}
    with pytest.raises(SystemExit) as info:
        report_main([str(sweep / "1")])
    assert info.value.code == 2
    assert capsys.readouterr().err.endswith(f"pass the sweep directory: ls-report {sweep}\n")
    assert report_main([str(sweep), "--no-figure", "--no-logger"]) == 0
