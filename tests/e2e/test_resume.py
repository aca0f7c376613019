"""Kill and resume: a run of ``ls-train`` killed with SIGKILL after a checkpoint and resumed reaches the uninterrupted
run's steps and uses the same ε at every step, from the uninterrupted run's weights and optimizer state; its two ways
of resuming end alike. (The callback's state in checkpoints, in process: tests/integration/test_label_smoothing.py;
the checkpoints of the default callbacks: tests/cli/test_train.py.)"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import run_once

BIN = Path(sys.executable).parent
TESTS = Path(__file__).resolve().parents[1]  # where the jobs import helpers.StateProbe from
EVERY = 10  # the step checkpoint: the killed run's first last.ckpt is the one of step 10, in the first epoch
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


def start_default_job(run_dir: Path, probe: str, *extra: str) -> subprocess.Popen[bytes]:
    """The default job with a step checkpoint every ``EVERY`` steps and a ``StateProbe`` writing into ``probe``."""
    command = [str(BIN / "ls-train"), *DEFAULT_JOB, f"hydra.run.dir={run_dir}", *extra]
    command += [
        f"callbacks.step_checkpoint.every_n_train_steps={EVERY}",
        "+callbacks.probe._target_=helpers.StateProbe",
    ]
    command += [f"+callbacks.probe.dirpath={run_dir.parent / probe}", f"+callbacks.probe.every={EVERY}"]
    # one thread each: two jobs run side by side, and the small MLP gains nothing from more
    env = {**environment(), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
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


def rows_from(path: Path, start: int) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return [row for row in csv.DictReader(file) if int(row["step"]) >= start]


def without_partial_epoch(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """``rows`` without the training epoch values of their first epoch (the one a resumed run was killed in)."""
    first = min(int(row["epoch"]) for row in rows)
    partial = lambda key: key.startswith("train/") and not key.endswith("_step") and key != "train/epsilon"  # noqa: E731
    return [{k: v for k, v in row.items() if not (int(row["epoch"]) == first and partial(k))} for row in rows]


def assert_same_state(got: dict, expected: dict, what: str) -> None:
    """Weights and optimizer state, bit for bit (one thread, the same seed and data: nothing may differ)."""
    assert got["state_dict"].keys() == expected["state_dict"].keys(), what
    for key, value in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), (what, key)
    got_optimizer, expected_optimizer = got["optimizer"], expected["optimizer"]
    assert got_optimizer["param_groups"] == expected_optimizer["param_groups"], what
    assert got_optimizer["state"].keys() == expected_optimizer["state"].keys(), what
    for index, state in expected_optimizer["state"].items():
        for key, value in state.items():  # AdamW: step, exp_avg, exp_avg_sq
            assert torch.equal(got_optimizer["state"][index][key], value), (what, index, key)


def _kill_and_resume(root: Path) -> None:
    """The uninterrupted run, the run killed once its first last.ckpt exists, and that run resumed twice: with
    ``ckpt_path=last`` in its own directory, and from a copy of the checkpoint file into a new run directory. Four
    processes, two at a time beside the uninterrupted one (on 2 cores it takes half the time that way)."""
    straight, killed, from_file = (root / name for name in ("straight", "killed", "file"))
    uninterrupted = start_default_job(straight, "straight-probe")
    last = killed / "checkpoints" / "last.ckpt"
    kill_once_written((start_default_job(killed, "killed-probe"), last))
    checkpoint = shutil.copy(last, root / "killed.ckpt")
    had_metrics = (killed / "metrics.csv").exists()  # the CSV logger flushes every 100 steps
    (root / "had_metrics.json").write_text(json.dumps(had_metrics))
    resumed_runs = [
        start_default_job(killed, "resumed-probe", "ckpt_path=last"),
        start_default_job(from_file, "file-probe", f"ckpt_path={checkpoint}"),  # a new run directory
    ]
    for process in (*resumed_runs, uninterrupted):
        finish(process)


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_once(tmp_path_factory, "test_resume", _kill_and_resume)


@pytest.mark.slow
def test_killed_run_resumes_from_last_or_from_a_checkpoint_file(runs: Path) -> None:
    """A run of the default job with a step checkpoint every 10 steps is SIGKILLed once its first last.ckpt exists,
    in the middle of its first epoch. It runs again with ``ckpt_path=last`` in its own directory, and from a copy of
    the checkpoint file into a new run directory. Both reach the uninterrupted run's last step with the same ε at every
    step, and the first keeps the rows the interrupted run had logged."""
    straight, killed, from_file = (runs / name for name in ("straight", "killed", "file"))
    final = global_step(straight / "checkpoints" / "last.ckpt")
    start = global_step(runs / "killed.ckpt")
    # a checkpoint of the finished run (e.g. written when training ends) would make the rest prove nothing
    assert 0 < start < final and start % EVERY == 0 and start % (final // EPOCHS) != 0  # not at an epoch end
    expected = epsilon_per_step(straight / "metrics.csv")
    for run in (killed, from_file):
        assert global_step(run / "checkpoints" / "last.ckpt") == final
        assert_continues_the_straight_run(epsilon_per_step(run / "metrics.csv"), expected, start)
    # the interrupted run's own rows are kept, not deleted by the new CSV logger
    assert (killed / "metrics.1.csv").exists() == json.loads((runs / "had_metrics.json").read_text())


@pytest.mark.slow
def test_each_resumed_run_starts_from_the_uninterrupted_runs_weights_and_optimizer_state(runs: Path) -> None:
    """As its first batch starts, each resumed run holds what the uninterrupted run held at that step: the weights
    and AdamW's state (step count and both moments), restored from the checkpoint, bit for bit."""
    start = global_step(runs / "killed.ckpt")
    expected = load(runs / "straight-probe" / f"state_step{start}.pt")
    for probe in ("resumed-probe", "file-probe"):
        first = min(int(path.stem.removeprefix("state_step")) for path in (runs / probe).glob("state_step*.pt"))
        assert first == start, probe
        assert_same_state(load(runs / probe / f"state_step{start}.pt"), expected, probe)


