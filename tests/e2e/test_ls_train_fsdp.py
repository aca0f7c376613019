"""``ls-train data=text model=transformer trainer=fsdp_cpu``: the language model trained on two processes, resumed
from ``last``, and tested against a 1-process ``ls-eval`` of the checkpoint it wrote (this is also the command-line
test of the language-model path on two processes). One step of each built-in model sharded: tests/cli/test_fsdp.py.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_summary_is_the_logged_values, run_once

from ls_lightning.cli.report import main as report_main

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


BIN = Path(sys.executable).parent
SIZES = ["data.vocab_size=300", "data.block_size=16", "data.max_corpus_bytes=30000", "data.batch_size=8"]
SIZES += ["model.d_model=32", "model.num_heads=2", "model.dim_feedforward=64", "data.val_fraction=0.1"]
QUIET = ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
COMMON = ["data=text", "model=transformer", *SIZES, *QUIET]
VAL_KEYS = ("val/loss", "val/h_pq", "val/h_uq", "val/acc", "val/ece", "val/brier", "val/perplexity")


def _last_values(path: Path) -> dict[str, float]:
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    return {key: float(next(r[key] for r in reversed(rows) if r.get(key))) for key in VAL_KEYS}


def _run(args: list[str], cwd: Path, cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``args`` in ``cwd`` with the tokenizer cache ``cache`` (default: ``cwd/cache``)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["LS_LIGHTNING_CACHE"] = str(cache or cwd / "cache")
    # the processes import this checkout (Lightning re-launches rank 1 with the same environment)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


TRAIN = [str(BIN / "ls-train"), *COMMON, "trainer=fsdp_cpu", "data.train_sequences_per_epoch=32"]
TRAIN += ["calibration.temperature_scaling=true", "hydra.run.dir=run"]


def _train(folder: Path) -> None:
    """``ls-train data=text model=transformer trainer=fsdp_cpu`` for one epoch into ``folder/run``, then resumed in
    place with ``ckpt_path=last`` for a second. Each launch's output is kept in ``folder`` (``first.out``,
    ``second.out``), and the first launch's checkpoint as ``first.ckpt``."""
    for name, extra in (("first", ["trainer.max_epochs=1"]), ("second", ["trainer.max_epochs=2", "ckpt_path=last"])):
        result = _run([*TRAIN, *extra], folder)
        assert result.returncode == 0, result.stderr[-3000:]
        (folder / f"{name}.out").write_text(result.stdout + result.stderr)
        if name == "first":
            shutil.copy(folder / "run" / "checkpoints" / "last.ckpt", folder / "first.ckpt")


@pytest.fixture(scope="session")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_once(tmp_path_factory, "test_fsdp_cli", _train)


@pytest.mark.slow
def test_ls_train_fsdp_cpu_trains_on_tokens_on_two_processes(fsdp_run: Path) -> None:
    """Two processes, the tokenizer trained once then read from the cache, the language-model keys logged, the
    summary table and the report."""
    first, second = (fsdp_run / "first.out").read_text(), (fsdp_run / "second.out").read_text()
    assert "Starting with 2 processes" in first and "Starting with 2 processes" in second
    # once, with its time (Lightning's INFO lines go through Hydra's console handler, on stdout)
    assert first.count("Trained a byte-level BPE tokenizer of 300 tokens") == 1
    assert "Trained a byte" not in second  # the cached tokenizer
    run = fsdp_run / "run"
    with open(run / "metrics.csv", newline="") as file:
        keys = set(next(csv.reader(file)))
    assert {"train/perplexity", "val/perplexity", "test/perplexity", "val/ece", "test/ece", "val/ece_ts"} <= keys
    assert (run / "reliability.json").is_file()
    table = second[second.index("stage") :].splitlines()
    assert table[0].split() == ["stage", "acc", "ece", "h_pq", "loss", "perplexity"]
    assert_summary_is_the_logged_values(second, run / "metrics.csv")  # the resumed launch's rows
    assert report_main([str(run)]) == 0  # ls-report on the run
    assert "val perplexity" in (run / "report.md").read_text() and (run / "report.png").is_file()


@pytest.mark.slow
def test_ls_train_fsdp_cpu_resumes_from_last(fsdp_run: Path) -> None:
    first = torch.load(fsdp_run / "first.ckpt", weights_only=False)
    resumed = torch.load(fsdp_run / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert (first["epoch"], resumed["epoch"]) == (0, 1)
    assert resumed["global_step"] == first["global_step"] * 2  # the second epoch only, after the one restored
    # AdamW's state came back from the full checkpoint and went on: one more epoch of steps
    assert resumed["optimizer_states"][0]["state"][0]["step"] == first["optimizer_states"][0]["state"][0]["step"] * 2
    # the first launch's rows are kept beside the second's
    assert (fsdp_run / "run" / "metrics.1.csv").is_file()


@pytest.mark.slow
def test_ls_train_fsdp_cpu_metrics_equal_a_one_process_ls_eval(fsdp_run: Path, tmp_path: Path) -> None:
    """The resumed run's last validation equals a 1-process ``ls-eval`` of the checkpoint it wrote."""
    checkpoint = fsdp_run / "run" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()  # one file with the full weights, not a folder of shards
    evaluate = [str(BIN / "ls-eval"), *COMMON, f"ckpt_path={checkpoint}", "hydra.run.dir=eval", "trainer=cpu"]
    result = _run(evaluate, tmp_path, cache=fsdp_run / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Trained a byte" not in result.stdout + result.stderr  # the training run's tokenizer, from the cache
    trained, evaluated = _last_values(fsdp_run / "run" / "metrics.csv"), _last_values(tmp_path / "eval" / "metrics.csv")
    for key in VAL_KEYS:
        assert math.isclose(trained[key], evaluated[key], rel_tol=1e-5, abs_tol=1e-7), (key, trained, evaluated)
