"""Kill and resume: a run of ``ls-train`` killed with SIGKILL after a checkpoint and resumed reaches the uninterrupted
run's steps and uses the same ε at every step. (The callback's state in checkpoints, in process:
tests/integration/test_label_smoothing.py; the checkpoints of the default callbacks: tests/cli/test_train.py.)"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

BIN = Path(sys.executable).parent
# The default job (digits, MLP, the default callbacks and CSV logger) with an ε that changes at every step, for 10
# epochs (17 steps each): a killed run's first last.ckpt comes at step 17 or before, long before the end.
EPOCHS = 10
DEFAULT_JOB = [
    f"trainer.max_epochs={EPOCHS}",
    "label_smoothing/schedule=cosine",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
    "calibration.diagrams=false",
    "trainer.log_every_n_steps=1",  # ε at every step
]


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "PYTHONPATH")}


def epsilon_per_step(path: Path) -> dict[int, float]:
    with open(path, newline="") as file:
        return {int(r["step"]): float(r["train/epsilon"]) for r in csv.DictReader(file) if r.get("train/epsilon")}


def global_step(checkpoint: Path) -> int:
    return int(load(checkpoint)["global_step"])


def start_default_job(run_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    command = [str(BIN / "ls-train"), *DEFAULT_JOB, f"hydra.run.dir={run_dir}", *extra]
    # one thread each: two jobs run side by side, and the small MLP gains nothing from more
    env = {**environment(), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=run_dir.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen[bytes]) -> None:
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr.decode()[-3000:]


def load(checkpoint: Path) -> dict:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)


def kill_once_written(*runs: tuple[subprocess.Popen[bytes], Path]) -> None:
    """SIGKILL each ``(process, path)`` as soon as its ``path`` exists (complete: Lightning writes a checkpoint to a
    temporary file and renames it), watching all of them at once."""
    pending = list(runs)
    try:
        deadline = time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            for run in list(pending):
                process, path = run
                if path.exists() or process.poll() is not None:
                    os.kill(process.pid, signal.SIGKILL)
                    pending.remove(run)
            time.sleep(0.005)
    finally:
        for process, _ in runs:
            process.kill()
            process.communicate(timeout=60)
    assert all(p.returncode == -signal.SIGKILL for p, _ in runs), "a run ended before it could be killed"


def assert_continues_the_straight_run(resumed: dict[int, float], straight: dict[int, float], start: int) -> None:
    assert sorted(resumed) == [s for s in sorted(straight) if s >= min(resumed)]
    assert min(resumed) in (start, start + 1)  # the first step after the checkpoint
    for step, epsilon in resumed.items():
        assert epsilon == pytest.approx(straight[step], abs=1e-12), step
    assert len(set(resumed.values())) == len(resumed) > 20  # cosine: a different ε at each logged step


@pytest.mark.slow
def test_killed_run_resumes_from_last_or_from_a_checkpoint_file(tmp_path: Path) -> None:
    """A run of the default job with a step checkpoint every 10 steps is SIGKILLed once its first last.ckpt exists,
    in the middle of its first epoch. It runs again with ``ckpt_path=last`` in its own directory, and from a copy of
    the checkpoint file into a new run directory. Both reach the uninterrupted run's last step with the same ε at every
    step, and the first keeps the rows the interrupted run had logged. (That the default callbacks write last.ckpt at
    every epoch end and every n steps is tested in process, below.)"""
    straight, killed, from_file = (tmp_path / name for name in ("straight", "killed", "file"))
    every = 10
    steps = [f"callbacks.step_checkpoint.every_n_train_steps={every}"]
    uninterrupted = start_default_job(straight, *steps)  # alongside the others: on 2 cores it takes half the time
    last = killed / "checkpoints" / "last.ckpt"
    kill_once_written((start_default_job(killed, *steps), last))
    checkpoint = shutil.copy(last, tmp_path / "killed.ckpt")
    had_metrics = (killed / "metrics.csv").exists()  # the CSV logger flushes every 100 steps
    resumed_runs = [
        start_default_job(killed, *steps, "ckpt_path=last"),
        start_default_job(from_file, *steps, f"ckpt_path={checkpoint}"),  # a new run directory
    ]
    for process in (*resumed_runs, uninterrupted):
        finish(process)

    final = global_step(straight / "checkpoints" / "last.ckpt")
    start = global_step(checkpoint)
    # a checkpoint of the finished run (e.g. written when training ends) would make the rest prove nothing
    assert 0 < start < final and start % every == 0 and start % (final // EPOCHS) != 0  # not at an epoch end
    expected = epsilon_per_step(straight / "metrics.csv")
    for run in (killed, from_file):
        assert global_step(run / "checkpoints" / "last.ckpt") == final
        assert_continues_the_straight_run(epsilon_per_step(run / "metrics.csv"), expected, start)
    # the interrupted run's own rows are kept, not deleted by the new CSV logger
    assert (killed / "metrics.1.csv").exists() == had_metrics


# --- callback state in checkpoints, in process -------------------------------------------------------------------
