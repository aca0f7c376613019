"""Kill and resume: a run killed with SIGKILL after a checkpoint and resumed reaches the uninterrupted run's steps and
uses the same ε at every step; callback state round-trips per instance, and a checkpoint without it warns."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from trainers import quiet_trainer

from ls_lightning import LabelSmoothing, LabelSmoothingMixin
from ls_lightning.cli.train import train
from ls_lightning.smoothing import Cosine

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


class Net(LabelSmoothingMixin, L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 2)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.label_smoothed_loss(self.layer(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(16, 3, generator=generator), torch.randint(0, 2, (16,), generator=generator))
        return DataLoader(data, batch_size=4)


def _trainer(tmp_path: Path, callbacks: list[L.Callback]) -> L.Trainer:
    checkpointing = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    return quiet_trainer(tmp_path, max_epochs=1, callbacks=callbacks, enable_checkpointing=checkpointing)


def test_each_callback_instance_gets_its_own_state_back(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, [LabelSmoothing(Cosine(0.2, 0.0)), LabelSmoothing(0.05, interval="epoch")])
    trainer.fit(Net())
    path = tmp_path / "two.ckpt"
    trainer.save_checkpoint(path)
    saved = [(c.state_key, c.epsilon) for c in trainer.callbacks if isinstance(c, LabelSmoothing)]
    assert saved[0][1] != saved[1][1]
    # fresh instances, in the other order: Lightning matches states by `state_key`, not by position
    fresh = [LabelSmoothing(0.05, interval="epoch"), LabelSmoothing(Cosine(0.2, 0.0))]
    for callback in fresh:
        callback.epsilon = None
    _trainer(tmp_path, list(fresh)).fit(Net(), ckpt_path=path)  # max_epochs reached: restores, trains nothing
    assert sorted((c.state_key, c.epsilon) for c in fresh) == sorted(saved)


class LastCheckpointSteps(L.Callback):
    """Before each training batch and at the end, the step that ``last.ckpt`` holds (None: no file yet)."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, []

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        self.seen.append((trainer.global_step, global_step(self.path) if self.path.exists() else None))


@pytest.mark.parametrize("every_n_train_steps", [0, 3])
def test_default_checkpoints_write_last_ckpt_at_every_epoch_end_and_every_n_steps(
    every_n_train_steps: int, tmp_path: Path
) -> None:
    overrides = [f"callbacks.step_checkpoint.every_n_train_steps={every_n_train_steps}", f"paths.output_dir={tmp_path}"]
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    checkpoints = [instantiate(cfg.callbacks.model_checkpoint), instantiate(cfg.callbacks.step_checkpoint)]
    recorder = LastCheckpointSteps(tmp_path / "checkpoints" / "last.ckpt")
    trainer = _trainer(tmp_path, [*checkpoints, recorder])
    trainer.fit_loop.max_epochs = 3  # 4 steps per epoch
    trainer.fit(Net())

    def saved(step: int) -> bool:  # at the end of each epoch, and every n steps when set
        return step % 4 == 0 or (every_n_train_steps > 0 and step % every_n_train_steps == 0)

    expected = [(g, max((s for s in range(1, g + 1) if saved(s)), default=None)) for g in range(12)]
    assert recorder.seen == expected
    assert global_step(recorder.path) == 12  # the end of training
    assert [p.name for p in recorder.path.parent.iterdir()] == ["last.ckpt"]


def test_checkpoint_without_the_callbacks_state_warns_when_resumed(tmp_path: Path) -> None:
    overrides = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "callbacks.progress_bar=null"]
    overrides += ["data=synthetic", "data.num_train=64", "data.num_val=16", "data.num_test=16", "trainer.max_epochs=1"]
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        first = compose("train", overrides=[*overrides, f"paths.output_dir={tmp_path / 'first'}", "logger=none"])
    train(first)
    checkpoint = torch.load(tmp_path / "first" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    checkpoint["callbacks"] = {k: v for k, v in checkpoint["callbacks"].items() if not k.startswith("LabelSmoothing")}
    stripped = tmp_path / "stripped.ckpt"
    torch.save(checkpoint, stripped)
    with initialize_config_module("ls_lightning.conf", version_base="1.3"):
        resumed = compose(
            "train",
            overrides=[*overrides, "trainer.max_epochs=2", f"ckpt_path={stripped}", "logger=none",
                       f"paths.output_dir={tmp_path / 'resumed'}"],
        )  # fmt: skip
    with pytest.warns(UserWarning, match=r"no state for `LabelSmoothing\{.*recomputed from the restored trainer"):
        train(resumed)