@pytest.mark.slow
def test_both_ways_of_resuming_end_alike(runs: Path) -> None:
    """In its own directory or in a new one, from ``last`` or from a file: the same weights, optimizer state and
    logged values after the resumed epochs, bit for bit; the optimizer took as many steps as the uninterrupted run's."""
    in_place, from_file = (load(runs / name / "checkpoints" / "last.ckpt") for name in ("killed", "file"))
    for ours in (in_place, from_file):
        ours["optimizer"] = ours["optimizer_states"][0]
    assert_same_state(in_place, from_file, "last.ckpt")
    straight = load(runs / "straight" / "checkpoints" / "last.ckpt")
    for index, state in straight["optimizer_states"][0]["state"].items():
        assert torch.equal(in_place["optimizer"]["state"][index]["step"], state["step"]), index
    start = global_step(runs / "killed.ckpt")
    assert rows_from(runs / "killed" / "metrics.csv", start) == rows_from(runs / "file" / "metrics.csv", start)


@pytest.mark.slow
def test_resumed_runs_train_on_the_same_batches_and_end_where_the_uninterrupted_run_ends(runs: Path) -> None:
    """After the kill within the first epoch, each resumed run trains on the uninterrupted run's batches (the built-in
    data modules' checkpoint state: the epoch's shuffle seed, its batches done, torch's generator) and ends with its
    weights, optimizer state and logged values, bit for bit. Except the training epoch values of the epoch it was
    killed in: as for any metric a LightningModule logs, their states are not in checkpoints (torchmetrics' states
    are not persistent), so those of the resumed run cover the batches it trained on after the kill."""
    straight_batches = json.loads((runs / "straight-probe" / "batches.json").read_text())
    straight = load(runs / "straight" / "checkpoints" / "last.ckpt")
    straight["optimizer"] = straight["optimizer_states"][0]
    start = global_step(runs / "killed.ckpt")
    for run, probe in (("killed", "resumed-probe"), ("file", "file-probe")):
        batches = json.loads((runs / probe / "batches.json").read_text())
        assert batches == {step: straight_batches[step] for step in batches}, run
        resumed = load(runs / run / "checkpoints" / "last.ckpt")
        resumed["optimizer"] = resumed["optimizer_states"][0]
        assert_same_state(resumed, straight, run)
        logged = [without_partial_epoch(rows_from(runs / name / "metrics.csv", start)) for name in (run, "straight")]
        assert logged[0] == logged[1], run
